"""dqs-campaign (recipes/campaign.py): a list of runs driven to completion, skipped when done,
and reported."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dqs_torchrl.experiments import campaign

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_spec_expands_groups_in_file_order_with_variants(tmp_path):
    spec_file = _write(
        tmp_path / "c.yaml",
        """
root: RUNROOT
total_frames: 1000
overrides: [eval.episodes=2]
groups:
  - tasks: [cheetah-run, walker-run]
    seeds: [0, 1]
    algos: [sac, {name: dqs-x, algo: dqs, overrides: [algo.energy=unbounded]}]
  - recipe: maze
    total_frames: 500
    algos: [dqs]
""".replace("RUNROOT", str(tmp_path / "runs")),
    )
    root, runs = campaign.load_spec(spec_file)
    assert root == tmp_path / "runs"
    assert [(r.task, r.name, r.seed) for r in runs[:4]] == [
        ("cheetah-run", "sac", 0),
        ("cheetah-run", "sac", 1),
        ("walker-run", "sac", 0),
        ("walker-run", "sac", 1),
    ]
    variant = runs[4]
    assert (variant.name, variant.algo, variant.total_frames) == ("dqs-x", "dqs", 1000)
    assert variant.overrides == ["eval.episodes=2", "algo.energy=unbounded"]
    maze = runs[-1]
    assert (maze.recipe, maze.task, maze.total_frames) == ("maze", "two-goal-maze", 500)
    cmd = variant.command(root)
    # the recipe's module, with the campaign's interpreter: works from any directory
    assert cmd[:4] == [
        sys.executable,
        "-m",
        "dqs_torchrl.experiments.dqs_dmc",
        "env.task=cheetah-run",
    ]
    assert maze.command(root)[1:3] == ["-m", "dqs_torchrl.experiments.dqs_maze"]
    assert f"hydra.run.dir={root / 'cheetah-run' / 'dqs-x' / 'seed0'}" in cmd
    assert "algo=dqs" in cmd and "resume=true" not in cmd  # nothing there yet: a fresh start
    assert all(r.state(root) == "fresh" for r in runs)


def test_the_results_campaign_ships_with_the_package():
    """The default spec (the runs of docs/results.md) is package data and parses."""
    assert campaign.DEFAULT_SPEC.is_file()
    _, runs = campaign.load_spec(campaign.DEFAULT_SPEC)
    assert runs and {r.recipe for r in runs} <= {"dmc", "maze"}


@pytest.mark.parametrize(
    "groups, message",
    [
        ("[{recipe: atari, tasks: [pong]}]", "recipe must be one of"),
        ("[{tasks: [cheetah-run], seeds: [-1]}]", "seeds must be integers"),
        ("[{tasks: [cheetah-run], total_frames: 0}]", "total_frames must be an integer"),
        ("[{tasks: [a], algos: [sac]}, {tasks: [a], algos: [sac]}]", "runs listed twice"),
        ("[{tasks: [a], algos: [{name: x}]}]", "a variant needs name and algo"),
    ],
)
def test_malformed_spec_names_the_group_and_field(tmp_path, groups, message):
    spec_file = _write(tmp_path / "c.yaml", f"total_frames: 100\ngroups: {groups}\n")
    with pytest.raises(ValueError, match=message):
        campaign.load_spec(spec_file)


def test_claim_table_returns_and_frames_to_a_fraction_of_the_baseline():
    curve = {"frames": [50_000.0, 100_000.0]}
    found = {
        "finger-spin": {
            # SAC's mean at 100k is 400; half of it is 200
            "sac": [curve | {"return_mean": [100.0, 300.0]}, curve | {"return_mean": [100, 500]}],
            "dqs": [curve | {"return_mean": [250.0, 600.0]}],  # reaches 200 at 50k
            "qsm": [curve | {"return_mean": [10.0, 150.0]}],  # never reaches 200
        }
    }
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:6]]
        for line in campaign.claim_table(found).splitlines()[2:]
    }
    assert rows["sac"] == ["100.0 (2)", "400.0 (2)", "100k"]
    assert rows["dqs"] == ["250.0 (1)", "600.0 (1)", "50k"]
    assert rows["qsm"] == ["10.0 (1)", "150.0 (1)", "not by 100k"]


def test_a_run_in_progress_stays_out_of_the_means_until_it_catches_up():
    """A second seed evaluated at 10k only must not cut SAC's mean curve down to 10k (the claim
    table would show no return at 50k or 100k): it is left out, and named."""
    done = {"frames": [10_000.0, 50_000.0, 100_000.0], "return_mean": [5.0, 100.0, 400.0]}
    started = {"frames": [10_000.0], "return_mean": [3.0]}
    found = {"cheetah-run": {"sac": [done, started], "dqs": [done]}}
    kept, left_out = campaign.complete_runs(found)
    assert kept["cheetah-run"]["sac"] == [done] and kept["cheetah-run"]["dqs"] == [done]
    assert left_out == ["cheetah-run/sac: a seed at 10k of 100k"]
    sac = [line for line in campaign.claim_table(kept).splitlines() if "| sac |" in line]
    assert "100.0 (1) | 400.0 (1)" in sac[0]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="disable")
    return subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "campaign.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )


def _main(capsys, args: list[str]) -> tuple[int, str, str]:
    """``campaign.main(args)`` in this process (one interpreter start saved per call): its exit
    code, stdout and stderr. The runs it starts are subprocesses either way."""
    capsys.readouterr()
    try:
        campaign.main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_run_finishes_skips_finished_runs_and_reports_from_the_copied_csvs(tmp_path, capsys):
    spec_file = _write(
        tmp_path / "c.yaml",
        f"""
