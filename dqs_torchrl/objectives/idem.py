"""`IDEMScoreLoss`: policy improvement for DQS by iDEM's Monte Carlo score matching."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictParams
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule

from dqs_torchrl._checks import (
    check_last_dim,
    check_positive_int,
    check_reduction,
    check_temperature,
    require_keys,
)
from dqs_torchrl.actor import DiffusionActor
from dqs_torchrl.energy import tanh_log_jacobian, unsquash
from dqs_torchrl.objectives.double_q import DoubleQLoss, check_critic_keys

__all__ = ["IDEMScoreLoss"]


class IDEMScoreLoss(LossModule):
    """Regress the actor's score network onto iDEM's Monte Carlo score of `exp(Q/T)`.

    For a replay pair `(s, a)` with latent `x_a`, `tau ~ U[0, 1]` and
    `x = x_a + sigma(tau) eps`, the target is

    $$
    S_K(s, x, \\tau) = \\nabla_x \\log \\sum_{i=1}^K \\exp(-E(s, x_i))
    = \\sum_i \\mathrm{softmax}_i(-E_i)\\, \\nabla_x(-E)(s, x_i),
    \\qquad x_i = x + \\sigma(\\tau) \\epsilon_i,
    $$

    with the latent energy `-E(s, x) = Q(s, squash(x)) / T + sum_j log(1 - tanh(x_j)^2)`
    (the log-Jacobian is dropped with `tanh_correction=False`, the paper-literal form). The
    weights come from a logsumexp (`exp(Q/T)` is never formed) and are detached; the K*B
    gradients come from one autograd call. The loss is
    `mean(w(sigma) * ||f_phi(s, x, tau, T) - S_K||^2)` with `w = sigma^2 + 1e-3` by default
    (iDEM's weighting; unweighted regression diverged in our prototype).

    Args:
        actor_network: the [`DiffusionActor`][] whose score network is trained.
        critic: either a [`DoubleQLoss`][] — its *current* Q-networks are read
            at every call (min over the ensemble, parameters detached) — or any TensorDict
            module reading `observation` and `action` and writing `state_action_value`,
            such as [`EnergyCritic`][dqs_torchrl.EnergyCritic] for a fixed energy `Q = -E`.

    Keyword Args:
        num_mc_samples: K, the number of Monte Carlo samples per target (paper: 1000).
        temperature: `T > 0`; set by [`TemperatureScheduler`][dqs_torchrl.TemperatureScheduler].
        max_score_norm: clip each target vector to this norm (iDEM: 20-70); `None` = off.
        tanh_correction: include the tanh change of variables in the energy (default).
        energy: where the critic is read. `"squashed"` (default): `Q(s, squash(x))`, the
            Boltzmann policy on the action box, with `tanh_correction`. `"unbounded"`:
            the paper's eq. (9) read literally — the training point is the replay *action*
            (mapped linearly to `[-1, 1]`), its Gaussian perturbations are not squashed, and
            the critic is evaluated at `c + h x` (box centre `c`, half-width `h`), also
            outside the box where it extrapolates; only the sampled action is squashed. Then
            `exp(-E)` is not the Boltzmann policy of the box (`tanh_correction` is
            ignored), but where `Q` rises towards a face the samples saturate there.
        loss_weighting: `"sigma2"` (`sigma^2 + 1e-3`) or `"none"`.
        num_mc_samples_small: a smaller K for targets with `sigma <= small_sigma`, where the
            noised density is nearly the target's own and one sample is within a few percent
            (see docs/performance.md); `None` uses `num_mc_samples` everywhere.
        small_sigma: the noise level below which `num_mc_samples_small` applies.
        estimator: `"idem"` (the paper's gradient form above) or `"blend"`, which mixes it
            with the noise (Tweedie) form `T_K = sum_i softmax_i(-E_i) eps_i / sigma` of the
            same K draws: `alpha S_K + (1 - alpha) T_K` with `alpha = 1 / (1 + c sigma)`,
            where `c = max(0, -<dg, deps> / <deps, deps>)` is the curvature of `-E` along
            the draws (a least-squares fit of the K gradients against their offsets, per
            target, no extra critic calls). Both forms converge to the same score, so the
            blend does too; for a Gaussian `exp(-E)` it is exact with any K >= 2, and where
            the draws are much wider than `exp(-E)` (large sigma, small T) it falls back on
            the noise form, whose error stays below `1 / sigma` while the gradient form's
            grows with `|grad Q| / T`. docs/performance.md has the measurements; with K = 1
            it is the gradient form.
        reduction: how `loss_actor` is reduced over the batch: `"mean"` (default),
            `"sum"` or `"none"` (one loss per sample, in the batch's shape), as in
            TorchRL's losses. Batches from a prioritized buffer carry `priority_weight`;
            the per-sample losses are then weighted by it (TorchRL's importance weights).
        uniform_fraction: the fraction of each batch's training latents that are drawn afresh
            from the action box instead of read from the replay ([`training_latents`][]):
            `round(uniform_fraction * batch)` rows keep their replay state but get the latent
            of a uniform box action, `atanh(u)` with `u ~ U(-1, 1)^d` for
            `energy="squashed"` and `u` itself for `"unbounded"`. The score network is
            only regressed around its training latents; when the replay actions are the
            policy's own samples, a mode the policy undersamples gets little training signal
            and stays undersampled. Uniform latents cover every mode whatever the policy does
            (iDEM likewise mixes buffer and fresh samples). `0.0` (the default, the paper's
            training points) draws no extra random numbers: the loss is then bit for bit the
            one without this option. In [0, 1]; the rows replaced keep their state and
            `priority_weight`. docs/performance.md (*Learned sampler fidelity*) has the
            measurements.
        batch_rows: regress on the first `batch_rows` rows of each batch, flattened, only;
            `None` (default) uses every row. The score target costs `K` critic evaluations
            per row, so a large `K` on fewer rows can cost what a small `K` on every row
            does. With TorchRL's random or prioritized samplers the rows of a batch are drawn
            independently, so the first rows are a uniform subsample (not so for a
            `SliceSampler`'s contiguous slices). With it set, `reduction="none"` returns one
            loss per row used, flat: `[min(batch_rows, rows)]`. A positive int.

    The loss writes `loss_actor` and the diagnostics `score_target_norm` (mean norm of the
    targets), `ess` (mean effective sample size `1 / sum_i w_i^2` of the K weights) and
    `clip_fraction`. With `actor_network` built with `ema=True`, the loss exposes the
    EMA as `target_score_network_params` so that `SoftUpdate(loss, tau=...)` updates it.
    The score network's buffers (such as the embeddings' frequencies) stay buffers: the
    loss's parameters are exactly the score network's.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from dqs_torchrl import DiffusionActor, EnergyCritic, ScoreNetwork
        >>> actor = DiffusionActor(ScoreNetwork(0, 2, 32, 16), Bounded(-3.0, 3.0, shape=(2,)))
        >>> loss = IDEMScoreLoss(actor, EnergyCritic(lambda a: 0.5 * (a ** 2).sum(-1)),
        ...                      num_mc_samples=64)
        >>> batch = TensorDict(observation=torch.zeros(16, 0), action_raw=torch.randn(16, 2),
        ...                    batch_size=[16])
        >>> out = loss(batch)
        >>> out["loss_actor"].backward()
        >>> sorted(out.keys())
        ['clip_fraction', 'ess', 'loss_actor', 'score_target_norm']
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read by the loss; change them with `set_keys`."""

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        action_raw: NestedKey = "action_raw"
        state_action_value: NestedKey = "state_action_value"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    ESTIMATORS = ("idem", "blend")
    ENERGIES = ("squashed", "unbounded")
    _schedulable_buffers = frozenset({"temperature"})

    def __init__(
        self,
        actor_network: DiffusionActor,
        critic: DoubleQLoss | TensorDictModuleBase,
        *,
        num_mc_samples: int = 1000,
        temperature: float = 1.0,
        max_score_norm: float | None = None,
        tanh_correction: bool = True,
        loss_weighting: str = "sigma2",
        num_mc_samples_small: int | None = None,
        small_sigma: float = 1e-2,
        estimator: str = "idem",
        energy: str = "squashed",
        reduction: str = "mean",
        uniform_fraction: float = 0.0,
        batch_rows: int | None = None,
    ) -> None:
        super().__init__()
        if batch_rows is not None:
            check_positive_int(batch_rows, "batch_rows")
        if (
            isinstance(uniform_fraction, bool)
            or not isinstance(uniform_fraction, (int, float))
            or not 0.0 <= uniform_fraction <= 1.0
        ):
            raise ValueError(
                f"uniform_fraction must be a number in [0, 1] (the fraction of training latents "
                f"drawn uniformly on the action box), got {uniform_fraction!r}."
            )
        if energy not in self.ENERGIES:
            raise ValueError(f"energy must be one of {self.ENERGIES}, got {energy!r}.")
        check_positive_int(num_mc_samples, "num_mc_samples")
        if max_score_norm is not None and not max_score_norm > 0:
            raise ValueError(f"max_score_norm must be > 0 or None, got {max_score_norm!r}.")
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"estimator must be one of {self.ESTIMATORS}, got {estimator!r}.")
        if loss_weighting not in ("sigma2", "none"):
            raise ValueError(f"loss_weighting must be 'sigma2' or 'none', got {loss_weighting!r}.")
        if not isinstance(critic, DoubleQLoss):
            check_critic_keys(
                critic,
                self.tensor_keys.observation,
                self.tensor_keys.action,
                self.tensor_keys.state_action_value,
            )
        sigma_min = actor_network.schedule.sigma_min
        if (
            actor_network.parameterization == "noise"
            and loss_weighting == "sigma2"
            and sigma_min < 1e-3
        ):
            warnings.warn(
                f"parameterization='noise' with loss_weighting='sigma2' and sigma_min={sigma_min:g}"
                ": in the network's output the weight is 1 + 1e-3 / sigma^2, up to "
                f"{1 + 1e-3 / sigma_min**2:.0e} at sigma_min, so the lowest noise levels "
                "dominate the loss; train from sigma_min >= 1e-2 (the samplers that end at "
                "sigma_end = 1e-2 never read below it).",
                stacklevel=2,
            )
        self.actor_network = actor_network
        # Held by reference, outside the module tree: the critic is trained by its own loss
        # and must neither appear in this loss's parameters nor be copied.
        self.__dict__["critic"] = critic
        if num_mc_samples_small is not None:
            check_positive_int(num_mc_samples_small, "num_mc_samples_small")
        if not small_sigma > 0:
            raise ValueError(f"small_sigma must be > 0, got {small_sigma!r}.")
        self.num_mc_samples = num_mc_samples
        self.num_mc_samples_small = num_mc_samples_small
        self.small_sigma = float(small_sigma)
        self.max_score_norm = max_score_norm
        self.tanh_correction = tanh_correction
        self.energy = energy
        self.estimator = estimator
        self.loss_weighting = loss_weighting
        self.uniform_fraction = float(uniform_fraction)
        self.batch_rows = batch_rows
        self.reduction = check_reduction(reduction, type(self).__name__)
        self.register_coeff_buffer("temperature", check_temperature(temperature))
        # no_convert: the network's parameters are these very Parameters (an optimiser over
        # either sees the same tensors) and its buffers stay buffers, never trainable.
        self.score_network_params = TensorDictParams(
            TensorDict.from_module(actor_network.score_network), no_convert=True
        )
        if actor_network.ema_network is not None:
            self.target_score_network_params = TensorDictParams(
                TensorDict.from_module(actor_network.ema_network), no_convert=True
            )
            self._has_update_associated["score_network"] = False

    @property
    def in_keys(self) -> list[NestedKey]:
        return [self.tensor_keys.observation, self.tensor_keys.action_raw]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_actor", "score_target_norm", "ess", "clip_fraction"]

    def q_value(self, observation: Tensor, action: Tensor) -> Tensor:
        """The critic's `Q(s, a)`, `[*batch]` (min of the live ensemble for `DoubleQLoss`)."""
        if isinstance(self.critic, DoubleQLoss):
            return self.critic.min_q(observation, action).squeeze(-1)
        k = self.tensor_keys
        td = TensorDict(
            {k.observation: observation, k.action: action}, batch_size=action.shape[:-1]
        )
        return self.critic(td).get(k.state_action_value).squeeze(-1)

    def log_density(self, observation: Tensor, x: Tensor) -> Tensor:
        """Unnormalised latent log-density `-E(s, x)` of the Boltzmann policy, `[*batch]`."""
        if self.energy == "unbounded":
            low, high = self.actor_network.low, self.actor_network.high
            action = (high + low) / 2 + x * (high - low) / 2
            return self.q_value(observation, action) / self.temperature
        log_p = self.q_value(observation, self.actor_network.squash(x)) / self.temperature
        if self.tanh_correction:
            log_p = log_p + tanh_log_jacobian(x)
        return log_p

    def score_target(
        self,
        observation: Tensor,
        x: Tensor,
        sigma: Tensor,
        *,
        num_mc_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """iDEM's K-sample estimate of `grad_x log p_sigma(x | s)` at a batch `[B, d]`.

        `sigma` has shape `[B, 1]`. With `num_mc_samples_small` set (and no explicit
        `num_mc_samples`), rows with `sigma <= small_sigma` use that smaller K; all rows
        of all groups still go through the critic in one batch and one autograd call.
        Returns the (clipped) target `[B, d]` and the diagnostics `ess` and `clipped`
        (both `[B]`).
        """
        if num_mc_samples is None and self.num_mc_samples_small is not None:
            small = sigma.squeeze(-1) <= self.small_sigma
            groups = [(~small, self.num_mc_samples), (small, self.num_mc_samples_small)]
        else:
            num = self.num_mc_samples if num_mc_samples is None else num_mc_samples
            groups = [(None, check_positive_int(num, "num_mc_samples"))]
        # Draw every group's perturbed latents, then evaluate them as one flat batch.
        draws, rows_x, rows_obs = [], [], []
        for mask, num in groups:
            xg, sg, og = (
                (x, sigma, observation)
                if mask is None
                else (x[mask], sigma[mask], observation[mask])
            )
            eps = torch.randn((num, *xg.shape), generator=generator, device=x.device, dtype=x.dtype)
            draws.append((mask, num, xg.shape[0], eps, sg))
            n = num * xg.shape[0]  # explicit: observations may be zero-dimensional
            rows_x.append((xg.detach() + sg * eps).reshape(n, x.shape[-1]))
            rows_obs.append(og.expand(num, *og.shape).reshape(n, observation.shape[-1]))
        samples = torch.cat(rows_x).requires_grad_(True)
        with torch.enable_grad():
            log_p = self.log_density(torch.cat(rows_obs), samples)
            (grads,) = torch.autograd.grad(log_p.sum(), samples)
        log_p = log_p.detach()
        target = torch.zeros_like(x)
        ess = torch.zeros_like(x[:, 0])
        offset = 0
        for mask, num, rows, eps, sg in draws:
            n = num * rows
            lp = log_p[offset : offset + n].reshape(num, rows)
            g = grads[offset : offset + n].reshape(num, rows, x.shape[-1])
            offset += n
            weights = torch.softmax(lp, dim=0)  # self-normalised, detached
            t = (weights.unsqueeze(-1) * g).sum(0)
            if self.estimator == "blend":
                t = _blend(t, weights, g, eps, sg)
            e = 1.0 / weights.pow(2).sum(0)
            if mask is None:
                target, ess = t, e
            else:
                target[mask], ess[mask] = t, e
        norm = target.norm(dim=-1, keepdim=True)
        clipped = torch.zeros_like(ess, dtype=torch.bool)
        if self.max_score_norm is not None:
            clipped = norm.squeeze(-1) > self.max_score_norm
            target = target * (self.max_score_norm / norm.clamp_min(self.max_score_norm))
        return target, {"ess": ess, "clipped": clipped}

    def _latent_action(self, tensordict: TensorDictBase) -> Tensor:
        if self.energy == "unbounded":  # the replay action itself, in [-1, 1] units
            low, high = self.actor_network.low, self.actor_network.high
            action = tensordict.get(self.tensor_keys.action)
            return (2.0 * action - (high + low)) / (high - low)
        raw = tensordict.get(self.tensor_keys.action_raw, None)
        if raw is not None:
            return raw
        # Data without latents (e.g. random warm-up actions): invert tanh, clipped at the faces.
        action = tensordict.get(self.tensor_keys.action)
        return unsquash(action, self.actor_network.low, self.actor_network.high)

    def uniform_latents(self, num: int) -> Tensor:
        """Latents of `num` actions uniform on the box, `[num, d]`: `atanh(u)`,
        `u ~ U(-1, 1)^d` (clipped away from the faces as `unsquash` does),
        or `u` itself for `energy="unbounded"`, whose latent is the action in [-1, 1] units.

        Examples:
            >>> from torchrl.data import Bounded
            >>> from dqs_torchrl import DiffusionActor, EnergyCritic, ScoreNetwork
            >>> actor = DiffusionActor(ScoreNetwork(0, 2, 16, 8), Bounded(-2.0, 3.0, shape=(2,)))
            >>> loss = IDEMScoreLoss(actor, EnergyCritic(lambda a: a.sum(-1)))
            >>> loss.uniform_latents(5).shape
            torch.Size([5, 2])
        """
        low = self.actor_network.low
        u = 2.0 * torch.rand((num, low.shape[-1]), device=low.device, dtype=low.dtype) - 1.0
        if self.energy == "unbounded":
            return u
        return torch.atanh(u.clamp(-1.0 + 1e-6, 1.0 - 1e-6))

    def training_latents(self, tensordict: TensorDictBase) -> Tensor:
        """The latents the score network is regressed around, `[batch.numel(), d]`: the
        replay latents (`action_raw`, or the inverted `action`), whose last
        `round(uniform_fraction * batch.numel())` rows are replaced by
        [`uniform_latents`][].

        Examples:
            >>> from torchrl.data import Bounded
            >>> from dqs_torchrl import DiffusionActor, EnergyCritic, ScoreNetwork
            >>> actor = DiffusionActor(ScoreNetwork(0, 1, 16, 8), Bounded(-1.0, 1.0, shape=(1,)))
            >>> critic = EnergyCritic(lambda a: a.sum(-1))
            >>> loss = IDEMScoreLoss(actor, critic, uniform_fraction=0.25)
            >>> batch = TensorDict(observation=torch.zeros(8, 0),
            ...                    action_raw=torch.full((8, 1), 20.0), batch_size=[8])
            >>> (loss.training_latents(batch) != 20.0).sum().item()  # 2 of 8 rows are uniform
            2
        """
        x_a = self._latent_action(tensordict)
        x_a = x_a.reshape(-1, x_a.shape[-1])
        num = math.floor(self.uniform_fraction * x_a.shape[0] + 0.5)  # round half up
        if num == 0:  # no draw at all: the paper's training points, bit for bit
            return x_a
        uniform = self.uniform_latents(num).to(x_a)
        return torch.cat([x_a[: x_a.shape[0] - num], uniform])

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        k = self.tensor_keys
        unbounded = self.energy == "unbounded"
        has_raw = not unbounded and tensordict.get(k.action_raw, None) is not None
        action_keys = [k.action_raw] if has_raw else [k.action]
        require_keys(tensordict, [k.observation, *action_keys], "IDEMScoreLoss")
        obs_dim = getattr(self.actor_network.score_network, "observation_dim", None)
        check_last_dim(tensordict.get(k.observation), obs_dim, repr(k.observation), "IDEMScoreLoss")
        replay = tensordict.get(action_keys[0])
        check_last_dim(
            replay, self.actor_network.low.shape[-1], repr(action_keys[0]), "IDEMScoreLoss"
        )
        if self.batch_rows is not None:
            rows = replay.shape[:-1].numel()
            if tensordict.batch_size.numel() != rows:
                raise ValueError(
                    f"IDEMScoreLoss(batch_rows={self.batch_rows}) needs the batch's dims to cover "
                    f"its rows: {action_keys[0]!r} has {rows} rows, batch_size "
                    f"{list(tensordict.batch_size)}."
                )
            tensordict = tensordict.reshape(-1)[: self.batch_rows]
            replay = tensordict.get(action_keys[0])
        batch_shape = replay.shape[:-1]
        x_a = self.training_latents(tensordict)
        observation = tensordict.get(k.observation)
        observation = observation.reshape(x_a.shape[0], observation.shape[-1])
        schedule = self.actor_network.schedule
        tau = torch.rand_like(x_a[:, :1])
        sigma = schedule.sigma(tau)
        x = x_a + sigma * torch.randn_like(x_a)
        target, diag = self.score_target(observation, x, sigma)
        temperature = self.temperature.expand_as(tau)
        pred = self.actor_network.score(observation, x, tau, temperature)
        err = (pred - target).pow(2).sum(-1, keepdim=True)
        if self.loss_weighting == "sigma2":
            err = err * (sigma.pow(2) + 1e-3)
        weights = self._maybe_get_priority_weight(tensordict)
        if weights is not None:
            weights = weights.reshape(batch_shape)
        loss = self._reduce_loss(err.reshape(batch_shape), tensordict, weights=weights)
        return TensorDict(
            {
                "loss_actor": loss,
                "score_target_norm": target.norm(dim=-1).mean(),
                "ess": diag["ess"].mean(),
                "clip_fraction": diag["clipped"].float().mean(),
            },
            batch_size=[],
        )


def _blend(
    gradient_form: Tensor, weights: Tensor, grads: Tensor, eps: Tensor, sigma: Tensor
) -> Tensor:
    """`alpha * gradient_form + (1 - alpha) * noise_form` for draws `x_i = x + sigma eps_i`.

    `weights` `[K, B]`, `grads` and `eps` `[K, B, d]`, `sigma` `[B, 1]`. The
    curvature `c / sigma` of `-E` comes from regressing the gradients on the offsets
    `sigma eps_i`: for `-E = -|x - m|^2 / (2 v)` it is `1 / v` and the blend with
    `alpha = v / (v + sigma^2)` equals the exact noised score for any draws.
    """
    noise_form = (weights.unsqueeze(-1) * eps).sum(0) / sigma
    d_eps = eps - eps.mean(0)
    d_grad = grads - grads.mean(0)
    c = -(d_grad * d_eps).sum((0, 2)) / (d_eps * d_eps).sum((0, 2)).clamp_min(1e-30)
    alpha = 1.0 / (1.0 + c.clamp_min(0.0).unsqueeze(-1) * sigma)
    return alpha * gradient_form + (1.0 - alpha) * noise_form
