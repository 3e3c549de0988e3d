"""`python -m ppo1.evaluate RUN_ID|policy.pt`: reload a trained policy and evaluate it greedily."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from ppo1.checkpoint import load_checkpoint
from ppo1.config import TrackingConfig
from ppo1.envs import make_vector_env
from ppo1.evaluation import evaluate
from ppo1.tracking import tracking_uri


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ppo1.evaluate", description=__doc__)
    parser.add_argument("target", help="an MLflow run id, or the path of a policy.pt checkpoint")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--num-envs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store holding the run (default: as ppo1.train uses)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.target)
        if not path.is_file():
            client = MlflowClient(tracking_uri(TrackingConfig(uri=args.tracking_uri)))
            path = Path(client.download_artifacts(args.target, "model/policy.pt", tmp))
        agent, cfg = load_checkpoint(path)
    env = make_vector_env(cfg.env, args.num_envs)
    returns = evaluate(agent, env, args.episodes, args.seed)
    env.close()
    print(
        f"{cfg.env.id}: mean return {returns.mean():.1f} +- {returns.std():.1f} "
        f"over {len(returns)} episodes (greedy policy)"
    )


if __name__ == "__main__":
    main()
