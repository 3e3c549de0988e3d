"""ppo1.tracking.metric_rows stores what MLflow's log_batch stores, in a real SQLite store."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ppo1.tracking.metric_rows import insert_rows, sqlite_store
from ppo1.tracking.ops import Row, create_whole, get_or_create_experiment

# Several batches of one run, with what a run really sends: per-update keys at growing steps,
# NaN and infinities, rows sent again (a resume, a writer's redo), equal rows in one batch,
# an older step after a newer one, and equal (step, timestamp) rows that differ in value.
BATCHES: list[list[Row]] = [
    [
        ("losses/kl", 0.01, 1000, 256),
        ("losses/kl", 0.02, 1001, 512),
        ("charts/SPS", 900.0, 1001, 512),
    ],
    [("losses/kl", math.nan, 1002, 768), ("losses/kl", math.nan, 1002, 768), ("x", math.inf, 5, 1)],
    [("losses/kl", 0.02, 1001, 512), ("losses/kl", 0.03, 1003, 1024), ("x", -math.inf, 6, 1)],
    [("charts/SPS", 950.0, 900, 256), ("y", 1.0, 7, 3), ("y", 2.0, 7, 3), ("y", 0.5, 7, 3)],
    [("losses/kl", 0.03, 1003, 1024)],
    [("y", 2.0, 7, 3), ("z", math.nan, 8, 0), ("z", 0.0, 8, 0)],
]


def tables(db: Path, run_id: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The run's rows of MLflow's metrics and latest_metrics tables, as stored."""
    with sqlite3.connect(db) as con:
        return tuple(  # type: ignore[return-value]
            sorted(
                con.execute(
                    f"select key, value, timestamp, step, is_nan from {table} where run_uuid = ?",
                    (run_id,),
                ).fetchall(),
                key=repr,
            )
            for table in ("metrics", "latest_metrics")
        )


def test_rows_are_stored_as_mlflows_log_batch_stores_them(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    create_whole(uri)
    client = MlflowClient(uri)
    experiment = get_or_create_experiment(client, "e")
    theirs, ours = (client.create_run(experiment).info.run_id for _ in range(2))
    store = sqlite_store(client)
    assert store is not None
    for batch in BATCHES:
        client.log_batch(theirs, metrics=[Metric(*row) for row in batch])
        insert_rows(store, ours, batch)
        assert tables(db, ours) == tables(db, theirs)
    metrics, latest = tables(db, ours)
    assert len(metrics) == 13 and len(latest) == 5  # dropped: 5 rows held already or repeated
    for run in (theirs, ours):
        history = client.get_metric_history(run, "losses/kl")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [256, 512, 768, 1024]
    shown = [repr(sorted(client.get_run(run).data.metrics.items())) for run in (ours, theirs)]
    assert shown[0] == shown[1]  # repr: NaN equals NaN there


def test_a_run_that_is_not_active_is_refused_as_mlflow_refuses_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_whole(uri)
    client = MlflowClient(uri)
    run_id = client.create_run(get_or_create_experiment(client, "e")).info.run_id
    client.delete_run(run_id)
    store = sqlite_store(client)
    assert store is not None
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        client.log_batch(run_id, metrics=[Metric("a", 1.0, 1, 1)])
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        insert_rows(store, run_id, [("a", 1.0, 1, 1)])
