"""Cost of one DQS update against one TorchRL SAC update, same network sizes, same process.

Both agents are the recipes' own: ``harness.agents.make_agent`` builds them from the recipe
config composed with the overrides of ``recipe_agents.CONFIGS`` (``algo=sac`` for SAC), and
one update is a call of their ``Agent.update``, the harness's gradient step:
``DoubleQLoss`` (next actions sampled by the diffusion actor, TD(0) target, two critics),
backward, grad clip, Adam; ``IDEMScoreLoss`` (Monte Carlo score target, regression of the score
network), backward, grad clip, Adam; ``SoftUpdate`` of the target critics and of the EMA actor.
One SAC update is ``SACLoss`` (actor + critics + alpha) with one Adam and a ``SoftUpdate``.
Networks are 256x256, batch 256, observation 17 / action 6 (cheetah-run), T = 0.05 (the
recipe config's), on a synthetic replay batch. Updates of every agent are interleaved round by
round, so slow drifts of the machine hit all of them alike.

The breakdown times the parts of a DQS update in a second pass of ``Agent.update``, observed
through hooks (loss forwards, optimiser steps) and wrapped methods (the actor's sampling, the
score target): the critic step (of which the next-action sampling), the score target, the
regression (the rest of the actor step) and the soft updates.

Full run (quiet machine):
    .venv/bin/python benchmarks/update_cost.py --configs paper,fast,fast_idem64
Check that it runs (the recipes' smoke sizes, seconds; tests/test_benchmarks.py):
    .venv/bin/python benchmarks/update_cost.py --quick --no-write
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from recipe_agents import (  # noqa: E402
    add_config_args,
    build_agent,
    config_summary,
    sac_config,
    select_configs,
    setting_summary,
    synthetic_batch,
)
from report import add_common_args, emit, markdown_table, section_header  # noqa: E402
from timing import Stopwatch, add_timing_args, median, setup_torch, synchronize  # noqa: E402

from dqs_torchrl.experiments.harness import Agent  # noqa: E402

NAME = "update_cost"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    add_config_args(parser, "paper,fast,fast_idem64", quick_default="paper,fast")
    add_timing_args(parser, 20, 3, "rounds")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="replay batch (the config's buffer.batch_size)"
    )
    parser.add_argument(
        "--breakdown-repeats", type=int, default=10, help="rounds of the breakdown pass (0: off)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.breakdown_repeats = 3, 1, 2
    return args


def timed_dqs_update(agent: Agent, batch, device: str) -> dict[str, float]:
    """One ``agent.update(batch)``, timing each stage (seconds).

    ``Agent.update`` computes the critic's and the actor's losses, then steps the critic's
    optimiser and the actor's, then the target updaters: forward hooks on the two losses and
    step hooks on the two optimisers timestamp those boundaries (the backward and the grad
    clip of each loss fall before its optimiser step). The score target and the actor's
    sampling are timed by wrapping ``score_target`` and ``sample`` on the instances.
    """
    qloss, _ = agent.losses["critic"]
    aloss, _ = agent.losses["actor"]
    marks: dict[str, float] = {}

    def mark(name: str):
        def hook(*_) -> None:
            synchronize(device)
            marks[name] = time.perf_counter()

        return hook

    handles = [
        qloss.register_forward_hook(mark("critic_forward_end")),
        aloss.register_forward_pre_hook(mark("actor_forward_start")),
        aloss.register_forward_hook(mark("actor_forward_end")),
        agent.optimizers["critic"].register_step_post_hook(mark("critic_step_end")),
        agent.optimizers["actor"].register_step_post_hook(mark("actor_step_end")),
    ]
    sampling, target = Stopwatch(device), Stopwatch(device)
    actor = agent.policy
    # Instance attributes shadow the methods for this update only (removed in `finally`).
    actor.sample = sampling.wrap(type(actor).sample.__get__(actor))
    aloss.score_target = target.wrap(type(aloss).score_target.__get__(aloss))
    try:
        synchronize(device)
        start = time.perf_counter()
        agent.update(batch)
        synchronize(device)
        end = time.perf_counter()
    finally:
        del actor.sample
        del aloss.score_target
        for handle in handles:
            handle.remove()
    critic = (marks["critic_forward_end"] - start) + (
        marks["critic_step_end"] - marks["actor_forward_end"]
    )
    actor_step = (marks["actor_forward_end"] - marks["actor_forward_start"]) + (
        marks["actor_step_end"] - marks["critic_step_end"]
    )
    return {
        "critic": critic,
        "next_action_sampling": sampling.total,
        "score_target": target.total,
        "regression": actor_step - target.total,
        "soft_update": end - marks["actor_step_end"],
        "total": end - start,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    setup_torch(args.threads, args.seed)
    configs = select_configs(args)
    device = args.device
    first = next(iter(configs.values()))
    batch_size = args.batch_size or first.buffer.batch_size

    agents = {"SAC": build_agent(sac_config(args), device)}
    for name, cfg in configs.items():
        torch.manual_seed(args.seed)
        agents[name] = build_agent(cfg, device)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [synthetic_batch(batch_size, generator, device) for _ in range(4)]

    # Interleaved rounds: every agent does one update per round; rotate the order.
    names = list(agents)
    times = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            batch = batches[r % len(batches)]
            synchronize(device)
            start = time.perf_counter()
            agents[n].update(batch)
            synchronize(device)
            if r >= args.warmup:
                times[n].append(time.perf_counter() - start)
    sac_ms = 1e3 * median(times["SAC"])

    breakdown = {}
    for r in range(args.breakdown_repeats):
        for name in configs:
            parts = timed_dqs_update(agents[name], batches[r % len(batches)], device)
            for key, value in parts.items():
                breakdown.setdefault(name, {}).setdefault(key, []).append(value)

    rows = [["SAC (TorchRL SACLoss)", "actor+critic+alpha, 1 Adam", sac_ms, 1.0]]
    for name, cfg in configs.items():
        ms = 1e3 * median(times[name])
        rows.append([name, config_summary(cfg.algo), ms, ms / sac_ms])
    table = markdown_table(["agent", "settings", "ms / update (median)", "ratio to SAC"], rows)

    text = [
        section_header(
            "Update cost: one DQS update vs one TorchRL SAC update",
            quick=args.quick,
            threads=args.threads,
            seeds=f"{args.seed} (network init and synthetic batch)",
            device=device,
            extra=[
                f"Batch {batch_size}, synthetic replay batch; {setting_summary(first)}",
                f"{args.repeats} timed rounds after {args.warmup} warm-up rounds, agents "
                "interleaved; medians",
            ],
        ),
        table,
    ]
    if breakdown:
        keys = ["critic", "next_action_sampling", "score_target", "regression", "soft_update"]
        rows = []
        for name in configs:
            parts = {k: 1e3 * median(v) for k, v in breakdown[name].items()}
            rows.append(
                [name, parts["total"], *(parts[k] for k in keys)]
                + [parts["score_target"] / parts["total"]]
            )
        text += [
            "",
            f"Breakdown of a DQS update (ms, medians of {args.breakdown_repeats} separately "
            "timed updates; the critic step includes its next-action sampling; the regression "
            "is the actor step minus the score target: noising, score-net forward, loss, "
            "backward, clip, Adam):",
            "",
            markdown_table(
                [
                    "config",
                    "total",
                    "critic step",
                    "of which next-action sampling",
                    "score target",
                    "regression",
                    "soft updates",
                    "score-target share",
                ],
                rows,
            ),
        ]
    emit(NAME, "\n".join(text), args)


if __name__ == "__main__":
    main()
