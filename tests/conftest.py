from __future__ import annotations

from typing import Any

import pytest

from tests.browser import REQUIRE_ENV


@pytest.fixture
def chromium_required() -> None:
    pytest.fail(f"no Chromium found but {REQUIRE_ENV} is set: install one (apt-get install chromium)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` cannot run without a GPU: deselect them there (no GPU can be installed, unlike a
    server or a browser, whose absence fails the tests in CI) and say so in the header of the run."""
    import torch

    if torch.cuda.is_available():
        return
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda:
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
        config.hook.pytest_deselected(items=cuda)
        config.stash[_CUDA_DESELECTED] = len(cuda)


_CUDA_DESELECTED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if count := config.stash.get(_CUDA_DESELECTED, 0):
        terminalreporter.write_line(f"{count} CUDA test(s) deselected: no GPU here (on a GPU machine: pytest -m cuda)")
