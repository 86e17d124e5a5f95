"""Learned-sampler fidelity: a ``ScoreNetwork`` trained by ``IDEMScoreLoss`` on known energies,
sampled by its ``DiffusionActor``, against the exact Boltzmann distribution.

Where ``sampler_fidelity.py`` drives the samplers with the exact score, this benchmark trains
the score (issue 11, items 3-4): what the whole pipeline (estimator, training points, sampler,
start) gets of ``pi(a|s) ∝ exp(Q(s, a) / T)``. The critic is an ``EnergyCritic`` of an analytic
``Q``, so the exact policy is known by quadrature. Targets:

* ``3-mode 1-D``: one state-dependent 1-D target on the box [-1, 1], two states and two
  temperatures served by ONE network (``T`` is one of its inputs). State +1:
  ``Q(a) = log sum_k w_k N(a; m_k, s_k^2)`` with means -0.55 / 0.15 / 0.75, stds 0.12 / 0.1 /
  0.08, weights 0.55 / 0.33 / 0.12; state -1 the mirror image (``a -> -a``). Mode masses at
  T = 1: 0.55 / 0.33 / 0.12; at T = 0.5: 0.66 / 0.29 / 0.05 (the small mode far from the
  centre, latent ~ +-1). Modes are the intervals between the midpoints of the means.
* ``4-mode 2-D box``: a state-free 2-D target on the asymmetric box low = [-2, 0],
  high = [1, 3] at T = 1: four Gaussian bumps (std 0.25) at (-1.3, 0.6), (0.4, 2.4),
  (-1.2, 2.3), (0.5, 0.7) with weights 0.4 / 0.3 / 0.2 / 0.1 (two of them near the box's
  faces); modes are the nearest means.

Training points (``--sources``):

* ``self``: the RL case. A small replay per (state, T) of the actor's OWN samples: filled with
  uniform box actions first (the random warm-up frames of a recipe), then refreshed every
  ``--refresh-every`` updates with ``--refresh-size`` fresh draws of the actor (its EMA network
  and its own sampler), which replace the oldest. Rows come from this replay, as replay
  actions do in DQS, plus the ``uniform_fraction`` of the configuration.
* ``uniform``: latents of uniform box actions only (``IDEMScoreLoss.uniform_latents``), a
  proposal that knows nothing of Q.
* ``limit``: no network and no training: the actor samples with the mean of ``--limit-repeats``
  independent K-draw targets of ``IDEMScoreLoss.score_target`` in place of the score network,
  which is what the L2 regression converges to with unlimited data and capacity. Its error is
  the estimator's (and the sampler's) alone; a trained row's excess over it is fitting error.

Configurations (``--configs``; every one trains with Adam 1e-3, cosine decay to 5e-5, grad-norm
clip 10, an EMA of the weights (Polyak 0.002) used for sampling, batch ``--batch`` per
temperature, a ``ScoreNetwork`` of width 128 and embeddings of 64, as ``tests/test_core_claim.py``):

* ``paper``: table 1, ``fidelity=paper``: iDEM's gradient form with K = 1000; sampled with
  Euler-Maruyama, 1000 steps uniform in tau from ``N(0, 1)``, sigma 1 -> 1e-5;
* ``fast``: ``fidelity/fast.yaml`` as the recipes run it (sigma_max 1, paper prior);
* ``recommended``: the settings this benchmark chose first, the recipes' ``fidelity=accurate``
  (see docs/performance.md);
* ``balanced``: the recipes' ``fidelity=balanced``: ``recommended`` at 1.3 times the cost of
  a ``fast`` update; its score loss regresses on ``score_batch_rows`` = 128 rows per update
  (64 per temperature on the 3-mode target), not ``--batch`` per temperature.

Metrics, per (state, T) case, from ``--num-draws`` samples: the mode masses against the exact
ones (quadrature: 200,001 nodes in 1-D, 801 x 801 in 2-D), and the unbiased energy distance in
action space to as many exact draws (from the quadrature grid, jittered within a cell; both
sides cut to their first 16,000, ``DISTANCE_DRAWS``, whose n x n distances fill memory). The
table gives the worst mode-mass error over the cases (mean and max over seeds), the mean energy
distance, the updates and the wall-clock seconds of training (and of the final sampling) per
run. Full run (~2-8 min per run on one loaded core; paper rows the slowest):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learned_fidelity.py --seeds 0,1,2

Check that it runs (seconds): ``benchmarks/learned_fidelity.py --quick --no-write``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from energies import energy_distance  # noqa: E402
from report import add_common_args, emit, markdown_table, section_header  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from timing import derive_seed, setup_torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchrl.data import Bounded  # noqa: E402
from torchrl.objectives import SoftUpdate  # noqa: E402

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss, ScoreNetwork  # noqa: E402

NAME = "learned_fidelity"
DISTANCE_DRAWS = 16000  # the energy distance's draws per side (its matrices are n x n)

# ---------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------

_ACTOR_KEYS = ("sigma_min", "sigma_max", "num_steps", "sampler", "spacing", "sigma_end")
_ACTOR_KEYS += ("denoise", "prior", "parameterization")
_LOSS_KEYS = ("num_mc_samples", "num_mc_samples_small", "small_sigma", "estimator")
_LOSS_KEYS += ("uniform_fraction",)


def _preset(name: str, **changes: Any) -> dict[str, Any]:
    """A recipe preset (``fidelity/<name>.yaml``) with the recipes' schedule (sigma 1e-5 to 1,
    the paper's prior), plus ``changes``."""
    from omegaconf import OmegaConf

    import dqs_torchrl.experiments.configs as configs

    path = Path(configs.__file__).parent / "fidelity" / f"{name}.yaml"
    config = dict(OmegaConf.to_container(OmegaConf.load(path)))
    base = {"sigma_min": 1e-5, "sigma_max": 1.0, "prior": "paper", "uniform_fraction": 0.0}
    base |= {"parameterization": "score", "score_batch_rows": None}
    return {**base, **config, **changes}


