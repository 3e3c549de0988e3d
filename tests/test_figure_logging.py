"""A real short training run logs its figures to a temporary MLflow store, small enough."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import plotly.io as pio
import pytest
from mlflow.tracking import MlflowClient

from ppo1 import dashboard
from ppo1.config import TrainConfig
from ppo1.core.rollout import Episode
from ppo1.report import pages
from ppo1.report.figure_logger import figures_hint
from ppo1.report.ratios import summarize
from ppo1.report.runs import TRAINING_METRIC, RunData, curves_from_history, resolve_runs
from ppo1.tracked import train
from tests.conftest import TINY, one_error_line, read_only, refused, run_module

FIGURES = [
    "episode_return",
    "ratio_histogram",
    "clip_activity",
    "ratio_evolution",
    "kl_clip",
    "losses",
    "schedules",
]
JSON = {f"figures/json/{name}.json" for name in FIGURES}
# A plain run's artifacts stay under ~6 MB; the dashboard's inlined plotly.js is ~4.8 MB.
MAX_RUN_BYTES = 6_000_000


def values(data: object) -> np.ndarray:
    """A trace's x or y as read back from figure JSON (plotly writes arrays base64-encoded)."""
    if isinstance(data, dict):
        raw = base64.b64decode(data["bdata"])
        return np.frombuffer(raw, dtype=np.dtype(data["dtype"])).astype(float)
    return np.asarray(data, dtype=float)


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> dict[str, int]:
    """Every artifact file of the run with its size."""
    files: dict[str, int] = {}
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            files |= artifacts(client, run_id, info.path)
        else:
            files[info.path] = info.file_size
    return files


def trained_run(compose_cfg: Callable[[list[str]], TrainConfig], uri: str, *extra: str) -> str:
    cfg = compose_cfg([*TINY, f"tracking.uri={uri}", *extra])
    run_id = train(cfg).run_id
    assert run_id is not None
    return run_id


def test_run_logs_dashboard_json_and_ratio_data(
    compose_cfg: Callable[[list[str]], TrainConfig], mlflow_uri: str, tmp_path: Path
) -> None:
    run_id = trained_run(compose_cfg, mlflow_uri, "tracking.figures_every=1")
    client = MlflowClient(mlflow_uri)
    files = artifacts(client, run_id)
    expected = JSON | {"figures/dashboard.html", "figures/ratio_snapshots.json"}
    assert expected <= set(files)
    assert sum(files.values()) <= MAX_RUN_BYTES

    folder = Path(client.download_artifacts(run_id, "figures", str(tmp_path)))
    page = (folder / "dashboard.html").read_text()
    assert page.count("* plotly.js v") == 1  # inlined once, not per figure
    assert "<script src=" not in page  # nothing fetched from a CDN
    assert all(f'id="{name}"' in page for name in FIGURES)
    snapshots = json.loads((folder / "ratio_snapshots.json").read_text())["snapshots"]
    assert [s["update"] for s in snapshots] == [1, 2]
    assert len(snapshots[-1]["ratio"]) == 256  # the whole 8 x 32 batch (< the 1024 bound)
    assert snapshots[0]["ratio"] == []  # only the last rollout keeps its sample
    clip = pio.read_json(folder / "json" / "clip_activity.json")
    assert {t.name for t in clip.data} == {"clip active (no gradient)", "clip inactive"}
    assert sum(values(t.x).size for t in clip.data) == 256


