"""Multi-process and Ray collection by a config switch: workers act with the trained weights."""

from importlib import metadata

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchrl.envs.utils import ExplorationType, set_exploration_type

from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness import make_agent, make_env
from dqs_torchrl.experiments.harness.config import ConfigError, validate_config
from dqs_torchrl.experiments.harness.loop import _make_collector

CONFIG = str(CONFIG_DIR)

try:
    metadata.version("ray")
    HAS_RAY = True
except metadata.PackageNotFoundError:
    HAS_RAY = False


def smoke_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG, version_base="1.3"):
        return compose(
            "dqs_dmc", overrides=["+preset=smoke", "env.task=cartpole-balance", *overrides]
        )


@pytest.mark.parametrize(
    ("backend", "sync"),
    [
        ("local", True),
        ("local", False),
        pytest.param(
            "ray",
            True,
            marks=pytest.mark.skipif(
                not HAS_RAY, reason="ray is not installed: pip install -e '.[ray]' (part of dev)"
            ),
        ),
    ],
)
def test_workers_receive_updated_weights(backend, sync, monkeypatch):
    if backend == "ray":  # keep the local Ray instance on 127.0.0.1, not the machine's address
        from ray._private import ray_constants

        monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
        monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # as the harness sets by default
    cfg = smoke_cfg(
        "collector.num_workers=2", f"collector.backend={backend}", f"collector.sync={sync}"
    )
    validate_config(cfg)
    torch.manual_seed(0)
    env = make_env(cfg, cfg.seed)
    agent = make_agent(cfg, env)
    actor = agent.policy
    collector = _make_collector(
        cfg,
        env,
        actor,
        frames_per_batch=20,
        total_frames=40,
        exploration_type=ExplorationType.DETERMINISTIC,
    )
    try:
        expected_class = {
            ("local", True): "MultiSyncCollector",
            ("local", False): "MultiAsyncCollector",
            ("ray", True): "RayCollector",
        }[backend, sync]
        assert type(collector).__name__ == expected_class
        with torch.no_grad():  # a "training step": change the weights the workers act with
            for p in actor.ema_network.buffers():
                if p.is_floating_point() and p.dim() == 2:
                    p.add_(0.3 * torch.randn_like(p))
        collector.update_policy_weights_()
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    # Sync: one row per worker process / Ray actor; async: one worker's batch as it comes.
    assert batch.shape == ((2, 10) if sync else (20,)), batch.shape
    flat = batch.reshape(-1)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        expected, _ = actor.sample(flat["observation"], deterministic=True)
    # Deterministic actions are a function of the state and the weights: equal only if the
    # workers act with the changed weights (MultiSyncCollector shares the policy's storage,
    # and update_policy_weights_ pushes them where it does not, as to Ray actors).
    torch.testing.assert_close(flat["action"], expected, rtol=1e-5, atol=1e-5)


def test_backend_is_validated(monkeypatch):
    with pytest.raises(ConfigError, match="collector.backend must be one of local, ray"):
        validate_config(smoke_cfg("collector.backend=dask"))
    with pytest.raises(ConfigError, match="collector.sync must be true or false; got 'often'"):
        validate_config(smoke_cfg("collector.sync=often"))

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    with pytest.raises(ConfigError, match=r"needs the ray package.*\.\[ray\]"):
        validate_config(smoke_cfg("collector.backend=ray"))
    monkeypatch.undo()
    if HAS_RAY:
        with pytest.raises(ConfigError, match="frames_per_batch must be a multiple of"):
            validate_config(smoke_cfg("collector.backend=ray", "collector.num_workers=3"))