CONFIGS: dict[str, dict[str, Any]] = {
    "paper": _preset("paper"),
    "fast": _preset("fast"),
    # The recipes' `fidelity=accurate` (fidelity/accurate.yaml), chosen by the measurements in
    # docs/performance.md (Learned sampler fidelity): the matched start (issue 11, item 1) at
    # sigma_max 1 (sigma_max 2, the exact-score optimum, trained too slowly: 0.16-0.19),
    # training sigmas from 1e-2 (below, noise moves no mass), Euler-Maruyama with 30 geometric
    # steps to 1e-2 + Tweedie (exact-score mode error ~0.01 on the 3-mode target where the
    # fast grid's 10 ancestral steps leave 0.045); a network that outputs sigma * score (a
    # score-output network drifted away from the regression's limit with training: 0.09 at
    # 8000 updates); K = 64 draws above sigma 0.3 and 16 below (K = 16 everywhere leaves 0.034
    # of estimator bias on the small far mode even with unlimited data, 64/16 leaves 0.024, 64
    # everywhere 0.012). Uniform training latents (uniform_fraction) measured no help: off.
    "recommended": _preset("accurate"),
    # The recipes' `fidelity=balanced` (fidelity/balanced.yaml): `recommended` with 20 sampler
    # steps (the estimator's limit: 0.016 on the 3-mode target, 30 steps 0.023, 14 steps 0.041),
    # K = 4 below sigma 0.3 (limit 0.019) and the score loss on `score_batch_rows` = 128 rows
    # per update, split evenly over the temperatures, where the others regress on `--batch`
    # rows per temperature: 1.3 times a `fast` update in the recipes where `recommended` costs
    # 2.7 (96 rows cost 1.05-1.10 and read 0.033 on one 3-mode seed of three).
    "balanced": _preset("balanced"),
}


