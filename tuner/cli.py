"""The `tuner` command line. Heavy libraries (torch, mlflow) are imported by the subcommand
that needs them, so `tuner --help` and bad flags answer at once."""

from __future__ import annotations

import argparse
import sys

from tuner.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from tuner.train_cli import add_config_flags

    parser = argparse.ArgumentParser(prog="tuner", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one config and print per-epoch metrics")
    add_config_flags(train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from tuner.train_cli import run_train

            return run_train(args)
        parser.error(f"unknown command {args.command}")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"tuner: error: {one_line(exc)}", file=sys.stderr)
        return 2
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
