"""Recipes end to end through their real command line (hydra), in smoke configurations."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dqs_torchrl.experiments.harness import (
    ConfigError,
    compose_config,
    latest_checkpoint,
    load_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]


def recipe_command(recipe: str, run_dir: Path, *overrides: str) -> tuple[list[str], dict]:
    """The command line and environment that run ``recipe`` in its smoke configuration."""
    env = dict(
        os.environ,
        MUJOCO_GL="disable",
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / recipe),
        "+preset=smoke",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    return cmd, env


def run_recipe(recipe: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd, env = recipe_command(recipe, run_dir, *overrides)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def eval_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "eval.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algo", ["dqs", "sac", "qsm"])
def test_dmc_recipe_smoke(tmp_path, algo):
    proc = run_recipe("dqs_dmc.py", tmp_path, f"algo={algo}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = eval_rows(tmp_path)
    assert [int(r["frames"]) for r in rows] == [150, 300]
    assert all(torch.isfinite(torch.tensor(float(r["return_mean"]))) for r in rows)
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    scalars = tmp_path / "logs" / f"{algo}_cheetah-run_s0" / "scalars"
    assert (scalars / "eval" / "return_mean.csv").exists()
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    state = load_checkpoint(ckpt)  # weights_only=True inside
    assert state["frames"] == 300
    # 300 frames, 100 random, one update per frame after that: 200 updates
    assert state["agent"]["num_updates"] == 200
    assert len(list((tmp_path / "checkpoints").glob("ckpt_*.pt"))) == 3  # keep_last
    if algo != "sac":  # the default fidelity is the fast preset
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(tmp_path / "config.yaml").algo
        assert (cfg.estimator, cfg.sampler, cfg.num_mc_samples_small) == ("blend", "ancestral", 2)
        # the DMC recipes read the paper's eq. (9) literally (docs/results.md, phase 0)
        assert cfg.energy == "unbounded"


def test_fidelity_paper_switch_restores_table_1(tmp_path):
    """``fidelity=paper`` is one switch from the default: the paper's sampler and estimator
    reach the run (the smoke preset still shrinks K and the step count)."""
    from omegaconf import OmegaConf

    proc = run_recipe("dqs_dmc.py", tmp_path, "fidelity=paper")
    assert proc.returncode == 0, proc.stderr[-3000:]
    algo = OmegaConf.load(tmp_path / "config.yaml").algo
    assert (algo.estimator, algo.sampler, algo.sigma_end, algo.denoise) == (
        "idem",
        "euler_maruyama",
        None,
        False,
    )
    assert algo.num_mc_samples_small is None  # one K at every sigma, as in table 1
    # and nothing of the other presets leaks in: the paper's network output, start and schedule
    assert (algo.parameterization, algo.prior, algo.sigma_min) == ("score", "paper", 1e-5)
    assert [int(r["frames"]) for r in eval_rows(tmp_path)] == [150, 300]


def test_fidelity_accurate_builds_the_benchmarked_sampler():
    """``fidelity=accurate`` gives the agent what ``benchmarks/learned_fidelity.py`` measured as
    ``recommended`` (issue 11): noise output, matched start, 30 Euler-Maruyama steps from sigma
    1e-2, K = 64 above sigma 0.3; ``fidelity=balanced`` what it measured as ``balanced``;
    ``fidelity=fast`` (the default) keeps the paper's network output and start."""
    from dqs_torchrl.experiments.harness import make_agent, make_env

    agents = {}
    for fidelity in ("accurate", "fast", "balanced"):
        cfg = compose_config([f"fidelity={fidelity}", "algo.score_cells=16", "algo.q_cells=[16]"])
        agents[fidelity] = make_agent(cfg, make_env(cfg, 0))
    # (steps, K below sigma 0.3, score-loss rows): balanced is accurate with 20 steps, K = 4
    # below sigma 0.3 and the score loss on 128 rows; accurate regresses on every row
    for fidelity, (steps, k_small, rows) in {
        "accurate": (30, 16, None),
        "balanced": (20, 4, 128),
    }.items():
        actor, loss = agents[fidelity].policy, agents[fidelity].losses["actor"][0]
        assert (actor.parameterization, actor.prior, actor.sampler) == (
            "noise",
            "matched",
            "euler_maruyama",
        )
        assert actor.schedule.sigma_min == pytest.approx(1e-2)
        assert len(actor.sigmas) == steps + 1  # steps from sigma_max to sigma_end (+ Tweedie)
        assert (loss.num_mc_samples, loss.num_mc_samples_small, loss.small_sigma) == (
            64,
            k_small,
            0.3,
        )
        assert loss.batch_rows == rows
    fast = agents["fast"].policy
    assert (fast.parameterization, fast.prior, fast.sampler) == ("score", "paper", "ancestral")
    assert agents["fast"].losses["actor"][0].batch_rows is None