def parse_config(token: str) -> tuple[str, dict[str, Any]]:
    """``"recommended"`` or ``"recommended:uniform_fraction=0.5,num_steps=50"`` (a variant)."""
    name, _, overrides = token.partition(":")
    if name not in CONFIGS:
        raise SystemExit(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    config = dict(CONFIGS[name])
    for item in filter(None, overrides.split(";")):
        key, _, value = item.partition("=")
        if key not in config:
            raise SystemExit(f"unknown setting {key!r} in {token!r}; known: {', '.join(config)}")
        config[key] = _parse_value(value)
    return token, config


def _parse_value(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"None": None, "null": None, "true": True, "false": False}.get(value, value)


def config_summary(config: dict[str, Any]) -> str:
    """One line: estimator, start, sampler, training-point mix."""
    k = f"{config['estimator']} K={config['num_mc_samples']}"
    if config["num_mc_samples_small"] is not None:
        k += f" (K={config['num_mc_samples_small']} at sigma<={config['small_sigma']:g})"
    end = config["sigma_end"] if config["sigma_end"] is not None else config["sigma_min"]
    sampler = f"{config['sampler']} {config['num_steps']} to {end:g}"
    sampler += " + Tweedie" if config["denoise"] else ""
    start = f"{config['prior']} prior, sigma_max {config['sigma_max']:g}"
    if config["score_batch_rows"] is not None:
        k += f"; {config['score_batch_rows']} rows per update"
    net = f"network outputs the {config['parameterization']}"
    return f"{k}; {start}; {sampler}; {net}; uniform_fraction {config['uniform_fraction']:g}"


# ---------------------------------------------------------------------------------------------
# Targets: analytic Q on a box, exact policy by quadrature
# ---------------------------------------------------------------------------------------------


def _log_mixture(a: Tensor, means: Tensor, stds: Tensor, weights: Tensor) -> Tensor:
    """``log sum_k w_k N(a; m_k, s_k^2 I)`` for ``a`` ``[..., d]``, means ``[..., K, d]``."""
    diff = (a.unsqueeze(-2) - means) / stds.unsqueeze(-1)
    log_norm = -a.shape[-1] * (torch.log(stds) + 0.5 * math.log(2 * math.pi))
    return torch.logsumexp(torch.log(weights) + log_norm - 0.5 * diff.pow(2).sum(-1), -1)


@dataclass
class Case:
    """One (state, temperature) of a target with its exact mode masses and draws."""

    observation: Tensor  # [obs_dim]
    temperature: float
    masses: Tensor = field(default_factory=lambda: torch.empty(0))
    exact: Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def label(self) -> str:
        state = f"s={self.observation[0]:+g} " if self.observation.numel() else ""
        return f"{state}T={self.temperature:g}"


class Target:
    """An analytic ``Q(s, a)``, a Gaussian mixture's log-density in action space, on a box.

    Args:
        name: the table's label.
        low, high: the box.
        means: ``state -> [K, d]`` the bumps' centres for observations ``[..., obs_dim]``.
        stds, weights: ``[K]``.
        cases: ``(observation, temperature)`` pairs the network must serve.
    """

    def __init__(
        self,
        name: str,
        low: list[float],
        high: list[float],
        means: Callable[[Tensor], Tensor],
        stds: list[float],
        weights: list[float],
        cases: list[tuple[list[float], float]],
    ) -> None:
        self.name, self.means = name, means
        self.low, self.high = torch.tensor(low), torch.tensor(high)
        self.stds, self.weights = torch.tensor(stds), torch.tensor(weights)
        self.cases = [Case(torch.tensor(s, dtype=torch.float32), t) for s, t in cases]
        self.obs_dim, self.action_dim = len(cases[0][0]), len(low)

    def q_value(self, observation: Tensor, action: Tensor) -> Tensor:
        """``Q(s, a)`` ``[...]`` for observations ``[..., obs_dim]``, actions ``[..., d]``."""
        means = self.means(observation).to(action)
        return _log_mixture(action, means, self.stds.to(action), self.weights.to(action))

    def assign(self, observation: Tensor, action: Tensor) -> Tensor:
        """The mode of each action: its nearest bump centre (the state's)."""
        means = self.means(observation).to(action)
        return (action.unsqueeze(-2) - means).pow(2).sum(-1).argmin(-1)

    def grid(self) -> tuple[Tensor, Tensor]:
        """Quadrature nodes (cell centres) ``[M, d]`` and the cell widths ``[d]``."""
        count = 200_001 if self.action_dim == 1 else 801
        widths = (self.high - self.low).double() / count
        axes = [
            self.low[j].double() + widths[j] * (torch.arange(count, dtype=torch.float64) + 0.5)
            for j in range(self.action_dim)
        ]
        nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.action_dim)
        return nodes, widths

    def prepare(self, num_draws: int, generator: torch.Generator) -> None:
        """Exact mode masses and ``num_draws`` exact draws of every case."""
        nodes, widths = self.grid()
        for case in self.cases:
            obs = case.observation.double().expand(nodes.shape[0], self.obs_dim)
            log_p = self.q_value(obs, nodes) / case.temperature
            p = torch.softmax(log_p, 0)
            modes = self.assign(obs[:1], nodes)
            case.masses = torch.zeros(len(self.weights), dtype=torch.float64).index_add_(
                0, modes, p
            )
            pick = torch.multinomial(p, num_draws, replacement=True, generator=generator)
            jitter = torch.rand(num_draws, self.action_dim, generator=generator, dtype=p.dtype)
            case.exact = (nodes[pick] + (jitter - 0.5) * widths).float()

    def evaluate(self, actor: DiffusionActor, num_draws: int) -> dict[str, Any]:
        """Sample every case; worst mode-mass error, mean energy distance, masses per case."""
        errors, distances, masses = [], [], {}
        for case in self.cases:
            obs = case.observation.expand(num_draws, self.obs_dim)
            action, _ = actor.sample(obs, case.temperature)
            counts = torch.bincount(self.assign(obs[:1], action), minlength=len(self.weights))
            fractions = counts.double() / num_draws
            errors.append(float((fractions - case.masses).abs().max()))
            # O(n^2) memory: at most DISTANCE_DRAWS of each side (mode masses use every draw)
            n = DISTANCE_DRAWS
            distances.append(energy_distance(action[:n], case.exact[:n]))
            masses[case.label] = fractions.tolist()
        return {
            "mode_error": max(errors),
            "distance": sum(distances) / len(distances),
            "masses": masses,
        }


