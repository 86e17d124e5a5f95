"""A run killed with SIGKILL resumes from its last checkpoint and ends exactly like one that was
never interrupted: same networks, optimisers, replay buffer, RNG states, evaluations and logs.
Checkpoints written by older code (older layouts of the run state) resume too."""

import logging
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_recipes import recipe_command, run_recipe

from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness import latest_checkpoint, load_checkpoint, train

EPISODE = 70  # steps: episodes end at frames 70, 140, never on a checkpoint
OVERRIDES = (
    "collector.total_frames=200",
    f"env.max_episode_steps={EPISODE}",
    "collector.init_random_frames=50",  # updates from the second batch on: all is under way
    "optim.utd_ratio=0.33",  # 16.5 updates per batch: a fractional debt crosses the checkpoint
    "checkpoint.interval_frames=100",  # checkpoints at 100, 200; evaluations at 150, 200
)


def assert_same(a, b, path="state"):
    """Equal bit for bit: tensors with ``torch.equal`` (and dtype), the rest with ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys() ^ b.keys())
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, (path, a, b)


def kill_after_evaluation(recipe: str, run_dir: Path, frames: int) -> int:
    """Start ``recipe`` and SIGKILL it as soon as ``eval.csv`` has its row at ``frames``."""
    cmd, env = recipe_command(recipe, run_dir, *OVERRIDES)
    run_dir.mkdir(parents=True)
    with open(run_dir / "killed.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        try:
            while f"\n{frames}," not in _text(run_dir / "eval.csv"):
                assert proc.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "no evaluation in 300 s"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    return proc.returncode


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "experiment"),
    [("dqs_dmc.py", "dqs_cheetah-run_s0"), ("dqs_maze.py", "dqs_two-goal-maze_s0")],
)
def test_killed_run_resumes_exactly(tmp_path, recipe, experiment):
    whole, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    proc = run_recipe(recipe, whole, *OVERRIDES)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Killed right after the evaluation at 150 frames: its last checkpoint is at 100 frames,
    # 30 steps into the second episode, and rows past it are already in the logs.
    assert kill_after_evaluation(recipe, killed, 150) == -signal.SIGKILL
    ckpt = latest_checkpoint(killed / "checkpoints")
    assert ckpt is not None and ckpt.name == "ckpt_000000000100.pt"
    at_kill = load_checkpoint(ckpt)
    assert at_kill["frames"] % EPISODE != 0
    assert len(at_kill["collector"]["actions"]) == 100 - EPISODE  # mid-episode
    assert at_kill["agent"]["num_updates"] > 0
    scalars = Path("logs", experiment, "scalars")
    logged = _text(killed / scalars / "train" / "loss_qvalue.csv")
    assert "\n150," in logged  # a row the resume must drop (and log again)

    proc = run_recipe(recipe, killed, *OVERRIDES, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    assert "not identical to an uninterrupted" not in proc.stdout + proc.stderr

    # Networks, targets, optimisers, temperature, buffer, RNG states, counters and the
    # episode in progress, in every checkpoint both runs keep.
    names = sorted(p.name for p in (whole / "checkpoints").glob("ckpt_*.pt"))
    assert names == sorted(p.name for p in (killed / "checkpoints").glob("ckpt_*.pt"))
    assert names == ["ckpt_000000000100.pt", "ckpt_000000000200.pt"]
    for name in names:
        a, b = (load_checkpoint(run / "checkpoints" / name) for run in (whole, killed))
        assert_same(a, b, name)
    final = load_checkpoint(whole / "checkpoints" / names[-1])
    assert len(final["buffer"]["data"]["observation"]) == 200
    assert (whole / "eval.csv").read_text() == (killed / "eval.csv").read_text()
    logs = {p.relative_to(whole) for p in (whole / scalars).rglob("*.csv")}
    assert logs == {p.relative_to(killed) for p in (killed / scalars).rglob("*.csv")}
    assert whole / scalars / "train" / "loss_qvalue.csv" in {whole / p for p in logs}
    for path in logs:
        assert (whole / path).read_text() == (killed / path).read_text(), path


# Checkpoints of older layouts of the run state (harness.state.VERSION), as the code of their
# time wrote them, made out of a checkpoint of today's layout.


def as_layout_1(state: dict) -> dict:
    """``state`` as the code from exact resume to layout 2 wrote it: no ``version``, the buffer's
    writer as a bare ``cursor``, the generators in a layout of that code's own."""
    rng, buffer = state["rng"], state["buffer"]
    python, numpy = rng["python"], rng["numpy"]
    old = {k: v for k, v in state.items() if k not in ("version", "buffer", "rng")}
    old["buffer"] = {
        "data": buffer["data"],
        "length": buffer["length"],
        "cursor": buffer["replay_buffer"]["_writer"]["_cursor"],
    }
    old["rng"] = {
        "torch": rng["torch_cpu"],
        "numpy": {
            "keys": numpy[1],
            "pos": numpy[2],
            "has_gauss": numpy[3],
            "cached_gaussian": numpy[4],
        },
        "python": {
            "version": python[0],
            "internal": torch.tensor(python[1], dtype=torch.int64),
            "gauss_next": python[2],
        },
        "cuda": None,
    }
    return old


