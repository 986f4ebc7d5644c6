"""The MLflow UI after a small real run of the flagship study group (studies/optimizer_comparison.py).

One module fixture trains the whole group for real (tiny: 2 trials per optimizer, 3 epochs on
200 MNIST-1D samples, CPU). Then MLflow's own client checks the layout tuner writes, and a
headless Chromium, driven over the DevTools protocol as a person would use the page (clicks,
typing), checks what the MLflow UI served by `tuner ui` makes of it: one experiment, a parent
run per study with its trials nested under it, the optimizer as a column and as a grouping, the
per-trial charts of the parent runs, and their system metrics. It saves screenshots of the runs
table and of the chart view; `TUNER_UPDATE_SCREENSHOTS=1` also writes the README's copies in
tests/ui_screenshots/.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.browser import CHROMIUM, needs_chromium
from tests.tuner.test_servers import free_port, read_until, start_cli
from trainables import OPTIMIZERS
from tuner.group import StudyGroup
from tuner.run.api import run_study
from tuner.scripts import load_study_script
from tuner.servers import HOST, TRAINING_VIEWS
from tuner.storage import open_storage
from tuner.study import RunOptions

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "tests" / "ui_screenshots"  # the README's pictures, rewritten only on request
BASE = "cmp"  # --study-name: the group's experiment, and its studies cmp.<optimizer> and cmp.seeds
N_TRIALS = 2
TINY = {"epochs": 3, "train_samples": 200, "device": "cpu"}
VIEWPORT = {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}
# Sidebar entries of MLflow's GenAI views only (its training views show Runs, Models, Traces, Model registry)
GENAI_ONLY = ("Sessions", "Judges", "Evaluation runs", "Prompts", "Agent versions")
SECONDS = 180.0  # for anything the page waits on: MLflow's server answers slowly on busy CI cores


@dataclass
class Store:
    options: RunOptions
    experiment_id: str
    parents: dict[str, Run]  # study name -> its parent run
    children: dict[str, list[Run]]  # parent run id -> the trial runs nested under it
    trials: dict[str, int]  # study name -> its trial count in Optuna


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The flagship group, trained for real with the smallest budget, in a private store."""
    tmp = tmp_path_factory.mktemp("store")
    options = RunOptions(
        storage=str(tmp / "optuna.journal"),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}",
        quiet=True,
        report=False,
        budget="small",
        n_trials=N_TRIALS,
        study_name=BASE,
        fixed=TINY,
    )
    group = load_study_script(str(REPO / "studies" / "optimizer_comparison.py"))
    assert isinstance(group, StudyGroup)
    run_study(group, options)

    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name(BASE)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.info.run_name: r for r in runs if r.data.tags.get("tuner.role") == "study"}
    children: dict[str, list[Run]] = {r.info.run_id: [] for r in parents.values()}
    for run in runs:
        if run.data.tags.get("tuner.role") == "trial":
            children.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
    storage = open_storage(options.storage, heartbeat=False)
    trials = {
        name: len(optuna.load_study(study_name=name, storage=storage).trials)
        for name in optuna.get_all_study_names(storage)
    }
    return Store(options, experiment.experiment_id, parents, children, trials)


def tuning(optimizer: str) -> str:
    return f"{BASE}.{optimizer}"


def best_value_histories(store: Store) -> dict[str, list[tuple[int, float]]]:
    """Each parent run's best_value metric: (step, value) in step order."""
    client = MlflowClient(store.options.tracking_uri)
    return {
        name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "best_value"))
        for name, run in store.parents.items()
    }