def three_mode_1d() -> Target:
    base = torch.tensor([-0.55, 0.15, 0.75])

    def means(observation: Tensor) -> Tensor:
        s = observation[..., :1].sign()  # +1 / -1: the mirror image
        return (s * base.to(observation)).unsqueeze(-1)  # [..., K, 1]

    cases = [([s], t) for s in (1.0, -1.0) for t in (1.0, 0.5)]
    return Target("3-mode 1-D", [-1.0], [1.0], means, [0.12, 0.1, 0.08], [0.55, 0.33, 0.12], cases)


def four_mode_2d_box() -> Target:
    centres = torch.tensor([[-1.3, 0.6], [0.4, 2.4], [-1.2, 2.3], [0.5, 0.7]])

    def means(observation: Tensor) -> Tensor:
        return centres.to(observation).expand(*observation.shape[:-1], *centres.shape)

    return Target(
        "4-mode 2-D box",
        [-2.0, 0.0],
        [1.0, 3.0],
        means,
        [0.25] * 4,
        [0.4, 0.3, 0.2, 0.1],
        [([], 1.0)],
    )


TARGETS: dict[str, Callable[[], Target]] = {"3-mode": three_mode_1d, "2-D-box": four_mode_2d_box}


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class Sizes:
    updates: int = 8000
    batch: int = 128  # per temperature
    refresh_every: int = 200
    refresh_size: int = 256  # fresh actor draws per case and refresh
    capacity: int = 1024  # replay latents per case
    # evaluation draws per case: the standard error of a mode mass is <= 0.004 at 16000 (0.008 at
    # 4000, where the worst of 12 masses read 0.041 for a network that 16000 draws put at 0.029)
    num_draws: int = 16000
    width: int = 128
    embedding: int = 64
    limit_repeats: int = 16  # source "limit": K-draw targets averaged per score call
    lr_final: float = 5e-5  # Adam 1e-3, cosine to this
    ema_tau: float = 0.002  # the sampled network: EMA of the trained one at this rate


class SelfReplay:
    """A ring buffer of latents per case: uniform box actions first, then the actor's own."""

    def __init__(self, target: Target, loss: IDEMScoreLoss, sizes: Sizes) -> None:
        self.target, self.sizes = target, sizes
        self.latents = [loss.uniform_latents(sizes.capacity) for _ in target.cases]
        self.position = 0

    def refresh(self, actor: DiffusionActor) -> None:
        n = self.sizes.refresh_size
        rows = (self.position + torch.arange(n)) % self.sizes.capacity
        for case, latents in zip(self.target.cases, self.latents, strict=True):
            obs = case.observation.expand(n, self.target.obs_dim)
            latents[rows] = actor.sample(obs, case.temperature)[1]
        self.position = int(rows[-1] + 1) % self.sizes.capacity

    def draw(self, case_index: Tensor) -> Tensor:
        pick = torch.randint(0, self.sizes.capacity, case_index.shape)
        return torch.stack(self.latents)[case_index, pick]


