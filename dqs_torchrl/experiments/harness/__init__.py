"""The experiment harness the recipes share: agents, the loop (with `make_env` over the env
factories of [`dqs_torchrl.experiments.envs`][] and [`maze`][dqs_torchrl.experiments.maze]),
checkpoints, run directories, plots, and a trained policy out of a run ([`load_policy`][],
[`export_policy`][])."""

from dqs_torchrl.experiments.harness.agents import (
    Agent,
    NonFiniteLossError,
    make_agent,
    make_policy,
    make_sac,
)
from dqs_torchrl.experiments.harness.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dqs_torchrl.experiments.harness.config import ConfigError, compose_config, validate_config
from dqs_torchrl.experiments.harness.loop import evaluate, make_env, make_logger, train
from dqs_torchrl.experiments.harness.policy import (
    TrainedPolicy,
    export_policy,
    load_policy,
    load_run_config,
    load_trained_policy,
)
from dqs_torchrl.experiments.harness.rundir import RunDirError

__all__ = [
    "Agent",
    "NonFiniteLossError",
    "make_agent",
    "make_policy",
    "make_sac",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "ConfigError",
    "compose_config",
    "validate_config",
    "RunDirError",
    "evaluate",
    "make_env",
    "make_logger",
    "train",
    "export_policy",
    "load_policy",
    "load_run_config",
    "load_trained_policy",
    "TrainedPolicy",
]
