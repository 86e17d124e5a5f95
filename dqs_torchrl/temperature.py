"""``TemperatureScheduler``: the temperature T of the Boltzmann policy over training frames."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.trainers import Trainer, TrainerHookBase

from dqs_torchrl._checks import check_temperature

__all__ = ["TemperatureScheduler"]

SCHEDULES = ("constant", "exponential", "linear")


class TemperatureScheduler(TrainerHookBase):
    """Sets ``T(frames)`` on every module it drives (actor and losses) as frames go by.

    Schedules, with ``p = min(frames / total_frames, 1)``:

    - ``"constant"``: ``T = initial`` (DMC in the paper: 0.05);
    - ``"exponential"``: ``T = initial * (final / initial) ** p`` (maze: 10 -> 1);
    - ``"linear"``: ``T = initial + (final - initial) * p``.

    Each target must own a scalar ``temperature`` buffer (:class:`~dqs_torchrl.DiffusionActor`,
    :class:`~dqs_torchrl.IDEMScoreLoss`, :class:`~dqs_torchrl.DoubleQLoss` do); it is updated
    in place. Call :meth:`step` with the number of new frames, or register the scheduler as a
    ``torchrl.trainers.Trainer`` hook (it counts the frames of each collected batch).

    Examples:
        >>> from dqs_torchrl import DiffusionActor, ScoreNetwork
        >>> from torchrl.data import Bounded
        >>> actor = DiffusionActor(ScoreNetwork(3, 1, 8, 8), Bounded(-1.0, 1.0, shape=(1,)))
        >>> sched = TemperatureScheduler([actor], schedule="exponential", initial=10.0,
        ...                              final=1.0, total_frames=1000)
        >>> sched.step(500)
        >>> round(float(actor.temperature), 4)
        3.1623
        >>> state = sched.state_dict()
        >>> sched.step(500); sched.load_state_dict(state); sched.frames
        500
    """

    def __init__(
        self,
        targets: Sequence[nn.Module],
        *,
        schedule: str = "constant",
        initial: float = 1.0,
        final: float | None = None,
        total_frames: int | None = None,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
        self.initial = check_temperature(initial, "initial")
        if schedule != "constant":
            if final is None or total_frames is None:
                raise ValueError(f"schedule={schedule!r} needs both final and total_frames.")
            if not total_frames >= 1:
                raise ValueError(f"total_frames must be >= 1, got {total_frames!r}.")
        self.final = check_temperature(final, "final") if final is not None else self.initial
        for target in targets:
            if not isinstance(getattr(target, "temperature", None), torch.Tensor):
                raise ValueError(f"{type(target).__name__} has no temperature buffer to schedule.")
        self.targets = list(targets)
        self.schedule = schedule
        self.total_frames = total_frames
        self.frames = 0
        self._push()

    @property
    def value(self) -> float:
        """The temperature at the current frame count."""
        if self.schedule == "constant":
            return self.initial
        progress = min(self.frames / self.total_frames, 1.0)
        if self.schedule == "exponential":
            return self.initial * (self.final / self.initial) ** progress
        return self.initial + (self.final - self.initial) * progress

    def _push(self) -> None:
        value = self.value
        with torch.no_grad():
            for target in self.targets:
                target.temperature.fill_(value)

    def step(self, frames: int = 1) -> None:
        """Advance by ``frames`` environment frames and push the new T into the targets."""
        self.frames += int(frames)
        self._push()

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        """Trainer ``batch_process`` hook: count the batch's frames, return it unchanged."""
        self.step(batch.numel())
        return batch

    def register(self, trainer: Trainer, name: str = "temperature_scheduler") -> None:
        trainer.register_op("batch_process", self)
        trainer.register_module(name, self)

    def state_dict(self) -> dict[str, Any]:
        return {"frames": self.frames}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frames = int(state_dict["frames"])
        self._push()