def test_mlflow_holds_one_experiment_with_a_parent_run_per_study_and_its_trials_nested(store: Store) -> None:
    """The layout the UI shows, as MLflow's own client reads it: what tuner promises to write."""
    client = MlflowClient(store.options.tracking_uri)
    experiments = {e.name: e for e in client.search_experiments()}
    assert set(experiments) == {"Default", BASE}
    assert experiments[BASE].tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's training views

    studies = {tuning(o) for o in OPTIMIZERS} | {f"{BASE}.seeds"}
    assert set(store.parents) == studies == set(store.trials)
    for optimizer in OPTIMIZERS:
        params = store.parents[tuning(optimizer)].data.params
        fixed = {"optimizer": optimizer, "model": "cnn1d", "dataset": "mnist1d", "epochs": "3", "batch_size": "100"}
        assert {key: params.get(key) for key in fixed} == fixed  # the arm's fixed values, beside the study's settings
        assert params["study_name"] == tuning(optimizer)

    # Every run is a parent or a trial nested under one; each parent has as many trials as its Optuna study.
    runs = client.search_runs([store.experiment_id], max_results=1000)
    parent_ids = {r.info.run_id for r in store.parents.values()}
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r.info.run_id not in parent_ids} <= parent_ids
    assert all(r.data.tags.get("mlflow.parentRunId") is None for r in store.parents.values())
    for name, parent in store.parents.items():
        trials = store.children[parent.info.run_id]
        assert len(trials) == store.trials[name], name
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trials) == list(range(store.trials[name]))
        for trial in trials:
            assert trial.info.run_name == f"trial {trial.data.tags['optuna.trial_number']}"
            assert trial.data.params["optimizer"] in OPTIMIZERS
            if name != f"{BASE}.seeds":
                assert trial.data.params["optimizer"] == parent.data.params["optimizer"]
            assert 1 <= trial.data.metrics["epochs_run"] <= TINY["epochs"]  # fewer when pruned
            assert trial.data.metrics["samples_per_second"] > 0 and trial.data.metrics["peak_memory_mb"] > 10
            (dataset,) = [d.dataset for d in trial.inputs.dataset_inputs]
            assert dataset.name == "mnist1d" and dataset.digest
            assert json.loads(dataset.profile)["train"] > 0

    # best_value on the parent: one point per trial (step = trial number), the best val_acc so far.
    for name, history in best_value_histories(store).items():
        assert [step for step, _ in history] == list(range(store.trials[name])), name
        values = [value for _, value in history]
        assert values == sorted(values), f"{name}: best_value falls: {values}"
        trial_values = client.get_metric_history(store.parents[name].info.run_id, "trial_value")
        assert max(m.value for m in trial_values) == values[-1], name

    for name, parent in store.parents.items():
        assert any(key.startswith("system/") for key in parent.data.metrics), f"{name}: no system metrics"


@dataclass
class Ui:
    process: subprocess.Popen[str]
    port: int


@pytest.fixture
def ui(store: Store) -> Iterator[Ui]:
    """`tuner ui --study cmp` on a free port of 127.0.0.1, started here and stopped with SIGTERM after the test.

    The test reads its page URL itself, so that Chromium starts while MLflow's server does.
    """
    port = free_port()
    p = start_cli([], "ui", "--port", str(port), "--tracking-uri", store.options.tracking_uri, "--study", BASE)
    try:
        yield Ui(p, port)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        assert p.returncode == 0, p.stderr.read() if p.stderr else ""


