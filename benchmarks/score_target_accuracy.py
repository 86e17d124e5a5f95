"""Accuracy of iDEM's Monte Carlo score target against the number of Q evaluations.

``IDEMScoreLoss.score_target(observation, x, sigma, num_mc_samples=K, generator=...)`` is
compared with a K = 10,000 reference (the gradient form, ``estimator="idem"``) at the same
``(s, x, sigma)``: the gradient form at fixed K, the blended form (``estimator="blend"``) at
fixed K, and the default estimator of ``fidelity=fast`` (blend, K=16, and K=2 where
sigma <= 1e-2: ``num_mc_samples_small``). Every form costs K critic forward passes and one
input-gradient pass per target. Metric: the
median over 64 states of ``||S_K - S_ref|| / ||S_ref||``. A second, independent reference
(``ref vs ref``) shows how far the reference itself is from converged (at large sigma the
self-normalised weights collapse: see the reference's ESS).

Setting: cheetah-run sizes (observation 17, action 6, box [-1, 1]), T = 0.05, tanh-corrected
latent energy ``-E = Q(s, tanh x) / T + sum log(1 - tanh^2 x)``, geometric VE schedule
(sigma = 1e-5 * 1e5^tau). States ``s ~ N(0, I)``; anchors ``x_a = atanh(u)``,
``u ~ U[-0.98, 0.98]^6`` (replay actions spread over the box); ``x = x_a + sigma eps``.
Critics, each scaled so that Q varies by ``--q-range`` (10) over the box (median over states
of max - min over 1024 uniform actions), i.e. by 200 in units of T:

* ``synthetic``: a known multimodal, state-dependent Q in 6-D,
  ``Q = A logsumexp_k(b_k(s) - ||a - c_k(s)||^2 / (2 w^2))`` with three modes
  ``c_k(s) = 0.8 tanh(M_k s)``, w = 0.35;
* ``fitted``: ``make_q_network(17, 6)`` (256x256 ReLU) fitted to ``synthetic`` by regression
  (piecewise-linear, like a trained critic);
* ``random``: ``make_q_network(17, 6)`` at its random initialisation, scaled.

The actor (its noise schedule and box) and the default estimator's settings come from the
recipe config (``recipe_agents``: ``fidelity=fast``, built by ``harness.agents.make_agent``);
the losses are built here because their critics are these analytic or fitted functions, which
the harness does not build.

Full run (quiet machine; several minutes):
    .venv/bin/python benchmarks/score_target_accuracy.py
Check that it runs (the recipes' smoke sizes, seconds; tests/test_benchmarks.py):
    .venv/bin/python benchmarks/score_target_accuracy.py --quick --no-write
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from recipe_agents import (  # noqa: E402
    ACTION_DIM,
    CONFIGS,
    DQS_OVERRIDES,
    OBS_DIM,
    build_agent,
    recipe_config,
)
from report import add_common_args, emit, markdown_table, section_header  # noqa: E402
from timing import derive_seed, setup_torch  # noqa: E402
from torch import Tensor  # noqa: E402

from dqs_torchrl import EnergyCritic, IDEMScoreLoss, make_q_network  # noqa: E402

NAME = "score_target_accuracy"


def default_estimator(algo: DictConfig) -> dict:
    """The ``IDEMScoreLoss`` arguments of the recipes' score target (``fidelity=fast``)."""
    keys = ("num_mc_samples", "num_mc_samples_small", "small_sigma", "estimator")
    return {k: algo[k] for k in keys}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--critics", default="synthetic,fitted,random")
    parser.add_argument("--taus", default="0.2,0.4,0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--ks", default="1,2,16,64,256,1000", help="fixed K, gradient form")
    parser.add_argument("--blend-ks", default="2,16,64", help="fixed K, blended form")
    parser.add_argument("--ref-k", type=int, default=10_000, help="K of the reference")
    parser.add_argument("--num-states", type=int, default=64)
    parser.add_argument(
        "--q-ranges", default="10,1", help="Q range(s) over the box, comma-separated"
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="T (the recipe config's, 0.05)"
    )
    parser.add_argument("--fit-steps", type=int, default=3000, help="Adam steps, fitted critic")
    parser.add_argument(
        "--no-ref-check", action="store_true", help="skip the second, independent reference"
    )
    parser.add_argument(
        "--max-rows", type=int, default=65_536, help="K * states per critic call (memory)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.taus, args.ks, args.ref_k = "0.4,0.8,1.0", "1,16,64", 1000
        args.blend_ks = "2,16"
        args.num_states, args.fit_steps, args.q_ranges = 16, 100, "10"
    return args


class SyntheticQ:
    """``Q(s, a) = A logsumexp_k(b_k(s) - ||a - c_k(s)||^2 / (2 w^2))`` on the box [-1, 1]^6."""

    def __init__(self, generator: torch.Generator, num_modes: int = 3, width: float = 0.35):
        scale = 1.0 / math.sqrt(OBS_DIM)
        self.center_maps = scale * torch.randn(num_modes, OBS_DIM, ACTION_DIM, generator=generator)
        self.logit_maps = scale * torch.randn(num_modes, OBS_DIM, generator=generator)
        self.width = width
        self.amplitude = 1.0

    def __call__(self, observation: Tensor, action: Tensor) -> Tensor:
        centers = 0.8 * torch.tanh(torch.einsum("ns,ksd->nkd", observation, self.center_maps))
        logits = observation @ self.logit_maps.T  # [N, K]
        d2 = (action.unsqueeze(-2) - centers).pow(2).sum(-1)
        return self.amplitude * torch.logsumexp(logits - d2 / (2 * self.width**2), dim=-1)


def q_range(q_fn, generator: torch.Generator, num_states: int = 64, num_actions: int = 1024):
    """Median over states of ``max_a Q - min_a Q`` over uniform box actions."""
    obs = torch.randn(num_states, OBS_DIM, generator=generator)
    actions = torch.rand(num_actions, ACTION_DIM, generator=generator) * 2 - 1
    with torch.no_grad():
        q = q_fn(obs.repeat_interleave(num_actions, 0), actions.repeat(num_states, 1)).reshape(
            num_states, num_actions
        )
    return float((q.max(1).values - q.min(1).values).median())


def fit_network(
    target_q: SyntheticQ, steps: int, num_cells: tuple[int, ...], generator: torch.Generator
):
    """``make_q_network(17, 6, num_cells)`` regressed onto ``target_q``; returns (MLP,
    held-out R^2)."""
    net = make_q_network(OBS_DIM, ACTION_DIM, num_cells).module
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def data(n: int) -> tuple[Tensor, Tensor, Tensor]:
        obs = torch.randn(n, OBS_DIM, generator=generator)
        uniform = torch.rand(n // 2, ACTION_DIM, generator=generator) * 2 - 1
        centers = 0.8 * torch.tanh(torch.einsum("ns,ksd->nkd", obs[n // 2 :], target_q.center_maps))
        pick = torch.randint(centers.shape[1], (n - n // 2,), generator=generator)
        near = centers[torch.arange(n - n // 2), pick]
        near = near + 0.2 * torch.randn(near.shape, generator=generator)
        action = torch.cat([uniform, near.clamp(-1, 1)])
        return obs, action, target_q(obs, action)

    for _ in range(steps):
        obs, action, target = data(256)
        loss = (net(obs, action).squeeze(-1) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    obs, action, target = data(4096)
    with torch.no_grad():
        residual = (net(obs, action).squeeze(-1) - target).pow(2).mean()
    return net, float(1 - residual / target.var())


FIT_RANGE = 10.0  # the synthetic Q that the fitted critic learns varies by this much


def base_critics(
    names: list[str], num_cells: tuple[int, ...], args: argparse.Namespace
) -> dict[str, tuple]:
    """Each critic as an unscaled ``q_fn(s, a) -> [N]`` with a description (fitted once);
    the networks are the recipes' critics (``make_q_network``, ``algo.q_cells``)."""
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "critic"))
    synthetic = SyntheticQ(gen)
    synthetic.amplitude = FIT_RANGE / q_range(synthetic, gen)
    critics = {}
    for name in names:
        info = ""
        if name == "synthetic":
            q_fn = synthetic
        else:
            torch.manual_seed(derive_seed(args.seed, name))
            if name == "fitted":
                net, r2 = fit_network(synthetic, args.fit_steps, num_cells, gen)
                info = f"fitted to synthetic: {args.fit_steps} Adam steps, held-out R^2 {r2:.3f}; "
            elif name == "random":
                net = make_q_network(OBS_DIM, ACTION_DIM, num_cells).module
            else:
                raise SystemExit(f"unknown critic {name!r}")
            net.requires_grad_(False)

            def q_fn(s: Tensor, a: Tensor, net=net) -> Tensor:
                return net(s, a).squeeze(-1)

        critics[name] = (q_fn, info)
    return critics


def scaled_critic(q_fn, info: str, target_range: float, seed: int) -> tuple[EnergyCritic, str]:
    """``EnergyCritic`` of ``scale * q_fn`` with Q varying by ``target_range`` over the box."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "range"))
    scale = target_range / q_range(q_fn, gen)

    def energy(s: Tensor, a: Tensor) -> Tensor:
        return -scale * q_fn(s, a)

    info += f"Q scaled by {scale:.3g}; range over the box (median over states) "
    info += f"{q_range(lambda s, a: -energy(s, a), gen):.3g}"
    return EnergyCritic(energy, uses_observation=True), info


def chunked_target(loss, obs, x, sigma, num: int | None, generator, max_rows: int):
    """``score_target`` over states in chunks of ``max_rows // K``; returns (target, ess)."""
    k = num or loss.num_mc_samples
    step = max(1, max_rows // k)
    targets, ess = [], []
    for i in range(0, obs.shape[0], step):
        t, diag = loss.score_target(
            obs[i : i + step],
            x[i : i + step],
            sigma[i : i + step],
            num_mc_samples=num,
            generator=generator,
        )
        targets.append(t)
        ess.append(diag["ess"])
    return torch.cat(targets), torch.cat(ess)


def rel_error(estimate: Tensor, reference: Tensor) -> float:
    """Median over rows of ``||estimate - reference|| / ||reference||``."""
    err = (estimate - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-12)
    return float(err.median())


def accuracy_rows(
    critic, critic_name, actor, obs, anchors, noise, ks, blend_ks, taus, default, args
) -> list:
    """One table row per tau: errors for each K and the adaptive estimator, reference ESS,
    and (unless ``--no-ref-check``) the error of a second reference."""
    common = {"temperature": args.temperature, "tanh_correction": True}
    fixed = IDEMScoreLoss(actor, critic, num_mc_samples=args.ref_k, **common)
    blend = IDEMScoreLoss(actor, critic, estimator="blend", **common)
    adaptive = IDEMScoreLoss(actor, critic, **default, **common)
    rows = []
    for tau in taus:
        sigma = actor.schedule.sigma(torch.full((obs.shape[0], 1), tau))
        x = anchors + sigma * noise

        def run(loss, num, tag, x=x, sigma=sigma, tau=tau):
            g = torch.Generator().manual_seed(derive_seed(args.seed, critic_name, tau, tag))
            return chunked_target(loss, obs, x, sigma, num, g, args.max_rows)

        ref, ref_ess = run(fixed, args.ref_k, "ref")
        errors = [rel_error(run(fixed, k, f"K{k}")[0], ref) for k in ks]
        errors += [rel_error(run(blend, k, f"blend K{k}")[0], ref) for k in blend_ks]
        adaptive_err = rel_error(run(adaptive, None, "adaptive")[0], ref)
        # The K the adaptive loss used, decided exactly as score_target decides it.
        small = bool((sigma <= adaptive.small_sigma).all())
        k_used = adaptive.num_mc_samples_small if small else adaptive.num_mc_samples
        sigma_value = float(sigma[0, 0])
        row = [f"{tau:g} ({sigma_value:.2g})", *errors, f"{adaptive_err:.3g} (K={k_used})"]
        row.append(float(ref_ess.median()))
        if not args.no_ref_check:
            row.append(rel_error(run(fixed, args.ref_k, "ref2")[0], ref))
        rows.append(row)
        print(f"{critic_name}: tau {tau:g} done", file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_torch(args.threads, args.seed)
    taus = [float(t) for t in args.taus.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    blend_ks = [int(k) for k in args.blend_ks.split(",")]
    # The recipes' actor, of which only the noise schedule and the box are used: the critics
    # are analytic or fitted here, which make_agent cannot build.
    cfg = recipe_config(*DQS_OVERRIDES, *CONFIGS["fast"], quick=args.quick)
    actor = build_agent(cfg).policy
    default = default_estimator(cfg.algo)
    if args.temperature is None:
        args.temperature = cfg.algo.temperature.initial
    schedule = actor.schedule
    gen = torch.Generator().manual_seed(derive_seed(args.seed, "states"))
    obs = torch.randn(args.num_states, OBS_DIM, generator=gen)
    anchors = torch.atanh(0.98 * (torch.rand(args.num_states, ACTION_DIM, generator=gen) * 2 - 1))
    noise = torch.randn(args.num_states, ACTION_DIM, generator=gen)
    small_tau = float(schedule.tau(torch.tensor(default["small_sigma"])))
    k_large, k_small = default["num_mc_samples"], default["num_mc_samples_small"]
    mean_adaptive = (
        small_tau * default["num_mc_samples_small"] + (1 - small_tau) * default["num_mc_samples"]
    )

    sections = []
    critics = base_critics(args.critics.split(","), tuple(cfg.algo.q_cells), args)
    for target_range in [float(r) for r in args.q_ranges.split(",")]:
        for critic_name, (q_fn, base_info) in critics.items():
            critic, info = scaled_critic(q_fn, base_info, target_range, args.seed)
            rows = accuracy_rows(
                critic, critic_name, actor, obs, anchors, noise, ks, blend_ks, taus, default, args
            )
            headers = ["tau (sigma)", *(f"K={k}" for k in ks), *(f"blend K={k}" for k in blend_ks)]
            headers.append(f"default ({default['estimator']} {k_large}/{k_small})")
            headers.append(f"reference ESS (of {args.ref_k})")
            cost = ["Q evals / target", *ks, *blend_ks]
            cost.append(f"{mean_adaptive:.1f} (mean, tau~U[0,1])")
            cost.append(args.ref_k)
            if not args.no_ref_check:
                headers.append("ref vs ref")
                cost.append(args.ref_k)
            sections += [
                f"**{critic_name}** critic, Q range {target_range:g} ({info}):",
                "",
                markdown_table(headers, [cost, *rows]),
                "",
            ]

    header = section_header(
        "Score-target accuracy: Monte Carlo K vs a reference",
        quick=args.quick,
        threads=args.threads,
        seeds=f"{args.seed} (critics, states, anchors and every estimator draw derive from it)",
        extra=[
            f"Median over {args.num_states} states of ||S_K - S_ref|| / ||S_ref||, reference "
            f"K={args.ref_k}; T={args.temperature:g}, tanh-corrected latent energy, box [-1, 1]^6, "
            f"Q ranges {args.q_ranges} over the box (Q/T ranges {args.q_ranges} / T)",
            "K=...: the gradient form (the paper's, estimator='idem'); blend K=...: "
            "estimator='blend' (the same draws' gradient and noise forms mixed by the fitted "
            "curvature); default: IDEMScoreLoss(**"
            + ", ".join(f"{k}={v!r}" for k, v in default.items())
            + f"), with the K it used at that tau; its mean cost over tau ~ U[0, 1] is "
            f"{mean_adaptive:.1f} Q evaluations (sigma <= {default['small_sigma']:g} for "
            f"tau <= {small_tau:.2f})",
            "ref vs ref: the same error between two independent references (how converged the "
            "reference is); where it is large (sigma >= ~0.1: the weights of even 10,000 draws "
            "collapse onto a few, see the reference ESS) the errors of that row measure the "
            "reference as much as the estimator",
        ],
    )
    emit(NAME, header + "\n" + "\n".join(sections), args)


if __name__ == "__main__":
    main()
