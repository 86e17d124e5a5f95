"""The agents the timing benchmarks measure: the recipes' own, built by their factory.

A configuration is a list of hydra overrides of the recipe config (``dqs_dmc.yaml`` of
``dqs_torchrl/experiments/configs/``): :func:`recipe_config` composes it as ``dqs-dmc
<overrides>`` does and :func:`build_agent` hands it to ``harness.agents.make_agent``, so
``update_cost.py --configs fast`` times the update that ``dqs-dmc fidelity=fast
algo.energy=squashed`` trains, on a synthetic replay batch and without an environment
(``make_agent`` reads only the observation and action specs of cheetah-run).

Examples:
    >>> cfg = recipe_config(*DQS_OVERRIDES, *CONFIGS["fast"], quick=True)
    >>> config_summary(cfg.algo)
    'blend K=4 (K=2 at sigma<=0.01); ancestral 5 geometric steps to 0.01 + Tweedie'
    >>> agent = build_agent(cfg)
    >>> batch = synthetic_batch(cfg.buffer.batch_size, torch.Generator().manual_seed(0))
    >>> "loss_actor" in agent.update(batch)
    True
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from torch import Tensor
from torchrl.data import Bounded, Composite, Unbounded

from dqs_torchrl import unsquash
from dqs_torchrl.experiments.harness import Agent, compose_config, make_agent, validate_config

OBS_DIM, ACTION_DIM = 17, 6  # dm_control cheetah-run, the recipe config's task

# Every DQS configuration starts from these. algo.energy=squashed is the energy the updates of
# docs/performance.md were measured with (the recipes' default then; they now read the paper's
# eq. (9), algo.energy=unbounded: `--override algo.energy=unbounded` measures that).
DQS_OVERRIDES = ("algo=dqs", "algo.energy=squashed")
# --quick: the recipes' smoke preset (32-unit networks, batch 32, 5 sampler steps, K=4)
QUICK_OVERRIDES = ("+preset=smoke",)

# The DQS configurations the timing scripts compare, by name (--configs).
CONFIGS: dict[str, tuple[str, ...]] = {
    # table 1: K=1000, gradient form; Euler-Maruyama, 1000 steps
    "paper": ("fidelity=paper",),
    # the recipes' default: blended target K=16 (K=2 at sigma<=1e-2); ancestral 10 geometric
    # steps to 1e-2 + Tweedie
    "fast": ("fidelity=fast",),
    "fast_compiled": ("fidelity=fast", "algo.compile_sampler=true"),
    # the gradient-form target at K=64 (K=2 at sigma<=1e-2): the estimator before the blend
    "fast_idem64": ("fidelity=fast", "algo.estimator=idem", "algo.num_mc_samples=64"),
    # issue 11's accurate sampler: noise output, matched start, Euler-Maruyama 30 steps to 1e-2
    # + Tweedie, blended target K=64 (K=16 at sigma<=0.3)
    "accurate": ("fidelity=accurate",),
    # issue 11's balanced sampler (the maze's default): accurate's fidelity at 1.3x fast's cost
    # (noise output, matched start, Euler-Maruyama 20 steps to 1e-2 + Tweedie, blended target
    # K=64 above sigma 0.3 and K=4 below, the score loss on 128 rows of the batch)
    "balanced": ("fidelity=balanced",),
    # its parts: all 256 rows and K=16 below sigma 0.3 (= accurate with 20 steps); 96 rows (the
    # preset of sessions 10-11 and of the campaign's dqs-balanced runs)
    "balanced_all_rows": (
        "fidelity=balanced",
        "algo.score_batch_rows=null",
        "algo.num_mc_samples_small=16",
    ),
    "balanced_rows96": ("fidelity=balanced", "algo.score_batch_rows=96"),
}


def add_config_args(parser: argparse.ArgumentParser, default: str, quick_default: str) -> None:
    """``--configs`` (names in :data:`CONFIGS`; ``quick_default`` with ``--quick``) and
    ``--override`` (a hydra override added to every DQS configuration)."""
    parser.add_argument(
        "--configs",
        default=None,
        help=f"names in CONFIGS, comma-separated, or 'all' ({default}; --quick: {quick_default})",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="hydra override of the recipe config for every DQS agent (repeatable), e.g. "
        "algo.energy=unbounded; SAC stays the recipes' algo=sac",
    )
    parser.set_defaults(default_configs=default, quick_configs=quick_default)


def recipe_config(*overrides: str, quick: bool = False) -> DictConfig:
    """The recipe config with the smoke preset when ``quick``, then ``overrides``; validated
    as a run validates it."""
    cfg = compose_config([*(QUICK_OVERRIDES if quick else ()), *overrides])
    validate_config(cfg)
    return cfg


def select_configs(args: argparse.Namespace) -> dict[str, DictConfig]:
    """The DQS configurations named by ``--configs`` (``all``: every one): the recipe config
    with :data:`DQS_OVERRIDES`, the named entry of :data:`CONFIGS` and the ``--override``
    values; unknown names stop the script."""
    names = args.configs or (args.quick_configs if args.quick else args.default_configs)
    chosen = list(CONFIGS) if names == "all" else [n.strip() for n in names.split(",")]
    unknown = [n for n in chosen if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    return {
        n: recipe_config(*DQS_OVERRIDES, *CONFIGS[n], *args.override, quick=args.quick)
        for n in chosen
    }


def sac_config(args: argparse.Namespace) -> DictConfig:
    """The recipes' SAC baseline (``algo=sac``), shrunk like the others by ``--quick``."""
    return recipe_config("algo=sac", quick=args.quick)