def test_export_command_redraws_the_logged_figures(
    compose_cfg: Callable[[list[str]], TrainConfig],
    mlflow_uri: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_id = trained_run(compose_cfg, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    logged = Path(client.download_artifacts(run_id, "figures", str(tmp_path / "logged")))
    out = tmp_path / "exported"
    dashboard.main([run_id, "--out", str(out), "--tracking-uri", mlflow_uri])
    assert str(out / "dashboard.html") in capsys.readouterr().out
    assert (out / "dashboard.html").stat().st_size > 4_000_000
    for name in FIGURES:
        exported = pio.read_json(out / "json" / f"{name}.json")
        original = pio.read_json(logged / "json" / f"{name}.json")
        assert [t.name for t in exported.data] == [t.name for t in original.data], name
        for a, b in zip(exported.data, original.data, strict=True):
            np.testing.assert_allclose(values(a.y), values(b.y), err_msg=name)

    with refused(capsys, "no run"):
        dashboard.main(["0" * 32, "--tracking-uri", mlflow_uri])
    # A run without curves (a sweep's study run, say) is refused, not drawn as empty figures.
    empty = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    with refused(capsys, "no training curves"):
        dashboard.main([empty, "--out", str(tmp_path / "empty"), "--tracking-uri", mlflow_uri])
    assert not (tmp_path / "empty").exists()
    with refused(capsys, "error: tracking.uri 'bogus://x'"):
        dashboard.main([run_id, "--tracking-uri", "bogus://x"])


@pytest.mark.parametrize(
    ("mode", "expected", "absent"),
    [
        ("light", JSON | {"figures/ratio_snapshots.json"}, {"figures/dashboard.html"}),
        ("none", set(), JSON | {"figures/dashboard.html", "figures/ratio_snapshots.json"}),
    ],
)
def test_lighter_modes_for_sweeps(
    compose_cfg: Callable[[list[str]], TrainConfig],
    mlflow_uri: str,
    mode: str,
    expected: set[str],
    absent: set[str],
) -> None:
    run_id = trained_run(compose_cfg, mlflow_uri, f"tracking.figures={mode}", "save_model=false")
    files = artifacts(MlflowClient(mlflow_uri), run_id)
    assert expected <= set(files)
    assert not absent & set(files)
    assert sum(files.values()) < 300_000


def test_default_length_run_figures_stay_under_the_bound(tmp_path: Path) -> None:
    """The default run (100k steps = 391 updates, ~2,000 CartPole episodes), synthesised."""
    rng = np.random.default_rng(0)
    updates = 391
    history = [
        {"step": 256.0 * u, "losses/kl": 0.01, "losses/clipfrac": 0.1, "eval/mean_return": 1.0}
        for u in range(1, updates + 1)
    ]
    episodes = [Episode(int(s), float(s % 500), 50) for s in np.linspace(8, 99_840, 2_000)]
    # As the figure logger does, only the last snapshot keeps its (r, A) sample.
    snapshots = [
        summarize(
            u,
            256 * u,
            0.2,
            rng.lognormal(0, 0.1, 256),
            rng.normal(size=256),
            1024 if u == updates else 0,
            rng,
        )
        for u in range(1, updates + 1)
    ]
    run = RunData("synthetic", curves_from_history(history, episodes), snapshots=snapshots)
    files = pages.write_figures(tmp_path, run)
    # Leave room for the model (~40 kB) and config.yaml beside the figures.
    assert sum(f.stat().st_size for f in files) <= MAX_RUN_BYTES - 100_000


def test_an_experiment_compares_its_finished_training_runs_only(
    compose_cfg: Callable[[list[str]], TrainConfig],
    mlflow_uri: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trained = [trained_run(compose_cfg, mlflow_uri, f"seed={seed}") for seed in (1, 2)]
    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_run(trained[0]).info.experiment_id
    # What a sweep adds beside them: a study run without curves, and a training run that failed.
    study = client.create_run(experiment_id, tags={"ppo1.role": "study"}).info.run_id
    client.set_terminated(study, "FINISHED")
    failed = client.create_run(experiment_id).info.run_id
    client.log_metric(failed, TRAINING_METRIC, 0.01, step=256)
    client.set_terminated(failed, "FAILED")

    assert [r.info.run_id for r in resolve_runs(client, ["ppo1"], "")] == trained
    assert [r.info.run_id for r in resolve_runs(client, ["ppo1"], "params.seed = '2'")] == [
        trained[1]
    ]
    # Named by id, a run is taken whatever its status.
    assert [r.info.run_id for r in resolve_runs(client, [failed], "")] == [failed]
    with refused(capsys, "--filter 'params.x='"):
        resolve_runs(client, ["ppo1"], "params.x=")
    with refused(capsys, "no finished training runs in experiment 'ppo1' match"):
        resolve_runs(client, ["ppo1"], "params.seed = '7'")


@pytest.mark.slow
def test_an_unwritable_out_is_one_line_for_compare_and_dashboard(
    compose_cfg: Callable[[list[str]], TrainConfig], mlflow_uri: str, tmp_path: Path
) -> None:
    # Each gave a traceback once the runs were loaded and drawn.
    run_id = trained_run(compose_cfg, mlflow_uri, "tracking.figures=none", "save_model=false")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    locked = tmp_path / "locked"
    cases = [
        ("compare", tmp_path, f"cannot write --out {tmp_path}: Is a directory"),
        ("compare", tmp_path / "no" / "c.html", "No such file or directory"),
        ("compare", locked / "c.html", "Read-only file system"),
        ("dashboard", a_file, f"--out {a_file} is a file; it takes a folder"),
        ("dashboard", locked, f"cannot write --out {locked}: Read-only file system"),
    ]
    with read_only(locked):
        for module, out, message in cases:
            proc = run_module(
                f"ppo1.{module}", run_id, "--out", str(out), "--tracking-uri", mlflow_uri
            )
            assert message in one_error_line(proc), (module, out)
    assert a_file.read_text() == "not a folder"


def test_the_closing_hint_names_a_store_other_than_the_default(
    compose_cfg: Callable[[list[str]], TrainConfig],
    mlflow_uri: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = compose_cfg(["tracking.uri=null"])
    assert figures_hint(default, "abc")[-1].endswith("python -m ppo1.dashboard abc")
    other = compose_cfg([f"tracking.uri={mlflow_uri}"])
    assert figures_hint(other, "abc")[-1].endswith(
        f"python -m ppo1.dashboard abc --tracking-uri {mlflow_uri}"
    )
