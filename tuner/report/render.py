"""Write a report: HTML page, PNG per figure, summary as CSV and Markdown, tidy tables as CSV; log it to MLflow."""

from __future__ import annotations

import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, redact
from tuner.report.extract import Tables, extract
from tuner.report.files import ReportFiles, staging_dir
from tuner.report.load import load_studies
from tuner.report.sections import Entry, build_entries

ARTIFACT_DIR = "report"  # under each study's MLflow parent run
PNG_HINT = (
    "PNG images skipped: kaleido found no Chrome/Chromium ({reason}); install one "
    "(apt-get install chromium) or set BROWSER_PATH to its executable, then run `tuner report` again"
)
PNG_WIDTH_PX = 1100
CAPTION_CHARS = 150  # per line of a caption in a PNG (about 1,000 px of 12 px text)
CAPTION_LINE_PX = 17
CAPTION_TOP_PX = 60


@dataclass
class Report:
    """What `build_report` wrote, and how long each step took."""

    html: Path
    files: list[Path]
    pngs: list[Path]
    notes: list[str]
    answer: str
    logged_to: list[str] = field(default_factory=list)  # MLflow parent run ids
    seconds: dict[str, float] = field(default_factory=dict)  # per step: extract, figures, tables, png, html, mlflow


def write_report(
    study_names: list[str],
    out_dir: str | Path,
    storage: str = DEFAULT_STORAGE,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    png: bool = True,
) -> Path:
    """Write the comparison report of `study_names` into `out_dir`; returns the HTML page's path.

    A name that is no study but has `NAME.<x>` studies stands for all of them. Unknown names
    raise UserError before anything is written. When PNGs cannot be made, one line on stderr
    says how to get them.
    """
    report = build_report(study_names, out_dir, storage, tracking_uri, png)
    for note in report.notes:
        if note.startswith("PNG images skipped"):
            print(f"tuner: {note}", file=sys.stderr)
    return report.html


def build_report(
    study_names: list[str],
    out_dir: str | Path,
    storage: str = DEFAULT_STORAGE,
    tracking_uri: str = DEFAULT_TRACKING_URI,
    png: bool = True,
) -> Report:
    """Every file is written to a temporary name and renamed into place. On Ctrl-C or SIGTERM the
    interrupt goes on with a note saying which files were and were not written (the CLI prints it)."""
    files = ReportFiles(Path(out_dir))
    try:
        return _build_report(study_names, files, storage, tracking_uri, png)
    except KeyboardInterrupt as exc:
        exc.add_note(files.progress())
        raise


