"""Metrics written by the forked writer process all reach the run; its failures fail the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ppo1.config import TrackingConfig
from ppo1.tracking import Tracker


def tracker(tmp_path: Path) -> Tracker:
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="writer")
    return Tracker(cfg, {"seed": 1})


def test_every_metric_arrives_in_order(tmp_path: Path) -> None:
    with tracker(tmp_path) as t:
        for step in range(1500):
            t.log_metrics({"loss": step / 10, "charts/SPS": 2.0 * step}, step)
            t.flush(force=step % 100 == 0)
    assert t.client is not None and t.run_id is not None
    client = MlflowClient(t.client.tracking_uri)
    history = client.get_metric_history(t.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, s / 10) for s in range(1500)]
    assert len(client.get_metric_history(t.run_id, "charts/SPS")) == 1500
    assert client.get_run(t.run_id).info.status == "FINISHED"


def test_a_failed_write_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="writing metrics to MLflow failed"),
        tracker(tmp_path) as t,
    ):
        t.log_metrics({"fine": 1.0}, 0)
        t.flush(force=True)
        t.log_metrics({"not*a*valid*key": 1.0}, 1)
    assert t.client is not None and t.run_id is not None
    run = MlflowClient(t.client.tracking_uri).get_run(t.run_id)
    assert run.info.status == "FAILED"
    assert "not*a*valid*key" in run.data.tags["ppo1.error"]
    assert run.data.metrics == {"fine": 1.0}