def cheetah_specs(device: str | torch.device = "cpu") -> SimpleNamespace:
    """What ``make_agent`` reads from an environment: cheetah-run's observation and action
    specs."""
    return SimpleNamespace(
        observation_spec=Composite(observation=Unbounded(shape=(OBS_DIM,), device=device)),
        action_spec=Bounded(-1.0, 1.0, shape=(ACTION_DIM,), device=device),
    )


def build_agent(cfg: DictConfig, device: str | torch.device = "cpu") -> Agent:
    """``make_agent(cfg, env, device)``, the recipes' factory, on cheetah-run's specs."""
    return make_agent(cfg, cheetah_specs(device), device)


def config_summary(algo: DictConfig) -> str:
    """A one-line description of the sampler and estimator settings of ``cfg.algo``."""
    k = f"{algo.estimator} K={algo.num_mc_samples}"
    if algo.num_mc_samples_small is not None:
        k += f" (K={algo.num_mc_samples_small} at sigma<={algo.small_sigma:g})"
    end = algo.sigma_end if algo.sigma_end is not None else algo.sigma_min
    tweedie = " + Tweedie" if algo.denoise else ""
    tweedie += ", compiled loop" if algo.compile_sampler else ""
    rows = algo.get("score_batch_rows")
    k += f", {rows} rows" if rows is not None else ""
    return f"{k}; {algo.sampler} {algo.num_steps} {algo.spacing} steps to {end:g}{tweedie}"


def setting_summary(cfg: DictConfig) -> str:
    """Sizes and optimiser settings shared by the compared agents (from one DQS config)."""
    a, o = cfg.algo, cfg.optim
    cells = "x".join(str(c) for c in a.q_cells)
    return (
        f"obs {OBS_DIM} / action {ACTION_DIM}, {cells} critics (and SAC actor), score "
        f"network {a.score_cells} (embedding {a.embedding_dim}), T={a.temperature.initial:g}, "
        f"energy {a.energy}; Adam {o.lr:g}, grad clip {o.clip_norm:g}, Polyak {o.tau:g} "
        f"(targets), EMA {a.ema_tau:g} (score network)"
    )


def synthetic_batch(
    batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"
) -> TensorDict:
    """A replay batch of cheetah-run sizes with random content (observations, box actions and
    their latents, rewards, no terminations)."""

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    action = torch.rand(batch_size, ACTION_DIM, generator=generator) * 2 - 1
    low, high = -torch.ones(ACTION_DIM), torch.ones(ACTION_DIM)
    flags = torch.zeros(batch_size, 1, dtype=torch.bool)
    td = TensorDict(
        observation=randn(batch_size, OBS_DIM),
        action=action,
        action_raw=unsquash(action, low, high),
        next=TensorDict(
            observation=randn(batch_size, OBS_DIM),
            reward=torch.rand(batch_size, 1, generator=generator),
            done=flags,
            terminated=flags.clone(),
            truncated=flags.clone(),
            batch_size=[batch_size],
        ),
        batch_size=[batch_size],
    )
    return td.to(device)
