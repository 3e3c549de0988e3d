"""`python -m ppo1.sweep_report sweep=NAME`: log a study's figures and best trial now.

For a study still running elsewhere (other sweep processes, other machines): the same report
a sweep logs when it ends, on the same parent MLflow run. Takes the sweep's own overrides.
"""

from __future__ import annotations

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ppo1.config import CONF_DIR, ConfigError, register_configs, to_train_config_or_exit
from ppo1.tracking.store import tracking_uri
from ppo1.utils.cli import exit_with_error
from ppo1.utils.hydra_errors import one_line_errors
from ppo1.utils.redact import redact

register_configs()


@one_line_errors
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(dict_cfg: DictConfig) -> None:
    cfg = to_train_config_or_exit(dict_cfg)
    # Imported once a config is composed: `--help` answers without MLflow and plotly.
    import optuna

    from ppo1.sweep.parent_run import find_study_run
    from ppo1.sweep.search_space import search_space
    from ppo1.sweep.study import open_storage, storage_exists, storage_spec, study_lock
    from ppo1.sweep.study_report import report_study

    if cfg.sweep is None:
        exit_with_error("name the sweep: python -m ppo1.sweep_report sweep=NAME")
    spec = storage_spec(cfg.sweep)
    missing = f"no study '{cfg.sweep.study_name}' in {redact(spec)}"
    if not storage_exists(spec):
        exit_with_error(missing)
    try:
        study = optuna.load_study(study_name=cfg.sweep.study_name, storage=open_storage(spec))
    except KeyError:
        exit_with_error(missing)
    except ConfigError as err:
        exit_with_error(f"invalid sweep: {err}")
    try:
        parent = find_study_run(cfg.tracking, cfg.sweep, spec)
    except ConfigError as err:
        exit_with_error(f"invalid config: {err}")
    if parent is None and cfg.tracking.enabled:
        print(f"the study has no MLflow run in {tracking_uri(cfg.tracking)}: nothing logged")
    given = HydraConfig.get().overrides
    # Hydra's own overrides too: hydra.searchpath may be where the sweep's file was found.
    hydra_overrides = list(given.hydra)
    params = list(search_space(cfg.sweep.params))
    # Under the study's lock, as a sweep process writes its report: two writes of the study
    # run's tags at once can fail on a server's database (see the sweeper).
    with study_lock(spec, cfg.sweep.study_name):
        report_study(
            study,
            params,
            lambda o: compose("train", [*hydra_overrides, *o]),
            list(given.task),
            parent,
        )


if __name__ == "__main__":
    main()
