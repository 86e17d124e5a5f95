"""The temperature T of the Boltzmann policy over training: scheduled, or controlled.

[`TemperatureScheduler`][] sets `T(frames)` from a fixed schedule (the paper's);
[`TemperatureController`][] adapts T towards a target entropy of the policy's actions,
estimated from actor samples by [`squashed_entropy`][].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torchrl.trainers import Trainer, TrainerHookBase

from dqs_torchrl._checks import check_positive_int, check_temperature
from dqs_torchrl.energy import tanh_log_jacobian

__all__ = [
    "TemperatureScheduler",
    "TemperatureController",
    "knn_entropy",
    "squashed_entropy",
]

SCHEDULES = ("constant", "exponential", "linear")


def _check_targets(targets: Sequence[nn.Module]) -> list[nn.Module]:
    for target in targets:
        if not isinstance(getattr(target, "temperature", None), torch.Tensor):
            raise ValueError(f"{type(target).__name__} has no temperature buffer to schedule.")
    return list(targets)


def _fill(targets: Sequence[nn.Module], value: float) -> None:
    with torch.no_grad():
        for target in targets:
            target.temperature.fill_(value)


class TemperatureScheduler(TrainerHookBase):
    """Sets `T(frames)` on every module it drives (actor and losses) as frames go by.

    Schedules, with `p = min(frames / total_frames, 1)`:

    - `"constant"`: `T = initial` (DMC in the paper: 0.05);
    - `"exponential"`: `T = initial * (final / initial) ** p` (maze: 10 -> 1);
    - `"linear"`: `T = initial + (final - initial) * p`.

    Each target must own a scalar `temperature` buffer
    ([`DiffusionActor`][dqs_torchrl.DiffusionActor], [`IDEMScoreLoss`][dqs_torchrl.IDEMScoreLoss],
    [`DoubleQLoss`][dqs_torchrl.DoubleQLoss] do); it is updated in place. Call [`step`][] with the
    number of new frames, or register the scheduler as a `torchrl.trainers.Trainer` hook (it counts
    the frames of each collected batch). [`TemperatureController`][] takes the same slot and adapts
    T instead.

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
        self.targets = _check_targets(targets)
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
        _fill(self.targets, self.value)

    def step(self, frames: int = 1) -> None:
        """Advance by `frames` environment frames and push the new T into the targets."""
        if isinstance(frames, bool) or int(frames) != frames or frames < 0:
            raise ValueError(
                f"frames must be an integer >= 0 (frames only move forward), got {frames!r}."
            )
        self.frames += int(frames)
        self._push()

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        """Trainer `batch_process` hook: count the batch's frames, return it unchanged."""
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


_TINY = 1e-12  # floor of distances and spreads: a collapsed sample set reads as very low entropy


def knn_entropy(samples: Tensor, k: int = 1) -> Tensor:
    """Kozachenko–Leonenko estimate of the differential entropy (nats) of each sample set.

    For `M` samples `y_i` in `R^d` (the last two dimensions of `samples`; any leading
    batch shape) with `eps_i` the distance from `y_i` to its `k`-th nearest neighbour,

    $$
    \\hat H = \\psi(M) - \\psi(k) + \\log V_d + \\frac{d}{M} \\sum_i \\log \\epsilon_i,
    \\qquad V_d = \\frac{\\pi^{d/2}}{\\Gamma(d/2 + 1)}.
    $$

    Each coordinate is first divided by its sample standard deviation `s_j` and
    `sum_j log s_j` is added back (exact for a linear map): on anisotropic sets this removes
    most of the estimator's bias (docs/method.md has the measurements). Computed in float64.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> h = knn_entropy(torch.randn(4000, 1))  # exact: log(2 pi e) / 2 = 1.419
        >>> abs(h.item() - 1.419) < 0.05
        True
    """
    check_positive_int(k, "k")
    num, dim = samples.shape[-2:]
    if num <= k:
        raise ValueError(f"knn_entropy needs more than k={k} samples per set, got {num}.")
    y = samples.double()
    spread = y.std(-2, keepdim=True).clamp_min(_TINY)
    dist = torch.cdist(y / spread, y / spread)
    dist.diagonal(dim1=-2, dim2=-1).fill_(math.inf)
    eps = dist.kthvalue(k, dim=-1).values.clamp_min(_TINY)
    log_unit_ball = dim / 2 * math.log(math.pi) - math.lgamma(dim / 2 + 1)
    constant = torch.special.digamma(y.new_tensor(float(num))) - torch.special.digamma(
        y.new_tensor(float(k))
    )
    return constant + log_unit_ball + dim * eps.log().mean(-1) + spread.log().sum(-1).squeeze(-1)


