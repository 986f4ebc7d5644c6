"""The MNIST-1D cache: generated once per machine, keyed by the generation arguments, safe for
concurrent writers, and a damaged file is generated again, never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainables.cache import CACHE_ENV
from trainables.data import MNIST1D_ARGS, mnist1d_arrays, mnist1d_cache_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_the_cached_dataset_is_mnist1ds_own_bit_for_bit(cache: Path) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    assert get_dataset_args(as_dict=True) == MNIST1D_ARGS  # the key names what mnist1d generates by default
    generated = make_dataset(get_dataset_args())
    first = mnist1d_arrays()  # generates and writes the cache
    assert mnist1d_cache_file().is_file()
    again = mnist1d_arrays()  # reads it
    for name in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(first[name], generated[name]) and np.array_equal(again[name], generated[name])
        assert again[name].dtype == generated[name].dtype


def test_a_second_load_reads_the_file_and_other_arguments_get_another_file(cache: Path) -> None:
    mnist1d_arrays()
    path = mnist1d_cache_file()
    marked = {k: v for k, v in np.load(path).items()}
    marked["y"] = np.full_like(marked["y"], 7)  # a file we wrote: only reading it gives these labels
    np.savez(path, **marked)
    assert (mnist1d_arrays()["y"] == 7).all()
    other = {**MNIST1D_ARGS, "seed": 1}
    assert mnist1d_cache_file(other) != path
    assert not (mnist1d_arrays(other)["y"] == 7).all()
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, mnist1d_cache_file(other).name])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong arrays"])
def test_a_damaged_cache_file_is_generated_again(cache: Path, damage: str) -> None:
    good = mnist1d_arrays()
    path = mnist1d_cache_file()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file at all" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, x=np.zeros(3))
    again = mnist1d_arrays()
    assert all(np.array_equal(again[k], good[k]) for k in good)
    assert all(np.array_equal(np.load(path)[k], good[k]) for k in good)  # the file is whole again


def test_an_unwritable_cache_costs_the_generation_not_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))  # a folder inside a file cannot be made
    assert mnist1d_arrays()["x"].shape == (4000, 40)


def test_processes_generating_at_once_each_get_the_dataset_and_leave_one_whole_file(cache: Path) -> None:
    script = (
        "from trainables.data import mnist1d_arrays; import sys; sys.stdout.write(str(mnist1d_arrays()['x'].sum()))"
    )
    env = {**os.environ, CACHE_ENV: str(cache), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    sums = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(sums)) == 1
    assert [p.name for p in cache.iterdir()] == [mnist1d_cache_file().name]  # no temporary file left
    assert str(mnist1d_arrays()["x"].sum()) == sums[0]
