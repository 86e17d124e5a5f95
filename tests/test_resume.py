"""A run killed with SIGKILL resumes from its last checkpoint and ends exactly like one that was
never interrupted: same networks, optimisers, replay buffer, RNG states, evaluations and logs."""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from test_recipes import recipe_command, run_recipe

from dqs_torchrl.experiments.harness import latest_checkpoint, load_checkpoint

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
