"""What a user's trainable gets as its second argument, `context`: the trial's number, files, device, checkpoint.

    def train(params, context):
        state = context.load()                    # None on a first attempt
        model = MyNet(...); start = 0
        if state is not None:
            model.load_state_dict(state["model"]); start = state["epoch"]
        for epoch in range(start, params["epochs"]):
            ...
            yield {"epoch": epoch + 1, "val_f1": f1}  # "epoch" (optional) is the step; else the yield count
            context.save({"model": model.state_dict(), "epoch": epoch + 1})

A trial retried after its worker died (or after Ctrl-C) gets the same checkpoint back from
`load()`, so it resumes where its last `save` was; a trainable that never loads restarts
from scratch, and its MLflow run says so (tag `tuner.restarted_from_scratch`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.loop import checkpoint_not_saved


@dataclass
class TrialContext:
    """One trial's place to keep files and state; the adapter makes one per trial."""

    trial_number: int
    trial_dir: Path  # for the trial's own files (it exists); what is there at the end is logged to its MLflow run
    device: str  # "cpu", "cuda" or "cuda:N": where the run asked this trial to train
    checkpoint_path: Path | None  # None: the run keeps no checkpoints (save does nothing)
    checkpoint_every: float = 0.0  # seconds between the saves of `trainables.fit_model`
    data_dir: str | None = None  # --data-dir, for trainables that read files
    retry_of: int | None = None  # the first attempt's trial number when this trial is a retry
    epochs_done: int = 0  # the epochs yielded so far, counted by the adapter
    loaded_epochs: int | None = field(default=None, init=False)  # set by `load` when it found a checkpoint

    def save(self, state: Any) -> None:
        """Keep `state` (anything torch.save takes) as this trial's checkpoint, replacing the last one atomically."""
        if self.checkpoint_path is None:
            return
        import torch

        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save({"state": state, "epochs": self.epochs_done, "saved_at": time.time()}, tmp)
            os.replace(tmp, self.checkpoint_path)  # a kill mid-save leaves the previous checkpoint intact
        except (OSError, RuntimeError) as exc:  # a full disk (torch says RuntimeError): the trial goes on
            tmp.unlink(missing_ok=True)
            checkpoint_not_saved(self.checkpoint_path, exc)

    def load(self) -> Any:
        """The state of the last `save` of this trial (or of the attempt it retries); None when there is none."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return None
        import torch

        saved = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        self.loaded_epochs = int(saved.get("epochs", 0))
        return saved["state"]
