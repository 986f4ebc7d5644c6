"""The written page in a real headless Chromium, offline: every figure drawn with data, no JavaScript error."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.browser import CHROMIUM, needs_chromium
from tests.tuner.report.conftest import Store
from tuner.report import build_report

pytestmark = needs_chromium("no chromium to open the page in")

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# Collects errors from the very start, before plotly.js is parsed.
ERROR_COLLECTOR = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push("error: " + e.message));
window.addEventListener("unhandledrejection", e => window.__errors.push("rejection: " + e.reason));
const consoleError = console.error;
console.error = (...a) => { window.__errors.push("console: " + a.join(" ")); consoleError(...a); };
</script>"""
# After load, writes what each plot div holds into the DOM, which --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const plots = [...document.querySelectorAll(".plotly-graph-div")].map(gd => ({
    id: gd.id,
    mainSvg: gd.querySelectorAll("svg.main-svg").length,
    traces: (gd.data || []).length,
    withData: (gd._fullData || []).filter(t => t._length > 0).length,  // points after decoding typed arrays
    drawn: gd.querySelectorAll("g.trace, g.parcoords").length,
  }));
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({errors: window.__errors, plots: plots});
  document.body.appendChild(out);
}, 2000));
</script>"""


def open_in_chromium(page: Path, tmp: Path) -> dict[str, Any]:
    probed = tmp / "probed.html"
    text = page.read_text(encoding="utf-8")
    text = text.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + ERROR_COLLECTOR, 1)
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    profile = tmp / "profile"
    profile.mkdir()
    done = subprocess.run(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--dump-dom",
            "--virtual-time-budget=15000",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run; chromium said: {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return result


def test_every_figure_renders_with_data_and_no_javascript_error(
    comparison: Store, kinds: Store, tmp_path: Path
) -> None:
    assert comparison.storage == kinds.storage
    report = build_report(
        ["cmp", "sched", "bs", "reg"], tmp_path / "out", comparison.storage, comparison.tracking_uri, png=False
    )
    figures = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', report.html.read_text())
    for expected in (
        "learning-curves",
        "seed-reruns",
        "schedule-learning-curves",
        "schedule-lr",
        "batch-size-bs",
        "regularization-reg",
        "cmp-sgd-parallel",
    ):
        assert expected in figures
    result = open_in_chromium(report.html, tmp_path)
    assert result["errors"] == []
    assert [p["id"] for p in result["plots"]] == figures
    for plot in result["plots"]:
        assert plot["mainSvg"] >= 1, plot
        assert plot["traces"] >= 1 and plot["withData"] >= 1 and plot["drawn"] >= 1, plot


def test_a_broken_page_is_caught(tmp_path: Path) -> None:
    """The probe itself: a page whose plot call fails reports the error and draws nothing."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        '<div id="x" class="plotly-graph-div"></div><script>Plotly.newPlot("x", [])</script></body></html>'
    )
    result = open_in_chromium(page, tmp_path)
    assert any("Plotly is not defined" in e for e in result["errors"])
    assert result["plots"] == [{"id": "x", "mainSvg": 0, "traces": 0, "withData": 0, "drawn": 0}]
