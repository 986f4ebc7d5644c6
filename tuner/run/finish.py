"""The end of a run: the report (unless --no-report) and where to browse the results."""

from __future__ import annotations

from pathlib import Path

from tuner.locations import redact
from tuner.study import RunOptions

REPORTS_DIR = Path("reports")


def finish(study_names: list[str], base: str, options: RunOptions, pngs: bool = True) -> Path | None:
    """Write the group's report (unless --no-report) and say where it and the MLflow UI are."""
    out = None
    if options.report:
        from tuner.report import write_report

        out = write_report(
            study_names, REPORTS_DIR / base, storage=options.storage, tracking_uri=options.tracking_uri, png=pngs
        )
        print(f"report: {out}  (open it in a browser)")
    print(
        f"MLflow UI: tuner ui --tracking-uri {redact(options.tracking_uri)} --study {base}"
        "  (prints the runs page URL; Ctrl-C stops it)"
    )
    return out
