"""Non-finite losses stop training with a clear message; the last good checkpoint survives."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dqs_torchrl.harness import NonFiniteLossError, latest_checkpoint, load_checkpoint, train

CONFIG = str(Path(__file__).resolve().parents[1] / "recipes" / "config")


def smoke_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG, version_base="1.3"):
        return compose(
            "dqs_dmc", overrides=["+preset=smoke", "env.task=cartpole-balance", *overrides]
        )


def test_nonfinite_score_target_stops_the_run(tmp_path):
    # T = 1e-38 passes validation (> 0) but Q / T overflows float32: the first score target
    # is not finite. Frames 0-100 are random (no update) and checkpointed at 100.
    cfg = smoke_cfg("algo.temperature.initial=1e-38")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, tmp_path)
    message = str(info.value)
    assert "in the actor loss at update 0" in message
    assert "frames=150" in message
    assert "untouched" in message
    snapshots = list((tmp_path / "diagnostics").glob("nonfinite_*.pt"))
    assert len(snapshots) == 1
    good = latest_checkpoint(tmp_path / "checkpoints")
    state = load_checkpoint(good)  # still loads with weights_only=True
    assert state["frames"] == 100 and state["agent"]["num_updates"] == 0


def test_resume_of_a_truncated_checkpoint_fails_clearly(tmp_path):
    cfg = smoke_cfg("collector.total_frames=100")
    train(cfg, tmp_path)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # a save cut short by hand
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    from dqs_torchrl.harness import CheckpointError

    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(smoke_cfg("collector.total_frames=200", "resume=true"), tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the run's files are untouched