class EstimatorLimit(torch.nn.Module):
    """A score "network" `forward(s, x, tau, T)` that returns the mean of `repeats`
    independent estimates of `loss.score_target` at `sigma(tau)`: the infinite-data limit of
    the score regression (any `DiffusionActor` samples it, as any score model)."""

    def __init__(self, loss: IDEMScoreLoss, schedule: Any, repeats: int) -> None:
        super().__init__()
        self.loss, self.schedule, self.repeats = loss, schedule, repeats

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        (value,) = temperature.unique().tolist()  # one temperature per call, as evaluated
        self.loss.temperature = value
        sigma = self.schedule.sigma(tau).expand(x.shape[0], 1)
        estimates = [self.loss.score_target(observation, x, sigma)[0] for _ in range(self.repeats)]
        return torch.stack(estimates).mean(0)


def limit_actor(target: Target, config: dict[str, Any], sizes: Sizes) -> DiffusionActor:
    """The actor of `config` sampling the estimator's infinite-data limit ([`EstimatorLimit`])."""
    reference = make_actor(target, config, sizes)
    critic = EnergyCritic(lambda s, a: -target.q_value(s, a), uses_observation=True)
    loss = IDEMScoreLoss(reference, critic, **{k: config[k] for k in _LOSS_KEYS})
    # The limit returns scores: read as such whatever the configuration's parameterization.
    return DiffusionActor(
        EstimatorLimit(loss, reference.schedule, sizes.limit_repeats),
        Bounded(target.low, target.high, shape=(target.action_dim,)),
        **{k: config[k] for k in _ACTOR_KEYS if k != "parameterization"},
    )


def make_actor(target: Target, config: dict[str, Any], sizes: Sizes) -> DiffusionActor:
    return DiffusionActor(
        ScoreNetwork(target.obs_dim, target.action_dim, sizes.width, sizes.embedding),
        Bounded(target.low, target.high, shape=(target.action_dim,)),
        ema=True,
        **{k: config[k] for k in _ACTOR_KEYS},
    )


