"""`DQSTrainer`: DQS through `torchrl.trainers.Trainer.train()`."""

from __future__ import annotations

from typing import Any

import torch
from torchrl.collectors import BaseCollector
from torchrl.data import ReplayBuffer
from torchrl.objectives import SoftUpdate
from torchrl.record.loggers import Logger
from torchrl.trainers import (
    LogScalar,
    ReplayBufferTrainer,
    TargetNetUpdaterHook,
    Trainer,
)

from dqs_torchrl.objectives.dqs import DQSLoss
from dqs_torchrl.temperature import TemperatureController, TemperatureScheduler

__all__ = ["DQSTrainer"]


class DQSTrainer(Trainer):
    """A `torchrl.trainers.Trainer` wired for DQS, in the style of TorchRL's `SACTrainer`.

    Hooks registered: the replay buffer (extend each collected batch, sample `batch_size` for each
    optimisation step), `SoftUpdate` of the target Q-networks and of the actor's EMA after each
    optimiser step (`TargetNetUpdaterHook`), the [`TemperatureScheduler`][] on every collected
    batch, and the mean training reward on the progress bar. The collector and the loss share the
    actor module, so no weight sync is needed on one device.

    Args:
        collector: a TorchRL collector whose policy is the
            [`DiffusionActor`][dqs_torchrl.DiffusionActor].
        loss_module: a [`DQSLoss`][] (critic and score losses).
        optimizer: one optimiser over `loss_module.parameters()`.
        replay_buffer: where collected transitions go.
        batch_size: transitions per optimisation step (paper: 256).
        total_frames: environment frames to train for.

    Keyword Args:
        temperature_scheduler: optional; a [`TemperatureScheduler`][] is stepped with the
            frames of every batch, a [`TemperatureController`][] on every sampled optimisation
            batch.
        target_net_updater: defaults to `SoftUpdate(loss_module, tau=tau)`.
        tau: Polyak coefficient of the default updater (paper: 0.005).
        optim_steps_per_batch: defaults to one update per collected frame (the paper's ratio).
        clip_norm: gradient-norm clip (10 stabilised score training in our prototype).
        **kwargs: passed on to `Trainer` (`logger`, `progress_bar`, `log_interval`...).

    See `tests/test_integration.py` for a complete run on a dm_control task.
    """

    def __init__(
        self,
        *,
        collector: BaseCollector,
        loss_module: DQSLoss,
        optimizer: torch.optim.Optimizer,
        replay_buffer: ReplayBuffer,
        batch_size: int,
        total_frames: int,
        temperature_scheduler: TemperatureScheduler | TemperatureController | None = None,
        target_net_updater: SoftUpdate | None = None,
        tau: float = 0.005,
        optim_steps_per_batch: int | None = None,
        clip_norm: float | None = 10.0,
        logger: Logger | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(loss_module, DQSLoss):
            raise ValueError(f"loss_module must be a DQSLoss, got {type(loss_module).__name__}.")
        target_net_updater = target_net_updater or SoftUpdate(loss_module, tau=tau)
        if optim_steps_per_batch is None:
            optim_steps_per_batch = collector.frames_per_batch
        super().__init__(
            collector=collector,
            total_frames=total_frames,
            frame_skip=1,
            optim_steps_per_batch=optim_steps_per_batch,
            loss_module=loss_module,
            optimizer=optimizer,
            logger=logger,
            clip_grad_norm=clip_norm is not None,
            clip_norm=clip_norm,
            **kwargs,
        )
        self.replay_buffer = replay_buffer
        self.target_net_updater = target_net_updater
        buffer_hook = ReplayBufferTrainer(
            replay_buffer, batch_size=batch_size, flatten_tensordicts=True, memmap=False
        )
        self.register_op("batch_process", buffer_hook.extend)
        self.register_op("process_optim_batch", buffer_hook.sample)
        self.register_op("post_optim", TargetNetUpdaterHook(target_net_updater))
        if temperature_scheduler is not None:
            temperature_scheduler.register(self)
        self.register_op(
            "pre_steps_log",
            LogScalar(
                key=("next", "reward"), logname="r_training", log_pbar=True, reduction="mean"
            ),
        )
