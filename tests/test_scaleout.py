"""Multi-process collection by a config switch: workers act with the trained weights."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torchrl.envs.utils import ExplorationType, set_exploration_type

from dqs_torchrl.harness import make_agent, make_env
from dqs_torchrl.harness.loop import _make_collector

CONFIG = str(Path(__file__).resolve().parents[1] / "recipes" / "config")


def test_multisync_workers_receive_updated_weights():
    with initialize_config_dir(config_dir=CONFIG, version_base="1.3"):
        cfg = compose("dqs_dmc", overrides=["+preset=smoke", "env.task=cartpole-balance",
                                            "collector.num_workers=2"])
    torch.manual_seed(0)
    env = make_env(cfg, cfg.seed)
    agent = make_agent(cfg, env)
    actor = agent.policy
    collector = _make_collector(cfg, env, actor, frames_per_batch=20, total_frames=40,
                                exploration_type=ExplorationType.DETERMINISTIC)
    try:
        with torch.no_grad():  # a "training step": change the weights the workers act with
            for p in actor.ema_network.buffers():
                if p.is_floating_point() and p.dim() == 2:
                    p.add_(0.3 * torch.randn_like(p))
        collector.update_policy_weights_()
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    assert batch.shape[0] == 2  # one row per worker process
    flat = batch.reshape(-1)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        expected, _ = actor.sample(flat["observation"], deterministic=True)
    # Deterministic actions are a function of the state and the weights: equal only if the
    # workers act with the changed weights (MultiSyncCollector shares the policy's storage,
    # and update_policy_weights_ pushes them where it does not).
    torch.testing.assert_close(flat["action"], expected, rtol=1e-5, atol=1e-5)
