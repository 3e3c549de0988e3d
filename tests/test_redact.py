"""Passwords in URLs, masked in what is logged or printed (ppo1.utils.redact)."""

from __future__ import annotations

import pytest

from ppo1.utils.redact import redact, redact_tree, without_password


@pytest.mark.parametrize(
    ("text", "masked", "label"),
    [
        (
            "postgresql+psycopg://ppo1:s3:cr/t@db:5432/optuna",
            "postgresql+psycopg://ppo1:***@db:5432/optuna",
            "postgresql+psycopg://ppo1@db:5432/optuna",
        ),
        # No password: nothing to mask, and the label is the URL itself.
        ("postgresql+psycopg://ppo1@db/optuna", "postgresql+psycopg://ppo1@db/optuna", None),
        ("sqlite:////tmp/a:b.db", "sqlite:////tmp/a:b.db", None),
        ("/tmp/study.journal", "/tmp/study.journal", None),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000", None),
    ],
)
def test_a_url_loses_its_password_and_nothing_else(
    text: str, masked: str, label: str | None
) -> None:
    assert redact(text) == masked
    assert without_password(text) == (label or text)


def test_every_url_in_a_command_line_is_masked() -> None:
    command = (
        "python -m ppo1.train -m sweep.storage=postgresql://u:p1@h/db tracking.uri=http://a:p2@h"
    )
    assert redact(command) == (
        "python -m ppo1.train -m sweep.storage=postgresql://u:***@h/db tracking.uri=http://a:***@h"
    )


def test_a_config_tree_is_masked_leaf_by_leaf() -> None:
    tree = {
        "sweep": {"storage": "postgresql://u:p@h/db", "n_trials": 4},
        "hidden": ["http://a:b@h"],
    }
    assert redact_tree(tree) == {
        "sweep": {"storage": "postgresql://u:***@h/db", "n_trials": 4},
        "hidden": ["http://a:***@h"],
    }