class Page:
    """One headless Chromium tab, driven over the DevTools protocol (choreographer, which kaleido uses)."""

    def __init__(self, tab: Any) -> None:
        self.tab = tab

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.tab.send_command(method, params or {})
        assert "error" not in response, f"{method}: {response['error']}"
        return dict(response["result"])

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    async def until(
        self, expression: str, what: str, accept: Callable[[Any], bool] = bool, timeout: float = SECONDS
    ) -> Any:
        """The value of `expression` once `accept`s it (polled); fails naming `what` and showing the page if never."""
        deadline = time.monotonic() + timeout
        while not accept(value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                text = await self.evaluate("document.body.innerText")
                pytest.fail(f"the page never showed {what}; last: {value!r}; it shows:\n{str(text)[:3000]}")
            await asyncio.sleep(0.25)  # poll interval, bounded by the deadline
        return value

    async def click(self, element: str, what: str) -> None:
        """A real mouse click (pointer events, which Radix menus and tabs need) on the element `element` gives."""
        center = f"""(() => {{
            const e = {element};
            if (!e) return null;
            e.scrollIntoView({{block: "center", inline: "center"}});
            const r = e.getBoundingClientRect();
            return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null;
        }})()"""
        x, y = await self.until(center, what)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            )

    async def press_escape(self) -> None:
        for kind in ("keyDown", "keyUp"):
            key = {"type": kind, "key": "Escape", "code": "Escape", "windowsVirtualKeyCode": 27}
            await self.send("Input.dispatchKeyEvent", key)

    async def screenshot(self, name: str, tmp_path: Path, readme: bool = True) -> None:
        """A PNG of the viewport: into the test's tmp dir, $TUNER_TEST_ARTIFACTS, and the README's copy on request.

        The tables are scrolled to their top and nothing has the focus (no focus ring), as on a first look.
        """
        await self.evaluate(
            "document.activeElement?.blur();"
            "document.querySelectorAll('.ag-body-viewport').forEach(v => v.scrollTo(0, 0))"
        )
        png = base64.b64decode((await self.send("Page.captureScreenshot", {"format": "png"}))["data"])
        folders = [tmp_path]
        if artifacts := os.environ.get("TUNER_TEST_ARTIFACTS"):
            folders.append(Path(artifacts))
        if readme and os.environ.get("TUNER_UPDATE_SCREENSHOTS") == "1":
            folders.append(SCREENSHOTS)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(png)


def js(value: Any) -> str:
    """A Python value as a JavaScript literal."""
    return json.dumps(value)


def button(text: str) -> str:
    return f"[...document.querySelectorAll('button')].find(b => b.innerText.trim() === {js(text)})"


CLOSE_ASSISTANT = "document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
ROW_IDS = "[...new Set([...document.querySelectorAll('.ag-row')].map(r => r.getAttribute('row-id')))]"
EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the expand control of a parent run's row
CARD = '[data-testid="experiment-view-compare-runs-card"]'  # a chart, on the runs page and on a run's page


def links_to(hrefs: dict[str, str]) -> str:
    """An expression true when the page links to every href with the link text given (a row of the runs table)."""
    return f"Object.entries({js(hrefs)}).every(([h, t]) => [...document.querySelectorAll(`a[href='${{h}}']`)]" + (
        ".some(a => a.innerText.trim() === t))"
    )


async def show_column(page: Page, choices: dict[str, list[str]]) -> None:
    """Tick (or untick) columns in the runs table's "Columns" selector: {section: [column, ...]}."""
    await page.click(button("Columns"), 'the "Columns" button')
    toggle = f"""(() => {{
        const choices = {js(choices)}, done = [];
        let section = "";
        for (const node of document.querySelectorAll(".du-bois-light-tree-treenode")) {{
            const title = node.querySelector(".du-bois-light-tree-title")?.innerText.trim() ?? "";
            const heading = title.match(/^(Attributes|Metrics|Parameters|Tags)( \\(\\d+\\))?$/);
            if (heading) {{ section = heading[1]; continue; }}
            if ((choices[section] ?? []).includes(title)) {{
                node.querySelector(".du-bois-light-tree-checkbox").click();
                done.push(`${{section}}.${{title}}`);
            }}
        }}
        return done.length ? done : null;
    }})()"""
    toggled = await page.until(toggle, "the column selector's tree")
    assert sorted(toggled) == sorted(f"{s}.{c}" for s, cs in choices.items() for c in cs)
    await page.press_escape()


async def browse(page_url: Callable[[], str], store: Store, tmp_path: Path) -> None:
    """The whole visit, in one browser; a screenshot of the page where it fails (failure.png)."""
    import choreographer

    async with choreographer.Browser(path=CHROMIUM, headless=True) as browser:
        page = Page(await browser.create_tab("about:blank"))
        await page.send("Emulation.setDeviceMetricsOverride", VIEWPORT)
        url = await asyncio.to_thread(page_url)  # while MLflow's server starts
        await page.send("Page.navigate", {"url": url})
        try:
            await visit(page, store, tmp_path)
        except BaseException:
            await page.screenshot("failure.png", tmp_path, readme=False)
            raise