def squashed_entropy(latent: Tensor, k: int = 1) -> Tensor:
    """Entropy (nats) of the box-normalised action `u = tanh(x)` in `[-1, 1]^d`, from
    samples `latent` of shape `[..., M, d]` of the pre-tanh latent `x`.

    By the change of variables `u = tanh(x)`,

    $$
    H(u) = H(x) + \\mathbb E \\sum_j \\log(1 - \\tanh^2 x_j),
    $$

    with `H(x)` from [`knn_entropy`][] and the log-Jacobian exact per sample. The latent
    density is smooth and unbounded, so the estimate has none of the boundary bias of a
    nearest-neighbour estimate in the box, and actions saturated at a face (identical in
    float32) stay distinct. For the action `a = squash(x)` on `[low, high]`,
    `H(a) = H(u) + sum_j log((high_j - low_j) / 2)`.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> u = 2 * torch.rand(4000, 1) - 1  # uniform on [-1, 1]: H = log 2 = 0.693
        >>> abs(squashed_entropy(torch.atanh(u)).item() - 0.693) < 0.05
        True
    """
    return knn_entropy(latent, k) + tanh_log_jacobian(latent.double()).mean(-1)


class ActionSampler(Protocol):
    """What [`TemperatureController`][] needs of a policy: `sample(observation, T)`
    returning `(action, latent)` with `action = squash(latent)`, as
    [`DiffusionActor.sample`][dqs_torchrl.DiffusionActor.sample] does."""

    def sample(self, observation: Tensor, temperature: float) -> tuple[Tensor, Tensor]: ...


