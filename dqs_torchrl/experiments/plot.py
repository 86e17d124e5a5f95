"""`dqs-plot`: aggregate many runs into the paper's plots and an rliable IQM across tasks.

    dqs-plot                                # reads runs/<task>/<algo>/seed*/eval.csv
    dqs-plot --runs runs --out runs/plots --scale 1000

(`python recipes/plot.py` from a clone runs the same `main`.) For each task: evaluation
return against frames, the mean over seeds with a min/max band (the paper's figure 4 style),
one line per algorithm. Across tasks: the interquartile mean (IQM) of the final returns divided
by `--scale` (1000 for DMC), with 95% stratified bootstrap intervals from rliable, written as
a table (`iqm.md`) and a plot (`iqm.png`); and rliable's performance profile of the same
scores, the fraction of runs x tasks whose score exceeds each threshold tau, with 95% bootstrap
bands (`performance_profile.png`, its numbers in `performance_profile.csv`).

Figures are drawn on matplotlib's Agg canvas (`harness.plotting.agg_figure`), so neither
importing this module nor running it switches the global matplotlib backend.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from dqs_torchrl.experiments.harness.plotting import agg_figure, read_eval_csv


def collect(runs: Path) -> dict[str, dict[str, list[dict[str, list[float]]]]]:
    """`{task: {algo: [eval columns of each seed]}}` from `runs/<task>/<algo>/seed*/`."""
    found: dict = defaultdict(lambda: defaultdict(list))
    for csv_path in sorted(runs.glob("*/*/seed*/eval.csv"), key=_run_order):
        data = read_eval_csv(csv_path)
        if data:
            found[csv_path.parts[-4]][csv_path.parts[-3]].append(data)
    return found


def _run_order(csv_path: Path) -> tuple[str, str, int, str]:
    """Task, algorithm, then the seed by number (seed2 before seed10)."""
    seed = csv_path.parts[-2].removeprefix("seed")
    return (csv_path.parts[-4], csv_path.parts[-3], int(seed) if seed.isdigit() else -1, seed)


def aligned(seeds: list[dict[str, list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Frames evaluated by every seed, and the returns there: `[seeds, frames]`."""
    common = sorted(set.intersection(*(set(s["frames"]) for s in seeds)))
    returns = [
        [dict(zip(s["frames"], s["return_mean"], strict=True))[f] for f in common] for s in seeds
    ]
    return np.array(common), np.array(returns)


