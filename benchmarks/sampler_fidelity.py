"""Sampler fidelity with the exact score: which grids, step counts and stopping points sample
a known Boltzmann distribution as well as the paper's 1000-step Euler-Maruyama, and at what NFE.

Every sampler of ``dqs_torchrl.samplers.SAMPLERS`` runs on the ``geometric`` and ``karras``
grids from ``sigma_max = 1`` to ``sigma_end``, starting at ``N(0, 1)`` (as ``DiffusionActor``
does), driven by the exact score of a Gaussian mixture (noised at sigma, component ``k`` has
covariance ``(s_k^2 + sigma^2) I``), with and without a final Tweedie step
``x + sigma_end^2 score(x, sigma_end)``. Targets (``energies.py``):

* ``2-D``: three components, weights 0.6 / 0.3 / 0.1;
* ``6-D``: three components, weights 0.5 / 0.35 / 0.15;
* ``state 2-D``: three components whose means and weights depend on a scalar state; the
  sampler runs on one batch holding every state, each state is evaluated on its own, and the
  table shows the mean distance and the largest mode-weight error over the states.

Metrics, averaged over seeds: the unbiased energy distance between the sampler's output and as
many exact samples, and the mode-weight error (nearest-mean assignment, max over modes of
``|fraction - weight|``). ``NFE`` counts score evaluations (batch calls) per sample, Tweedie
step included. The reference is the paper's sampler (Euler-Maruyama, 1000 steps uniform in tau
down to sigma_min = 1e-5, no Tweedie step). A configuration *meets* a target when its
mode-weight error is at most the reference's + 0.02 and its distance at most 1.5x the larger of
the reference's distance and the exact-vs-exact noise floor (mean |distance| between two exact
sample sets; this guards against a reference that sits at the noise floor).

Full run (quiet machine; a few minutes):
    .venv/bin/python benchmarks/sampler_fidelity.py
Check that it runs (seconds; tests/test_benchmarks.py):
    .venv/bin/python benchmarks/sampler_fidelity.py --quick --no-write

``--prior-sweep`` measures instead the *start bias*: the error a sampler keeps because it
starts at ``N(0, v I)`` while the noised target at ``sigma_max`` is the latent target
convolved with ``N(0, sigma_max^2 I)`` (mean ``E[x_0]``, variance ``Var(x_0) + sigma_max^2``
along each direction). For ``sigma_max`` in ``--sigma-maxes`` and the starts of ``--priors``
(``N(0, sigma_max^2 + spread)`` with spread ``0``: the paper's prior, ``target``: the target's
``E|x_0|^2 / d``, the zero-mean Gaussian with the noised target's second moment, or a number;
``matched:<spread>``: the same variance ``v``, centred at ``v * score(0, sigma_max)``, the mean
of a Gaussian noised target of variance ``v``, for one more score call), it runs the recipes'
fast grid (ancestral, 10 geometric steps to 1e-2 + Tweedie) and the paper's Euler-Maruyama
(1000 steps to 1e-5) on the three mixtures and on two box-action targets (``LatentTarget``,
exact score by quadrature):

* ``box 2-D``: a uniform action on [-1, 1]^2 (flat Q), whose latent ``atanh(a)`` has the
  density ``sech(x)^2 / 2`` per coordinate (variance pi^2 / 12 ~ 0.82); its "modes" are the
  four quarters of the action interval in each coordinate;
* ``3-mode 1-D``: the Boltzmann policy of ``Q(a) = log sum_k w_k N(a; m_k, s_k^2)`` on
  [-1, 1] at T = 1, three modes of masses 0.55 / 0.33 / 0.12 (latent image with the tanh
  log-Jacobian); modes are the action intervals between the midpoints of the means.

Next to the samplers it prints the start bias alone: the mode-mass error of an exact reverse
process from the start (it returns ``x_0 ~ p(x_0 | x_{sigma_max})``, so its mode masses are
``E_{x ~ start}[P(mode | x_{sigma_max} = x)]``: 200,000 draws for the mixtures, quadrature for
the box targets), with no discretisation and no sampling noise. The exact-vs-exact row is the
noise floor of the sampler columns (a bias below it cannot be seen with this many samples):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sampler_fidelity.py --prior-sweep --seeds 0,1
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from energies import (  # noqa: E402
    GaussianMixture,
    energy_distance,
    energy_distance_cached,
    mean_within,
    mixture_2d,
    mixture_6d,
    state_mixture_2d,
)
from report import add_common_args, emit, markdown_table, section_header  # noqa: E402
from timing import derive_seed, setup_torch  # noqa: E402
from torch import Tensor  # noqa: E402

from dqs_torchrl.samplers import SAMPLERS, tweedie_denoise  # noqa: E402
from dqs_torchrl.schedules import geometric_sigmas, karras_sigmas  # noqa: E402

NAME = "sampler_fidelity"
PRIOR_NAME = "sampler_fidelity_prior"
SPACINGS = {"geometric": geometric_sigmas, "karras": karras_sigmas}
TARGET_NAMES = ("2-D", "6-D", "state 2-D")
PRIOR_TARGET_NAMES = (*TARGET_NAMES, "box 2-D", "3-mode 1-D")
MODE_SLACK, DIST_FACTOR = 0.02, 1.5


def reference_config(steps: int = 1000) -> tuple:
    """The paper's sampler, the reference: Euler-Maruyama, ``steps`` geometric steps (uniform
    in tau) to sigma_min = 1e-5, no Tweedie step; as (sampler, spacing, steps, sigma_end,
    Tweedie)."""
    return ("euler_maruyama", "geometric", steps, 1e-5, False)


def prior_samplers(reference_steps: int = 1000) -> dict[str, tuple]:
    """The samplers of ``--prior-sweep`` by label: the recipes' fast grid and the paper's."""
    return {
        "fast (ancestral 10 + Tweedie)": ("ancestral", "geometric", 10, 1e-2, True),
        f"paper (EM {reference_steps})": reference_config(reference_steps),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; metrics averaged")
    parser.add_argument("--num-samples", type=int, default=4000, help="per target (and state)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--spacings", default="geometric,karras")
    parser.add_argument("--steps", default="5,10,20,50,1000")
    parser.add_argument("--sigma-ends", default="1e-5,1e-2,3e-2")
    parser.add_argument("--states", default="-1,0,1", help="states of the state-dependent target")
    parser.add_argument(
        "--reference-steps",
        type=int,
        default=1000,
        help="steps of the paper's Euler-Maruyama (the reference, and --prior-sweep's paper row)",
    )
    parser.add_argument(
        "--prior-sweep",
        action="store_true",
        help="measure the start bias against sigma_max and the prior's variance instead",
    )
    parser.add_argument("--sigma-maxes", default="1,2,3,5", help="--prior-sweep: sigma_max")
    parser.add_argument(
        "--priors",
        default="0,target,1,matched:1",
        help="--prior-sweep: starts N(0, sigma_max^2 + spread) for each spread (a number, or "
        "'target' = E|x_0|^2 / dim); 'matched:<spread>' centres the start at "
        "(sigma_max^2 + spread) * score(0, sigma_max)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.num_samples, args.steps, args.sigma_ends = "0", 200, "5,20", "1e-2"
        args.reference_steps, args.sigma_maxes, args.priors = 50, "2", "0,matched:1"
    return args


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


class LatentTarget:
    """The latent image of a Boltzmann policy ``pi(a) ∝ exp(Q(a))`` on the box [-1, 1]^dim
    whose coordinates are independent draws of one 1-D policy ``pi``: per coordinate, the
    latent ``x = atanh(a)`` has the density ``p_0(x) ∝ pi(tanh x) (1 - tanh(x)^2)``.

    The noised density ``p_sigma = p_0 * N(0, sigma^2)`` has no closed form; its score is a
    trapezoid quadrature of ``p_sigma(x) = int p_0(x_0) N(x; x_0, sigma^2) dx_0``, differentiated
    exactly: above sigma = 0.2 on fixed latent nodes ``x_i`` 0.1 apart over [-15, 15],
    ``score(x) = sum_i softmax_i(log p_0(x_i) - (x - x_i)^2 / (2 sigma^2)) (x_i - x) / sigma^2``;
    below, in ``x_0 = x - sigma e`` on nodes ``e_j`` 0.5 apart over [-9, 9] (so the ``x_0`` are
    at most 0.1 apart), ``score(x) = sum_j softmax_j(log p_0(x - sigma e_j) - e_j^2 / 2)
    (log p_0)'(x - sigma e_j)``. The trapezoid rule's error on a bump of width ``w`` at spacing
    ``h`` is ``~exp(-2 pi^2 (w / h)^2)``, negligible for the latent widths here (>= 0.1); beyond
    ``|x_0| = 15``, ``p_0 < 1e-12`` of its peak. Checked against a brute-force quadrature on
    400,001 nodes: max error 2e-6 for sigma in [1e-3, 5].

    Args:
        log_pi: ``a -> (log pi(a), d/da log pi(a))`` (unnormalised), for ``a`` in (-1, 1).
        edges: action values splitting [-1, 1] into the modes (increasing).
        sample_actions: ``(n, generator) -> [n]`` exact draws of ``pi`` (float64).
        dim: number of independent coordinates.
    """

    NODE_SPACING, LATENT_SPAN, EPS_SPACING, EPS_SPAN = 0.1, 15.0, 0.5, 9.0

    def __init__(self, log_pi, edges: list[float], sample_actions, dim: int) -> None:
        self.log_pi, self.sample_actions, self.dim = log_pi, sample_actions, dim
        self.edges = torch.atanh(torch.tensor(edges, dtype=torch.float64)).float()
        # Exact mode masses and per-coordinate second moment, by quadrature in the latent.
        x0 = torch.linspace(-15.0, 15.0, 300001, dtype=torch.float64)
        self.masses, self.second_moment = self._grid_masses(x0)
        self._grid = x0[::100]  # spacing 0.01 for ideal_mode_error, which needs its own masses
        self._grid_masses_coarse = self._grid_masses(self._grid)[0]
        count = round(2 * self.LATENT_SPAN / self.NODE_SPACING) + 1
        self._nodes = torch.linspace(-self.LATENT_SPAN, self.LATENT_SPAN, count)
        self._node_log_density = self.log_density(self._nodes.double())[0].float()
        half = round(self.EPS_SPAN / self.EPS_SPACING)
        self._eps = torch.arange(-half, half + 1) * self.EPS_SPACING

    def _grid_masses(self, x0: Tensor) -> tuple[Tensor, float]:
        density = torch.softmax(self.log_density(x0)[0], 0)
        masses = torch.zeros(len(self.edges) + 1, dtype=torch.float64)
        masses.index_add_(0, torch.bucketize(x0.float(), self.edges), density)
        return masses, float((density * x0**2).sum())

    def log_density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p_0(x), d/dx log p_0(x))`` up to a constant, with the tanh log-Jacobian."""
        a = torch.tanh(x)
        log_pi, dlog_pi = self.log_pi(a)
        log_jac = 2.0 * (math.log(2.0) - x - torch.nn.functional.softplus(-2.0 * x))
        return log_pi + log_jac, dlog_pi * (1.0 - a**2) - 2.0 * a

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """``grad_x log p_sigma(x)`` by quadrature (``x``: ``[N, dim]``)."""
        if sigma * self.EPS_SPACING >= self.NODE_SPACING:  # fixed latent nodes
            diff = self._nodes - x.unsqueeze(-1)  # [N, dim, nodes]
            weights = torch.softmax(self._node_log_density - 0.5 * diff**2 / sigma**2, dim=-1)
            return (weights * diff).sum(-1) / sigma**2
        log_p, dlog_p = self.log_density(x.unsqueeze(-1) - sigma * self._eps)  # [N, dim, J]
        weights = torch.softmax(log_p - 0.5 * self._eps**2, dim=-1)
        return (weights * dlog_p).sum(-1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact latent draws (``atanh`` of exact action draws)."""
        a = torch.stack([self.sample_actions(n, generator) for _ in range(self.dim)], -1)
        return torch.atanh(a.clamp(-1 + 1e-12, 1 - 1e-12)).float()

    def mode_weight_error(self, x: Tensor) -> float:
        """``max`` over coordinates and modes of ``|fraction in the mode - exact mass|``."""
        modes = torch.bucketize(x, self.edges)  # [N, dim]
        counts = [torch.bincount(modes[:, j], minlength=len(self.masses)) for j in range(self.dim)]
        fractions = torch.stack(counts).double() / x.shape[0]
        return float((fractions - self.masses).abs().max())

    def ideal_mode_error(self, sigma_max: float, variance: float, mean: float = 0.0) -> float:
        """Mode-mass error of an exact reverse process from ``N(mean, variance I)``: masses
        ``E_{x ~ N(mean, variance)}[P(mode | x_{sigma_max} = x)]``, by quadrature over the
        start and the latent (coordinates are independent, so one coordinate tells)."""
        # Compared with the masses of the same x0 grid: from the exact p_sigma_max the two
        # agree to the accuracy of the x1 quadrature, whatever the grid's own error.
        x0 = self._grid
        z = torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64)
        x1 = mean + z * math.sqrt(variance)
        log_joint = self.log_density(x0)[0] - 0.5 * (x1.unsqueeze(-1) - x0) ** 2 / sigma_max**2
        posterior = torch.softmax(log_joint, dim=-1)  # [x1, x0]
        start = torch.softmax(-0.5 * z**2, dim=0)
        per_mode = torch.zeros(len(x1), len(self.masses), dtype=torch.float64)
        per_mode.index_add_(1, torch.bucketize(x0.float(), self.edges), posterior)
        masses = (start.unsqueeze(-1) * per_mode).sum(0)
        return float((masses - self._grid_masses_coarse).abs().max())


def box_latent(dim: int = 2) -> LatentTarget:
    """A uniform action on [-1, 1]^dim (flat Q): latent density ``sech(x)^2 / 2`` per
    coordinate, variance pi^2 / 12; the quarters of [-1, 1] as modes (mass 0.25 each)."""

    def log_pi(a: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(a), torch.zeros_like(a)

    def sample_actions(n: int, generator: torch.Generator) -> Tensor:
        return torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1

    return LatentTarget(log_pi, [-0.5, 0.0, 0.5], sample_actions, dim)


THREE_MODE = {  # action means, stds, weights of the 1-D three-mode policy on [-1, 1]
    "means": (-0.55, 0.15, 0.75),
    "stds": (0.12, 0.1, 0.08),
    "weights": (0.55, 0.33, 0.12),
}


def three_mode_latent() -> LatentTarget:
    """``pi(a) ∝ sum_k w_k N(a; m_k, s_k^2)`` on [-1, 1] (``THREE_MODE``; the small mode sits
    at a = 0.75, latent ~0.97, far from the prior's centre); modes split at the midpoints."""
    means, stds, weights = (torch.tensor(THREE_MODE[k], dtype=torch.float64) for k in THREE_MODE)

    def log_pi(a: Tensor) -> tuple[Tensor, Tensor]:
        z = (a.unsqueeze(-1) - means.to(a)) / stds.to(a)
        log_terms = torch.log(weights.to(a) / stds.to(a)) - 0.5 * z**2
        resp = torch.softmax(log_terms, dim=-1)
        return torch.logsumexp(log_terms, -1), -(resp * z / stds.to(a)).sum(-1)

    def sample_actions(n: int, generator: torch.Generator) -> Tensor:
        out = torch.empty(0, dtype=torch.float64)
        while out.numel() < n:  # rejection of the draws outside the box: exact
            k = torch.multinomial(weights, n, replacement=True, generator=generator)
            a = means[k] + stds[k] * torch.randn(n, generator=generator, dtype=torch.float64)
            out = torch.cat([out, a[a.abs() < 1]])
        return out[:n]

    edges = [float(means[i] + means[i + 1]) / 2 for i in range(len(means) - 1)]
    return LatentTarget(log_pi, edges, sample_actions, dim=1)


LATENT_TARGETS = {"box 2-D": box_latent, "3-mode 1-D": three_mode_latent}


def mixture_second_moment(mixture: GaussianMixture) -> float:
    """``E|x_0|^2 / dim`` of a (single-row) mixture, in closed form."""
    weights = mixture.weights.reshape(-1)
    means = mixture.means.reshape(-1, mixture.dim)
    per_component = means.pow(2).sum(-1) + mixture.dim * mixture.stds**2
    return float((weights * per_component).sum()) / mixture.dim


def mixture_ideal_mode_error(
    mixture: GaussianMixture,
    sigma_max: float,
    variance: float,
    generator: torch.Generator,
    mean: Tensor | float = 0.0,
) -> float:
    """Mode-weight error of an exact reverse process from ``N(mean, variance I)``: weights
    ``E_{x ~ N(mean, variance I)}[P(k | x_{sigma_max} = x)]`` over 200,000 draws."""
    x1 = mean + math.sqrt(variance) * torch.randn(200_000, mixture.dim, generator=generator)
    var = mixture.stds**2 + sigma_max**2
    diff = x1.unsqueeze(-2) - mixture.means.reshape(-1, mixture.dim)
    log_r = (
        mixture.log_weights.reshape(-1)
        - 0.5 * diff.pow(2).sum(-1) / var
        - 0.5 * mixture.dim * torch.log(var)
    )
    resp = torch.softmax(log_r, dim=-1).mean(0)
    return float((resp - mixture.weights.reshape(-1)).abs().max())


class Target:
    """One benchmark distribution: the mixture the sampler sees (all rows) and, per state,
    the mixture and exact samples it is compared with."""

    def __init__(self, name: str, n: int, states: list[float], seed: int) -> None:
        self.name = name
        gen = torch.Generator().manual_seed(derive_seed(seed, name, "exact"))
        if name == "state 2-D":
            self.mixture = state_mixture_2d(torch.tensor(states).repeat_interleave(n))
            parts = [state_mixture_2d(torch.full((n,), s)) for s in states]
            self.single = [state_mixture_2d(torch.tensor([s])) for s in states]
        elif name in LATENT_TARGETS:
            self.mixture = LATENT_TARGETS[name]()
            parts = self.single = [self.mixture]
        else:
            self.mixture = mixture_2d() if name == "2-D" else mixture_6d()
            parts = self.single = [self.mixture]
        self.parts: list[GaussianMixture | LatentTarget] = parts
        self.n = n
        self.exact = [p.sample(n, gen) for p in parts]
        self.exact_within = [mean_within(y) for y in self.exact]
        second = [p.sample(n, gen) for p in parts]
        self.floor = [energy_distance(a, b) for a, b in zip(self.exact, second, strict=True)]
        self.floor_mode = [p.mode_weight_error(y) for p, y in zip(parts, self.exact, strict=True)]

    def evaluate(self, x: torch.Tensor) -> tuple[float, float]:
        """(mean energy distance over states, max mode-weight error over states)."""
        dists, modes = [], []
        for i, part in enumerate(self.parts):
            xi = x[i * self.n : (i + 1) * self.n]
            dists.append(energy_distance_cached(xi, self.exact[i], self.exact_within[i]))
            modes.append(part.mode_weight_error(xi))
        return sum(dists) / len(dists), max(modes)

    def second_moment(self) -> float:
        """``E|x_0|^2 / dim``, averaged over the states: the latent spread a zero-mean start
        adds to ``sigma_max^2`` to match the noised target's second moment."""
        values = [
            p.second_moment if isinstance(p, LatentTarget) else mixture_second_moment(p)
            for p in self.single
        ]
        return sum(values) / len(values)

    def ideal_mode_error(
        self, sigma_max: float, variance: float, seed: int, matched: bool = False
    ) -> float:
        """Start bias alone (max over states): see ``LatentTarget.ideal_mode_error``. With
        ``matched`` the start is centred at ``variance * score(0, sigma_max)`` per state."""
        errors = []
        for part in self.single:
            origin = torch.zeros(1, part.dim)
            mean = variance * part.score(origin, sigma_max)[0] if matched else origin[0]
            if isinstance(part, LatentTarget):  # the same for every coordinate
                errors.append(part.ideal_mode_error(sigma_max, variance, float(mean[0])))
            else:
                gen = torch.Generator().manual_seed(derive_seed(seed, self.name, "ideal"))
                errors.append(mixture_ideal_mode_error(part, sigma_max, variance, gen, mean))
        return max(errors)


def run_config(
    target: Target,
    sampler: str,
    spacing: str,
    steps: int,
    sigma_end: float,
    seed,
    sigma_max: float = 1.0,
    start_std: float = 1.0,
    matched: bool = False,
):
    """Run one sampler grid from ``sigma_max`` with the start ``N(0, start_std^2 I)`` (with
    ``matched``, centred at ``start_std^2 * score(0, sigma_max)``, one more score call);
    return NFE and metrics without and with the Tweedie step."""
    gen = torch.Generator().manual_seed(
        derive_seed(seed, target.name, sampler, spacing, steps, sigma_end)
    )
    calls = [0]

    def score_fn(x, sigma):
        calls[0] += 1
        return target.mixture.score(x, sigma)

    sigmas = SPACINGS[spacing](steps, sigma_max, sigma_end)
    rows = target.n * len(target.parts)
    x = start_std * torch.randn(rows, target.mixture.dim, generator=gen)
    if matched:
        x = x + start_std**2 * score_fn(torch.zeros_like(x), sigma_max)
    x = SAMPLERS[sampler](score_fn, x, sigmas, generator=gen)
    nfe = calls[0]
    plain = target.evaluate(x)
    denoised = target.evaluate(tweedie_denoise(score_fn, x, float(sigmas[-1])))
    return {False: (nfe, *plain), True: (nfe + 1, *denoised)}


def _parse_prior(token: str) -> tuple[str, bool]:
    """``"target"`` / ``"1"`` -> (spread, False); ``"matched:1"`` -> ("1", True)."""
    matched = token.startswith("matched:")
    spread = token.split(":", 1)[1] if matched else token
    if spread != "target":
        float(spread)  # fails early on a typo
    return spread, matched


def _prior_label(token: str) -> str:
    spread, matched = _parse_prior(token)
    variance = {"0": "sigma_max^2", "target": "sigma_max^2 + E|x0|^2/d"}.get(
        spread, f"sigma_max^2 + {spread}"
    )
    return f"N(v score(0), v = {variance})" if matched else f"N(0, {variance})"


def prior_sweep(args: argparse.Namespace) -> None:
    """Start bias against sigma_max and the start distribution (``--prior-sweep``)."""
    seeds = [int(s) for s in args.seeds.split(",")]
    states = _floats(args.states)
    cells = list(itertools.product(_floats(args.sigma_maxes), args.priors.split(",")))
    names = PRIOR_TARGET_NAMES

    def empty() -> dict:
        return {c: {t: [] for t in names} for c in cells}

    # ideal[cell][target] and sampled[sampler][cell][target]: lists over seeds
    samplers = prior_samplers(args.reference_steps)
    ideal, sampled = empty(), {label: empty() for label in samplers}
    floors: dict = {t: [] for t in names}
    spread_of: dict = {}
    for seed in seeds:
        for name in names:
            target = Target(name, args.num_samples, states, seed)
            floors[name].append(
                (sum(abs(f) for f in target.floor) / len(target.floor), max(target.floor_mode))
            )
            spread_of[name] = target.second_moment()
            for sigma_max, prior in cells:
                spread, matched = _parse_prior(prior)
                variance = sigma_max**2 + (spread_of[name] if spread == "target" else float(spread))
                ideal[sigma_max, prior][name].append(
                    target.ideal_mode_error(sigma_max, variance, seed, matched)
                )
                for label, (sampler, spacing, steps, sigma_end, denoise) in samplers.items():
                    config = (sampler, spacing, steps, sigma_end)
                    std = math.sqrt(variance)
                    out = run_config(target, *config, seed, sigma_max, std, matched)
                    sampled[label][sigma_max, prior][name].append(out[denoise][1:])
            print(f"seed {seed}: {name} done", file=sys.stderr)

    def mean(values):
        return sum(values) / len(values)

    def cell_label(cell) -> list:
        return [f"{cell[0]:g}", _prior_label(cell[1])]

    floor = {t: (mean([d for d, _ in v]), mean([m for _, m in v])) for t, v in floors.items()}
    noise_label = ["exact vs exact (noise floor)", ""]
    bias_rows = [noise_label + [floor[t][1] for t in names]]
    bias_rows += [cell_label(c) + [mean(ideal[c][t]) for t in names] for c in cells]
    metric_headers = [f"{t} {m}" for t in names for m in ("mode err", "dist")]
    tables = []
    for label, per_cell in sampled.items():
        rows = [noise_label + [v for t in names for v in (floor[t][1], floor[t][0])]]
        for c in cells:
            cells_of = [
                (mean([m for _, m in per_cell[c][t]]), mean([d for d, _ in per_cell[c][t]]))
                for t in names
            ]
            rows.append(cell_label(c) + [v for pair in cells_of for v in pair])
        table = markdown_table(["sigma_max", "start", *metric_headers], rows)
        tables += [f"**{label}**:", "", table, ""]

    spreads_text = ", ".join(f"{t} {spread_of[t]:.3g}" for t in names)
    header = section_header(
        "Start bias: sigma_max and the sampler's start (exact score)",
        quick=args.quick,
        threads=args.threads,
        seeds=f"{', '.join(map(str, seeds))} (metrics are means over these {len(seeds)} seeds)",
        extra=[
            f"{args.num_samples} samples per target and state (state 2-D: states "
            f"{', '.join(f'{s:g}' for s in states)}); the grid starts at sigma_max; exact score "
            "(closed form for the mixtures, quadrature for the box targets)",
            "start N(0, v I), or N(v score(0, sigma_max), v I) (centred by one score call at "
            "the origin: the mean of a Gaussian noised target of variance v)",
            f"E|x0|^2/d of each target (the 'target' spread): {spreads_text}",
            "mode err: max over modes of |fraction - exact mass| (mixtures: nearest mean vs "
            "weight, max over states; box targets: action intervals vs quadrature masses); "
            "dist: unbiased energy distance to as many exact samples, in the latent",
        ],
    )
    body = [
        header,
        "Start bias alone: mode-mass error of an exact reverse process from the start (no "
        "discretisation, no sampling noise; mixtures: mean over 200,000 start draws, box "
        "targets: quadrature), next to the mode error of exact samples:",
        "",
        markdown_table(["sigma_max", "start", *names], bias_rows),
        "",
        "Samplers with the exact score (the fast grid ends with its Tweedie step):",
        "",
        *tables,
    ]
    emit(PRIOR_NAME, "\n".join(body), args)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_torch(args.threads, args.seed)
    if args.prior_sweep:
        prior_sweep(args)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    states = _floats(args.states)
    grid = list(
        itertools.product(
            args.samplers.split(","),
            args.spacings.split(","),
            [int(s) for s in args.steps.split(",")],
            _floats(args.sigma_ends),
        )
    )
    reference = reference_config(args.reference_steps)
    if reference[:4] not in grid:
        grid.insert(0, reference[:4])

    # results[config][target] = list over seeds of (dist, mode error); nfe[config]
    results: dict[tuple, dict[str, list]] = {}
    nfe: dict[tuple, int] = {}
    floors = {t: [] for t in TARGET_NAMES}
    for seed in seeds:
        for name in TARGET_NAMES:
            target = Target(name, args.num_samples, states, seed)
            floors[name].append(
                (sum(abs(f) for f in target.floor) / len(target.floor), max(target.floor_mode))
            )
            for config in grid:
                out = run_config(target, *config, seed)
                for denoise, (count, dist, mode) in out.items():
                    key = (*config, denoise)
                    nfe[key] = count
                    results.setdefault(key, {}).setdefault(name, []).append((dist, mode))
        print(f"seed {seed} done", file=sys.stderr)

    def mean(values):
        return sum(values) / len(values)

    metrics = {
        key: {t: (mean([d for d, _ in v]), mean([m for _, m in v])) for t, v in per.items()}
        for key, per in results.items()
    }
    floor = {t: (mean([d for d, _ in v]), mean([m for _, m in v])) for t, v in floors.items()}
    ref = metrics[reference]

    def meets(key) -> list[str]:
        ok = []
        for t in TARGET_NAMES:
            dist, mode = metrics[key][t]
            limit = DIST_FACTOR * max(ref[t][0], floor[t][0])
            if dist <= limit and mode <= ref[t][1] + MODE_SLACK:
                ok.append(t)
        return ok

    def label(key) -> list:
        sampler, spacing, steps, sigma_end, denoise = key
        return [sampler, spacing, steps, f"{sigma_end:g}", denoise, nfe[key]]

    def metric_cells(key) -> list:
        return [v for t in TARGET_NAMES for v in metrics[key][t]]

    metric_headers = [f"{t} {m}" for t in TARGET_NAMES for m in ("dist", "mode err")]
    head = ["sampler", "spacing", "steps", "sigma_end", "Tweedie", "NFE"]

    ref_rows = [
        ["exact vs exact (noise floor: mean abs dist, mode err of exact samples)"]
        + [v for t in TARGET_NAMES for v in floor[t]],
        [
            "reference: "
            + " ".join(str(v) for v in label(reference)[:4])
            + f" (NFE {nfe[reference]})"
        ]
        + metric_cells(reference),
    ]
    limits = ["pass limits (dist <= 1.5 max(ref, floor); mode err <= ref + 0.02)"] + [
        v
        for t in TARGET_NAMES
        for v in (DIST_FACTOR * max(ref[t][0], floor[t][0]), ref[t][1] + MODE_SLACK)
    ]
    ref_rows.append(limits)

    keys = sorted(metrics, key=lambda k: (nfe[k], k[0], k[1], k[3], k[4]))
    passing = [k for k in keys if len(meets(k)) == len(TARGET_NAMES)]
    summary_rows = [label(k) + metric_cells(k) for k in passing[:15]]
    full_rows = [
        label(k) + metric_cells(k) + ["all" if len(meets(k)) == 3 else ", ".join(meets(k)) or "-"]
        for k in keys
    ]

    header = section_header(
        "Sampler fidelity with the exact score",
        quick=args.quick,
        threads=args.threads,
        seeds=f"{', '.join(map(str, seeds))} (metrics are means over these {len(seeds)} seeds)",
        extra=[
            f"{args.num_samples} samples per target and state (state-dependent target: states "
            f"{', '.join(f'{s:g}' for s in states)}); prior N(0, 1); exact score of the noised "
            "mixture",
            "dist: unbiased energy distance to as many exact samples; mode err: max over modes "
            "of |nearest-mean fraction - weight|; for the state-dependent target, mean distance "
            "and max mode err over states",
        ],
    )
    body = [
        header,
        markdown_table(["", *metric_headers], ref_rows),
        "",
        f"Cheapest configurations meeting all three targets (of {len(passing)} that do; "
        f"{len(keys)} tried):",
        "",
        markdown_table(head + metric_headers, summary_rows) if summary_rows else "(none)",
        "",
        "All configurations, by NFE (meets: the targets whose criteria hold):",
        "",
        markdown_table(head + metric_headers + ["meets"], full_rows),
    ]
    emit(NAME, "\n".join(body), args)


if __name__ == "__main__":
    main()
