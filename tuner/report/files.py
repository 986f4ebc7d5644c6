"""Report files written whole or not at all, and a record of which are in place.

Every file goes to a temporary name in its own folder first and is renamed into place
(a rename within a folder is atomic), so a reader, or a report stopped by Ctrl-C, never
finds a half-written file under the final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write `path` to: renamed to `path` when the block succeeds, removed when it raises."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")  # keeps the suffix: writers pick formats by it
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt and SIGTERM's TerminatedError too
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(folder: Path) -> Iterator[Path]:
    """A private temporary folder inside `folder`, removed with whatever is left in it when the block ends.

    For writers that run in a thread of their own (kaleido): one still running after an interrupt
    finds the folder gone and fails, instead of leaving a file behind.
    """
    tmp = folder / f"{TMP_PREFIX}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had our pid
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        for _ in range(5):  # a writer still running may add a file while the folder is being removed
            shutil.rmtree(tmp, ignore_errors=True)
            if not tmp.exists():
                break


class ReportFiles:
    """The files one report writes into `out` (names relative to it, such as `png/x.png`), and those in place."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.planned: list[str] = []
        self.written: list[str] = []

    @contextmanager
    def write(self, name: str) -> Iterator[Path]:
        """A temporary path to write `name` to; it is put in place when the block succeeds."""
        with atomic_path(self.out / name) as tmp:
            yield tmp
        self.written.append(name)

    def place(self, tmp: Path, name: str) -> Path:
        """Move a complete file written elsewhere in the same file system into place as `name`."""
        path = self.out / name
        os.replace(tmp, path)
        self.written.append(name)
        return path

    def progress(self) -> str:
        """One line for an interrupted report: what was and was not written."""
        if not self.written:
            return f"report interrupted before any file was written to {self.out}"
        missing = [n for n in self.planned if n not in self.written]
        if not missing:  # only logging to MLflow comes after the last file
            return f"report interrupted after writing all {len(self.written)} files to {self.out}, while logging them to MLflow"
        pngs = sum(n.startswith("png/") for n in missing)
        names = [n for n in missing if not n.startswith("png/")] + ([f"{pngs} PNG(s) in png/"] if pngs else [])
        return (
            f"report interrupted: wrote {len(self.written)} of {len(self.planned)} files to {self.out} "
            f"(not written: {', '.join(names)})"
        )
