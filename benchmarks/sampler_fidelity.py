"""Sampler fidelity with the exact score: which grids, step counts and stopping points sample
a known Boltzmann distribution as well as the paper's 1000-step Euler-Maruyama, and at what NFE.

Every sampler of ``dqs_torchrl.samplers.SAMPLERS`` runs on the ``geometric`` and ``karras``
grids from ``sigma_max = 1`` to ``sigma_end``, starting at ``N(0, 1)`` (as ``DiffusionActor``
does), driven by the exact score of a Gaussian mixture (noised at sigma, component ``k`` has
covariance ``(s_k^2 + sigma^2) I``), with and without a final Tweedie step
``x + sigma_end^2 score(x, sigma_end)``. Targets (``common.py``):

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
Check that it runs:
    .venv/bin/python benchmarks/sampler_fidelity.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    GaussianMixture,
    add_common_args,
    emit,
    energy_distance,
    energy_distance_cached,
    markdown_table,
    mean_within,
    mixture_2d,
    mixture_6d,
    section_header,
    setup_torch,
    state_mixture_2d,
)

from dqs_torchrl.samplers import SAMPLERS, tweedie_denoise  # noqa: E402
from dqs_torchrl.schedules import geometric_sigmas, karras_sigmas  # noqa: E402

NAME = "sampler_fidelity"
SPACINGS = {"geometric": geometric_sigmas, "karras": karras_sigmas}
REFERENCE = ("euler_maruyama", "geometric", 1000, 1e-5, False)
TARGET_NAMES = ("2-D", "6-D", "state 2-D")
MODE_SLACK, DIST_FACTOR = 0.02, 1.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; metrics averaged")
    parser.add_argument("--num-samples", type=int, default=4000, help="per target (and state)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--spacings", default="geometric,karras")
    parser.add_argument("--steps", default="5,10,20,50,1000")
    parser.add_argument("--sigma-ends", default="1e-5,1e-2,3e-2")
    parser.add_argument("--states", default="-1,0,1", help="states of the state-dependent target")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.num_samples, args.steps, args.sigma_ends = "0", 400, "5,20", "1e-2"
    return args


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


class Target:
    """One benchmark distribution: the mixture the sampler sees (all rows) and, per state,
    the mixture and exact samples it is compared with."""

    def __init__(self, name: str, n: int, states: list[float], seed: int) -> None:
        self.name = name
        gen = torch.Generator().manual_seed(_seed(seed, name, "exact"))
        if name == "state 2-D":
            self.mixture = state_mixture_2d(torch.tensor(states).repeat_interleave(n))
            parts = [state_mixture_2d(torch.full((n,), s)) for s in states]
        else:
            self.mixture = mixture_2d() if name == "2-D" else mixture_6d()
            parts = [self.mixture]
        self.parts: list[GaussianMixture] = parts
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


def run_config(target: Target, sampler: str, spacing: str, steps: int, sigma_end: float, seed):
    """Run one sampler grid; return NFE and metrics without and with the Tweedie step."""
    gen = torch.Generator().manual_seed(
        _seed(seed, target.name, sampler, spacing, steps, sigma_end)
    )
    calls = [0]

    def score_fn(x, sigma):
        calls[0] += 1
        return target.mixture.score(x, sigma)

    sigmas = SPACINGS[spacing](steps, 1.0, sigma_end)
    rows = target.mixture.means.shape[0] if target.mixture.means.dim() == 3 else target.n
    x = torch.randn(rows, target.mixture.dim, generator=gen)  # N(0, sigma_max^2), sigma_max=1
    x = SAMPLERS[sampler](score_fn, x, sigmas, generator=gen)
    nfe = calls[0]
    plain = target.evaluate(x)
    denoised = target.evaluate(tweedie_denoise(score_fn, x, float(sigmas[-1])))
    return {False: (nfe, *plain), True: (nfe + 1, *denoised)}


def main() -> None:
    args = parse_args()
    setup_torch(args.threads, args.seed)
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
    if REFERENCE[:4] not in grid:
        grid.insert(0, REFERENCE[:4])

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
    ref = metrics[REFERENCE]

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
        ["reference: " + " ".join(str(v) for v in label(REFERENCE)[:4]) + " (NFE 1000)"]
        + metric_cells(REFERENCE),
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
