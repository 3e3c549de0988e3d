"""`python -m ppo1.train`: compose the config, then a sweep's trial or one tracked training run.

The training loop is ppo1/core/loop.py; the run around it, ppo1/tracked.py."""

from __future__ import annotations

import shlex
import sys
from typing import TYPE_CHECKING, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ppo1.config import (
    CONF_DIR,
    ConfigError,
    TrainConfig,
    register_configs,
    to_train_config,
    to_train_config_or_exit,
)
from ppo1.tracking.names import name_tag
from ppo1.tracking.urls import run_hint
from ppo1.utils.cli import exit_with_error
from ppo1.utils.hydra_errors import one_line_errors
from ppo1.utils.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from ppo1.core.loop import TrainResult


def summary(cfg: TrainConfig, result: TrainResult) -> str:
    lines = [
        f"final evaluation: {result.final_eval:.1f} mean return over {cfg.eval.episodes} episodes"
    ]
    if result.run_id is not None:
        from ppo1.report.figure_logger import figures_hint  # torch: after training only

        lines += run_hint(cfg.tracking, result.run_id, result.experiment_id)
        lines += figures_hint(cfg, result.run_id)
    if result.policy is not None:
        lines.append(f"policy: {result.policy} (python -m ppo1.evaluate {result.policy})")
    return "\n".join(lines)


def notes(err: BaseException) -> list[str]:
    """What the exception picked up on its way out: the Tracker notes the run it ended."""
    return list(getattr(err, "__notes__", []))


def exit_failed(message: str, err: BaseException) -> NoReturn:
    """Exit 1 with one `error: ...` line: training failed, the input was fine."""
    print("; ".join([f"error: {message}", *notes(err)]), file=sys.stderr)
    sys.exit(1)


register_configs()


@one_line_errors
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(dict_cfg: DictConfig) -> float:
    """Hydra entrypoint; the return value is the objective a sweeper optimises."""
    if OmegaConf.select(dict_cfg, "sweep.trial") is not None:
        # A sweep's job: a config its sampled params make invalid goes back to the sweeper,
        # which fails the trial with the message and goes on (exiting would end a worker).
        cfg = to_train_config(dict_cfg)
    else:
        cfg = to_train_config_or_exit(dict_cfg)
    # Imported here, once a config is composed and checked, not at the top: `--help`,
    # `--cfg job` and TAB completion never train, and torch and MLflow would be most of their
    # start-up (docs/speed.md; tests/test_startup.py).
    from ppo1.core.update import NonFiniteLossError
    from ppo1.sweep.trial import run_trial
    from ppo1.tracked import train
    from ppo1.tracking.resume import prepare_resume
    from ppo1.tracking.store import StoreFailedError

    if cfg.sweep is not None:
        if cfg.sweep.trial is None:
            exit_with_error("a sweep runs as a multirun: python -m ppo1.train -m sweep=NAME")
        # A job of the sweep: pruned or failed trials go back to the sweeper as exceptions.
        return run_trial(cfg)
    command = shlex.join(["python", "-m", "ppo1.train", *sys.argv[1:]])
    hydra_cfg = HydraConfig.get()
    name = name_tag(cfg.tracking, hydra_cfg.runtime.choices, hydra_cfg.overrides.task, cfg.seed)
    tags = {"ppo1.command": command, "mlflow.source.name": "ppo1.train", **name}
    resume = None
    if cfg.resume is not None:
        try:
            cfg, resume = prepare_resume(cfg, list(hydra_cfg.overrides.task))
        except ConfigError as err:
            exit_with_error(str(err))
        tags = {"ppo1.resume_command": command}  # the run keeps the command that started it
    try:
        with sigterm_as_interrupt():  # a scheduler's stop ends the run KILLED, as Ctrl-C does
            result = train(cfg, tags=tags, resume=resume)
    except ConfigError as err:
        # What only building the envs or opening the tracking store can tell, before any run.
        exit_with_error(f"invalid config: {err}")
    except NonFiniteLossError as err:
        exit_failed(f"training diverged: {err}", err)
    except StoreFailedError as err:
        # The store stopped working mid-run (a server killed, a disk full): not bad input.
        exit_failed(str(err), err)
    except KeyboardInterrupt as err:
        said = notes(err)
        print(f"interrupted: {'; '.join(said)}" if said else "interrupted", file=sys.stderr)
        sys.exit(130)
    print(summary(cfg, result))
    return result.final_eval


if __name__ == "__main__":
    main()
