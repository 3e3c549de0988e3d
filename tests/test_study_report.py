"""The study report's figures: Optuna's plots drawn without its warnings on stderr."""

from __future__ import annotations

import logging

import optuna
import pytest

from ppo1.sweep.study_report import study_figures


def test_a_parameter_with_one_value_is_left_out_of_the_contour_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate([1.0, 3.0, 2.0]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"algo.clip": 0.1 * (i + 1), "algo.epochs": 4, "algo.lr": 1e-3 * (i + 1)},
                distributions={
                    "algo.clip": optuna.distributions.FloatDistribution(0.05, 0.5),
                    "algo.epochs": optuna.distributions.IntDistribution(1, 20),
                    "algo.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                },
                value=value,
            )
        )
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.addHandler(caplog.handler)  # Optuna's logger does not propagate
    try:
        figures, _ = study_figures(study, ["algo.clip", "algo.epochs", "algo.lr"])
    finally:
        optuna_logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "unique value length" in r.getMessage()]
    contour = figures["contour"]
    titles = {axis.title.text for axis in (contour.layout.xaxis, contour.layout.yaxis)}
    assert titles == {"algo.clip", "algo.lr"}
