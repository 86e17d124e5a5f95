"""The experiment harness the recipes share: agents, the loop (with ``make_env`` over the env
factories of :mod:`dqs_torchrl.experiments.envs` and :mod:`~dqs_torchrl.experiments.maze`),
checkpoints, run directories, plots."""

from dqs_torchrl.experiments.harness.agents import Agent, NonFiniteLossError, make_agent, make_sac
from dqs_torchrl.experiments.harness.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dqs_torchrl.experiments.harness.config import ConfigError, compose_config, validate_config
from dqs_torchrl.experiments.harness.loop import evaluate, make_env, train
from dqs_torchrl.experiments.harness.rundir import RunDirError

__all__ = [
    "Agent",
    "NonFiniteLossError",
    "make_agent",
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
    "train",
]
