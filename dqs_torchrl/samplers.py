"""Reverse-time samplers of the VE SDE `dx = -g^2 score dtau + g dw`, as plain functions.

Every sampler has the same signature `sampler(score_fn, x, sigmas, *, noise=True,
generator=None) -> x`: `score_fn(x, sigma)` returns the score of the noised density at the
python float `sigma`; `x` is the starting point (drawn from `N(0, sigmas[0]^2)` by the
caller); `sigmas` is a decreasing grid from [`dqs_torchrl.schedules`][]. Nothing here knows
about TorchRL. With `noise=False` the injected noise is switched off, which turns the
sampler into an annealed ascent on `log p_sigma` (used for deterministic actions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "ScoreFn",
    "SAMPLERS",
    "sample_euler_maruyama",
    "sample_ancestral",
    "sample_heun",
    "tweedie_denoise",
    "step_coefficients",
    "run_steps",
    "draw_step_noise",
    "STEP_SAMPLERS",
]

ScoreFn = Callable[[Tensor, float], Tensor]


def _euler_maruyama_steps(s: list[float]) -> list[tuple[float, float, float]]:
    steps = []
    for i in range(len(s) - 1):
        g2_dtau = 2.0 * s[i] ** 2 * math.log(s[i] / s[i + 1])
        steps.append((s[i], g2_dtau, g2_dtau))
    return steps


def _ancestral_steps(s: list[float]) -> list[tuple[float, float, float]]:
    steps = []
    for i in range(len(s) - 1):
        dv = s[i] ** 2 - s[i + 1] ** 2
        steps.append((s[i], dv, dv * s[i + 1] ** 2 / s[i] ** 2))
    return steps


_STEPS = {"euler_maruyama": _euler_maruyama_steps, "ancestral": _ancestral_steps}
STEP_SAMPLERS = tuple(_STEPS)  # one score call per step: what step_coefficients describes


def step_coefficients(sampler: str, sigmas: Tensor) -> list[tuple[float, float, float]] | None:
    """The steps `(sigma, c, v)` of a one-call-per-step sampler on `sigmas`: step `i` is
    `x <- x + c score(x, sigma) + sqrt(v) z_i`. `None` for [`sample_heun`][].

    With these and noise drawn up front, a caller can run the whole loop as one traced
    function (`DiffusionActor(compile_sampler=True)`).
    """
    make = _STEPS.get(sampler)
    return None if make is None else make(sigmas.tolist())


def run_steps(
    score_fn: ScoreFn,
    x: Tensor,
    steps: list[tuple[float, float, float]],
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Integrate the steps of [`step_coefficients`][] (a caller that samples often computes
    them once): step `(sigma, c, v)` is `x += c * score(x, sigma) + sqrt(v) z`.

    All the noise is drawn at once and `x` is updated in place (on a copy of the input).
    """
    x = x.clone()
    z = draw_step_noise(len(steps), x, generator) if noise else None
    for i, (sigma, drift, var) in enumerate(steps):
        x.add_(score_fn(x, sigma), alpha=drift)
        if z is not None:
            x.add_(z[i], alpha=math.sqrt(var))
    return x


def draw_step_noise(num_steps: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """The noise of every step at once, `[num_steps, *x.shape]`, as the samplers draw it."""
    return torch.randn((num_steps, *x.shape), generator=generator, device=x.device, dtype=x.dtype)


def sample_euler_maruyama(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Euler–Maruyama on the reverse VE SDE (the paper's sampler).

    Step `i` goes from `sigma_i` to `sigma_{i+1}` with
    `x <- x + g^2 dtau * score(x, sigma_i) + sqrt(g^2 dtau) z` where, on the geometric
    schedule, `g(tau_i)^2 dtau = 2 sigma_i^2 ln(sigma_i / sigma_{i+1})`. On the grid
    `GeometricSchedule.sigmas(1000)` this is exactly the paper's 1000 uniform tau steps.

    Examples:
        >>> from dqs_torchrl.schedules import geometric_sigmas
        >>> score = lambda x, sigma: -x / (0.01 + sigma**2)   # target N(0, 0.1^2)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20000, 1, generator=g)
        >>> x = sample_euler_maruyama(score, x, geometric_sigmas(200, 1.0, 1e-3), generator=g)
        >>> abs(float(x.std()) - 0.1) < 0.005
        True
    """
    return run_steps(score_fn, x, _euler_maruyama_steps(sigmas.tolist()), noise, generator)


def sample_ancestral(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral (DDPM-posterior) steps, variance-exact for a point mass at any step size.

    With `dv = sigma_i^2 - sigma_{i+1}^2` (exactly the variance the forward process adds
    between the two levels) each step draws from `q(x_{i+1} | x_i, x_0)` with `x_0`
    replaced by Tweedie's `E[x_0 | x_i] = x_i + sigma_i^2 score`:

    `x <- x + dv * score(x, sigma_i) + sqrt(dv * sigma_{i+1}^2 / sigma_i^2) z`.

    The mean is the exact conditional mean of the reverse process; the variance misses only
    `(dv / sigma_i^2)^2 Var[x_0 | x_i]`, which shrinks the spread on coarse grids (use
    more steps, or [`sample_heun`][], when the width of the distribution matters).

    Examples:
        >>> from dqs_torchrl.schedules import geometric_sigmas
        >>> score = lambda x, sigma: (0.5 - x) / (0.01 + sigma**2)   # target N(0.5, 0.1^2)
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(20000, 1, generator=g)
        >>> x = sample_ancestral(score, x, geometric_sigmas(10, 1.0, 1e-3), generator=g)
        >>> abs(float(x.mean()) - 0.5) < 0.01
        True
    """
    return run_steps(score_fn, x, _ancestral_steps(sigmas.tolist()), noise, generator)


def sample_heun(
    score_fn: ScoreFn,
    x: Tensor,
    sigmas: Tensor,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE `dx/dsigma = -sigma score`.

    Deterministic given the starting point (`noise` and `generator` are accepted for the
    common signature and unused): all randomness comes from `x ~ N(0, sigma_max^2)`. Two
    score calls per step except the last (Karras et al. 2022, algorithm 1 without churn).

    Examples:
        >>> from dqs_torchrl.schedules import geometric_sigmas
        >>> score = lambda x, sigma: -x / (0.01 + sigma**2)   # target N(0, 0.1^2)
        >>> x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
        >>> x = sample_heun(score, x, geometric_sigmas(20, 1.0, 1e-3))
        >>> abs(float(x.std()) - 0.1) < 0.005
        True
    """
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        d = -s[i] * score_fn(x, s[i])
        x_next = x + (s[i + 1] - s[i]) * d
        if i < len(s) - 2:
            d_next = -s[i + 1] * score_fn(x_next, s[i + 1])
            x_next = x + (s[i + 1] - s[i]) * 0.5 * (d + d_next)
        x = x_next
    return x


def tweedie_denoise(score_fn: ScoreFn, x: Tensor, sigma: float) -> Tensor:
    """One denoising step `E[x_0 | x_sigma] = x + sigma^2 * score(x, sigma)` (Tweedie).

    Used after a sampler stopped at a moderate `sigma` to remove the remaining noise.

    Examples:
        >>> score = lambda x, sigma: -x / (1.0 + sigma**2)
        >>> float(tweedie_denoise(score, torch.tensor([2.0]), 1.0))
        1.0
    """
    return x + sigma**2 * score_fn(x, sigma)


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler_maruyama": sample_euler_maruyama,
    "ancestral": sample_ancestral,
    "heun": sample_heun,
}
