"""ppo1: a PPO-Clip experiment harness (Hydra configs, plain PyTorch, MLflow, Optuna)."""
