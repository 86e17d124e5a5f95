"""The experiment harness the recipes share: env factory, agents, loop, checkpoints, run
directories, plots."""

from dqs_torchrl.harness.agents import Agent, NonFiniteLossError, make_agent, make_sac
from dqs_torchrl.harness.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from dqs_torchrl.harness.config import ConfigError, validate_config
from dqs_torchrl.harness.loop import evaluate, make_env, train
from dqs_torchrl.harness.rundir import RunDirError

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
    "validate_config",
    "RunDirError",
    "evaluate",
    "make_env",
    "train",
]
