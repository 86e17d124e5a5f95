"""Acting cost: milliseconds per call and per environment step of the DQS actor vs SAC's actor.

For each configuration of ``recipe_agents.CONFIGS`` (its sampler settings; the Monte Carlo
ones play no role here), whose actor is the recipes' (``harness.agents.make_agent``), and each
batch size (1: one environment; 16: e.g. 16 parallel environments), times

* ``DiffusionActor.sample(observation)`` — the sampler alone (EMA score network, as in
  training), no TensorDict;
* ``DiffusionActor(tensordict)`` under ``ExplorationType.RANDOM`` — what a TorchRL collector
  calls;
* TorchRL SAC's ``ProbabilisticActor(tensordict)`` (the recipes' ``algo=sac``: ``make_sac``,
  256x256, tanh-Normal) under ``ExplorationType.RANDOM`` and ``torch.no_grad()``, as a
  collector runs it.

"per env step" is the call time divided by the batch size. Cheetah-run sizes (observation 17,
action 6), T = 0.05, random weights (the cost does not depend on them).

Full run (quiet machine):
    .venv/bin/python benchmarks/action_latency.py --configs paper,fast,fast_compiled
Check that it runs (the recipes' smoke sizes, seconds; tests/test_benchmarks.py):
    .venv/bin/python benchmarks/action_latency.py --quick --no-write
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from recipe_agents import (  # noqa: E402
    OBS_DIM,
    add_config_args,
    build_agent,
    config_summary,
    sac_config,
    select_configs,
)
from report import add_common_args, emit, markdown_table, section_header  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from timing import add_timing_args, median, setup_torch, time_calls  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402

NAME = "action_latency"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    # --quick leaves out fast_compiled: torch.compile alone takes longer than a quick run
    add_config_args(parser, "paper,fast,fast_compiled", quick_default="paper,fast")
    add_timing_args(parser, 50, 5, "calls per measurement")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_torch(args.threads, args.seed)
    configs = select_configs(args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = args.device
    generator = torch.Generator().manual_seed(args.seed)

    sac_actor = build_agent(sac_config(args), device).policy
    actors = {}
    for name, cfg in configs.items():
        torch.manual_seed(args.seed)
        actors[name] = build_agent(cfg, device).policy

    def timed(fn) -> float:
        return 1e3 * median(time_calls(fn, args.repeats, args.warmup, device))

    first = next(iter(configs.values()))
    rows = []
    for batch in batch_sizes:
        obs = torch.randn(batch, OBS_DIM, generator=generator).to(device)
        td = TensorDict(observation=obs, batch_size=[batch], device=device)

        def sac_call(td=td):
            with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
                sac_actor(td)

        sac_ms = timed(sac_call)
        rows.append(["SAC actor", "tanh-Normal, RANDOM", batch, None, sac_ms, sac_ms / batch, 1.0])
        for name, actor in actors.items():
            sample_ms = timed(lambda actor=actor, obs=obs: actor.sample(obs))

            def td_call(actor=actor, td=td):
                with set_exploration_type(ExplorationType.RANDOM):
                    actor(td)

            td_ms = timed(td_call)
            rows.append(
                [
                    name,
                    config_summary(configs[name].algo).split("; ", 1)[1],
                    batch,
                    sample_ms,
                    td_ms,
                    td_ms / batch,
                    td_ms / sac_ms,
                ]
            )
    table = markdown_table(
        [
            "actor",
            "sampler",
            "batch",
            "sample() ms / call",
            "TensorDict forward ms / call",
            "ms / env step",
            "ratio to SAC (same batch)",
        ],
        rows,
    )
    header = section_header(
        "Action latency: DiffusionActor vs TorchRL SAC actor",
        quick=args.quick,
        threads=args.threads,
        seeds=f"{args.seed} (network init and observations)",
        device=device,
        extra=[
            f"Medians of {args.repeats} calls after {args.warmup} warm-up calls; obs 17 / "
            f"action 6, score network {first.algo.score_cells} (embedding "
            f"{first.algo.embedding_dim}), random weights, T={first.algo.temperature.initial:g}, "
            "EMA score network, exploration RANDOM",
            "ms / env step = TensorDict forward / batch; the ratio compares TensorDict "
            "forwards at the same batch",
        ],
    )
    emit(NAME, header + "\n" + table, args)


if __name__ == "__main__":
    main()