def train(
    target: Target,
    config: dict[str, Any],
    source: str,
    seed: int,
    sizes: Sizes,
    probe: Callable[[int, DiffusionActor], None] | None = None,
    probe_every: int = 1000,
) -> tuple[DiffusionActor, float]:
    """Train one network for every case of ``target``; returns the actor and the seconds.
    ``probe(updates, actor)`` is called every ``probe_every`` updates (its time counts)."""
    torch.manual_seed(seed)
    actor = make_actor(target, config, sizes)
    critic = EnergyCritic(lambda s, a: -target.q_value(s, a), uses_observation=True)
    temperatures = sorted({c.temperature for c in target.cases}, reverse=True)
    rows = config["score_batch_rows"]  # per update, as the recipes' loss takes of one batch
    batch_rows = None if rows is None else max(1, rows // len(temperatures))
    loss = IDEMScoreLoss(actor, critic, batch_rows=batch_rows, **{k: config[k] for k in _LOSS_KEYS})
    ema = SoftUpdate(loss, tau=sizes.ema_tau)
    params = list(actor.score_network.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    schedule = cosine(optimizer, sizes.updates, eta_min=sizes.lr_final)
    replay = SelfReplay(target, loss, sizes) if source == "self" else None
    by_temperature = {
        t: torch.tensor([i for i, c in enumerate(target.cases) if c.temperature == t])
        for t in temperatures
    }
    observations = torch.stack([c.observation for c in target.cases])
    start = time.perf_counter()
    for step in range(sizes.updates):
        if replay is not None and step > 0 and step % sizes.refresh_every == 0:
            replay.refresh(actor)
        # The loss reads one scalar temperature: one half-batch per temperature, losses summed.
        total = 0.0
        for temperature, indices in by_temperature.items():
            loss.temperature = temperature
            case_index = indices[torch.randint(0, len(indices), (sizes.batch,))]
            latents = replay.draw(case_index) if replay else loss.uniform_latents(sizes.batch)
            batch = TensorDict(
                observation=observations[case_index],
                action_raw=latents,
                batch_size=[sizes.batch],
            )
            total = total + loss(batch)["loss_actor"]
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        ema.step()
        if probe is not None and (step + 1) % probe_every == 0:
            probe(step + 1, actor)
    return actor, time.perf_counter() - start


def run(
    target: Target, config: dict[str, Any], source: str, seed: int, sizes: Sizes
) -> dict[str, Any]:
    """Train, then sample and measure; the numbers of one (target, config, source, seed)."""
    if source == "limit":
        torch.manual_seed(seed)
        actor, seconds = limit_actor(target, config, sizes), 0.0
    else:
        actor, seconds = train(target, config, source, seed, sizes)
    torch.manual_seed(derive_seed("eval", target.name, seed))
    start = time.perf_counter()
    with torch.no_grad():
        result = target.evaluate(actor, sizes.num_draws)
    return {**result, "train_s": seconds, "sample_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--targets", default=",".join(TARGETS), help=", ".join(TARGETS))
    parser.add_argument(
        "--sources", default="self,uniform", help="training points: self, uniform, limit"
    )
    parser.add_argument(
        "--configs",
        default="paper,fast,recommended,balanced",
        help="names in CONFIGS, each optionally with overrides, e.g. "
        "'recommended:uniform_fraction=0.5;num_steps=50' (configs separated by commas)",
    )
    for name, value in vars(Sizes()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.updates, args.batch, args.num_draws = "0", 20, 16, 200
        args.refresh_every, args.refresh_size, args.capacity = 10, 16, 64
        args.width, args.embedding, args.limit_repeats = 32, 16, 2
    return args


def main(argv: list[str] | None = None) -> list[list[Any]]:
    """Run the grid, print (and store) the section; returns the table's rows."""
    args = parse_args(argv)
    setup_torch(args.threads, args.seed)
    sizes = Sizes(**{name: getattr(args, name) for name in vars(Sizes())})
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = [parse_config(token) for token in args.configs.split(",")]
    rows, details = [], []
    for target_name in args.targets.split(","):
        target = TARGETS[target_name]()
        target.prepare(sizes.num_draws, torch.Generator().manual_seed(args.seed))
        exact = "; ".join(
            f"{c.label}: " + "/".join(f"{m:.3f}" for m in c.masses) for c in target.cases
        )
        details.append(f"{target.name} exact mode masses: {exact}")
        for source in args.sources.split(","):
            for label, config in configs:
                results = []
                for seed in seeds:
                    results.append(run(target, config, source, seed, sizes))
                    r = results[-1]
                    print(
                        f"{target.name} | {source} | {label} | seed {seed}: "
                        f"mode err {r['mode_error']:.4f}, dist {r['distance']:.5f}, "
                        f"{r['train_s']:.0f} s; masses {r['masses']}",
                        file=sys.stderr,
                        flush=True,
                    )
                errors = [r["mode_error"] for r in results]
                rows.append(
                    [
                        target.name,
                        source,
                        label,
                        sum(errors) / len(errors),
                        max(errors),
                        sum(r["distance"] for r in results) / len(results),
                        sizes.updates,
                        sum(r["train_s"] for r in results) / len(results),
                        sum(r["sample_s"] for r in results) / len(results),
                    ]
                )
    header = section_header(
        "Learned sampler fidelity: trained score networks against exact quadrature",
        quick=args.quick,
        threads=args.threads,
        seeds=f"{args.seeds} (training seeds; mode err: mean and max over them)",
        extra=[
            f"{sizes.updates} updates, batch {sizes.batch} per temperature, ScoreNetwork width "
            f"{sizes.width} / embeddings {sizes.embedding}, Adam 1e-3 cosine to "
            f"{sizes.lr_final:g}, EMA {sizes.ema_tau:g}, grad clip 10; {sizes.num_draws} draws "
            "per case",
            f"self: replay of {sizes.capacity} latents per case, uniform box actions at first, "
            f"{sizes.refresh_size} fresh actor draws every {sizes.refresh_every} updates; "
            "uniform: uniform box latents only",
            *[f"{label}: {config_summary(config)}" for label, config in configs],
            *details,
        ],
    )
    headers = [
        "target",
        "training points",
        "config",
        "worst mode err (mean)",
        "worst mode err (max)",
        "energy dist",
        "updates",
        "train s / run",
        "sample s / run",
    ]
    emit(NAME, header + "\n" + markdown_table(headers, rows), args)
    return rows


if __name__ == "__main__":
    main()