class TemperatureController(TrainerHookBase):
    """Adapts T towards a target entropy of the policy's actions on the action box.

    Every `interval` calls of [`step`][] (one call per gradient update), it draws
    `num_samples` actions from `sampler` at the current T for each of the first
    `num_states` observations of the replay batch, estimates the entropy `H` of the
    box-normalised action `u = 2 (a - low) / (high - low) - 1` in `[-1, 1]^d` (averaged over
    the states, [`squashed_entropy`][]), and moves `log T`:

    $$
    \\log T \\leftarrow \\mathrm{clip}\\Big(\\log T + \\eta\\,
    \\mathrm{clip}\\big(\\tfrac{H^* - \\hat H}{d}, -1, 1\\big),\\
    \\log T_{\\min}, \\log T_{\\max}\\Big).
    $$

    The update is monotone because `dH/dT = Var_pi(Q) / T^3 >= 0` for
    `pi ∝ exp(Q / T)`: too little entropy raises T, too much lowers it. Dividing the error by
    `d` makes the gain independent of the action dimension (near a Gaussian mode
    `dH/dlog T = d / 2`, so each step closes about `eta / 2` of the gap in `log T`); the
    inner clip bounds one step to a factor `e^eta` in T whatever the estimate.

    `target_entropy="auto"` is SAC's `-d` nats, here for `u` (so `-1` nat per action
    dimension of the box-normalised action, whatever the box: the uniform policy has
    `d log 2`). For the action itself, `H(a) = H(u) + sum_j log((high_j - low_j) / 2)`.

    Cost: `num_states * num_samples` actions through the sampler every `interval` updates
    (default 8 x 64 = 512 every 10: one batched sampler call), plus `num_states` distance
    matrices of `num_samples^2` entries.

    Early training: where Q is still flat the policy is near uniform at every T, its entropy
    `d log 2` exceeds any reachable target, and T falls towards `min_temperature` until Q
    has structure. `warmup_steps` holds T at `initial` for that many calls of
    [`step`][] (the estimate is still made and reported in `entropy`).

    Each target must own a `temperature` buffer, as for [`TemperatureScheduler`][].
    Use it in a plain loop (`controller.step(batch)` after each update, `batch` the replay
    sample or its observations) or as a `torchrl.trainers.Trainer` hook (`register`:
    a `process_optim_batch` op that steps on each sampled batch).

    Args:
        targets: the modules whose `temperature` buffers are set (actor and losses).
        sampler: draws `(action, latent)` for observations at a temperature; the
            [`DiffusionActor`][dqs_torchrl.DiffusionActor] (its EMA network, if any, as it acts).

    Keyword Args:
        target_entropy: `"auto"` (`-d`) or a number of nats of `u`, below `d log 2`.
        initial: the starting temperature.
        lr: `eta`, the step on `log T` per nat of error per action dimension.
        min_temperature: lower clamp of T.
        max_temperature: upper clamp of T.
        num_states: observations of each batch used for the estimate.
        num_samples: actions drawn per observation (`>= 2`).
        interval: estimate (and update) every this many calls of [`step`][].
        warmup_steps: calls of [`step`][] before T starts to move.
        action_dim: `d`; defaults to the size of `sampler.low` (a `DiffusionActor`'s).
        observation_key: where the batch holds observations.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from dqs_torchrl import DiffusionActor, ScoreNetwork
        >>> actor = DiffusionActor(ScoreNetwork(3, 2, 16, 8), Bounded(-1.0, 1.0, shape=(2,)),
        ...                        num_steps=5)
        >>> ctrl = TemperatureController([actor], actor, initial=0.5, num_states=4,
        ...                              num_samples=8, interval=1)
        >>> ctrl.target_entropy
        -2.0
        >>> ctrl.step(TensorDict(observation=torch.randn(32, 3), batch_size=[32]))
        >>> ctrl.entropy is not None, abs(float(actor.temperature) - ctrl.value) < 1e-6
        (True, True)
    """

    MAX_ERROR = 1.0  # nats per action dimension: one step changes T by at most a factor e^lr

    def __init__(
        self,
        targets: Sequence[nn.Module],
        sampler: ActionSampler,
        *,
        target_entropy: float | str = "auto",
        initial: float = 1.0,
        lr: float = 0.1,
        min_temperature: float = 1e-3,
        max_temperature: float = 100.0,
        num_states: int = 8,
        num_samples: int = 64,
        interval: int = 10,
        warmup_steps: int = 0,
        action_dim: int | None = None,
        observation_key: NestedKey = "observation",
    ) -> None:
        self.targets = _check_targets(targets)
        if not callable(getattr(sampler, "sample", None)):
            raise ValueError(
                f"sampler must have a sample(observation, temperature) method returning "
                f"(action, latent), like DiffusionActor; got {type(sampler).__name__}."
            )
        self.sampler = sampler
        if action_dim is None:
            low = getattr(sampler, "low", None)
            if not isinstance(low, Tensor):
                raise ValueError("pass action_dim: the sampler has no low bound to read it from.")
            action_dim = low.shape[-1]
        self.action_dim = check_positive_int(action_dim, "action_dim")
        max_entropy = self.action_dim * math.log(2.0)  # the uniform policy on the box
        if target_entropy == "auto":
            target_entropy = -float(self.action_dim)
        elif isinstance(target_entropy, bool) or not isinstance(target_entropy, int | float):
            raise ValueError(f"target_entropy must be 'auto' or a number, got {target_entropy!r}.")
        if not (math.isfinite(target_entropy) and target_entropy < max_entropy):
            raise ValueError(
                f"target_entropy must be finite and below d log 2 = {max_entropy:.4g} (the "
                f"uniform policy on the box, d = {self.action_dim}), got {target_entropy!r}."
            )
        self.target_entropy = float(target_entropy)
        self.min_temperature = check_temperature(min_temperature, "min_temperature")
        self.max_temperature = check_temperature(max_temperature, "max_temperature")
        if not self.min_temperature < self.max_temperature:
            raise ValueError(
                f"min_temperature must be below max_temperature, got {min_temperature} and "
                f"{max_temperature}."
            )
        initial = check_temperature(initial, "initial")
        if not self.min_temperature <= initial <= self.max_temperature:
            raise ValueError(
                f"initial must lie in [min_temperature, max_temperature] = "
                f"[{self.min_temperature}, {self.max_temperature}], got {initial}."
            )
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
        self.lr = float(lr)
        self.num_states = check_positive_int(num_states, "num_states")
        if check_positive_int(num_samples, "num_samples") < 2:
            raise ValueError(f"num_samples must be >= 2 (nearest neighbours), got {num_samples}.")
        self.num_samples = num_samples
        self.interval = check_positive_int(interval, "interval")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
        self.warmup_steps = warmup_steps
        self.observation_key = observation_key
        self.log_temperature = math.log(initial)
        self.num_steps = 0
        self.entropy: float | None = None  # the latest estimate
        _fill(self.targets, self.value)

    @property
    def value(self) -> float:
        """The current temperature."""
        return math.exp(self.log_temperature)

    @torch.no_grad()
    def estimate_entropy(self, observation: Tensor) -> float:
        """Mean over `observation` (`[num_states, obs_dim]`) of the entropy of `u` under
        the sampler at the current T ([`squashed_entropy`][])."""
        obs = observation.unsqueeze(-2).expand(*observation.shape[:-1], self.num_samples, -1)
        _, latent = self.sampler.sample(obs, self.value)
        return squashed_entropy(latent).mean().item()

    def step(self, batch: TensorDictBase | Tensor) -> None:
        """Count one update; every `interval`-th, estimate the entropy on the observations
        of `batch` (a replay sample, or its observation tensor) and, past the warm-up, move
        T and push it into the targets."""
        self.num_steps += 1
        if self.num_steps % self.interval:
            return
        observation = batch if isinstance(batch, Tensor) else batch.get(self.observation_key)
        observation = observation.flatten(0, -2)[: self.num_states]  # any batch shape
        self.entropy = self.estimate_entropy(observation)
        if self.num_steps <= self.warmup_steps or not math.isfinite(self.entropy):
            return  # a sampler gone non-finite leaves T as it was (the losses will say more)
        error = (self.target_entropy - self.entropy) / self.action_dim
        error = min(max(error, -self.MAX_ERROR), self.MAX_ERROR)
        low, high = math.log(self.min_temperature), math.log(self.max_temperature)
        self.log_temperature = min(max(self.log_temperature + self.lr * error, low), high)
        _fill(self.targets, self.value)

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        """Trainer `process_optim_batch` hook: step on the sampled batch, return it."""
        self.step(batch)
        return batch

    def register(self, trainer: Trainer, name: str = "temperature_controller") -> None:
        trainer.register_op("process_optim_batch", self)
        trainer.register_module(name, self)

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_temperature": self.log_temperature,
            "num_steps": self.num_steps,
            "entropy": self.entropy,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.log_temperature = float(state_dict["log_temperature"])
        self.num_steps = int(state_dict["num_steps"])
        self.entropy = state_dict["entropy"]
        _fill(self.targets, self.value)
