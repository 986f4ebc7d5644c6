"""The `tuner` command line.

Heavy libraries (torch, mlflow) are imported by the subcommand that needs them, so
`tuner --help` and bad flags answer at once. Errors a user can fix print one line
(`tuner: error: ...`) and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from tuner.errors import UserError
from tuner.storage import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, redact


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line with the fix, like ours."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage (default {DEFAULT_STORAGE})")
    parser.add_argument(
        "--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})"
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=int, help="number of trials (default: the study's)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    add_storage_flags(parser)
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's, auto)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the study's)")
    parser.add_argument("--study-name", help="study name (default: the study's)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep per-trial checkpoints after trials end")
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def build_parser() -> argparse.ArgumentParser:
    from tuner.train_cli import add_config_flags

    parser = _Parser(prog="tuner", description="Hyperparameter tuning and experiment tracking for PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train one config and print per-epoch metrics")
    add_config_flags(train)

    run = sub.add_parser("run", help="run a study script (create or resume its study)")
    run.add_argument("script", help="path of a study script, e.g. studies/quickstart.py")
    add_run_flags(run)

    studies = sub.add_parser("studies", help="list the studies in a storage")
    add_storage_flags(studies)

    best = sub.add_parser("best", help="print a study's best params as JSON")
    best.add_argument("study", help="study name")
    add_storage_flags(best)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args, lambda: _run_command(args))


def main_for_script(study: Any, argv: list[str] | None = None) -> None:
    """`python studies/X.py [flags]`: the same flags as `tuner run`."""
    parser = _Parser(prog=os.path.basename(sys.argv[0]), description=getattr(study, "__doc__", None))
    add_run_flags(parser)
    args = parser.parse_args(argv)
    sys.exit(_dispatch(args, lambda: run_and_summarise(study, args)))


def _dispatch(args: argparse.Namespace, command: Any) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM closes the trial like Ctrl-C
    try:
        return int(command())
    except KeyboardInterrupt:
        print("tuner: interrupted; the study can be resumed by running the same command again", file=sys.stderr)
        return 130
    except TerminatedError:
        print("tuner: terminated; the study can be resumed by running the same command again", file=sys.stderr)
        return 143
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"tuner: error: {redact(one_line(exc))}", file=sys.stderr)
        return 2


class TerminatedError(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the running trial is closed) but exiting 143."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise TerminatedError()


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "train":
        from tuner.train_cli import run_train

        return run_train(args)
    if args.command == "run":
        from tuner.scripts import load_study_script

        return run_and_summarise(load_study_script(args.script), args)
    if args.command == "studies":
        from tuner.results import list_studies

        return list_studies(args.storage)
    if args.command == "best":
        from tuner.results import print_best

        return print_best(args.study, args.storage)
    raise UserError(f"unknown command {args.command}")


def run_options(args: argparse.Namespace) -> Any:
    from tuner.study import RunOptions

    return RunOptions(
        n_trials=args.n_trials,
        timeout=args.timeout,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        device=args.device,
        seed=args.seed,
        study_name=args.study_name,
        quiet=args.quiet,
        keep_checkpoints=args.keep_checkpoints,
        report=args.report,
    )


def run_and_summarise(study_spec: Any, args: argparse.Namespace) -> int:
    from tuner.results import print_summary

    options = run_options(args)
    study = study_spec.run(options)
    print_summary(study, options)
    return 0


def one_line(exc: BaseException) -> str:
    """The error as one line; user errors speak for themselves, others name their type."""
    from trainables import ConfigError, DatasetNotFound

    text = " ".join(str(exc).split())
    if isinstance(exc, UserError | ConfigError | DatasetNotFound):
        return text
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