def as_before_exact_resume(state: dict) -> dict:
    """``state`` as the first harness wrote it: networks, buffer, frames, the torch generator."""
    old = as_layout_1(state)
    return {key: old[key] for key in ("agent", "buffer", "frames")} | {
        "torch_rng": old["rng"]["torch"]
    }


BUFFER = 90  # rows: full by the checkpoint at 100 frames, so its writer's cursor is not its length


def smoke_cfg(*overrides: str):
    smoke = ("+preset=smoke", "env.task=cartpole-balance", f"buffer.size={BUFFER}")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("dqs_dmc", overrides=[*smoke, *OVERRIDES, *overrides])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(smoke_cfg(), run_dir)
    return run_dir


@pytest.mark.parametrize("layout", [as_layout_1, as_before_exact_resume])
def test_checkpoint_of_an_older_layout_resumes(uninterrupted, tmp_path, caplog, layout):
    # The run as if killed before its checkpoint at 200 frames, by code of an older layout.
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "checkpoints" / "ckpt_000000000200.pt").unlink()
    ckpt = run_dir / "checkpoints" / "ckpt_000000000100.pt"
    blob = torch.load(ckpt, weights_only=True)
    at_kill = blob["state"]
    assert len(at_kill["collector"]["actions"]) == 100 - EPISODE  # mid-episode
    assert at_kill["buffer"]["replay_buffer"]["_writer"]["_cursor"] == 100 - BUFFER
    blob["state"] = layout(at_kill)
    torch.save(blob, ckpt)

    caplog.set_level(logging.INFO, logger="dqs_torchrl")
    train(smoke_cfg("resume=true"), run_dir)
    assert f"resumed from {ckpt} at 100 frames" in caplog.text
    name = "ckpt_000000000200.pt"
    whole = load_checkpoint(uninterrupted / "checkpoints" / name)
    resumed = load_checkpoint(run_dir / "checkpoints" / name)
    if layout is as_layout_1:  # it held all that exact resume needs
        assert "not identical to an uninterrupted" not in caplog.text
        assert_same(whole, resumed, name)
        assert (run_dir / "eval.csv").read_text() == (uninterrupted / "eval.csv").read_text()
    else:  # the episode in progress restarts, and the log says so
        assert "the episode in progress restarts" in caplog.text
        assert resumed["frames"] == 200 and resumed["version"] == whole["version"]
        assert resumed["agent"]["num_updates"] > at_kill["agent"]["num_updates"]
        assert len(resumed["buffer"]["data"]["observation"]) == BUFFER
        rows = (run_dir / "eval.csv").read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == [150, 200]
