"""Cost of one DQS update against one TorchRL SAC update, same network sizes, same process.

One DQS update is what the harness does per gradient step (``harness.agents.Agent.update``):
``DoubleQLoss`` (next actions sampled by the diffusion actor, TD(0) target, two critics),
backward, grad clip, Adam; ``IDEMScoreLoss`` (Monte Carlo score target, regression of the score
network), backward, grad clip, Adam; ``SoftUpdate`` of the target critics and of the EMA actor.
One SAC update is ``SACLoss`` (actor + critics + alpha) with one Adam and a ``SoftUpdate``.
Networks are 256x256, batch 256, observation 17 / action 6 (cheetah-run), T = 0.05, on a
synthetic replay batch. Updates of every agent are interleaved round by round, so slow drifts
of the machine hit all of them alike.

The breakdown times the parts of a DQS update in a second pass: the critic step (of which the
next-action sampling), the score target, the regression (the rest of the actor step) and the
soft updates.

Full run (quiet machine):
    .venv/bin/python benchmarks/update_cost.py --configs paper,fast,fast_idem64
Check that it runs:
    .venv/bin/python benchmarks/update_cost.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    BATCH_SIZE,
    add_common_args,
    add_timing_args,
    config_summary,
    emit,
    make_dqs_agent,
    make_sac_agent,
    markdown_table,
    median,
    section_header,
    select_configs,
    setup_torch,
    synchronize,
    synthetic_batch,
)

NAME = "update_cost"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    add_timing_args(parser, "paper,fast,fast_idem64", 20, 3, "rounds")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--breakdown-repeats", type=int, default=10, help="rounds of the breakdown pass (0: off)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.repeats, args.warmup, args.breakdown_repeats = 16, 3, 1, 2
    return args


class _Stopwatch:
    """Accumulates the time spent inside a wrapped method (CUDA synchronised)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.total = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            self.total += time.perf_counter() - start
            return out

        return timed


def timed_dqs_update(agent, batch, device: str) -> dict[str, float]:
    """One update exactly as ``Agent.update`` does it, timing each stage (seconds).

    The score target and the actor's sampling are timed by wrapping
    ``IDEMScoreLoss.score_target`` and ``DiffusionActor.sample`` on the instances.
    """
    qloss, _ = agent.losses["critic"]
    aloss, _ = agent.losses["actor"]
    sampling, target = _Stopwatch(device), _Stopwatch(device)
    actor = agent.policy
    # Instance attributes shadow the methods for this update only (removed in `finally`).
    actor.sample = sampling.wrap(type(actor).sample.__get__(actor))
    aloss.score_target = target.wrap(type(aloss).score_target.__get__(aloss))
    stages = {}
    try:
        for name, (loss_module, loss_key) in agent.losses.items():
            synchronize(device)
            start = time.perf_counter()
            out = loss_module(batch)
            loss = out[loss_key]
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite {name} loss")
            optimizer = agent.optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, agent.clip_norm)
            optimizer.step()
            _metrics = {k: v.item() for k, v in out.items() if v.numel() == 1}  # as Agent
            synchronize(device)
            stages[name] = time.perf_counter() - start
        start = time.perf_counter()
        for updater in agent.updaters:
            updater.step()
        synchronize(device)
        stages["soft_update"] = time.perf_counter() - start
    finally:
        del actor.sample
        del aloss.score_target
    return {
        "critic": stages["critic"],
        "next_action_sampling": sampling.total,
        "score_target": target.total,
        "regression": stages["actor"] - target.total,
        "soft_update": stages["soft_update"],
        "total": stages["critic"] + stages["actor"] + stages["soft_update"],
    }


def main() -> None:
    args = parse_args()
    setup_torch(args.threads, args.seed)
    configs = select_configs(args.configs)
    device = args.device

    agents = {"SAC": make_sac_agent(device)}
    for name, config in configs.items():
        torch.manual_seed(args.seed)
        agents[name] = make_dqs_agent(config, device)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [synthetic_batch(args.batch_size, generator, device) for _ in range(4)]

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
    for name, config in configs.items():
        ms = 1e3 * median(times[name])
        rows.append([name, config_summary(config), ms, ms / sac_ms])
    table = markdown_table(["agent", "settings", "ms / update (median)", "ratio to SAC"], rows)

    text = [
        section_header(
            "Update cost: one DQS update vs one TorchRL SAC update",
            quick=args.quick,
            threads=args.threads,
            seeds=f"{args.seed} (network init and synthetic batch)",
            device=device,
            extra=[
                f"Batch {args.batch_size}, obs 17 / action 6, 256x256 networks, T=0.05, "
                "synthetic replay batch; Adam 3e-4, grad clip 10, Polyak 0.005 (targets and EMA)",
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
