"""A run's metric rows into a SQLite store in one statement: what MLflow's log_batch stores.

MLflow's SQL store makes an ORM object of every metric row and flushes them one by one
(~0.1-0.2 ms a row): a default sweep trial's seed run ends with ~800 rows, 100-190 ms of
its ~1.4 s. Into a SQLite store (the default, and a sweep's) the rows go with one
INSERT ... ON CONFLICT DO NOTHING instead (rows the store holds already are dropped, as MLflow
drops them), and the run's latest value of each key follows MLflow's own rule: the largest
(step, timestamp, value), the first of equals. tests/test_metric_rows.py holds both ways equal,
table by table. Any other store gets MlflowClient.log_batch (ppo1.tracking.ops.apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy.dialects.sqlite import insert

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def sqlite_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The client's store if it is a SQLite database, which `insert_rows` writes to."""
    store = client._tracking_client.store
    return store if isinstance(store, SqlAlchemyStore) and store.db_type == "sqlite" else None


def insert_rows(
    store: SqlAlchemyStore, run_id: str, rows: Sequence[tuple[str, float, int, int]]
) -> None:
    """Store the run's metric rows (ppo1.tracking.ops.Row: key, value, timestamp in ms, step)
    as log_batch would."""
    if not rows:
        return
    stored: list[dict[str, Any]] = []
    for key, value, timestamp, step in rows:
        is_nan, value = store.sanitize_metric_value(float(value))  # NaN, inf: as MLflow has them
        stored.append(
            {
                "run_uuid": run_id,
                "key": key,
                "value": value,
                "timestamp": int(timestamp),
                "step": int(step),
                "is_nan": is_nan,
            }
        )
    with store.ManagedSessionMaker(read_only=False) as session:
        run = store._get_run(run_uuid=run_id, session=session)  # type: ignore[no-untyped-call]
        store._check_run_is_active(run)  # type: ignore[no-untyped-call]
        session.execute(insert(SqlMetric.__table__).on_conflict_do_nothing(), stored)
        keys = sorted({key for key, *_ in rows})
        latest = {
            m.key: m
            for m in session.query(SqlLatestMetric).filter(
                SqlLatestMetric.run_uuid == run_id, SqlLatestMetric.key.in_(keys)
            )
        }
        for row in stored:
            held = latest.get(row["key"])
            if held is None:
                latest[row["key"]] = held = SqlLatestMetric(**row)
                session.add(held)
            elif (row["step"], row["timestamp"], row["value"]) > (
                held.step,
                held.timestamp,
                held.value,
            ):
                held.value, held.step = row["value"], row["step"]
                held.timestamp, held.is_nan = row["timestamp"], row["is_nan"]
