"""Faults a careful user meets, each refused before anything is written, with a message that
names the way out, or repaired: a second process in a run directory, a fresh run into another
run's directory, a resume into another run's checkpoint, a bad override, a kill mid-write of
``eval.csv``, an empty or truncated newest checkpoint (docs/reliability.md has the table).

Most cases break a copy of one finished smoke run: checkpoints at 100 and 200 frames,
evaluations at 150 and 200.
"""

import csv
import fcntl
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchrl.data import Bounded

from dqs_torchrl import DiffusionActor, GeometricSchedule, ScoreNetwork
from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness import (
    CheckpointError,
    ConfigError,
    latest_checkpoint,
    load_checkpoint,
    train,
    validate_config,
)

CONFIG = str(CONFIG_DIR)
SMOKE = ("+preset=smoke", "env.task=cartpole-balance", "collector.total_frames=200")


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG, version_base="1.3"):
        return compose("dqs_dmc", overrides=list(overrides))


def smoke_cfg(*overrides: str):
    return config(*SMOKE, *overrides)


def files(run_dir: Path) -> dict[Path, bytes]:
    """Every file under ``run_dir`` and its bytes."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def eval_frames(run_dir: Path) -> list[int]:
    with open(run_dir / "eval.csv", newline="") as f:
        return [int(row["frames"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("finished")
    train(smoke_cfg(), run_dir)
    return run_dir


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    """A copy of the finished smoke run, for one test to break."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.fixture
def log_text(caplog):
    caplog.set_level(logging.INFO, logger="dqs_torchrl")
    return lambda: caplog.text


def test_second_process_in_a_run_directory_is_refused(run_dir):
    # Another process holds the lock, as a run does for its life (flock is per open file).
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"pid 4242 on node7, since 2025-01-01 00:00:00\n")
        before = files(run_dir)
        with pytest.raises(RuntimeError, match=r"in use by another run \(pid 4242 on node7"):
            train(smoke_cfg("resume=true"), run_dir)
        assert files(run_dir) == before
    finally:
        os.close(fd)


def test_fresh_run_into_another_runs_directory_is_refused(run_dir):
    before = files(run_dir)
    with pytest.raises(RuntimeError, match="holds the results of a run") as info:
        train(smoke_cfg(), run_dir)
    for part in (str(run_dir), "resume=true", "hydra.run.dir=", "overwrite=true"):
        assert part in str(info.value)
    assert files(run_dir) == before


def test_overwrite_moves_the_previous_run_aside(run_dir):
    before = files(run_dir)
    train(smoke_cfg("collector.total_frames=100", "overwrite=true"), run_dir)
    (aside,) = run_dir.glob("overwritten_*")
    assert files(aside) == before  # every file of the old run, byte for byte
    assert eval_frames(run_dir) == [100]
    assert load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["frames"] == 100


def test_resume_without_a_checkpoint_keeps_the_results(run_dir):
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before its first checkpoint
    before = files(run_dir)
    with pytest.raises(RuntimeError, match="no checkpoint to resume from") as info:
        train(smoke_cfg("resume=true"), run_dir)
    assert "eval.csv (2 rows)" in str(info.value) and "overwrite=true" in str(info.value)
    assert files(run_dir) == before


def test_resume_in_an_empty_directory_starts_fresh_and_says_so(tmp_path, log_text):
    train(smoke_cfg("resume=true", "collector.total_frames=50"), tmp_path)
    assert "no checkpoint in" in log_text() and "starts fresh" in log_text()
    assert eval_frames(tmp_path) == [50]


@pytest.mark.parametrize(
    ("overrides", "difference"),
    [
        (("optim.lr=0.001",), "optim.lr: 0.0003 in the checkpoint, 0.001 now"),
        (("algo=qsm",), "algo.name: 'dqs' in the checkpoint, 'qsm' now"),
        (("algo=sac",), "algo.name: 'dqs' in the checkpoint, 'sac' now"),
        (("env.task=cartpole-swingup",), "env.task: 'cartpole-balance' in the checkpoint"),
        (("forgot the preset",), "algo.score_cells: 32 in the checkpoint, 256 now"),
    ],
    ids=["lr", "qsm", "sac", "task", "no-preset"],
)
def test_resume_into_another_runs_checkpoint_is_refused(run_dir, overrides, difference):
    if overrides == ("forgot the preset",):
        cfg = config("env.task=cartpole-balance", "resume=true")
    else:
        cfg = smoke_cfg("resume=true", *overrides)
    before = files(run_dir)
    with pytest.raises(RuntimeError, match="belongs to another run") as info:
        train(cfg, run_dir)
    message = str(info.value)
    assert difference in message
    assert "hydra.run.dir=" in message and "overwrite=true" in message
    assert files(run_dir) == before  # config.yaml still says what ran


def test_allowed_changes_on_resume_apply_and_are_logged(run_dir, log_text):
    train(smoke_cfg("resume=true", "eval.episodes=3", "checkpoint.keep_last=2"), run_dir)
    assert (
        "changed on resume (allowed): checkpoint.keep_last: 3 before, 2 now; "
        "eval.episodes: 2 before, 3 now" in log_text()
    )
    assert OmegaConf.load(run_dir / "config.yaml").eval.episodes == 3


def _strip_identity(run_dir: Path) -> None:
    """Make the run's checkpoints look written by the code before run identities."""
    for path in (run_dir / "checkpoints").glob("ckpt_*.pt"):
        blob = torch.load(path, weights_only=True)
        assert blob["state"].pop("identity", None) is not None
        torch.save(blob, path)


