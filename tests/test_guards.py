"""Non-finite losses stop training with a clear message; the last good checkpoint survives."""

import pytest
from hydra import compose, initialize_config_dir

from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness import (
    NonFiniteLossError,
    latest_checkpoint,
    load_checkpoint,
    train,
)

CONFIG = str(CONFIG_DIR)


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
    from dqs_torchrl.experiments.harness import CheckpointError

    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        train(smoke_cfg("collector.total_frames=200", "resume=true"), tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # the run's files are untouched


def test_cpu_run_is_repeatable_with_a_seed(tmp_path):
    """Two runs with the same seed end with bit-identical networks, buffers and evaluations."""
    import torch

    cfg = smoke_cfg("collector.total_frames=200", "algo=dqs")
    states = []
    for name in ("a", "b"):
        train(cfg, tmp_path / name)
        states.append(load_checkpoint(latest_checkpoint(tmp_path / name / "checkpoints")))
        assert states[-1]["frames"] == 200
    a, b = (s["agent"]["modules"] for s in states)
    for module in a:
        for key, value in a[module].items():
            assert torch.equal(value, b[module][key]), (module, key)
    buf_a, buf_b = (s["buffer"]["data"] for s in states)
    assert torch.equal(buf_a["observation"], buf_b["observation"])
    assert torch.equal(buf_a["action_raw"], buf_b["action_raw"])
    evals = [(tmp_path / n / "eval.csv").read_text() for n in ("a", "b")]
    assert evals[0] == evals[1]
    other = smoke_cfg("collector.total_frames=200", "algo=dqs", "seed=1")
    train(other, tmp_path / "c")
    c = load_checkpoint(latest_checkpoint(tmp_path / "c" / "checkpoints"))["agent"]["modules"]
    key = next(k for k in a["critic"] if k.startswith("qvalue_network_params") and "weight" in k)
    assert not torch.equal(c["critic"][key], a["critic"][key])  # another seed, another run
