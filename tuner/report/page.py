"""The report as one self-contained HTML page (plotly.js inlined once) and the summary as text tables."""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from tuner.report.labels import fmt_lr, fmt_value, metric_label, param_label, seed_metric_label
from tuner.report.sections import Entry

PLOT_CONFIG = {"responsive": True, "displaylogo": False}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1280px; padding: 0 1rem; color: #222; }
p.answer { font-size: 1.15rem; background: #f1f6fb; border-left: 4px solid #1f77b4; padding: .8rem 1rem; }
table.summary { border-collapse: collapse; font-size: .9rem; margin: 1rem 0; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: .3rem .5rem; text-align: left; vertical-align: top; }
table.summary th { background: #f5f5f5; }
.note { color: #555; font-style: italic; }
section.figure { margin: 1.5rem 0 2.5rem; }
p.caption { color: #333; font-size: .95rem; margin: .3rem 1rem 0; }
"""


def display_summary(summary: pd.DataFrame, by: str | None, metric: str) -> pd.DataFrame:
    """The summary table with readable headers and formatted numbers (for HTML and Markdown)."""
    if summary.empty:
        return pd.DataFrame()
    seed_label = seed_metric_label(metric, str(summary.attrs.get("seed_metric", "value")))
    out = pd.DataFrame(
        {
            param_label(by) if by else "trials of": summary["group"],
            "best config": summary["best_config"],
            f"best {metric_label(metric)} (one run)": summary["best_value"].map(_num),
            "best learning rate": summary["best_lr"].map(lambda v: "-" if math.isnan(v) else fmt_lr(v)),
            "trials": summary["trials"],
            "pruned": summary["pruned"],
            "failed": summary["failed"],
            "epochs spent": summary["epochs_spent"],
        }
    )
    for seed_group in ("tuned", "default"):
        if summary[f"{seed_group}_n_seeds"].sum() > 0:
            out[f"{seed_label}, {seed_group} config: mean [95% CI] (seeds)"] = [
                _mean_ci(
                    r[f"{seed_group}_mean"],
                    r[f"{seed_group}_ci_low"],
                    r[f"{seed_group}_ci_high"],
                    r[f"{seed_group}_n_seeds"],
                )
                for _, r in summary.iterrows()
            ]
    return out


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else fmt_value(value)


def _mean_ci(mean: float, low: float, high: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if math.isnan(low):
        return f"{fmt_value(mean)} ({n} seed)"
    return f"{fmt_value(mean)} ± {fmt_value((high - low) / 2)} [{fmt_value(low)}, {fmt_value(high)}] ({n} seeds)"


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs an extra package)."""
    if table.empty:
        return "(no trials)\n"

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def page_title(study_names: list[str]) -> str:
    """`Report: BASE (a, b, c)` for studies named BASE.<x>, else the names."""
    bases = {n.split(".", 1)[0] for n in study_names}
    if len(bases) == 1 and all("." in n for n in study_names):
        return f"Report: {bases.pop()} ({', '.join(n.split('.', 1)[1] for n in study_names)})"
    return f"Report: {', '.join(study_names)}"


def html_page(
    title: str,
    answer: str,
    summary: pd.DataFrame,
    entries: list[Entry],
    notes: list[str],
    files: list[str],
    budget: str | None = None,
) -> str:
    """`budget`: the sentence on the epochs each compared group spent tuning, shown under the summary table."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    parts = [f"<h1>{html.escape(title)}</h1>", f'<p class="answer">{html.escape(answer)}</p>']
    if notes:
        parts.append("<ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes) + "</ul>")
    parts += ["<h2>Summary</h2>", summary.to_html(index=False, classes="summary", border=0, escape=True)]
    if budget:
        parts.append(f'<p class="budget">{html.escape(budget)}</p>')
    section = None
    for entry in entries:
        if entry.section != section:
            section = entry.section
            parts.append(f"<h2>{html.escape(section)}</h2>")
        if entry.figure is None:
            parts.append(f'<p class="note">{html.escape(entry.note or "")}</p>')
            continue
        div = pio.to_html(
            entry.figure, full_html=False, include_plotlyjs=False, div_id=entry.slug, config=PLOT_CONFIG, validate=False
        )
        caption = f'<p class="caption">{html.escape(entry.caption)}</p>' if entry.caption else ""
        parts.append(f'<section class="figure">{div}{caption}</section>')
    links = ", ".join(f'<a href="{html.escape(f)}">{html.escape(f)}</a>' for f in files if not f.startswith("png/"))
    pngs = sum(f.startswith("png/") for f in files)
    parts.append(
        f'<p class="note">Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Beside this page: {links}'
        + (f'; a PNG of every figure in <a href="png/">png/</a> ({pngs} files)' if pngs else "")
        + ".</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
