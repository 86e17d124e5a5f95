"""Distributions with known Boltzmann densities and exact scores, and the distance the
fidelity benchmarks compare samples with: isotropic Gaussian mixtures (fixed and
state-dependent) and the energy distance.

Examples:
    >>> mixture = mixture_2d()
    >>> x = mixture.sample(2000, torch.Generator().manual_seed(0))
    >>> mixture.mode_weight_error(x) < 0.05, mixture.score(x, 0.1).shape
    (True, torch.Size([2000, 2]))
"""

from __future__ import annotations

import torch
from torch import Tensor


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, s_k^2 I)``, possibly with one set of parameters per row.

    As a Boltzmann density it is ``exp(-E)`` with ``E = -log p``. The VE-noised density at
    noise ``sigma`` is the same mixture with variances ``s_k^2 + sigma^2``, so :meth:`score`
    is exact at every ``sigma`` (float32: every variance is >= min s_k^2, far from round-off).

    Args:
        means: ``[K, d]``, or ``[N, K, d]`` for row-wise (state-dependent) mixtures.
        stds: ``[K]`` component standard deviations.
        weights: ``[K]`` or ``[N, K]``, summing to one.
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        self.means = means.float()
        self.stds = stds.float()
        self.weights = weights.float()
        self.log_weights = self.weights.log()

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """``grad_x log p_sigma(x)`` of the noised mixture (``x``: ``[N, d]``)."""
        var = self.stds**2 + sigma**2  # [K]
        diff = x.unsqueeze(-2) - self.means  # [N, K, d]
        log_r = self.log_weights - 0.5 * diff.pow(2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        resp = torch.softmax(log_r, dim=-1)  # [N, K]
        return -(resp.unsqueeze(-1) * diff / var.unsqueeze(-1)).sum(-2)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact samples (``n`` must equal ``N`` for row-wise mixtures)."""
        weights = self.weights.expand(n, self.num_components)
        comp = torch.multinomial(weights, 1, generator=generator).squeeze(-1)
        means = self.means.expand(n, *self.means.shape[-2:])[torch.arange(n), comp]
        noise = torch.randn(n, self.dim, generator=generator)
        return means + self.stds[comp].unsqueeze(-1) * noise

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean of each row."""
        dist = (x.unsqueeze(-2) - self.means).pow(2).sum(-1)
        return dist.argmin(-1)

    def mode_weight_error(self, x: Tensor) -> float:
        """``max_k |fraction of x nearest to mu_k - w_k|`` (rows of a row-wise mixture must
        share their weights, e.g. one state repeated)."""
        counts = torch.bincount(self.assign(x), minlength=self.num_components).float()
        weights = self.weights if self.weights.dim() == 1 else self.weights[0]
        return float((counts / x.shape[0] - weights).abs().max())


def mixture_2d() -> GaussianMixture:
    """Three 2-D components with weights 0.6 / 0.3 / 0.1 (prior mean offset ~(0.32, 0.14))."""
    means = torch.tensor([[0.8, 0.0], [-0.4, 0.7], [-0.4, -0.7]])
    return GaussianMixture(means, torch.tensor([0.15, 0.1, 0.12]), torch.tensor([0.6, 0.3, 0.1]))


def mixture_6d() -> GaussianMixture:
    """Three 6-D components with weights 0.5 / 0.35 / 0.15 (means 1.7 apart, stds 0.1-0.2)."""
    means = torch.tensor(
        [
            [0.8, 0.3, -0.2, 0.0, 0.4, -0.3],
            [-0.6, 0.5, 0.3, -0.4, 0.0, 0.2],
            [0.1, -0.7, 0.2, 0.6, -0.4, 0.3],
        ]
    )
    return GaussianMixture(means, torch.tensor([0.15, 0.2, 0.1]), torch.tensor([0.5, 0.35, 0.15]))


def state_mixture_2d(state: Tensor) -> GaussianMixture:
    """A state-dependent 2-D mixture for a batch of scalar states ``[N]``: three components
    whose means move and whose weights ``softmax(0.5 + 1.5 s, 0, -0.5 - 1.5 s)`` change with
    the state (s=-1: .09/.24/.67, s=0: .51/.31/.19, s=1: .87/.12/.02)."""
    s = state.float().reshape(-1, 1)
    base = torch.tensor([[0.7, 0.3], [-0.6, 0.5], [0.0, -0.7]])
    shift = torch.tensor([[0.0, 0.2], [0.15, 0.0], [-0.2, 0.0]])
    means = base + s.unsqueeze(-1) * shift  # [N, 3, 2]
    logits = torch.cat([0.5 + 1.5 * s, torch.zeros_like(s), -0.5 - 1.5 * s], dim=-1)
    return GaussianMixture(means, torch.tensor([0.12, 0.1, 0.12]), torch.softmax(logits, -1))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Unbiased estimate of the energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (can be
    slightly negative for equal distributions)."""
    return 2 * _mean_cross(x, y) - mean_within(x) - mean_within(y)


def _mean_cross(x: Tensor, y: Tensor) -> float:
    d = torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.mean())


def mean_within(x: Tensor) -> float:
    """The unbiased ``E|X-X'|`` of one sample set (for :func:`energy_distance_cached`)."""
    n = x.shape[0]
    d = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.sum() / (n * (n - 1)))


def energy_distance_cached(x: Tensor, y: Tensor, y_within: float) -> float:
    """:func:`energy_distance` with ``E|Y-Y'|`` precomputed (:func:`mean_within`)."""
    return 2 * _mean_cross(x, y) - mean_within(x) - y_within
