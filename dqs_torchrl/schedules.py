"""The geometric variance-exploding (VE) noise schedule and sigma grids for the samplers.

The forward process is `x_tau = x_0 + sigma(tau) * eps` with

$$
\\sigma(\\tau) = \\sigma_{min} (\\sigma_{max} / \\sigma_{min})^{\\tau}, \\qquad
g(\\tau)^2 = \\frac{d\\sigma^2}{d\\tau} = 2 \\sigma(\\tau)^2 \\ln(\\sigma_{max}/\\sigma_{min}).
$$

Grids are decreasing 1-D tensors of sigmas (first entry the prior's sigma), in the style of
k-diffusion: the spacing is chosen here, the integrator in [`dqs_torchrl.samplers`][].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dqs_torchrl._checks import check_positive_int

__all__ = ["GeometricSchedule", "geometric_sigmas", "karras_sigmas"]


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    if not (0 < sigma_min < math.inf and 0 < sigma_max < math.inf):  # NaN fails too
        raise ValueError(
            f"sigma_min and sigma_max must be finite and > 0, got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}."
        )
    if not sigma_min < sigma_max:
        raise ValueError(
            f"sigma_min must be < sigma_max, got sigma_min={sigma_min} >= sigma_max={sigma_max}."
        )


def _check_num_steps(num_steps: int) -> None:
    check_positive_int(num_steps, "num_steps")


class GeometricSchedule:
    """Geometric VE schedule `sigma(tau) = sigma_min * (sigma_max / sigma_min) ** tau`.

    Args:
        sigma_min: noise level at `tau = 0` (paper: 1e-5).
        sigma_max: noise level at `tau = 1`, the prior's standard deviation (paper: 1.0).

    Examples:
        >>> schedule = GeometricSchedule(1e-5, 1.0)
        >>> round(float(schedule.sigma(torch.tensor(1.0))), 5)
        1.0
        >>> round(float(schedule.tau(torch.tensor(1e-3))), 6)
        0.4
    """

    def __init__(self, sigma_min: float = 1e-5, sigma_max: float = 1.0) -> None:
        _check_sigma_range(sigma_min, sigma_max)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.log_ratio = math.log(self.sigma_max / self.sigma_min)

    def sigma(self, tau: Tensor) -> Tensor:
        """Noise level at diffusion time `tau` in [0, 1]."""
        return self.sigma_min * torch.exp(tau * self.log_ratio)

    def tau(self, sigma: Tensor) -> Tensor:
        """Inverse of [`sigma`][]: the diffusion time of a noise level."""
        return torch.log(sigma / self.sigma_min) / self.log_ratio

    def g2(self, tau: Tensor) -> Tensor:
        """Squared diffusion coefficient `g(tau)^2 = 2 sigma(tau)^2 ln(sigma_max/sigma_min)`."""
        return 2.0 * self.sigma(tau) ** 2 * self.log_ratio

    def sigmas(self, num_steps: int, sigma_end: float | None = None) -> Tensor:
        """The paper's grid: `num_steps` uniform steps in tau from `sigma_max` to `sigma_end`.

        `sigma_end` defaults to `sigma_min` (tau = 0). Uniform in tau is geometric in sigma.
        """
        return geometric_sigmas(
            num_steps, self.sigma_max, self.sigma_min if sigma_end is None else sigma_end
        )

    def __repr__(self) -> str:
        return f"GeometricSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


def geometric_sigmas(num_steps: int, sigma_max: float, sigma_end: float) -> Tensor:
    """`num_steps + 1` sigmas, geometrically spaced from `sigma_max` down to `sigma_end`.

    Examples:
        >>> geometric_sigmas(2, 1.0, 0.01)
        tensor([1.0000, 0.1000, 0.0100])
    """
    _check_num_steps(num_steps)
    _check_sigma_range(sigma_end, sigma_max)
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_end), num_steps + 1)


def karras_sigmas(num_steps: int, sigma_max: float, sigma_end: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) spacing: uniform in `sigma ** (1 / rho)`; denser near `sigma_end`.

    Examples:
        >>> s = karras_sigmas(4, 1.0, 1e-3)
        >>> float(s[0]), round(float(s[-1]), 6)
        (1.0, 0.001)
    """
    _check_num_steps(num_steps)
    _check_sigma_range(sigma_end, sigma_max)
    ramp = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    lo, hi = sigma_end ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()
