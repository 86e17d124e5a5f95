"""Importing the package changes no global state: MUJOCO_GL is set only when an env is made,
and only if the user has not chosen a backend; matplotlib's backend is never switched. The
core does not import the experiment code (``dqs_torchrl.experiments``) or its stack."""

import os
import subprocess
import sys

import pytest

from dqs_torchrl.experiments.envs import _headless_mujoco_gl

MODULES = [
    "dqs_torchrl",
    "dqs_torchrl.experiments",
    "dqs_torchrl.experiments.envs",
    "dqs_torchrl.experiments.maze",
    "dqs_torchrl.experiments.harness",
    "dqs_torchrl.experiments.harness.plotting",
    "dqs_torchrl.experiments.configs",
    # the console scripts' modules: dqs-dmc, dqs-maze, dqs-plot, dqs-campaign
    "dqs_torchrl.experiments.dqs_dmc",
    "dqs_torchrl.experiments.dqs_maze",
    "dqs_torchrl.experiments.plot",
    "dqs_torchrl.experiments.campaign",
]


def run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter without MUJOCO_GL (the Makefile exports one) and with
    a non-Agg matplotlib backend that works headless (svg), so a switch to Agg shows."""
    base = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "MPLBACKEND")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "MPLBACKEND": "svg", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_has_no_side_effects():
    code = f"""
import importlib, os, sys
for name in {MODULES!r}:
    importlib.import_module(name)
import matplotlib
print(os.environ.get("MUJOCO_GL"), matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    assert run_python(code) == "None svg False"


def test_core_imports_no_experiment_code():
    code = """
import sys
import dqs_torchrl
stack = ("dqs_torchrl.experiments", "hydra", "omegaconf", "matplotlib", "dm_control")
print(sorted(m for m in sys.modules if m.split(".")[0] in stack or m.startswith(stack[0])))
"""
    assert run_python(code) == "[]"


def test_making_an_env_defaults_mujoco_gl_to_disable():
    code = """
import os
from dqs_torchrl.experiments.envs import make_dmc_env
make_dmc_env("cartpole-balance", seed=0)
print(os.environ.get("MUJOCO_GL"))
"""
    assert run_python(code) == "disable"


@pytest.mark.parametrize("user", [None, "egl"])
def test_headless_default_respects_the_users_choice(user, monkeypatch):
    if user is None:
        monkeypatch.delenv("MUJOCO_GL", raising=False)
    else:
        monkeypatch.setenv("MUJOCO_GL", user)
    _headless_mujoco_gl()
    assert os.environ["MUJOCO_GL"] == (user or "disable")


def test_learning_curve_plots_headless_without_pyplot(tmp_path):
    code = f"""
import sys
from pathlib import Path
from dqs_torchrl.experiments.harness.plotting import plot_learning_curve
csv = Path({str(tmp_path)!r}) / "eval.csv"
csv.write_text("frames,return_mean,return_min,return_max\\n10,1,0,2\\n20,3,2,4\\n")
out = plot_learning_curve(csv, csv.with_name("curve.png"), "cartpole")
png = out.read_bytes()
print(len(png) > 1000, png[:4] == b"\\x89PNG", "matplotlib.pyplot" in sys.modules)
"""
    assert run_python(code, DISPLAY="") == "True True False"
