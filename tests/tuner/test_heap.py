"""Garbage collection around a run's start: held while it loads, frozen heap after. Each case runs in
a fresh interpreter, as the collector's state is the process's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.tuner.procs import REPO


def run_python(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_collection_is_held_while_a_run_starts_and_resumes_with_the_frozen_heap() -> None:
    held, frozen, count, after = run_python("""
        import gc
        from tuner.heap import collections_held, freeze_heap
        with collections_held():
            print(gc.isenabled())
            import optuna  # what a run loads: long-lived
            freeze_heap()
            print(gc.isenabled(), gc.get_freeze_count() > 10_000)
        print(gc.isenabled())
    """)
    assert (held, frozen, count, after) == ("False", "True", "True", "True")


def test_collection_resumes_at_the_end_of_a_start_that_never_reached_the_trials() -> None:
    assert run_python("""
        import gc
        from tuner.heap import collections_held
        try:
            with collections_held():
                raise ValueError("bad study file")
        except ValueError:
            pass
        print(gc.isenabled(), gc.get_freeze_count())
    """) == ["True", "0"]


def test_a_process_that_turned_collection_off_itself_keeps_it_off() -> None:
    assert run_python("""
        import gc
        from tuner.heap import collections_held, freeze_heap
        gc.disable()
        with collections_held():
            freeze_heap()
        print(gc.isenabled())
    """) == ["False"]
