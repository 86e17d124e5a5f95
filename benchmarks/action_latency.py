"""Acting cost: milliseconds per call and per environment step of the DQS actor vs SAC's actor.

For each configuration of ``CONFIGS`` (its sampler settings; the Monte Carlo ones play no role
here) and each batch size (1: one environment; 16: e.g. 16 parallel environments), times

* ``DiffusionActor.sample(observation)`` — the sampler alone (EMA score network, as in
  training), no TensorDict;
* ``DiffusionActor(tensordict)`` under ``ExplorationType.RANDOM`` — what a TorchRL collector
  calls;
* TorchRL SAC's ``ProbabilisticActor(tensordict)`` (``make_sac``, 256x256, tanh-Normal) under
  ``ExplorationType.RANDOM`` and ``torch.no_grad()``, as a collector runs it.

"per env step" is the call time divided by the batch size. Cheetah-run sizes (observation 17,
action 6), T = 0.05, random weights (the cost does not depend on them).

Full run (quiet machine):
    .venv/bin/python benchmarks/action_latency.py --configs paper,fast,fast_compiled
Check that it runs:
    .venv/bin/python benchmarks/action_latency.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    OBS_DIM,
    add_common_args,
    add_timing_args,
    config_summary,
    emit,
    make_diffusion_actor,
    make_sac_agent,
    markdown_table,
    median,
    section_header,
    select_configs,
    setup_torch,
    time_calls,
)
from tensordict import TensorDict  # noqa: E402
from torchrl.envs.utils import ExplorationType, set_exploration_type  # noqa: E402

NAME = "action_latency"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    add_timing_args(parser, "paper,fast,fast_compiled", 50, 5, "calls per measurement")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 5, 1
    return args


def main() -> None:
    args = parse_args()
    setup_torch(args.threads, args.seed)
    configs = select_configs(args.configs)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = args.device
    generator = torch.Generator().manual_seed(args.seed)

    sac_actor = make_sac_agent(device).policy
    actors = {}
    for name, config in configs.items():
        torch.manual_seed(args.seed)
        actors[name] = make_diffusion_actor(config, device)

    def timed(fn) -> float:
        return 1e3 * median(time_calls(fn, args.repeats, args.warmup, device))

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
                    config_summary(configs[name]).split("; ", 1)[1],
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
            "action 6, random weights, T=0.05, EMA score network, exploration RANDOM",
            "ms / env step = TensorDict forward / batch; the ratio compares TensorDict "
            "forwards at the same batch",
        ],
    )
    emit(NAME, header + "\n" + table, args)


if __name__ == "__main__":
    main()
