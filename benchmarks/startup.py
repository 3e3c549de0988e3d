"""`python -m benchmarks.startup POLICY`: how long each command takes to answer, median of N.

Start-up is what a user waits for on every `--help`, `--cfg job` and shell TAB; the table it
prints goes in docs/speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def commands(policy: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(what the table calls it, the `python -m` arguments, extra environment)."""
    line = "ppo1-train algo.cl"  # the console script: Hydra strips `python x.py`, not `-m`
    completion = {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    return [
        ("ppo1.train --help", ["ppo1.train", "--help"], {}),
        ("ppo1.train --cfg job", ["ppo1.train", "--cfg", "job"], {}),
        ("ppo1.train TAB (bash completion)", ["ppo1.train", "-sc", "query=bash"], completion),
        ("ppo1.evaluate --help", ["ppo1.evaluate", "--help"], {}),
        ("ppo1.compare --help", ["ppo1.compare", "--help"], {}),
        ("ppo1.dashboard --help", ["ppo1.dashboard", "--help"], {}),
        ("ppo1.sweep_report --help", ["ppo1.sweep_report", "--help"], {}),
        ("ppo1.evaluate POLICY (20 episodes)", ["ppo1.evaluate", policy], {}),
    ]


def seconds(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__)
    parser.add_argument("policy", help="a policy.pt for `ppo1.evaluate` to load")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| command | median s | min s |\n| --- | --- | --- |")
    for name, argv, env in commands(args.policy):
        times = [seconds(argv, env) for _ in range(args.repeats)]
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
