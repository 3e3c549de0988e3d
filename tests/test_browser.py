"""The figures render in a real headless Chromium with the network blocked: the dashboard file,
the compare page, and the dashboard inside a real `mlflow ui`'s artifact viewer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ppo1 import compare
from ppo1.config import TrainConfig
from ppo1.report.runs import get_run, load_run, resolve_runs
from ppo1.tracked import train
from tests.browser import offline_page
from tests.conftest import TINY, mlflow_serving, refused
from tests.test_figure_logging import FIGURES

pytestmark = pytest.mark.slow
PLOTS = ".js-plotly-plot svg.main-svg"
# Plotly draws text as SVG, which has no innerText.
TEXTS = "elements => elements.map(e => e.textContent)"


@dataclass
class Store:
    uri: str
    root: Path
    experiment_id: str
    run_ids: list[str]


@pytest.fixture(scope="module")
def store(
    compose_cfg: Callable[[list[str]], TrainConfig], tmp_path_factory: pytest.TempPathFactory
) -> Store:
    """Two real short runs that differ in algo.clip, in a throwaway MLflow store."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run_ids = []
    for clip in ("0.2", "0.1"):
        cfg = compose_cfg([*TINY, f"tracking.uri={uri}", f"algo.clip={clip}"])
        run_id = train(cfg).run_id
        assert run_id is not None
        run_ids.append(run_id)
    experiment_id = get_run(MlflowClient(uri), run_ids[0]).info.experiment_id
    return Store(uri, root, experiment_id, run_ids)


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
        assert sorted(legend) == ["algo.clip=0.1", "algo.clip=0.2"]
        # One line per run in each of the four panels (eval, episode return, KL, clip fraction).
        assert offline.page.locator("#curves .scatterlayer .trace").count() == 8
        table = offline.page.locator("#params .table .cell-text").evaluate_all(TEXTS)
        assert {"param", "algo.clip", "0.1", "0.2"} <= set(table), table
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
    assert set(compare.group_by_config([load_run(client, r) for r in runs])) == {"same config"}
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
