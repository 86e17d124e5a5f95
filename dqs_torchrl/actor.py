"""`DiffusionActor`: a TensorDict policy that samples `pi(a|s) ∝ exp(Q(s,a)/T)`."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor, nn
from torchrl.data import Bounded, Composite, TensorSpec
from torchrl.envs.utils import ExplorationType, exploration_type

from dqs_torchrl._checks import (
    check_last_dim,
    check_temperature,
    check_temperature_tensor,
    require_keys,
)
from dqs_torchrl.energy import squash, unsquash
from dqs_torchrl.networks import ScoreModel, ScoreNetwork, SplitScoreModel, score_head
from dqs_torchrl.samplers import (
    SAMPLERS,
    STEP_SAMPLERS,
    draw_step_noise,
    run_steps,
    step_coefficients,
    tweedie_denoise,
)
from dqs_torchrl.schedules import GeometricSchedule, geometric_sigmas, karras_sigmas

__all__ = ["DiffusionActor"]

SPACINGS: dict[str, Callable[..., Tensor]] = {
    "geometric": geometric_sigmas,
    "karras": karras_sigmas,
}
PRIORS = ("paper", "matched")
PARAMETERIZATIONS = ("score", "noise")


def _box_bounds(action_spec: TensorSpec, action_key: str) -> tuple[Tensor, Tensor]:
    if isinstance(action_spec, Composite):
        if action_key not in action_spec.keys(True, True):
            raise ValueError(f"action_spec is a Composite without the action key {action_key!r}.")
        action_spec = action_spec[action_key]
    if not isinstance(action_spec, Bounded) or action_spec.domain != "continuous":
        raise ValueError(
            "action_spec must be a continuous Bounded (box) spec with finite low and high, got "
            f"{type(action_spec).__name__}; the Boltzmann policy is defined on the action box."
        )
    low, high = action_spec.space.low.float(), action_spec.space.high.float()
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (low < high).all()):
        raise ValueError("action_spec must have finite bounds with low < high in every dimension.")
    return low, high


def _sampler_loop(
    condition: Tensor,
    time_rows: Tensor,
    x: Tensor,
    z: Tensor | None,
    weights: tuple[Tensor, ...],
    drifts: tuple[float, ...],
    stds: tuple[float, ...],
    denoise: float | None,
) -> Tensor:
    """The whole sampler as one function of tensors, the step constants fixed per actor."""
    for i, drift in enumerate(drifts):
        x = x + drift * score_head(condition + time_rows[i], x, *weights)
        if z is not None:
            x = x + stds[i] * z[i]
    if denoise is not None:
        x = x + denoise * score_head(condition + time_rows[-1], x, *weights)
    return x


_COMPILED: dict[bool | str, Callable[..., Tensor]] = {}


def _compiled_loop(mode: bool | str) -> Callable[..., Tensor]:
    # Kept out of the module so that actors stay picklable (collector workers, checkpoints).
    if mode not in _COMPILED:
        kwargs = {} if mode is True else {"mode": mode}
        _COMPILED[mode] = torch.compile(_sampler_loop, dynamic=False, **kwargs)
    return _COMPILED[mode]


def _derive_after_load(actor: DiffusionActor, incompatible_keys: object) -> None:
    # Module level (not a lambda) so that actors stay picklable for collector workers.
    actor._derive_grid_constants()


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters are turned into buffers: averaged, never optimised."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for name, param in list(sub._parameters.items()):
            del sub._parameters[name]
            sub.register_buffer(name, None if param is None else param.detach().clone())
    return clone


class DiffusionActor(TensorDictModuleBase):
    """A diffusion policy sampling the Boltzmann distribution `pi(a|s) ∝ exp(Q(s, a)/T)`.

    Reads `observation` (and `temperature` when the tensordict has it, else its own
    `temperature` buffer, which [`TemperatureScheduler`][dqs_torchrl.TemperatureScheduler]
    sets), draws `x_1` from the prior (the paper's `N(0, sigma_max^2)` unless `prior` says
    otherwise), integrates the reverse SDE with the score network, and writes the bounded
    `action = squash(x)` (fitting any box spec) and the latent `action_raw = x`.
    Any leading batch shape works, so it serves as the policy of a TorchRL `Collector` or of
    `env.rollout`.

    Exploration: under `ExplorationType.RANDOM` (and when no exploration type is set) the
    action is a sample of the policy. Under `DETERMINISTIC` (or `MODE`/`MEAN`) the
    sampler starts at `x_1 = 0` (the paper prior's mean, whatever `prior` is) and runs with
    its noise switched off: an annealed ascent on `log p_tau` that ends near a mode of
    `pi(.|s)` — a deterministic function of the state, used for evaluation.

    Not to be confused with `torchrl.modules.DiffusionActor`, a DDPM behaviour-cloning actor trained
    on demonstrations: this one is trained by [`IDEMScoreLoss`][dqs_torchrl.IDEMScoreLoss] to sample
    the Boltzmann density of a critic or of any energy, with no data of good actions.

    Args:
        score_network: any [`ScoreModel`][]: an `nn.Module` with
            `forward(observation, x, tau, temperature) -> score`, such as
            [`ScoreNetwork`][]. If it also has the methods of
            [`SplitScoreModel`][] (`condition`, `time_features`,
            `bind_head`), the actor computes the `(s, T)` and `tau` features once per call
            and each step runs only the head; otherwise each step calls the module
            (`split_features` says which).
        action_spec: a continuous `Bounded` spec (or a `Composite` holding one).

    Keyword Args:
        sigma_min: lowest noise level of the geometric VE schedule (paper: 1e-5).
        sigma_max: highest noise level, the first sigma of the grid (paper: 1.0).
        num_steps: number of sampler steps (paper: 1000).
        sampler: `"euler_maruyama"` (paper), `"ancestral"` or `"heun"` (probability-flow
            ODE, second order); see [`dqs_torchrl.samplers`][].
        spacing: `"geometric"` (uniform in tau, the paper's) or `"karras"`.
        sigma_end: last sigma of the grid; defaults to `sigma_min`.
        denoise: finish with one Tweedie step `x + sigma_end^2 score(x, sigma_end)`.
        prior: the distribution the sampler starts from, at the grid's first level
            `sigma_max`. The noised target there is the latent policy convolved with
            `N(0, sigma_max^2 I)`: mean `E[x_0]`, variance `Var(x_0) + sigma_max^2`
            along each direction, so a start wider than `sigma_max` and off the origin is
            what a start at that level should be.

            - `"paper"` (default): `N(0, sigma_max^2 I)`, which ignores both the mean and
              the spread of the latent policy;
            - `"matched"`: `N(m(s), v I)` with `v = sigma_max^2 + latent_variance` and
              `m(s) = v * score(0, sigma_max)` (exact for a Gaussian noised target of
              variance `v`): both moments, for one more score call per action.

            With the exact score, the mode-mass error that the start alone leaves is, over
            five test energies: `"paper"` 0.024-0.074 at `sigma_max = 1`, 0.003-0.020 at
            2; `"matched"` 0.006-0.036 at 1, <= 0.0025 at 2 (below the sampling noise of
            4,000 draws; docs/performance.md, start bias). A zero-mean start of variance
            `v` fixes only policies centred on the box. Deterministic actions start at 0
            whatever the prior.
        latent_variance: the latent policy's variance per dimension that `"matched"` adds
            to `sigma_max^2` (finite, > 0; default 1.0, just above the 0.82 of a uniform
            box action, `Var(atanh(U(-1, 1)))`).
        parameterization: what the score network's output means.

            - `"score"` (default, the paper's): the score `grad_x log p_sigma(x | s)`
              itself;
            - `"noise"`: `sigma` times the score (minus the expected noise of `x`); the
              actor divides it by `sigma` wherever it reads a score (sampling,
              [`score`][], `IDEMScoreLoss`). The loss and its minimiser are unchanged;
              what changes is what an error of the network's output costs at each noise
              level (`sigma^2 + 1e-3` of the cost near sigma 1 for `"score"`, at least
              the same for `"noise"`): on the three-mode benchmark of
              docs/performance.md, a `"score"` network drifted from the regression's
              limit as training went on (worst mode error 0.03 at 3k updates, 0.09 at
              8k), at noise levels 0.05-0.5; a `"noise"` network did not.
        temperature: initial temperature `T > 0`.
        ema: keep an exponential moving average of the score-network weights and sample with
            it. The average is `ema_network` (a copy holding buffers, not parameters);
            `SoftUpdate(IDEMScoreLoss(...))` updates it like a target network.
        compile_sampler: run the sampler loop (all steps and the Tweedie step, noise drawn up
            front) as one `torch.compile`-d function: `True` for the default mode, or a
            mode name such as `"reduce-overhead"` (CUDA graphs on a GPU). For
            `euler_maruyama` and `ancestral` with a [`ScoreNetwork`][]. It draws the
            same noise as the eager loop; results agree to float rounding. Compiling takes
            seconds per batch shape and, on our CPUs, saved about 10-15% of a batch-1
            action (docs/performance.md), so it is off by default.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> spec = Bounded(-2.0, 2.0, shape=(2,))
        >>> actor = DiffusionActor(ScoreNetwork(3, 2, num_cells=32, embedding_dim=16), spec,
        ...                        num_steps=10)
        >>> td = actor(TensorDict(observation=torch.randn(4, 5, 3), batch_size=[4, 5]))
        >>> td["action"].shape, bool(spec.is_in(td["action"]))
        (torch.Size([4, 5, 2]), True)
    """

    def __init__(
        self,
        score_network: ScoreModel,
        action_spec: TensorSpec,
        *,
        sigma_min: float = 1e-5,
        sigma_max: float = 1.0,
        num_steps: int = 1000,
        sampler: str = "euler_maruyama",
        spacing: str = "geometric",
        sigma_end: float | None = None,
        denoise: bool = False,
        prior: str = "paper",
        latent_variance: float = 1.0,
        parameterization: str = "score",
        temperature: float = 1.0,
        ema: bool = False,
        compile_sampler: bool | str = False,
        observation_key: str = "observation",
        action_key: str = "action",
        raw_action_key: str = "action_raw",
        temperature_key: str = "temperature",
    ) -> None:
        super().__init__()
        self.schedule = GeometricSchedule(sigma_min, sigma_max)
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}.")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {sorted(SPACINGS)}, got {spacing!r}.")
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {list(PRIORS)}, got {prior!r}.")
        if isinstance(latent_variance, bool) or not 0 < latent_variance < math.inf:
            raise ValueError(f"latent_variance must be finite and > 0, got {latent_variance!r}.")
        self.prior, self.latent_variance = prior, float(latent_variance)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {list(PARAMETERIZATIONS)}, "
                f"got {parameterization!r}."
            )
        self.parameterization = parameterization
        self._prior_variance = self.schedule.sigma_max**2 + self.latent_variance
        # The start's standard deviation; "paper" keeps sigma_max itself (the same draws).
        self.prior_std = (
            self.schedule.sigma_max if prior == "paper" else math.sqrt(self._prior_variance)
        )
        sigma_end = sigma_min if sigma_end is None else sigma_end
        if not sigma_min <= sigma_end < sigma_max:
            raise ValueError(
                f"sigma_end must lie in [sigma_min, sigma_max) = [{sigma_min}, {sigma_max}), "
                f"got {sigma_end}."
            )
        # The grid is fixed per actor: build it once, not per call.
        self.register_buffer("sigmas", SPACINGS[spacing](num_steps, sigma_max, sigma_end))
        self.num_steps, self.sampler, self.spacing, self.denoise = (
            num_steps,
            sampler,
            spacing,
            denoise,
        )
        self.score_network = score_network
        # Detected once: the EMA copy has the same class, and the check is not free per call.
        self.split_features = isinstance(score_network, SplitScoreModel)
        self.compile_sampler = compile_sampler
        if compile_sampler:
            if sampler not in STEP_SAMPLERS:
                raise ValueError(
                    "compile_sampler needs sampler "
                    + " or ".join(repr(name) for name in STEP_SAMPLERS)
                    + f" (one score call per step), got {sampler!r}."
                )
            if not isinstance(score_network, ScoreNetwork):
                raise ValueError("compile_sampler needs a ScoreNetwork (its head_weights()).")
        low, high = _box_bounds(action_spec, action_key)
        net_action_dim = getattr(score_network, "action_dim", None)
        if net_action_dim is not None and net_action_dim != low.shape[-1]:
            raise ValueError(
                f"the action spec has {low.shape[-1]} dimensions but the score network was "
                f"built for action_dim={net_action_dim}; build it with the spec's action size."
            )
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("temperature", torch.tensor(check_temperature(temperature)))
        self.ema_network = _frozen_copy(score_network) if ema else None
        self.observation_key, self.temperature_key = observation_key, temperature_key
        self.action_key, self.raw_action_key = action_key, raw_action_key
        self.in_keys = [observation_key]
        self.out_keys = [action_key, raw_action_key]
        self._derive_grid_constants()
        # A state dict carries the grid (the ``sigmas`` buffer): derive again after a load.
        self.register_load_state_dict_post_hook(_derive_after_load)

    def _derive_grid_constants(self) -> None:
        """What every sampling call needs of the fixed grid, computed once: the sigmas as
        floats, their taus, the step coefficients, the Tweedie factor (no per-call `tolist`
        or `item`, which on a GPU would each wait for the device)."""
        sigmas = self.sigmas.tolist()
        self._sigma_list = sigmas
        self.register_buffer(
            "_taus", self.schedule.tau(self.sigmas).unsqueeze(-1), persistent=False
        )
        self._steps = step_coefficients(self.sampler, self.sigmas)
        # What multiplies the network's output to give the score at each sigma of the grid.
        noise = self.parameterization == "noise"
        self._output_scale = {s: 1.0 / s if noise else 1.0 for s in sigmas}
        self._denoise_factor = (
            sigmas[-1] ** 2 * self._output_scale[sigmas[-1]] if self.denoise else None
        )
        if self._steps is not None:
            # The compiled loop calls the head directly: the scale is folded into the drifts.
            self._drifts = tuple(c * self._output_scale[s] for s, c, _ in self._steps)
            self._stds = tuple(math.sqrt(v) for _, _, v in self._steps)

    def _temperature(self, temperature: Tensor | float | None) -> Tensor:
        if temperature is None:
            return self.temperature
        return check_temperature_tensor(torch.as_tensor(temperature))

    def squash(self, x: Tensor) -> Tensor:
        """Map a latent action to the action box."""
        return squash(x, self.low, self.high)

    @torch.no_grad()
    def sample(
        self,
        observation: Tensor,
        temperature: Tensor | float | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw `(action, latent action)` for observations of shape `[*batch, obs_dim]`.

        `temperature` is a float or a tensor broadcastable to `[*batch, 1]`; `None` uses
        the actor's own temperature.
        """
        check_last_dim(
            observation,
            getattr(self.score_network, "observation_dim", None),
            "the observation",
            "DiffusionActor",
        )
        batch_shape = observation.shape[:-1]
        n = batch_shape.numel()
        obs = observation.reshape(n, observation.shape[-1]).to(self.low.dtype)
        temp = self._temperature(temperature)
        temp = (
            temp.to(obs).expand(*batch_shape, 1).reshape(n, 1)
            if temp.numel() > 1
            else (temp.to(obs).reshape(1, 1).expand(n, 1))
        )
        shape = (n, self.low.shape[-1])
        if deterministic:
            x = obs.new_zeros(shape)
        else:
            x = self.prior_std * torch.randn(
                shape, generator=generator, device=obs.device, dtype=obs.dtype
            )
        x = self._integrate(obs, temp, x, deterministic, generator)
        x = x.reshape(*batch_shape, -1)
        return self.squash(x), x

    def _integrate(
        self,
        obs: Tensor,
        temp: Tensor,
        x: Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
    ) -> Tensor:
        net = self.score_network if self.ema_network is None else self.ema_network
        centre = self.prior == "matched" and not deterministic
        if self.compile_sampler:
            condition, time_rows = net.condition(obs, temp), net.time_features(self._taus)
            weights = net.head_weights()
            if centre:
                scale = self._prior_variance * self._output_scale[self._sigma_list[0]]
                x = x + scale * score_head(condition + time_rows[0], torch.zeros_like(x), *weights)
            z = None if deterministic else draw_step_noise(len(self._steps), x, generator)
            loop = _compiled_loop(self.compile_sampler)
            return loop(
                condition,
                time_rows,
                x,
                z,
                weights,
                self._drifts,
                self._stds,
                self._denoise_factor,
            )
        score_fn = self._grid_score_fn(net, obs, temp)
        if centre:  # the "matched" prior's mean v * score(0, sigma_max), per state
            x = x + self._prior_variance * score_fn(torch.zeros_like(x), self._sigma_list[0])
        noise = not deterministic
        if self._steps is not None:
            x = run_steps(score_fn, x, self._steps, noise=noise, generator=generator)
        else:
            x = SAMPLERS[self.sampler](score_fn, x, self.sigmas, noise=noise, generator=generator)
        if self.denoise:
            x = tweedie_denoise(score_fn, x, self._sigma_list[-1])
        return x

    def score(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        """The score of the live `score_network` at `(s, x, tau, T)` (`tau` and
        `temperature` `[..., 1]`): its output, divided by `sigma(tau)` when
        `parameterization="noise"`. What `IDEMScoreLoss` regresses."""
        out = self.score_network(observation, x, tau, temperature)
        if self.parameterization == "noise":
            out = out / self.schedule.sigma(tau)
        return out

    def _grid_score_fn(
        self, net: ScoreModel, obs: Tensor, temp: Tensor
    ) -> Callable[[Tensor, float], Tensor]:
        """`score_fn(x, sigma)` for the sigmas of the grid, at the grid's own taus."""
        if self.split_features:
            # (s, T) and tau features are computed once per call; each step only pays for x.
            condition = net.condition(obs, temp)
            time_rows = net.time_features(self._taus).unbind(0)
            features = dict(zip(self._sigma_list, time_rows, strict=True))
            head = net.bind_head()

            def output_fn(x: Tensor, sigma: float) -> Tensor:
                return head(condition + features[sigma], x)

        else:
            taus = dict(zip(self._sigma_list, self._taus.unbind(0), strict=True))
            n = obs.shape[0]

            def output_fn(x: Tensor, sigma: float) -> Tensor:
                return net(obs, x, taus[sigma].expand(n, 1), temp)

        if self.parameterization == "score":  # the hot loop: no scaling op at all
            return output_fn
        scale = self._output_scale

        def scaled_fn(x: Tensor, sigma: float) -> Tensor:
            return output_fn(x, sigma) * scale[sigma]

        return scaled_fn

    def score_fn(
        self,
        observation: Tensor,
        temperature: Tensor | float | None = None,
    ) -> Callable[[Tensor, float], Tensor]:
        """The learned score as a `score_fn(x, sigma)` for the plain samplers of
        [`dqs_torchrl.samplers`][] (live weights, not the EMA)."""
        temp = self._temperature(temperature)
        temp = temp.to(observation).expand(*observation.shape[:-1], 1)

        def score_fn(x: Tensor, sigma: float) -> Tensor:
            tau = self.schedule.tau(torch.full_like(x[..., :1], sigma))
            return self.score(observation, x, tau, temp)

        return score_fn

    def fill_latent_action(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Add the latent `action_raw` to data whose actions came from elsewhere.

        Random warm-up frames (`Collector(init_random_frames=...)`) carry only `action`:
        use this as the collector's `postproc` so every transition in the replay buffer has
        its latent (`atanh` of the rescaled action, clipped away from the box faces).
        """
        if self.raw_action_key not in tensordict.keys():
            action = tensordict.get(self.action_key)
            tensordict.set(self.raw_action_key, unsquash(action, self.low, self.high))
        return tensordict

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        require_keys(
            tensordict, [self.observation_key], "DiffusionActor", "pass observation_key=..."
        )
        observation = tensordict.get(self.observation_key)
        temperature = tensordict.get(self.temperature_key, None)
        explore = exploration_type() in (None, ExplorationType.RANDOM)
        action, raw = self.sample(observation, temperature, deterministic=not explore)
        tensordict.set(self.action_key, action)
        tensordict.set(self.raw_action_key, raw)
        return tensordict

    def extra_repr(self) -> str:
        return (
            f"sampler={self.sampler}, num_steps={self.num_steps}, spacing={self.spacing}, "
            f"denoise={self.denoise}, {self.schedule}, ema={self.ema_network is not None}, "
            f"prior={self.prior}"
            + ("" if self.prior == "paper" else f", latent_variance={self.latent_variance}")
            + ("" if self.parameterization == "score" else ", parameterization=noise")
        )
