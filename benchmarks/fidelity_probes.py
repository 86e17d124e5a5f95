"""Where a learned sampler's mode-mass error comes from (issue 11): two probes of one
``learned_fidelity.py`` training run, printed as Markdown (not timed, nothing written).

* trajectory: the worst mode-mass error (and the masses) of the EMA network every
  ``--every`` updates, to see whether training longer helps or drifts;
* split: after training, sample with the network for ``sigma > sigma_c`` and with the
  estimator's infinite-data limit (source ``limit`` of ``learned_fidelity.py``) below it, and the
  reverse, for each ``sigma_c`` of ``--split``: the noise levels whose learned score carries
  the error are those where swapping in the limit removes it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fidelity_probes.py \\
        --config 'recommended:parameterization=score' --updates 8000 --every 1000

Check that it runs (seconds): ``benchmarks/fidelity_probes.py --quick``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import learned_fidelity as lf  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torchrl.data import Bounded  # noqa: E402

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss  # noqa: E402


class SplitScore(nn.Module):
    """``high`` for steps with ``sigma > sigma_c``, ``low`` otherwise (both return scores)."""

    def __init__(self, high: nn.Module, low: nn.Module, schedule: Any, sigma_c: float) -> None:
        super().__init__()
        self.high, self.low, self.schedule, self.sigma_c = high, low, schedule, sigma_c

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        (sigma,) = self.schedule.sigma(tau).unique().tolist()  # one grid level per call
        model = self.high if sigma > self.sigma_c else self.low
        return model(observation, x, tau, temperature)


class NetworkScore(nn.Module):
    """The trained actor's EMA network read as a score (its parameterization applied)."""

    def __init__(self, actor: DiffusionActor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        out = self.actor.ema_network(observation, x, tau, temperature)
        if self.actor.parameterization == "noise":
            out = out / self.actor.schedule.sigma(tau)
        return out


def masses_text(result: dict[str, Any]) -> str:
    return "; ".join(
        f"{label}: " + "/".join(f"{m:.3f}" for m in masses)
        for label, masses in result["masses"].items()
    )


def main(argv: list[str] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Run both probes; returns the rows: ``trajectory`` (updates, error) and ``split``
    (above, below, error)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recommended", help="as learned_fidelity --configs")
    parser.add_argument("--target", default="3-mode", choices=list(lf.TARGETS))
    parser.add_argument("--source", default="self", choices=["self", "uniform"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--updates", type=int, default=8000)
    parser.add_argument("--every", type=int, default=1000, help="trajectory interval")
    parser.add_argument("--draws", type=int, default=2000, help="samples per case")
    parser.add_argument("--split", default="0.5,0.2,0.1,0.05", help="sigma_c values")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sizes = lf.Sizes(updates=args.updates, num_draws=args.draws)
    if args.quick:
        args.every, args.split = 10, "0.1"
        sizes = lf.Sizes(
            updates=20,
            batch=16,
            num_draws=100,
            refresh_every=10,
            refresh_size=16,
            capacity=64,
            width=32,
            embedding=16,
            limit_repeats=2,
        )
    label, config = lf.parse_config(args.config)
    target = lf.TARGETS[args.target]()
    target.prepare(sizes.num_draws, torch.Generator().manual_seed(0))

    def evaluate(actor: DiffusionActor) -> dict[str, Any]:
        torch.manual_seed(1234)
        with torch.no_grad():
            return target.evaluate(actor, sizes.num_draws)

    print(f"{target.name}, {args.source} training points, `{label}`: {lf.config_summary(config)}")
    print(f"seed {args.seed}, {sizes.num_draws} draws per case\n")
    print("| updates | worst mode err | masses |\n| --- | --- | --- |")

    found: dict[str, list[tuple[Any, ...]]] = {"trajectory": [], "split": []}

    def probe(step: int, actor: DiffusionActor) -> None:
        r = evaluate(actor)
        found["trajectory"].append((step, r["mode_error"]))
        print(f"| {step} | {r['mode_error']:.3f} | {masses_text(r)} |", flush=True)

    actor, _ = lf.train(target, config, args.source, args.seed, sizes, probe, args.every)
    critic = EnergyCritic(lambda s, a: -target.q_value(s, a), uses_observation=True)
    loss = IDEMScoreLoss(actor, critic, **{k: config[k] for k in lf._LOSS_KEYS})
    limit = lf.EstimatorLimit(loss, actor.schedule, sizes.limit_repeats)
    network = NetworkScore(actor)
    keys = {k: config[k] for k in lf._ACTOR_KEYS if k != "parameterization"}
    spec = Bounded(target.low, target.high, shape=(target.action_dim,))
    print("\n| score for sigma > sigma_c | score below | worst mode err | masses |")
    print("| --- | --- | --- | --- |")
    rows = [("network", "network", network), ("limit", "limit", limit)]
    for sigma_c in (float(v) for v in args.split.split(",")):
        rows.append(
            (f"network > {sigma_c:g}", "limit", SplitScore(network, limit, actor.schedule, sigma_c))
        )
        rows.append(
            (f"limit > {sigma_c:g}", "network", SplitScore(limit, network, actor.schedule, sigma_c))
        )
    for high, low, model in rows:
        r = evaluate(DiffusionActor(model, spec, **keys))
        found["split"].append((high, low, r["mode_error"]))
        print(f"| {high} | {low} | {r['mode_error']:.3f} | {masses_text(r)} |", flush=True)
    return found


if __name__ == "__main__":
    main()