def plot_task(task: str, algos: dict, path: Path) -> None:
    fig, ax = agg_figure((5, 3.5))
    for algo, seeds in sorted(algos.items()):
        frames, returns = aligned(seeds)
        if not len(frames):
            continue
        # markers: a run evaluated once so far is a point, which a bare line would not draw
        seeds_label = f"{len(seeds)} seed" + ("s" if len(seeds) != 1 else "")
        ax.plot(frames, returns.mean(0), marker="o", ms=3, label=f"{algo} ({seeds_label})")
        ax.fill_between(frames, returns.min(0), returns.max(0), alpha=0.2)
    ax.set(title=task, xlabel="environment frames", ylabel="evaluation return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _seeds_counted(found: dict) -> dict[str, int]:
    """Per algorithm that ran every task, the seeds it counts on each: its fewest on any task."""
    algos = sorted({a for methods in found.values() for a in methods})
    return {
        a: min(len(found[t][a]) for t in found)
        for a in algos
        if all(a in methods for methods in found.values())
    }


def final_scores(found: dict, scale: float) -> dict[str, np.ndarray]:
    """Final returns / `scale` as rliable wants them: `{algo: [runs, tasks]}`, tasks in
    sorted order, for the algorithms that ran every task.

    rliable's stratified bootstrap needs the same number of runs on every task, so an
    algorithm with more seeds on some tasks than on others contributes its first `n` seeds
    (lowest numbers first, `collect`'s order) on every task, `n` its fewest on any task
    (`seeds_left_out` names what that drops)."""
    scores = {}
    for algo, n in _seeds_counted(found).items():
        per_task = [aligned(found[t][algo][:n])[1][:, -1] / scale for t in sorted(found)]
        scores[algo] = np.stack(per_task, axis=1)
    return scores


def seeds_left_out(found: dict) -> list[str]:
    """`task/algo: k of m seeds` for every seed `final_scores` drops to keep its runs
    rectangular (an algorithm with more seeds on some tasks than on others)."""
    lines = []
    for algo, n in _seeds_counted(found).items():
        counts = {t: len(found[t][algo]) for t in sorted(found)}
        lines += [f"{t}/{algo}: {c - n} of {c} seeds" for t, c in counts.items() if c > n]
    return lines


def iqm_table(found: dict, scale: float, out: Path, reps: int) -> str:
    """IQM of final normalised returns across tasks with rliable's bootstrap intervals."""
    from rliable import library as rly
    from rliable import metrics

    tasks = sorted(found)
    scores = final_scores(found, scale)
    if not scores:
        return "no algorithm ran every task: no IQM."
    point, interval = rly.get_interval_estimates(
        scores, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps
    )
    dropped = seeds_left_out(found)
    lines = [
        f"IQM of final return / {scale:g} over {len(tasks)} tasks ({', '.join(tasks)}); "
        f"95% stratified bootstrap, {reps} resamples.",
        *(
            [
                "",
                "Every algorithm counts the same seeds on every task (its first n, n its fewest "
                "on any task), so these are left out: " + "; ".join(dropped) + ".",
            ]
            if dropped
            else []
        ),
        "",
        "| algorithm | runs x tasks | IQM | 95% CI |",
        "| --- | --- | --- | --- |",
    ]
    fig, ax = agg_figure((4, 0.6 + 0.5 * len(scores)))
    for i, algo in enumerate(sorted(scores)):
        lo, hi = interval[algo][:, 0]
        lines.append(
            f"| {algo} | {scores[algo].shape[0]} x {scores[algo].shape[1]} | "
            f"{point[algo][0]:.3f} | [{lo:.3f}, {hi:.3f}] |"
        )
        ax.errorbar(
            point[algo][0],
            i,
            xerr=[[point[algo][0] - lo], [hi - point[algo][0]]],
            fmt="o",
            capsize=4,
        )
    ax.set_yticks(range(len(scores)), sorted(scores))
    ax.set_xlabel(f"IQM of final return / {scale:g}")
    fig.tight_layout()
    fig.savefig(out / "iqm.png", dpi=100)
    table = "\n".join(lines) + "\n"
    (out / "iqm.md").write_text(table)
    return table


def performance_profile(found: dict, scale: float, out: Path, reps: int, num_taus: int) -> str:
    """rliable's score distribution of the final normalised returns, with bootstrap bands.

    For each algorithm with scores `x[n, m]` (run n of N, task m of M) and each threshold
    tau, the fraction of runs x tasks that score above it (Agarwal et al. 2021):

    $$
    F(\\tau) = \\frac{1}{N M} \\sum_{n=1}^N \\sum_{m=1}^M \\mathbb 1[x_{n m} > \\tau]
    $$

    on `num_taus` evenly spaced thresholds from `min(0, lowest score)` to the highest
    score, with 95% stratified bootstrap intervals (runs resampled within each task). Writes
    `performance_profile.png` and the numbers it plots, `performance_profile.csv`
    (`tau, algorithm, fraction, ci_low, ci_high`).
    """
    from rliable import library as rly
    from rliable import plot_utils

    scores = final_scores(found, scale)
    if not scores:
        return "no algorithm ran every task: no performance profile."
    every = np.concatenate([s.ravel() for s in scores.values()])
    taus = np.linspace(min(0.0, every.min()), every.max(), num_taus)
    profiles, cis = rly.create_performance_profile(scores, taus, reps=reps)
    with open(out / "performance_profile.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["tau", "algorithm", "fraction", "ci_low", "ci_high"])
        for algo in sorted(scores):
            for i, tau in enumerate(taus):
                lo, hi = cis[algo][:, i]
                writer.writerow([float(tau), algo, float(profiles[algo][i]), float(lo), float(hi)])
    fig, ax = agg_figure((5, 3.5))
    plot_utils.plot_performance_profiles(
        {a: profiles[a] for a in sorted(scores)},
        taus,
        performance_profile_cis=cis,
        ax=ax,
        xlabel=rf"final return / {scale:g} ($\tau$)",
        ylabel=r"fraction of runs with score $> \tau$",
        labelsize="medium",
        ticklabelsize="medium",
        legend=True,
        legendsize="medium",
    )
    fig.tight_layout()
    fig.savefig(out / "performance_profile.png", dpi=100)
    runs = ", ".join(f"{a}: {s.shape[0]} x {s.shape[1]}" for a, s in sorted(scores.items()))
    return (
        f"performance profile over runs x tasks ({runs}) at {num_taus} thresholds, 95% "
        f"stratified bootstrap, {reps} resamples: performance_profile.png / .csv"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=None, help="default: <runs>/plots")
    parser.add_argument("--scale", type=float, default=1000.0, help="return normaliser")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--taus", type=int, default=41, help="performance-profile thresholds")
    args = parser.parse_args(argv)
    out = args.out or args.runs / "plots"
    out.mkdir(parents=True, exist_ok=True)
    found = collect(args.runs)
    if not found:
        raise SystemExit(f"no runs/<task>/<algo>/seed*/eval.csv under {args.runs}")
    for task, algos in found.items():
        plot_task(task, algos, out / f"{task}.png")
    print(iqm_table(found, args.scale, out, args.reps))
    print(performance_profile(found, args.scale, out, args.reps, args.taus))
    print(f"plots written to {out}")


if __name__ == "__main__":
    main()