async def visit(page: Page, store: Store, tmp_path: Path) -> None:
    """The runs table, its grouping and columns, the charts, a parent's page: each checked from the rendered DOM."""
    runs = f"#/experiments/{store.experiment_id}/runs"
    parents = {name: run.info.run_id for name, run in store.parents.items()}
    seeds = parents[f"{BASE}.seeds"]
    all_runs = [run for kids in store.children.values() for run in kids] + list(store.parents.values())

    # (a, b) One experiment, one row per study (its trials folded under it), in MLflow's training views.
    await page.until(links_to({f"{runs}/{i}": n for n, i in parents.items()}), "a row per parent run")
    assert set(await page.evaluate(ROW_IDS)) == set(parents.values())  # no trial shown: all nested
    await page.until(f"document.body.innerText.includes({js(f'{len(all_runs)} matching runs')})", "the run count")
    sidebar = await page.evaluate("[...document.querySelectorAll('a')].map(a => a.innerText.trim())")
    assert "Model registry" in sidebar and not set(GENAI_ONLY) & set(sidebar), sidebar
    if await page.evaluate(f"!!{CLOSE_ASSISTANT}"):  # MLflow's assistant opens on a first visit: hide it
        await page.click(CLOSE_ASSISTANT, "the assistant's close button")

    adam = store.parents[tuning("adam")].info.run_id
    await page.click(f"document.querySelector('.ag-row[row-id=\"{adam}\"] {EXPAND}')", "cmp.adam's expand control")
    trials = {f"{runs}/{r.info.run_id}": r.info.run_name for r in store.children[adam]}
    await page.until(links_to(trials), "cmp.adam's trials after expanding it")

    # (c) Grouped by the optimizer param ("Group by"), with it as a column too ("Columns").
    await page.click(button("Group by"), 'the "Group by" button')
    optimizer_item = "[...document.querySelectorAll('[role=menuitemcheckbox]')]" + (
        ".find(e => e.innerText.trim() === 'optimizer')"
    )
    await page.click(optimizer_item, "the optimizer param in the Group by menu")
    groups = [f"param.optimizer.{o}" for o in OPTIMIZERS]
    await page.until(f"{js(groups)}.every(g => {ROW_IDS}.includes(g))", "a group per optimizer")
    await show_column(
        page, {"Attributes": ["Source", "Models"], "Metrics": ["val_acc"], "Parameters": ["lr", "optimizer"]}
    )
    cells = """Object.fromEntries([...document.querySelectorAll('.ag-row')].flatMap(r => {
        const cell = r.querySelector('.ag-cell[col-id="params.`optimizer`"]');
        return cell ? [[r.getAttribute('row-id'), cell.innerText.trim()]] : [];
    }))"""
    expected = {
        f"param.optimizer.{r.data.params['optimizer']}.{r.info.run_id}": r.data.params["optimizer"]
        for r in all_runs
        if "optimizer" in r.data.params
    }
    await page.until(
        cells,
        f"the optimizer column in the rows of {len(expected)} runs",
        accept=lambda c: {k: c.get(k) for k in expected} == expected,  # each run in its optimizer's group
    )
    await page.until(
        "!document.querySelector('[data-component-id=\"mlflow.experiment_page.runs_table.column_selector\"]')",
        "the column selector closed",
    )
    await page.screenshot("runs.png", tmp_path)

    # (d) The chart view: the parents' per-trial best_value (step = trial number), one line per optimizer.
    chart_toggle = "document.querySelector('input[name=runs-view-mode][value=CHART]').closest('label')"
    await page.click(chart_toggle, "the chart toggle")
    # The seeds study's parent logs a point per re-run (28): hide it (its eye in the run list) so that the
    # tuning studies' few trials are not squeezed into the left edge of the step axis.
    additional = "document.querySelector('.ag-row[row-id=\"param.optimizer\"] span[role=button]')"
    await page.click(additional, "the expand control of the group of runs without an optimizer")
    eye = f"document.querySelector('.ag-row[row-id=\"param.optimizer.{seeds}\"] .is-visibility-toggle-checkbox')"
    await page.click(f"{eye}.closest('label')", "cmp.seeds's visibility toggle")
    await page.click("document.querySelector('input[placeholder=\"Search metric charts\"]')", "the chart search")
    await page.send("Input.insertText", {"text": "_value|val_acc"})  # a regular expression
    chart_titles = f"[...document.querySelectorAll('{CARD}')].map(c => c.innerText.split('\\n')[0]).sort().join()"
    await page.until(
        f"{chart_titles} === 'best_value,trial_value,val_acc'", "the charts of best_value, trial_value, val_acc"
    )
    lines = f"""(() => {{
        const card = [...document.querySelectorAll('{CARD}')]
            .find(c => c.innerText.split('\\n')[0] === 'best_value');
        const points = card?.querySelectorAll('.scatterlayer .points path').length;  // drawn markers
        const data = card?.querySelector('.js-plotly-plot')?.data ?? [];  // what Plotly was given to draw
        return points ? data.filter(t => t.x?.length && !t.x.includes(null)).map(t => [t.x, t.y]) : [];
    }})()"""
    want = {
        (tuple(step for step, _ in history), tuple(round(value, 6) for _, value in history))
        for name, history in best_value_histories(store).items()
        if name != f"{BASE}.seeds"
    }
    await page.until(
        lines,
        f"each tuning study's best_value per trial, {sorted(want)}, plotted",
        accept=lambda plotted: want <= {(tuple(x), tuple(round(v, 6) for v in y)) for x, y in plotted},
    )
    await page.screenshot("charts.png", tmp_path)

    # (e) A parent run's page (its link in the run list), tab "System metrics": MLflow's system metrics.
    # (The link carries no workflowType, so MLflow 3.17 shows this page with its GenAI sidebar unless the
    # reader once chose "Model training" in the sidebar's toggle, which it keeps: not checked here.)
    adamw = store.parents[tuning("adamw")]
    await page.click(f"document.querySelector('a[href=\"{runs}/{adamw.info.run_id}\"]')", "cmp.adamw's link")
    system_tab = "[...document.querySelectorAll('[role=tab]')].find(t => t.innerText.trim() === 'System metrics')"
    await page.click(system_tab, 'the run page\'s "System metrics" tab')
    nodes = sorted({k.rsplit("/", 1)[0] for k in adamw.data.metrics if k.startswith("system/")})
    names = sorted({k.rsplit("/", 1)[1] for k in adamw.data.metrics if k.startswith("system/")})
    charts = f"""(() => {{
        if (!location.hash.endsWith('/system-metrics')) return null;
        const lines = document.body.innerText.split('\\n').map(line => line.trim());
        const cards = [...document.querySelectorAll('{CARD}')].filter(c => c.querySelector('.js-plotly-plot'));
        const titles = cards.map(c => c.innerText.split('\\n')[0]);
        return {js(nodes)}.every(n => lines.includes(n)) && titles.length ? titles : null;
    }})()"""
    shown = await page.until(charts, f"the system metrics section(s) {nodes} with charts")
    assert set(shown) <= set(names) and "cpu_utilization_percentage" in shown, shown


@needs_chromium("no chromium to open the MLflow UI in")
def test_the_mlflow_ui_shows_the_group_by_optimizer_with_per_trial_charts(store: Store, ui: Ui, tmp_path: Path) -> None:
    """`tuner ui --study cmp` in a real browser: what a person sees after a run of the flagship group."""

    def page_url() -> str:
        url = read_until(ui.process, r"^http://")
        assert url == f"http://{HOST}:{ui.port}/#/experiments/{store.experiment_id}/runs?{TRAINING_VIEWS}"
        return url

    asyncio.run(browse(page_url, store, tmp_path))
