"""The console scripts of pyproject.toml: each resolves to its module's `main`, and runs as
its `python -m` form does."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tests.conftest import run_python

ROOT = Path(__file__).resolve().parents[1]
# python -m entry points that are not user commands: the writer a tracked run starts itself.
INTERNAL: set[str] = set()


def declared_scripts() -> dict[str, str]:
    scripts: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    return scripts


def cli_modules() -> set[str]:
    """The ppo1 modules a user runs with `python -m`."""
    return {
        f"ppo1.{path.stem}"
        for path in (ROOT / "ppo1").glob("*.py")
        if 'if __name__ == "__main__":' in path.read_text()
    } - INTERNAL


def test_every_cli_module_has_a_script_named_after_it() -> None:
    expected = {
        f"ppo1-{module.removeprefix('ppo1.').replace('_', '-')}": f"{module}:main"
        for module in cli_modules()
    }
    assert "ppo1-train" in expected
    assert declared_scripts() == expected


@pytest.mark.parametrize("name", sorted(declared_scripts()))
def test_script_entry_point_resolves_to_a_callable(name: str) -> None:
    entry = EntryPoint(name, declared_scripts()[name], "console_scripts").load()
    assert callable(entry)


def test_train_script_and_python_m_both_answer_help() -> None:
    as_module = subprocess.run(
        [sys.executable, "-m", "ppo1.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    # What the installed `ppo1-train` wrapper does: load the entry point, exit with its value.
    as_script = run_python(
        "import sys\n"
        "from importlib.metadata import EntryPoint\n"
        "sys.argv = ['ppo1-train', '--help']\n"
        f"sys.exit(EntryPoint('ppo1-train', {declared_scripts()['ppo1-train']!r}, "
        "'console_scripts').load()())\n",
        timeout=120,
    )
    assert as_module.returncode == 0, as_module.stderr
    assert as_script.returncode == 0, as_script.stderr
    assert "ppo1.train: train PPO-Clip" in as_script.stdout
    assert as_script.stdout == as_module.stdout