def test_each_recipe_defaults_to_the_sampler_measured_for_its_energy():
    """The maze (the box's Boltzmann policy, ``energy=squashed``) defaults to
    ``fidelity=balanced``, the DMC recipe (the paper's unbounded energy) to ``fidelity=fast``
    (issue 11, docs/performance.md); ``fidelity=fast`` on the maze gives it DMC's sampler and
    estimator (as before the switch), ``fidelity=balanced`` on DMC the maze's, and the preset
    changes nothing outside ``algo``."""
    from omegaconf import OmegaConf

    maze = compose_config(config_name="dqs_maze")
    dmc = compose_config()
    assert (maze.algo.energy, maze.algo.sampler, maze.algo.num_steps) == (
        "squashed",
        "euler_maruyama",
        20,
    )
    assert (maze.algo.prior, maze.algo.score_batch_rows) == ("matched", 128)
    assert (dmc.algo.energy, dmc.algo.sampler, dmc.algo.num_steps) == ("unbounded", "ancestral", 10)
    fast_maze = compose_config(["fidelity=fast"], config_name="dqs_maze")
    balanced_dmc = compose_config(["fidelity=balanced"])
    keys = (
        "sampler",
        "num_steps",
        "prior",
        "parameterization",
        "sigma_min",
        "num_mc_samples",
        "num_mc_samples_small",
        "small_sigma",
        "score_batch_rows",
    )
    assert {k: fast_maze.algo[k] for k in keys} == {k: dmc.algo[k] for k in keys}
    assert {k: balanced_dmc.algo[k] for k in keys} == {k: maze.algo[k] for k in keys}
    # the rest of the maze config is untouched by the preset
    rest = OmegaConf.to_container(fast_maze)
    rest_balanced = OmegaConf.to_container(maze)
    assert {k: v for k, v in rest.items() if k != "algo"} == {
        k: v for k, v in rest_balanced.items() if k != "algo"
    }


