"""dqs-plot (recipes/plot.py) aggregates runs: figure-4 curves, an rliable IQM and performance
profile."""

import csv
from pathlib import Path

import numpy as np
import pytest

from dqs_torchrl.experiments import plot


def write_run(runs: Path, task: str, algo: str, seed: int, frames, returns) -> None:
    d = runs / task / algo / f"seed{seed}"
    d.mkdir(parents=True)
    lines = ["frames,return_mean,return_min,return_max"]
    lines += [f"{f},{r},{r - 1},{r + 1}" for f, r in zip(frames, returns, strict=True)]
    (d / "eval.csv").write_text("\n".join(lines) + "\n")


def test_plot_aggregates_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for t, task in enumerate(["cheetah-run", "walker-run", "finger-spin"]):
        for seed in range(5):
            base = 100 * (t + 1)
            write_run(tmp_path, task, "dqs", seed, [10, 20], [base, base + 500 + rng.normal()])
            write_run(tmp_path, task, "sac", seed, [10, 20], [base, base + 100 + rng.normal()])
    # an interrupted seed: only frames evaluated by every seed are aggregated
    write_run(tmp_path, "cheetah-run", "qsm", 0, [10, 20], [1, 2])
    write_run(tmp_path, "cheetah-run", "qsm", 1, [10], [3])
    frames, returns = plot.aligned(plot.collect(tmp_path)["cheetah-run"]["qsm"])
    assert frames.tolist() == [10] and returns.tolist() == [[1.0], [3.0]]

    plot.main(["--runs", str(tmp_path), "--reps", "200"])
    out = tmp_path / "plots"
    assert all((out / f"{t}.png").stat().st_size > 1000 for t in ["cheetah-run", "walker-run"])
    table = (out / "iqm.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}
    # final returns: dqs = 600/700/800, sac = 200/300/400 (/1000); IQM lies between
    iqm = {a: float(rows[a].split("|")[3]) for a in ("dqs", "sac")}
    assert iqm["dqs"] == pytest.approx(0.7, abs=0.01)
    assert iqm["sac"] == pytest.approx(0.3, abs=0.01)
    assert "qsm" not in rows  # ran one task only: left out of the cross-task IQM
    assert (out / "iqm.png").exists()


def test_performance_profile_is_the_fraction_of_runs_above_each_threshold(tmp_path):
    # dqs dominates sac: final returns (/1000) on two tasks, four seeds each; none lies on
    # a threshold of the 11-point grid from 0 to the best score, 0.95.
    final = {
        "dqs": {"cheetah-run": [650, 750, 850, 950], "walker-run": [550, 650, 750, 850]},
        "sac": {"cheetah-run": [150, 250, 350, 450], "walker-run": [50, 150, 250, 350]},
    }
    for algo, tasks in final.items():
        for task, returns in tasks.items():
            for seed, r in enumerate(returns):
                write_run(tmp_path, task, algo, seed, [10, 20], [0, r])
    plot.main(["--runs", str(tmp_path), "--reps", "200", "--taus", "11"])
    out = tmp_path / "plots"
    assert (out / "performance_profile.png").stat().st_size > 1000
    with open(out / "performance_profile.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    taus = np.linspace(0.0, 0.95, 11)
    assert len(rows) == 2 * len(taus)
    for algo, tasks in final.items():
        scores = [r / 1000 for returns in tasks.values() for r in returns]
        profile = [row for row in rows if row["algorithm"] == algo]
        np.testing.assert_allclose([float(row["tau"]) for row in profile], taus)
        for tau, row in zip(taus, profile, strict=True):
            fraction = float(row["fraction"])
            # exactly the fraction of the 8 runs x tasks scoring above tau
            assert fraction == sum(s > tau for s in scores) / 8, (algo, tau)
            assert float(row["ci_low"]) <= fraction <= float(row["ci_high"])
    by = {(row["algorithm"], round(float(row["tau"]), 3)): row for row in rows}
    assert float(by["dqs", 0.475]["fraction"]) == 1.0  # every dqs run beats every sac run
    assert float(by["sac", 0.475]["fraction"]) == 0.0
    assert float(by["dqs", 0.665]["fraction"]) == 5 / 8
    assert float(by["dqs", 0.95]["fraction"]) == 0.0  # strictly above: the best run is not
    # all runs above (or below) tau in every resample: no uncertainty; 5/8 has some
    assert (by["dqs", 0.475]["ci_low"], by["sac", 0.475]["ci_high"]) == ("1.0", "0.0")
    low, high = float(by["dqs", 0.665]["ci_low"]), float(by["dqs", 0.665]["ci_high"])
    assert low < 5 / 8 < high
    for tau in taus:  # dominance shows in the profile
        key = round(float(tau), 3)
        assert float(by["dqs", key]["fraction"]) >= float(by["sac", key]["fraction"])


def test_iqm_keeps_an_algorithm_with_more_seeds_on_some_tasks(tmp_path):
    # sac: seeds 0 and 1 on cheetah-run, seed 0 elsewhere (the campaign's seed-1 phase); dqs:
    # seeds 2 and 10 everywhere, so its order must be numeric (seed2 first), not by name.
    tasks = ["cheetah-run", "finger-spin", "walker-run"]
    for t, task in enumerate(tasks):
        write_run(tmp_path, task, "sac", 0, [10, 20], [0, 100 * (t + 1)])
        write_run(tmp_path, task, "dqs", 2, [10, 20], [0, 500])
        write_run(tmp_path, task, "dqs", 10, [10, 20], [0, 900])
    write_run(tmp_path, "cheetah-run", "sac", 1, [10, 20], [0, 990])
    found = plot.collect(tmp_path)
    assert [s["return_mean"][-1] for s in found["walker-run"]["dqs"]] == [500.0, 900.0]
    scores = plot.final_scores(found, 1000.0)
    # sac keeps its first seed on every task; its seed 1 on cheetah-run (0.99) is left out
    np.testing.assert_allclose(scores["sac"], [[0.1, 0.2, 0.3]])
    assert scores["dqs"].shape == (2, 3)
    assert plot.seeds_left_out(found) == ["cheetah-run/sac: 1 of 2 seeds"]
    plot.main(["--runs", str(tmp_path), "--reps", "100"])
    table = (tmp_path / "plots" / "iqm.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}
    assert rows["sac"].split("|")[2].strip() == "1 x 3"
    assert float(rows["sac"].split("|")[3]) == pytest.approx(0.2)
    assert "left out: cheetah-run/sac: 1 of 2 seeds." in table
