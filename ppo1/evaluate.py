"""`python -m ppo1.evaluate RUN_ID|policy.pt`: reload a trained policy and evaluate it greedily."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ppo1.config import ConfigError, TrackingConfig
from ppo1.tracking.store import open_client, tracking_uri
from ppo1.utils.cli import exit_with_error


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def checkpoint_path(target: str, uri: str | None, tmp: str) -> Path:
    """`target` if it is a file, else the policy of the MLflow run with that id: its model
    artifact, or else what its checkpoint folder holds (the policy.pt of a run whose artifact
    upload failed, the resume.pt of an interrupted run)."""
    from ppo1.core.checkpoint import POLICY_FILE, RESUME_FILE, CheckpointError
    from ppo1.tracking.resume import CHECKPOINT_TAG

    path = Path(target)
    if path.is_file():
        return path
    from mlflow.exceptions import MlflowException  # ~2 s: only to read a run

    client = open_client(tracking_uri(TrackingConfig(uri=uri)))
    try:
        run = client.get_run(target)
    except MlflowException as err:
        raise CheckpointError(
            f"{target!r} is neither a file nor a run in {client.tracking_uri}"
        ) from err
    try:
        return Path(client.download_artifacts(target, f"model/{POLICY_FILE}", tmp))
    except (MlflowException, OSError):
        pass
    folder = run.data.tags.get(CHECKPOINT_TAG)
    for name in (POLICY_FILE, RESUME_FILE):
        if folder is not None and (Path(folder) / name).is_file():
            print(f"run {target} has no model artifact: evaluating {Path(folder) / name}")
            return Path(folder) / name
    raise CheckpointError(
        f"run {target} has no saved model (model/{POLICY_FILE}) and no checkpoint on this "
        "machine (sweep trials keep neither)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ppo1.evaluate", description=__doc__)
    parser.add_argument("target", help="an MLflow run id, or the path of a policy.pt checkpoint")
    parser.add_argument("--episodes", type=positive_int, default=20)
    parser.add_argument("--num-envs", type=positive_int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store holding the run (default: as ppo1.train uses)",
    )
    args = parser.parse_args(argv)
    # Imported once the arguments are parsed: `--help` and a bad argument answer without
    # waiting for torch and Gymnasium (docs/speed.md).
    from ppo1.core.checkpoint import CheckpointError, load_checkpoint
    from ppo1.core.envs import make_vector_env
    from ppo1.core.evaluation import evaluate

    try:
        with tempfile.TemporaryDirectory() as tmp:
            agent, cfg = load_checkpoint(checkpoint_path(args.target, args.tracking_uri, tmp))
        env = make_vector_env(cfg.env, args.num_envs)
    except (CheckpointError, ConfigError) as err:
        exit_with_error(str(err))
    returns = evaluate(agent, env, args.episodes, args.seed)
    env.close()
    print(
        f"{cfg.env.id}: mean return {returns.mean():.1f} +- {returns.std():.1f} "
        f"over {len(returns)} episodes (greedy policy)"
    )


if __name__ == "__main__":
    main()
