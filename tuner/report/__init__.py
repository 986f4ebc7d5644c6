"""Comparison reports of studies: tidy tables -> plotly figures -> one offline HTML page, PNGs, CSV/Markdown.

`extract` reads studies into tables (Optuna, MLflow), `aggregate` and `summary` derive what
is shown, `figures`/`study_figures` draw it, `sections` decides which figures apply, `page`
lays out the HTML and `render` writes everything (each file whole, through `files`) and logs it
to MLflow.

Public API: `write_report(study_names, out_dir, storage, tracking_uri, png) -> Path` and
`build_report(...) -> Report` (the same, returning what was written and how long it took).
"""

from __future__ import annotations

from tuner.report.render import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report"]
