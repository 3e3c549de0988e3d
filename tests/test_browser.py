"""The figures render in a real headless Chromium with the network blocked: the dashboard file,
the compare page, and the dashboard inside a real `mlflow ui`'s artifact viewer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Page

from ppo1 import compare
from ppo1.config import TrainConfig
from ppo1.report.compare import compare_figures, group_runs
from ppo1.report.html import html_page
from ppo1.report.runs import RunData, load_run, resolve_runs
from ppo1.tracked import train
from ppo1.tracking.urls import ui_address
from tests.browser import offline_page
from tests.conftest import TEST_CONF, TINY, mlflow_serving, refused, run_module
from tests.test_figure_logging import FIGURES

pytestmark = pytest.mark.slow
STORE = "sqlite:///mlflow.db"  # any local store: served where the printed command serves it
PLOTS = ".js-plotly-plot svg.main-svg"
# Plotly draws text as SVG, which has no innerText.
TEXTS = "elements => elements.map(e => e.textContent)"


@dataclass
class Store:
    uri: str
    root: Path
    experiment_id: str
    run_ids: list[str]
    summary: str  # what `python -m ppo1.train` printed for the first run


@pytest.fixture(scope="module")
def store(
    compose_cfg: Callable[[list[str]], TrainConfig], tmp_path_factory: pytest.TempPathFactory
) -> Store:
    """Two real short runs that differ in algo.clip, in a throwaway MLflow store: the first
    by the command a user runs, the second in this process."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = run_module("ppo1.train", *TINY[:-1], f"tracking.uri={uri}", "algo.clip=0.2")
    assert done.returncode == 0, done.stderr
    (first,) = MlflowClient(uri).search_runs(["1"])
    second = train(compose_cfg([*TINY, f"tracking.uri={uri}", "algo.clip=0.1"])).run_id
    assert second is not None
    return Store(uri, root, "1", [first.info.run_id, second], done.stdout)


def test_dashboard_renders_with_the_network_blocked(store: Store, tmp_path: Path) -> None:
    client = MlflowClient(store.uri)
    page_file = Path(
        client.download_artifacts(store.run_ids[0], "figures/dashboard.html", str(tmp_path))
    )
    with offline_page() as offline:
        offline.page.goto(page_file.as_uri())
        offline.page.locator(PLOTS).first.wait_for(timeout=60_000)
        drawn = dict(
            offline.page.locator(".js-plotly-plot").evaluate_all(
                "plots => plots.map(p => [p.id, p.querySelectorAll('svg.main-svg g.trace').length])"
            )
        )
        assert list(drawn) == FIGURES
        assert all(traces > 0 for traces in drawn.values()), drawn
        # The clip-activity scatter drew its points.
        assert offline.page.locator("#clip_activity .scatterlayer .point").count() == 256
        offline.page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        assert offline.blocked == []  # it needed nothing from outside