def test_checkpoint_without_identity_resumes_with_a_warning(run_dir, log_text):
    # Campaign runs started by older code must go on; what cannot be checked is said.
    _strip_identity(run_dir)
    summary = train(smoke_cfg("resume=true", "optim.lr=0.001"), run_dir)
    assert summary["frames"] == 200
    assert "records no run identity" in log_text() and "resumed from" in log_text()
    assert "optim.lr: 0.0003 before, 0.001 now" in log_text()  # against config.yaml


def test_checkpoint_from_another_code_version_resumes_with_a_warning(run_dir, log_text):
    newest = run_dir / "checkpoints" / "ckpt_000000000200.pt"
    blob = torch.load(newest, weights_only=True)
    identity = blob["state"]["identity"]
    identity["fields"]["algo.retired_option"] = 1  # a field the code has since removed
    identity["hash"] = "0" * 16  # ... so the recorded hash differs from this config's
    torch.save(blob, newest)
    assert train(smoke_cfg("resume=true"), run_dir)["frames"] == 200
    assert "config fields added or removed since" in log_text()
    assert "algo.retired_option: 1 in the checkpoint, (absent) now" in log_text()


def test_checkpoint_without_identity_with_other_networks_is_refused_clearly(run_dir):
    _strip_identity(run_dir)
    before = files(run_dir)
    with pytest.raises(RuntimeError, match="do not fit the agent of this config") as info:
        train(config("env.task=cartpole-balance", "resume=true"), run_dir)  # no preset
    assert "(32,) in the checkpoint, (256,) now" in str(info.value)
    with pytest.raises(RuntimeError, match="it holds the modules actor, critic, policy"):
        train(smoke_cfg("resume=true", "algo=sac"), run_dir)
    assert files(run_dir) == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resume=no", "resume must be true or false; got 'no'"),
        ("algo.tanh_correction=no", "algo.tanh_correction must be true or false"),
        ("algo.ema=off", "algo.ema must be true or false"),
        ("algo.prior=wide", "algo.prior must be one of paper, matched; got .wide."),
        ("+optim.lrr=1", "unknown config key 'optim.lrr'.*did you mean optim.lr"),
        ("+algo.temprature=9", "unknown config key 'algo.temprature'.*did you mean algo.temp"),
        ("optim.utd_ratio=inf", "optim.utd_ratio must be a finite number > 0.0, got inf"),
        ("algo.sigma_max=inf", "algo.sigma_max must be a finite number"),
        ("algo.q_cells=[0]", "algo.q_cells must be a non-empty list of integers >= 1"),
        ("algo.q_cells=abc", "algo.q_cells must be a non-empty list of integers >= 1"),
        ("seed=4294967296", r"seed must be an integer in \[0, "),
        ("resume=true overwrite=true", "resume=true and overwrite=true contradict"),
    ],
)
def test_strict_config(override, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(smoke_cfg(*override.split()))


def test_diffusion_actor_refuses_a_non_finite_sigma():
    spec = Bounded(-1.0, 1.0, shape=(2,))
    for sigma_max in (math.inf, math.nan):
        with pytest.raises(ValueError, match="sigma_max must be finite"):
            DiffusionActor(ScoreNetwork(3, 2, 8, 8), spec, num_steps=3, sigma_max=sigma_max)
        with pytest.raises(ValueError, match="sigma_max must be finite"):
            GeometricSchedule(1e-5, sigma_max)


def test_partial_eval_row_is_dropped_on_resume(run_dir):
    # Killed while writing the row of the evaluation at 250 frames, before its checkpoint:
    # the row was cut inside its first field.
    with open(run_dir / "eval.csv", "a") as f:
        f.write("2")
    train(smoke_cfg("resume=true", "collector.total_frames=250"), run_dir)
    assert eval_frames(run_dir) == [150, 200, 250]


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_bad_newest_checkpoint_names_the_previous_one(run_dir, damage, log_text):
    newest = run_dir / "checkpoints" / "ckpt_000000000200.pt"
    newest.write_bytes(b"" if damage == "empty" else newest.read_bytes()[:1000])
    before = files(run_dir)
    with pytest.raises(CheckpointError) as info:
        train(smoke_cfg("resume=true"), run_dir)
    message = str(info.value)
    assert f"cannot read checkpoint {newest}" in message
    assert ("empty (0 bytes)" if damage == "empty" else "truncated or corrupt") in message
    previous = run_dir / "checkpoints" / "ckpt_000000000100.pt"
    assert f"previous valid checkpoint is {previous} (100 frames)" in message
    assert f"mv {newest} {newest}.bad" in message and "resume=true" in message
    assert files(run_dir) == before
    newest.rename(f"{newest}.bad")  # the way out the message gives
    train(smoke_cfg("resume=true", "collector.total_frames=100"), run_dir)
    assert f"resumed from {previous}" in log_text()


def test_no_loadable_checkpoint_points_at_overwrite(run_dir):
    for path in (run_dir / "checkpoints").glob("ckpt_*.pt"):
        path.write_bytes(path.read_bytes()[:1000])
    before = files(run_dir)
    with pytest.raises(CheckpointError, match="No earlier checkpoint in .* loads.*overwrite=true"):
        train(smoke_cfg("resume=true"), run_dir)
    assert files(run_dir) == before
