"""The `tuner` command line.

Heavy libraries (torch, mlflow) are imported by the subcommand that needs them, so
`tuner --help` and bad flags answer at once. Errors a user can fix print one line
(`tuner: error: ...`) and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from tuner import interrupts
from tuner.errors import TerminatedError, UserError
from tuner.locations import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, redact


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line with the fix, like ours."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_storage_flags(parser: argparse.ArgumentParser) -> None:
    add_storage_flag(parser)
    add_tracking_flag(parser)


# Both flags default from the environment too, so that URLs with passwords need not be on a command line.
def add_storage_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=os.environ.get("TUNER_STORAGE", DEFAULT_STORAGE),
        help=f"Optuna storage (default: $TUNER_STORAGE, else {DEFAULT_STORAGE})",
    )


def add_tracking_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("TUNER_TRACKING_URI", DEFAULT_TRACKING_URI),
        help=f"MLflow tracking URI (default: $TUNER_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )


def _gpu_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU indices such as 0,1")
    return tuple(int(p) for p in parts)


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=int, help="worker processes sharing the study and its trials (default: 1, or one per GPU)"
    )
    parser.add_argument(
        "--gpus", type=_gpu_list, default=(), help="GPUs for the workers, e.g. 0,1: worker i trains on the i-th"
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=int, help="number of trials (default: the study's)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument(
        "--cohort",
        type=int,
        metavar="K",
        help="train up to K trials together as one fused model per step: faster for small models "
        "(default: the study's cohort, 1; only the built-in trainable fuses)",
    )
    add_storage_flags(parser)
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's, auto)")
    parser.add_argument("--seed", type=int, help="sampler seed (default: the study's)")
    parser.add_argument("--study-name", help="study name (default: the study's)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")
    add_checkpoint_flags(parser)
    add_data_flags(parser)
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-dir", help="where trials checkpoint (shared by all hosts' workers)")
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="checkpoint a trial at the end of an epoch once this long has passed since its last checkpoint; "
        "a killed trial resumes from there (default 30; 0: every epoch)",
    )
    parser.add_argument(
        "--keep-checkpoints", action="store_true", help="save every epoch and keep each trial's last checkpoint"
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="where datasets live: the built-in trainable's data_dir (MNIST, FashionMNIST, CIFAR-10 files), "
        "a custom trainable's context.data_dir",
    )
    parser.add_argument(
        "--download", action="store_true", help="let the built-in trainable download missing dataset files"
    )
    parser.add_argument(
        "--keep-models",
        choices=("best", "all"),
        default="best",
        help="keep the best trial's trained model (default), or every completed trial's too",
    )


def add_budget_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        choices=("small", "default"),
        default="default",
        help="a study script's named budget: small for a quick look (minutes), default for the full study",
    )


def add_server_flags(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--port", type=int, default=port, help=f"port on 127.0.0.1 (default {port})")
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
    add_worker_flags(run)
    add_budget_flag(run)

    create = sub.add_parser(
        "create", help="create a study (or add --n-trials to its budget) for `tuner worker`s to run, and exit"
    )
    create.add_argument("script", help="path of a study script, e.g. studies/quickstart.py")
    add_run_flags(create)

    worker = sub.add_parser("worker", help="join an existing study and run its trials until its budget is used")
    worker.add_argument("--study", required=True, help="name of a study made by `tuner create` or `tuner run`")
    add_storage_flags(worker)
    worker.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the study's, auto)")
    worker.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    worker.add_argument(
        "--worker-index", type=int, help="names this worker (default: the process id); sampling is seeded per trial"
    )
    worker.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    worker.add_argument(
        "--run-key", help="the run whose trial budget to share (default: the study's latest `tuner create` or run)"
    )
    add_checkpoint_flags(worker)
    add_data_flags(worker)
    worker.add_argument("--quiet", action="store_true", help="print nothing but errors")
    worker.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    studies = sub.add_parser("studies", help="list the studies in a storage")
    add_storage_flags(studies)

    best = sub.add_parser(
        "best", help="print a study's best params (a multi-objective study: its Pareto front) as JSON"
    )
    best.add_argument("study", help="study name")
    add_storage_flags(best)
    best.add_argument("--model-out", metavar="PATH", help="write the best trial's trained model here (torch.save)")
    best.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model in the MLflow Model Registry at --tracking-uri as a new version of NAME",
    )
    best.add_argument(
        "--trial",
        type=int,
        metavar="N",
        help="trial N's kept model instead (needed to register from several objectives)",
    )

    report = sub.add_parser("report", help="write the comparison report of studies (HTML page, PNGs, CSV, Markdown)")
    report.add_argument("study", nargs="+", help="study names; a NAME that is no study stands for all studies NAME.<x>")
    report.add_argument("--out", help="folder to write it to (default: reports/<first study name>)")
    add_storage_flags(report)
    report.add_argument("--no-png", dest="png", action="store_false", help="skip the PNG copies of the figures")

    ui = sub.add_parser("ui", help="start the MLflow UI on the local store and print the study's runs page")
    add_server_flags(ui, 5000)
    add_tracking_flag(ui)
    ui.add_argument("--study", help="the study whose runs page to print (default: the newest study)")

    dashboard = sub.add_parser("dashboard", help="start optuna-dashboard on the Optuna storage")
    add_server_flags(dashboard, 8080)
    add_storage_flag(dashboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _dispatch(args, lambda: _run_command(args))


def main_for_script(study: Any, argv: list[str] | None = None) -> None:
    """`python studies/X.py [flags]`: the same flags as `tuner run`."""
    description = getattr(sys.modules.get("__main__"), "__doc__", None)  # the script's own docstring
    parser = _Parser(
        prog=os.path.basename(sys.argv[0]),
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_flags(parser)
    add_worker_flags(parser)
    add_budget_flag(parser)
    args = parser.parse_args(argv)
    sys.exit(_dispatch(args, lambda: run_and_summarise(study, args)))


DEBUG_ENV = "TUNER_DEBUG"  # set by --debug, inherited by worker processes


def _dispatch(args: argparse.Namespace, command: Any) -> int:
    if getattr(args, "debug", False):
        os.environ[DEBUG_ENV] = "1"  # a launcher's worker processes show their tracebacks too
    interrupts.install()
    try:
        return int(command())
    except TerminatedError:  # before KeyboardInterrupt: it is one
        interrupts.clear()
        print("tuner: terminated; the study can be resumed by running the same command again", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        interrupts.clear()
        print("tuner: interrupted; the study can be resumed by running the same command again", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(f"tuner: error: {redact(one_line(exc))}", file=sys.stderr)
        return 2


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "train":
        from tuner.train_cli import run_train

        return run_train(args)
    if args.command == "run":
        from tuner.scripts import load_study_script

        return run_and_summarise(load_study_script(args.script), args)
    if args.command == "create":
        from tuner.run.api import create
        from tuner.scripts import load_study_script

        return create(load_study_script(args.script), run_options(args))
    if args.command == "worker":
        from tuner.heap import collections_held
        from tuner.run.api import join

        options = run_options(args)
        with collections_held():
            ran = join(args.study, options, worker_index=args.worker_index, timeout=args.timeout)
        if not args.quiet:
            print(f"worker done: ran {ran} trial(s) of study {args.study}")
        return 0
    if args.command == "studies":
        from tuner.results import list_studies

        return list_studies(args.storage)
    if args.command == "best":
        from tuner.results import print_best

        return print_best(
            args.study,
            args.storage,
            model_out=args.model_out,
            register=args.register,
            tracking_uri=args.tracking_uri,
            trial=args.trial,
        )
    if args.command == "report":
        from tuner.report import write_report

        out = args.out or os.path.join("reports", args.study[0])
        try:
            print(f"report: {write_report(args.study, out, args.storage, args.tracking_uri, png=args.png)}")
        except KeyboardInterrupt as exc:  # TerminatedError too: say what was written, not the study's resume advice
            interrupts.clear()
            done = "; ".join(getattr(exc, "__notes__", [])) or "report interrupted"
            print(f"tuner: {done}; run the same command again to write the whole report", file=sys.stderr)
            return 143 if isinstance(exc, TerminatedError) else 130
        return 0
    if args.command == "ui":
        from tuner.servers import run_ui

        return run_ui(args.port, args.tracking_uri, args.study)
    if args.command == "dashboard":
        from tuner.servers import run_dashboard

        return run_dashboard(args.port, args.storage)
    raise UserError(f"unknown command {args.command}")


def run_options(args: argparse.Namespace) -> Any:
    from tuner.study import RunOptions

    return RunOptions(
        n_trials=getattr(args, "n_trials", None),
        cohort=getattr(args, "cohort", None),
        timeout=args.timeout,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        device=args.device,
        seed=getattr(args, "seed", None),
        study_name=getattr(args, "study_name", None),
        quiet=args.quiet,
        keep_checkpoints=args.keep_checkpoints,
        report=getattr(args, "report", False),
        workers=_workers(args),
        gpus=getattr(args, "gpus", ()),
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        threads=getattr(args, "threads", None),
        budget=getattr(args, "budget", "default"),
        run_key=getattr(args, "run_key", None),
        keep_models=args.keep_models,
        data_dir=args.data_dir,
        download=args.download,
        import_paths=_import_paths(args),
    )


def _import_paths(args: argparse.Namespace) -> tuple[str, ...]:
    """The study script's folder: its trainable (and a package beside it) imports from there in every process."""
    script = getattr(args, "script", None) or (sys.argv[0] if getattr(args, "command", None) is None else None)
    return (os.path.dirname(os.path.abspath(script)),) if script else ()


def _workers(args: argparse.Namespace) -> int:
    workers = getattr(args, "workers", None)
    return int(workers) if workers is not None else max(1, len(getattr(args, "gpus", ())))


def run_and_summarise(study: Any, args: argparse.Namespace) -> int:
    from tuner.heap import collections_held
    from tuner.results import print_summary
    from tuner.run.api import run_study

    options = run_options(args)
    with collections_held():
        result = run_study(study, options)
    studies = result if isinstance(result, list) else [result]  # a study script may run several
    for i, study in enumerate(studies):
        print_summary(study, options, where=i == len(studies) - 1)
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