def test_compare_page_has_both_runs_curves(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compare.html"
    compare.main([*store.run_ids, "--out", str(out), "--tracking-uri", store.uri])
    with offline_page() as offline:
        offline.page.goto(out.as_uri())
        offline.page.locator(PLOTS).first.wait_for(timeout=60_000)
        legend = offline.page.locator("#curves .legendtext").evaluate_all(TEXTS)
        assert legend == ["A: clip=0.2", "B: clip=0.1"]
        # One line per run in each of the four panels (eval, episode return, KL, clip fraction).
        assert offline.page.locator("#curves .scatterlayer .trace").count() == 8
        table = offline.page.locator("#params .table .cell-text").evaluate_all(TEXTS)
        assert {"param", "A (n=1)", "algo.clip", "0.1", "0.2", "runs"} <= set(table), table
        # ...and drawn inside the table's area, not clipped away below it.
        box = offline.page.locator("#params .table").bounding_box()
        cell = offline.page.locator("#params .cell-text", has_text="algo.clip").bounding_box()
        assert box is not None and cell is not None
        assert cell["y"] + cell["height"] <= box["y"] + box["height"]
        offline.page.screenshot(path=tmp_path / "compare.png", full_page=True)
        assert offline.blocked == []

    # Naming the experiment with a filter selects the same two runs.
    client = MlflowClient(store.uri)
    runs = resolve_runs(client, ["ppo1"], "params.`algo.clip` = '0.1'")
    assert [r.info.run_id for r in runs] == [store.run_ids[1]]
    groups = group_runs([load_run(client, r) for r in runs])
    assert [g.name for g in groups] == ["A: same config"]
    with refused(capsys, "neither a run id nor an experiment"):
        resolve_runs(client, ["no-such-thing"], "")


@pytest.fixture
def mlflow_ui(store: Store, tmp_path: Path) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 against the test store."""
    command = ["ui", "--backend-store-uri", store.uri, "--workers", "1"]
    with mlflow_serving(command, tmp_path) as (url, _):
        yield url


def test_mlflow_ui_artifact_view_renders_the_dashboard(
    store: Store, mlflow_ui: str, tmp_path: Path
) -> None:
    run_id = store.run_ids[0]
    route = f"#/experiments/{store.experiment_id}/runs/{run_id}/artifacts/figures/dashboard.html"
    with offline_page() as offline:
        offline.page.goto(f"{mlflow_ui}/{route}")
        # The UI shows an HTML artifact in an iframe; ~5 MB of inline plotly.js takes a while.
        frame = offline.page.frame_locator("iframe")
        frame.locator(PLOTS).first.wait_for(timeout=180_000)
        frame.locator(f"#{FIGURES[-1]} svg.main-svg").first.wait_for(timeout=60_000)
        assert frame.locator(".js-plotly-plot").count() == len(FIGURES)
        offline.page.screenshot(path=tmp_path / "mlflow-ui.png")
    assert (tmp_path / "mlflow-ui.png").stat().st_size > 10_000


def printed(summary: str, label: str, ui: str) -> str:
    """The link the summary printed after `label:`, on the test's `mlflow ui` instead of :5000."""
    (line,) = [line for line in summary.splitlines() if line.strip().startswith(f"{label}: ")]
    link = line.split(": ", 1)[1]
    assert link.startswith(f"{ui_address(STORE)}/#/experiments/"), link
    return link.replace(ui_address(STORE), ui, 1)


def body_text(page: Page) -> str:
    return str(page.locator("body").inner_text())


def test_printed_links_land_on_the_run_and_the_runs_table(store: Store, mlflow_ui: str) -> None:
    """A fresh browser profile, whose localStorage would open the UI's GenAI view, follows the
    links the closing summary printed: the run's page with its metrics and the dashboard in
    its artifacts, then the runs table, both in the Model training view."""
    run_name = "cartpole-ppo_clip-s1 total_timesteps=512 episodes=2 every=1 clip=0.2"
    assert f"open the MLflow UI: mlflow ui --backend-store-uri {store.uri}" in store.summary
    with offline_page() as offline:
        page = offline.page
        page.goto(printed(store.summary, "this run", mlflow_ui))
        page.get_by_role("link", name="eval/mean_return").wait_for(timeout=120_000)
        page.get_by_role("heading", name=run_name).wait_for()
        assert page.get_by_role("link", name="losses/kl").count() == 1
        # The Model training sidebar and breadcrumb, not GenAI's ("Evaluation runs").
        text = body_text(page)
        assert "Model registry" in text and "Evaluation" not in text, text
        # ...chosen by the link, not by a stored choice of the user's.
        assert page.evaluate("() => localStorage.getItem('mlflow.workflowType_v1')") is None

        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("figures", exact=True).first.click()
        page.get_by_text("dashboard.html", exact=True).first.click()
        frame = page.frame_locator("iframe")
        frame.locator(f"#{FIGURES[-1]} svg.main-svg").first.wait_for(timeout=180_000)
        assert frame.locator(".js-plotly-plot").count() == len(FIGURES)

        page.goto(printed(store.summary, "all runs", mlflow_ui))
        page.get_by_role("link", name=run_name).wait_for(timeout=120_000)
        page.get_by_text("Run Name", exact=True).first.wait_for()
        assert page.get_by_text("2 matching runs").count() == 1
        text = body_text(page)
        # Not the experiment's traces overview (Usage, Quality, "Detect Issues in Your Traces").
        assert "Detect Issues" not in text and "Usage" not in text, text
        assert "Model registry" in text
    assert offline.blocked == []


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An experiment that has held a sweep: a tiny real one (4 trials x 2 seeds, over clip and
    epochs: 8 training runs under 4 trial runs and a study run) beside one plain run."""
    root = tmp_path_factory.mktemp("swept")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep = [
        "-m",
        "sweep=tiny",
        f"hydra.searchpath=[file://{TEST_CONF}]",
        f"sweep.storage={root / 'study.journal'}",
        "sweep.seeds=2",
        "algo.epochs=choice(1,2)",
    ]
    for args in (sweep, [*TINY]):
        done = run_module("ppo1.train", *args, f"tracking.uri={uri}", timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        if args is sweep:  # the sweep ends with links to its study's run and to the runs table
            assert "  the study: http://127.0.0.1:5000/#/experiments/1/runs/" in done.stdout
            assert "  all runs: http://127.0.0.1:5000/#/experiments/1/runs?" in done.stdout
    return uri


def plot_heights(page: Page, out: Path) -> list[float]:
    """The heights of the compare page's four plot areas, in pixels, once each is checked to
    keep a usable width beside the legend."""
    page.goto(out.as_uri())
    page.locator(PLOTS).first.wait_for(timeout=60_000)
    areas = page.locator("#curves .draglayer .nsewdrag")
    assert areas.count() == 4
    boxes = [box for box in (areas.nth(i).bounding_box() for i in range(4)) if box]
    assert len(boxes) == 4 and all(box["width"] > 300 for box in boxes), boxes
    return [box["height"] for box in boxes]


def test_compare_of_a_swept_experiment_stays_readable(
    swept: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    few, many = tmp_path / "few.html", tmp_path / "many.html"
    compare.main(["ppo1", "--out", str(few), "--tracking-uri", swept])
    said = capsys.readouterr().out
    assert "(1 runs;" in said and "left out 8 runs of sweeps' trials" in said
    compare.main(["ppo1", "--include-sweeps", "--out", str(many), "--tracking-uri", swept])
    assert "(9 runs;" in capsys.readouterr().out
    compare.main(["ppo1", "--study", "tiny", "--log", "--tracking-uri", swept, "--out", str(many)])
    said = capsys.readouterr().out
    assert "(8 runs;" in said and "/artifacts/compare.html?workflowType=machine_learning" in said

    # However many groups: 40 configs of the real curves, 5 params apart, named by letters only.
    client = MlflowClient(swept)
    real = [load_run(client, r) for r in resolve_runs(client, ["ppo1"], "", study="tiny")]
    crowd = [
        RunData(f"r{i}", real[i % 8].curves, {f"algo.p{k}": str(i + k) for k in range(5)})
        for i in range(40)
    ]
    crowded = tmp_path / "crowded.html"
    crowded.write_text(html_page("40 groups", compare_figures(crowd)), encoding="utf-8")

    with offline_page() as offline:
        alone = plot_heights(offline.page, few)
        assert plot_heights(offline.page, crowded) == pytest.approx(alone, abs=1)
        heights = plot_heights(offline.page, many)
        legend = offline.page.locator("#curves .legendtext").evaluate_all(TEXTS)
        table = offline.page.locator("#params .table .cell-text").evaluate_all(TEXTS)
        offline.page.screenshot(path=tmp_path / "swept.png", full_page=True)
        assert offline.blocked == []
    # Four trials of two seeds each: four groups, each a letter and its clip and epochs.
    assert len(legend) == 4 and all(" (n=2)" in name for name in legend), legend
    assert [name[:3] for name in legend] == ["A: ", "B: ", "C: ", "D: "]
    assert all(re.fullmatch(r"[A-D]: clip=0\.\d+ epochs=[12] \(n=2\)", n) for n in legend), legend
    assert {"algo.clip", "algo.epochs", "runs", "D (n=2)"} <= set(table), table
    assert not any(cell.startswith("sweep") for cell in table), table
    assert any(cell.startswith("tiny-t0-s1 (") for cell in table), table  # the runs' names
    # The plot areas keep the height they have with a single run.
    assert min(heights) > 200 and heights == pytest.approx(alone, abs=1)

    # --log kept the page as an artifact of a run of its own, which no comparison takes in.
    (logged,) = client.search_runs(["1"], "tags.`ppo1.role` = 'compare'")
    assert logged.info.run_name == "compare-8-runs" and logged.info.status == "FINISHED"
    kept = Path(client.download_artifacts(logged.info.run_id, "compare.html", str(tmp_path)))
    assert kept.read_text(encoding="utf-8") == many.read_text(encoding="utf-8")
    assert len(resolve_runs(client, ["ppo1"], "", include_sweeps=True)) == 9
    with refused(capsys, "no finished training runs of study 'other' in experiment 'ppo1'"):
        resolve_runs(client, ["ppo1"], "", study="other")
