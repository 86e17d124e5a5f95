"""recipes/plot.py aggregates runs: figure-4 style curves and an rliable IQM."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot", ROOT / "recipes" / "plot.py")
plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot)


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