@pytest.mark.parametrize("algo", ["dqs", "sac", "qsm"])
def test_maze_recipe_smoke(tmp_path, algo):
    proc = run_recipe("dqs_maze.py", tmp_path, f"algo={algo}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    if algo == "dqs":  # the maze keeps the box-form energy until it is measured there
        from omegaconf import OmegaConf

        assert OmegaConf.load(tmp_path / "config.yaml").algo.energy == "squashed"
    rows = eval_rows(tmp_path)
    assert [int(r["frames"]) for r in rows] == [150, 300]
    outcome_keys = [k for k in rows[0] if k.startswith("episodes_")]
    assert sorted(outcome_keys) == [
        "episodes_bottom_right",
        "episodes_none",
        "episodes_top_left_via_left",
        "episodes_top_left_via_upper",
    ]
    for row in rows:  # every evaluation episode is counted exactly once
        assert sum(int(row[k]) for k in outcome_keys) == 2
    assert (tmp_path / "trajectories.png").stat().st_size > 1000
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["frames"] == 300
    if algo != "sac":  # exponential 10 -> 1 over the run's 300 frames
        assert state["agent"]["scheduler"]["frames"] == 300


def _renders() -> bool:
    """Whether MuJoCo renders in a fresh process that leaves MUJOCO_GL to the harness."""
    code = "from dqs_torchrl.experiments.envs import check_rendering as c; print(c('cheetah-run'))"
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return proc.stdout.strip().endswith("None")


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_other_loggers(tmp_path, backend):
    """Each logger gets the run's config as hyperparameters and, where MuJoCo renders, the
    evaluation video (W&B offline: ``logger.mode``'s default)."""
    video = _renders()
    cmd, env = recipe_command(
        "dqs_dmc.py",
        tmp_path,
        "algo=sac",
        f"logger.backend={backend}",
        "collector.total_frames=150",
        *(["eval.video=true", "eval.video_size=[32,32]"] if video else []),
    )
    if video:
        env.pop("MUJOCO_GL")  # the harness picks egl
    env.pop("WANDB_MODE")  # logger.mode=offline decides
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = tmp_path / "logs"
    if backend == "wandb":  # offline: a local run directory with its history file
        (history,) = logs.rglob("offline-run-*/run-*.wandb")
        assert b"optim.lr" in history.read_bytes()  # the config, logged as hparams
        if video:  # the GIF of the run directory, copied into the run's media
            assert list(history.parent.rglob("media/videos/eval/video_*.gif"))
    else:
        events = b"".join(p.read_bytes() for p in logs.rglob("events.out.tfevents.*"))
        assert b"optim.lr" in events  # the hparams plugin's record of the config
        if video:  # an animated GIF in an image summary, as TensorBoard's add_video writes
            assert b"eval/video" in events and b"GIF89a" in events
    if video:
        assert (tmp_path / "videos" / "eval_000000000150.gif").is_file()


def test_resume_continues_from_checkpoint(tmp_path):
    first = run_recipe("dqs_dmc.py", tmp_path, "collector.total_frames=200")
    assert first.returncode == 0, first.stderr[-3000:]
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))["frames"] == 200
    second = run_recipe("dqs_dmc.py", tmp_path, "collector.total_frames=300", "resume=true")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr
    state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["frames"] == 300
    assert state["agent"]["num_updates"] == 200  # 100 before the interruption, 100 after
    assert len(state["buffer"]["data"]["observation"]) == 300  # the buffer came back too
    assert [int(r["frames"]) for r in eval_rows(tmp_path)] == [150, 200, 300]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("env.task=cheetah-fly", "env.task"),
        ("collector.total_frames=-5", "collector.total_frames"),
        ("algo.num_steps=0", "algo.num_steps"),
        ("algo.score_batch_rows=0", "algo.score_batch_rows"),
        ("algo.temperature.initial=0", "algo.temperature.initial"),
        ("logger.backend=mlflow", "logger.backend"),
        ("logger.mode=cloud", "logger.mode"),
        ("eval.video_format=webm", "eval.video_format"),
        ("device=tpu", "device"),
        ("algo.estimator=mean", "algo.estimator"),
        ("algo.compile_sampler=fast", "algo.compile_sampler"),
        ("algo.sampler=heun algo.compile_sampler=true", "algo.compile_sampler"),
    ],
)
def test_bad_override_fails_before_training(tmp_path, override, field):
    # In-process (the config the command line composes, handed to the same `train`): one
    # interpreter start per case cost ~6 s each; the command line itself is the next test.
    cfg = compose_config(["+preset=smoke", *override.split()])
    with pytest.raises(ConfigError, match=f"{re.escape(field)} must"):  # names field and values
        train(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_bad_override_on_the_command_line_exits_with_the_message(tmp_path):
    proc = run_recipe("dqs_dmc.py", tmp_path, "env.task=cheetah-fly")
    assert proc.returncode != 0
    assert "env.task must be a dm_control 'domain-task', got 'cheetah-fly'" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_sweep_with_submitit_local_launcher(tmp_path):
    """A sweep of the docs' kind on submitit's local executor (the SLURM path). Two jobs, not
    the docs' seed x task grid: every job is a process of its own (~6 s of interpreter start),
    and the grid's layout is the reproduce tutorial's check, on the basic launcher."""
    env = dict(os.environ, MUJOCO_GL="disable", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "dqs_dmc.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "seed=0,1",
        "env.task=cartpole-balance",
        "+preset=smoke",
        "algo=sac",
        "collector.total_frames=150",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.launcher.timeout_min=5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        rows = eval_rows(tmp_path / "cartpole-balance" / "sac" / f"seed{seed}")
        assert [int(r["frames"]) for r in rows] == [150]