root: {tmp_path / "runs"}
total_frames: 300
overrides: [+preset=smoke]
groups:
  - tasks: [cartpole-balance]
    algos: [sac]
""",
    )
    first = _run(["run", "--spec", str(spec_file), "--jobs", "1"])
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "runs" / "cartpole-balance" / "sac" / "seed0"
    eval_csv = run_dir / "eval.csv"
    assert campaign._eval_rows(eval_csv)[-1]["frames"] == "300"
    assert (tmp_path / "runs" / "cartpole-balance" / "sac" / "seed0.log").exists()
    stamp = eval_csv.stat().st_mtime_ns

    # The rest in-process: the command line itself was exercised by the first call.
    code, out, _ = _main(capsys, ["run", "--spec", str(spec_file)])
    assert code == 0 and "1 finished, 0 to run" in out
    assert eval_csv.stat().st_mtime_ns == stamp  # nothing was rerun
    assert "finished" in _main(capsys, ["status", "--spec", str(spec_file)])[1]

    data = tmp_path / "data"
    collect = ["collect", "--spec", str(spec_file), "--data", str(data)]
    assert "copied 1" in _main(capsys, collect)[1]
    copied = data / "cartpole-balance" / "sac" / "seed0" / "eval.csv"
    assert copied.read_text() == eval_csv.read_text()
    raw_eval = eval_csv.read_text().splitlines()
    # train.csv: the train logs averaged per 10k frames (one window in a 300-frame run)
    raw = (next(run_dir.glob("logs/*/scalars/train/action_abs_mean.csv"))).read_text().split()
    values = [float(line.split(",")[1]) for line in raw]
    with open(copied.parent / "train.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["frames"] == "10000"
    assert float(row["action_abs_mean"]) == pytest.approx(sum(values) / len(values), rel=1e-5)
    # A run started again from scratch (its directory lost) does not replace the longer copy
    shorter = eval_csv.read_text().splitlines()[:2]
    eval_csv.write_text("\n".join(shorter) + "\n")
    _, out, err = _main(capsys, collect)
    assert "copied 0" in out and "--replace-longer" in err, err
    assert campaign._eval_rows(copied)[-1]["frames"] == "300"
    assert "copied 1" in _main(capsys, [*collect, "--replace-longer"])[1]
    assert campaign._eval_rows(copied)[-1]["frames"] == "150"
    for path in (eval_csv, copied):  # the full run again, for the report
        path.write_text("\n".join(raw_eval) + "\n")
    code, _, err = _main(capsys, ["report", "--data", str(data), "--at", "150,300"])
    assert code == 0, err
    assert (data / "cartpole-balance.png").stat().st_size > 1000
    rows = {int(r["frames"]): float(r["return_mean"]) for r in campaign._eval_rows(eval_csv)}
    claims = (data / "claims.md").read_text()
    returns = (data / "returns.md").read_text().splitlines()
    assert returns[0] == "| cartpole-balance | 150 | 300 |"
    assert returns[2] == f"| sac seed0 | {rows[150]:.1f} | {rows[300]:.1f} |"
    # SAC is the baseline itself: the first evaluation that reaches half its final return
    reach = "150" if rows[150] >= 0.5 * rows[300] else "300"
    if rows[300] <= 0:
        reach = "-"
    row = f"| cartpole-balance | sac | {rows[150]:.1f} (1) | {rows[300]:.1f} (1) | {reach} |"
    assert row in claims


def test_a_run_another_process_holds_is_reported_running_and_not_started(tmp_path):
    from dqs_torchrl.experiments.harness.rundir import lock_run_dir

    spec_file = _write(
        tmp_path / "c.yaml",
        f"root: {tmp_path / 'runs'}\ntotal_frames: 300\ngroups: [{{tasks: [cartpole-balance]}}]\n",
    )
    root, runs = campaign.load_spec(spec_file)
    held = runs[0].path(root)
    held.mkdir(parents=True)
    with lock_run_dir(held):  # the lock a training process holds for its life
        assert runs[0].state(root) == "running"
        assert runs[1].state(root) == "fresh"
        out = _run(["run", "--spec", str(spec_file), "--only", "cartpole-balance/dqs"])
        assert "0 to run" in out.stdout and "another process is running it" in out.stdout
    assert runs[0].state(root) == "fresh"  # released: it can be started


def test_an_interrupted_run_says_the_checkpoint_it_resumes_from(tmp_path):
    """Checkpoints are written more often than evaluations: the status and the resume line
    name the checkpoint's frames (where training goes on), not the last evaluation's."""
    spec_file = _write(
        tmp_path / "c.yaml",
        f"root: {tmp_path / 'runs'}\ntotal_frames: 300\ngroups: [{{tasks: [cartpole-balance]}}]\n",
    )
    root, runs = campaign.load_spec(spec_file)
    run_dir = runs[0].path(root)
    (run_dir / "checkpoints").mkdir(parents=True)
    for frames in (100, 200):
        (run_dir / "checkpoints" / f"ckpt_{frames:012d}.pt").write_bytes(b"x")
    (run_dir / "eval.csv").write_text("frames,return_mean\n100,1.5\n")
    assert runs[0].frames_done(root) == 100 and runs[0].checkpoint_frames(root) == 200
    assert runs[0].state(root) == "interrupted (checkpoint at 200)"
    assert runs[1].checkpoint_frames(root) is None and runs[1].state(root) == "fresh"
    assert "resume=true" in runs[0].command(root)
    assert runs[0].start_line(root) == (
        f"resume {run_dir} (from its checkpoint at 200 frames, evaluated to 100)"
    )
    assert runs[1].start_line(root) == f"start {runs[1].path(root)}"
    name = f"{runs[0].task}/{runs[0].name}/seed{runs[0].seed}"
    line = next(x for x in campaign.status(root, runs).splitlines() if x.startswith(name))
    assert line.endswith("interrupted (checkpoint at 200)"), line


def test_only_selects_whole_parts_of_a_runs_name(tmp_path):
    """``--only`` names runs by whole parts of task/name/seedK: ``dqs`` is not a prefix match
    for ``dqs-x`` (nor for the run root's own name), and a selector that names no run is
    refused with the runs there are."""
    spec_file = _write(
        tmp_path / "c.yaml",
        f"root: {tmp_path / 'dqs-runs'}\ntotal_frames: 300\ngroups: [{{tasks: [cheetah-run, "
        "walker-run], seeds: [0, 1], algos: [dqs, {name: dqs-x, algo: dqs}]}]\n",
    )
    _, runs = campaign.load_spec(spec_file)

    def chosen(selector):
        return {f"{r.task}/{r.name}/seed{r.seed}" for r in runs if r.matches(selector)}

    assert chosen("cheetah-run/dqs") == {"cheetah-run/dqs/seed0", "cheetah-run/dqs/seed1"}
    assert chosen("dqs-x/seed1") == {"cheetah-run/dqs-x/seed1", "walker-run/dqs-x/seed1"}
    assert len(chosen("dqs")) == 4 and len(chosen("seed0")) == 4 and chosen("dq") == set()
    assert chosen("walker-run/dqs-x/seed0") == {"walker-run/dqs-x/seed0"}
    out = _run(["status", "--spec", str(spec_file), "--only", "cheetah-run/dqs-x"])
    assert out.returncode == 0 and out.stdout.count("cheetah-run/dqs-x/seed") == 2, out.stdout
    assert "walker-run" not in out.stdout and "cheetah-run/dqs/" not in out.stdout
    out = _run(["status", "--spec", str(spec_file), "--only", "cheetah-run/dqs-y,seed1"])
    assert out.returncode == 2 and "['cheetah-run/dqs-y']" in out.stderr, out.stderr
    assert "cheetah-run/dqs-x" in out.stderr