def _build_report(study_names: list[str], files: ReportFiles, storage: str, tracking_uri: str, png: bool) -> Report:
    from tuner.report import aggregate as agg
    from tuner.report.page import display_summary, html_page, markdown_table, page_title
    from tuner.report.summary import epoch_budget, headline, summary_table

    clock = Timer()
    out = files.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the report")
    studies = load_studies(study_names, storage)  # raises UserError before anything is written
    tables = extract(studies, tracking_uri)
    clock.lap("extract")
    by = agg.comparison_key(tables.trials)
    summary = summary_table(tables, by)
    answer = headline(tables, summary, by)
    budget = epoch_budget(tables, by)
    entries = build_entries(tables, by)
    clock.lap("figures")

    out.mkdir(parents=True, exist_ok=True)
    tables_written = ["summary.csv", "summary.md", "trials.csv", "epochs.csv"]
    figures = [e for e in entries if e.figure is not None] if png else []
    files.planned = [*tables_written, *(f"png/{e.slug}.png" for e in figures), "report.html"]
    notes = list(tables.notes)
    shown = display_summary(summary, by, tables.metric)
    with files.write("summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    with files.write("summary.md") as tmp:
        tmp.write_text(f"{answer}\n\n{markdown_table(shown)}" + (f"\n{budget}\n" if budget else ""))
    with files.write("trials.csv") as tmp:
        tables.trials.to_csv(tmp, index=False)
    with files.write("epochs.csv") as tmp:
        tables.epochs.to_csv(tmp, index=False)
    clock.lap("tables")
    pngs: list[Path] = []
    if figures:
        pngs, note = write_pngs(figures, files)
        if note:
            notes.append(note)
    clock.lap("png")
    beside = tables_written + [f"png/{p.name}" for p in pngs]
    entry_notes = {e.note for e in entries if e.note}
    page_notes = [n for n in notes if n not in entry_notes]
    title = page_title([str(n) for n in tables.studies["study"]])
    page = html_page(title, answer, shown, entries, page_notes, beside, budget)
    with files.write("report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    html_path = out / "report.html"
    clock.lap("html")
    written = [html_path, *(out / f for f in beside)]  # only complete files, so MLflow never gets a partial one
    logged, log_note = log_to_mlflow(tables, written, out, tracking_uri)
    if log_note:
        notes.append(log_note)
    clock.lap("mlflow")
    return Report(html_path, written, pngs, notes, answer, logged, clock.laps)


def write_pngs(figures: list[Entry], files: ReportFiles) -> tuple[list[Path], str | None]:
    """Every figure as `png/<slug>.png`, in one kaleido session (one browser start for all of them)."""
    import plotly.io as pio

    folder = files.out / "png"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):  # from an earlier report of other studies
        stale.unlink()
    note = None
    # kaleido claims each name with an empty file before it renders: it writes into a folder of its own
    with staging_dir(folder) as staging:
        made = [staging / f"{e.slug}.png" for e in figures]
        drawn = [captioned(e) for e in figures]
        heights = [int(f.layout.height or 500) for f in drawn]
        try:
            pio.write_images(drawn, made, width=PNG_WIDTH_PX, height=heights, validate=False)
        except Exception as exc:  # no browser, or one that fails to start: the page and tables are still written
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            note = PNG_HINT.format(reason=reason)
        # kaleido has finished here; a figure it failed to render is missing or empty
        pngs = [files.place(p, f"png/{p.name}") for p in made if p.is_file() and p.stat().st_size > 0]
    return pngs, note


def captioned(entry: Entry) -> Any:
    """The figure as its PNG shows it: with the entry's caption as a subtitle, since a PNG has no text beside it.

    A copy, taller by the caption's lines, so that the plot keeps its size; the page prints the caption as text.
    """
    if not entry.caption:
        return entry.figure
    import plotly.graph_objects as go

    lines = textwrap.wrap(entry.caption, CAPTION_CHARS)
    figure = go.Figure(entry.figure)
    top = CAPTION_TOP_PX + CAPTION_LINE_PX * len(lines)  # title, the caption's lines, a gap above the plot
    height = int(figure.layout.height or 500) - int(figure.layout.margin.t or 80) + top
    figure.update_layout(
        title_subtitle_text="<br>".join(lines),
        title_subtitle_font_size=12,
        title_y=1 - 12 / height,  # at the top: left alone, plotly centres title and subtitle in the margin
        title_yanchor="top",
        height=height,
        margin_t=top,
    )
    return figure


def log_to_mlflow(tables: Tables, files: list[Path], out: Path, tracking_uri: str) -> tuple[list[str], str | None]:
    """The written files as artifacts under `report/` on the parent run of every study that has one."""
    parents = [str(r) for r in tables.studies["parent_run_id"].dropna().unique()]
    if not parents or any(n.startswith("MLflow store") for n in tables.notes):
        return [], None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    logged = []
    try:
        for run_id in parents:
            for path in files:
                sub = path.parent.relative_to(out).as_posix()
                client.log_artifact(run_id, str(path), ARTIFACT_DIR if sub == "." else f"{ARTIFACT_DIR}/{sub}")
            logged.append(run_id)
    except (MlflowException, OSError) as exc:
        return logged, f"report not logged to MLflow at {redact(tracking_uri)}: {' '.join(str(exc).split())[:200]}"
    return logged, None


class Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
