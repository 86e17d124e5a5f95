"""`dqs-campaign`: run recipe runs to completion, a few at a time, across interruptions.

    dqs-campaign status                 # every run of the campaign and its state
    dqs-campaign run --jobs 2           # start or resume what is not finished
    dqs-campaign run --print            # the commands only (for SLURM, etc.)
    dqs-campaign collect                # copy each run's eval.csv into the docs
    dqs-campaign report                 # figures + tables from the copied CSVs

(`python recipes/campaign.py ...` from a clone runs the same `main`.) The campaign is a YAML
file (default `configs/campaign/results.yaml` beside this file: the runs of the results page,
docs/results.md): a run root (outside the repository, so that re-cloning it loses nothing),
the overrides every run shares, and groups of runs (`recipe` dmc or maze, `algos`,
`tasks`, `seeds`, extra `overrides`). An entry of `algos` is an algorithm name
(`dqs`, `sac`, `qsm`) or a variant
`{name: dqs-unbounded, algo: dqs, overrides: [algo.energy=unbounded]}`; a run lives in
`<root>/<task>/<name>/seed<seed>` (the layout `dqs-plot` reads). Each run is started as
`python -m dqs_torchrl.experiments.dqs_dmc` (or `dqs_maze`) with the interpreter running
the campaign.

`run` skips finished runs (their `eval.csv` reaches the run's total frames) and runs
another process holds (the run directory's lock), resumes
interrupted ones (`resume=true` when a checkpoint exists) and starts the others, in file
order, `--jobs` at a time, each process with one torch thread; a run's output goes to
`<run dir>.log`. Stop it at any time (Ctrl-C, end of a job allocation): the next `run`
continues from the last checkpoints. `collect` copies `eval.csv` of every run that has
evaluated into `--data` (default `docs/results/campaign` under the current directory,
the repository root: small text, committed), and `report` redraws every figure and table of
docs/results.md from there alone.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dqs_torchrl.experiments import plot
from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness.checkpoint import checkpoint_frames, latest_checkpoint
from dqs_torchrl.experiments.harness.plotting import agg_figure
from dqs_torchrl.experiments.harness.rundir import results_in

RECIPES = {"dmc": "dqs_torchrl.experiments.dqs_dmc", "maze": "dqs_torchrl.experiments.dqs_maze"}
DEFAULT_SPEC = CONFIG_DIR / "campaign" / "results.yaml"
DEFAULT_DATA = Path("docs") / "results" / "campaign"  # run from the repository root


@dataclass
class Run:
    """One recipe run: where it lives, how it is launched, how long it is."""

    recipe: str
    task: str
    name: str
    algo: str
    seed: int
    total_frames: int
    overrides: list[str] = field(default_factory=list)

    def path(self, root: Path) -> Path:
        return root / self.task / self.name / f"seed{self.seed}"

    def matches(self, selector: str) -> bool:
        """Whether `selector` (`--only`) names this run: whole parts of `task/name/seedK`,
        consecutive (`finger-spin`, `dqs-balanced`, `two-goal-maze/dqs`, `seed1`);
        `dqs` does not select `dqs-balanced`."""
        parts = [self.task, self.name, f"seed{self.seed}"]
        want = [p for p in selector.split("/") if p]
        n = len(want)
        return n > 0 and any(parts[i : i + n] == want for i in range(len(parts) - n + 1))

    def start_line(self, root: Path) -> str:
        """What `run` prints when it launches this run: a resume names its checkpoint's
        frames (checkpoints are written more often than evaluations)."""
        frames = self.checkpoint_frames(root)
        if frames is None:
            return f"start {self.path(root)}"
        return (
            f"resume {self.path(root)} (from its checkpoint at {frames:,} frames, "
            f"evaluated to {self.frames_done(root):,})"
        )

    def frames_done(self, root: Path) -> int:
        """The last evaluated frame count (0 before the first evaluation)."""
        return _last_frames(self.path(root) / "eval.csv")

    def has_checkpoint(self, root: Path) -> bool:
        return self.checkpoint_frames(root) is not None

    def checkpoint_frames(self, root: Path) -> int | None:
        """The frame count of the newest checkpoint (where a resume starts), or `None`."""
        newest = latest_checkpoint(self.path(root) / "checkpoints")
        return None if newest is None else checkpoint_frames(newest)

    def is_running(self, root: Path) -> bool:
        """Whether a process holds the run directory's lock (`harness.rundir`)."""
        lock = self.path(root) / ".lock"
        if not lock.exists():
            return False
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    def state(self, root: Path) -> str:
        if self.frames_done(root) >= self.total_frames:
            return "finished"
        if self.is_running(root):
            return "running"
        frames = self.checkpoint_frames(root)
        if frames is not None:
            return f"interrupted (checkpoint at {frames:,})"
        return "started, no checkpoint" if results_in(self.path(root)) else "fresh"

    def command(self, root: Path) -> list[str]:
        args = [
            sys.executable,
            "-m",
            RECIPES[self.recipe],
            f"algo={self.algo}",
            f"seed={self.seed}",
            f"collector.total_frames={self.total_frames}",
            *self.overrides,
            f"hydra.run.dir={self.path(root)}",
            "progress_bar=false",
        ]
        if self.recipe == "dmc":
            args.insert(3, f"env.task={self.task}")
        if self.has_checkpoint(root):
            args.append("resume=true")
        return args


def _eval_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of an eval.csv (a row cut short by a kill is ignored)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("return_mean") not in (None, "")]


def load_spec(path: Path) -> tuple[Path, list[Run]]:
    """The run root and the runs of a campaign file, in file order.

    Raises `ValueError` naming the group and field when the file is malformed.
    """
    spec = yaml.safe_load(Path(path).read_text())
    root = Path(os.path.expanduser(str(spec.get("root", "~/dqs-runs"))))
    common = [str(o) for o in spec.get("overrides", [])]
    runs: list[Run] = []
    for i, group in enumerate(spec.get("groups", [])):
        where = f"{path}: groups[{i}]"
        recipe = group.get("recipe", "dmc")
        if recipe not in RECIPES:
            raise ValueError(f"{where}.recipe must be one of {sorted(RECIPES)}, got {recipe!r}.")
        tasks = group.get("tasks", ["two-goal-maze"] if recipe == "maze" else None)
        if not tasks:
            raise ValueError(f"{where}.tasks is missing (a list of dm_control tasks).")
        seeds = group.get("seeds", [0])
        if not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise ValueError(f"{where}.seeds must be integers >= 0, got {seeds!r}.")
        total = group.get("total_frames", spec.get("total_frames"))
        if not isinstance(total, int) or total < 1:
            raise ValueError(f"{where}: total_frames must be an integer >= 1, got {total!r}.")
        extra = [str(o) for o in group.get("overrides", [])]
        for entry in group.get("algos", ["dqs", "sac"]):
            variant = entry if isinstance(entry, dict) else {"name": entry, "algo": entry}
            if "algo" not in variant or "name" not in variant:
                raise ValueError(f"{where}.algos: a variant needs name and algo, got {entry!r}.")
            for task in tasks:
                for seed in seeds:
                    runs.append(
                        Run(
                            recipe=recipe,
                            task=task,
                            name=str(variant["name"]),
                            algo=str(variant["algo"]),
                            seed=seed,
                            total_frames=total,
                            overrides=common + extra + list(variant.get("overrides", [])),
                        )
                    )
    names = [(r.task, r.name, r.seed) for r in runs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"{path}: runs listed twice (task, name, seed): {sorted(dupes)}.")
    return root, runs


def status(root: Path, runs: list[Run]) -> str:
    lines = [f"run root: {root}", f"{'run':<44} {'frames':>15}  state"]
    for r in runs:
        done = f"{r.frames_done(root):,}/{r.total_frames:,}"
        lines.append(
            f"{r.task + '/' + r.name + '/seed' + str(r.seed):<44} {done:>15}  {r.state(root)}"
        )
    return "\n".join(lines)


def run_all(root: Path, runs: list[Run], jobs: int, poll_s: float = 5.0) -> int:
    """Start or resume every unfinished run, `jobs` at a time; the number that failed."""
    todo = [r for r in runs if r.state(root) != "finished"]
    skipped = [r for r in todo if r.state(root) in ("started, no checkpoint", "running")]
    for r in skipped:
        why = (
            "another process is running it"
            if r.state(root) == "running"
            else "it holds output but no checkpoint; move it away to rerun"
        )
        print(f"skip {r.path(root)}: {why}.")
    todo = [r for r in todo if r not in skipped]
    print(f"{len(runs) - len(todo) - len(skipped)} finished, {len(todo)} to run, {jobs} at a time")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("MUJOCO_GL", "disable")
    active: list[tuple[Run, subprocess.Popen, float]] = []
    failed = 0
    try:
        while todo or active:
            while todo and len(active) < jobs:
                r = todo.pop(0)
                r.path(root).parent.mkdir(parents=True, exist_ok=True)
                log = open(f"{r.path(root)}.log", "a")  # noqa: SIM115 (closed with the process)
                cmd = r.command(root)
                log.write(f"\n$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                log.close()
                print(r.start_line(root), flush=True)
                active.append((r, proc, time.time()))
            time.sleep(poll_s)
            for item in list(active):
                r, proc, started = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                minutes = (time.time() - started) / 60
                if proc.returncode == 0:
                    print(f"done  {r.path(root)} in {minutes:.1f} min", flush=True)
                else:
                    failed += 1
                    print(
                        f"FAIL  {r.path(root)} (exit {proc.returncode}); see {r.path(root)}.log",
                        flush=True,
                    )
    except KeyboardInterrupt:
        for _, proc, _ in active:
            proc.terminate()
        print("stopped; the next `run` resumes from the last checkpoints")
        raise
    return failed


def train_summary(run_dir: Path, window: int = 10_000) -> list[dict[str, float]]:
    """The run's scalar train logs (TorchRL CSV logger: `logs/*/scalars/train/<name>.csv`,
    rows `frames,value`) averaged over windows of `window` frames: one row per window,
    `frames` its end, one column per logged quantity (action saturation, Q, ESS, losses)."""
    sums: dict[int, dict[str, list[float]]] = {}
    for path in sorted(run_dir.glob("logs/*/scalars/train/*.csv")):
        with open(path, newline="") as f:
            for row in csv.reader(f):
                try:
                    frames, value = int(float(row[0])), float(row[1])
                except (ValueError, IndexError):
                    continue  # a row cut short by a kill
                end = ((frames - 1) // window + 1) * window
                sums.setdefault(end, {}).setdefault(path.stem, []).append(value)
    return [
        {"frames": end} | {k: sum(v) / len(v) for k, v in sorted(cols.items())}
        for end, cols in sorted(sums.items())
    ]


def _last_frames(path: Path) -> int:
    """The last evaluated frame count of an eval.csv (0 before the first evaluation)."""
    rows = _eval_rows(path)
    return int(float(rows[-1]["frames"])) if rows else 0


def collect(root: Path, runs: list[Run], data: Path, replace_longer: bool = False) -> int:
    """Copy `eval.csv` of every run that has evaluated to `data/<task>/<name>/seed<k>/`,
    with `train.csv`: its train logs averaged per 10k frames ([`train_summary`][]).

    A collected copy that reaches further than the run's own `eval.csv` (the run directory
    was lost and the run started again) is kept, with a message, unless `replace_longer`.
    """
    copied = 0
    for r in runs:
        src = r.path(root) / "eval.csv"
        if _eval_rows(src):
            dst = data / r.task / r.name / f"seed{r.seed}" / "eval.csv"
            have, new = _last_frames(dst), _last_frames(src)
            if have > new and not replace_longer:
                print(
                    f"kept {dst} ({have:,} frames): {src} reaches only {new:,} frames; "
                    "pass --replace-longer to copy it anyway",
                    file=sys.stderr,
                )
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            copied += 1
            summary = train_summary(r.path(root))
            if summary:
                keys = sorted({k for row in summary for k in row} - {"frames"})
                with open(dst.parent / "train.csv", "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=["frames", *keys])
                    writer.writeheader()
                    writer.writerows(
                        {k: (f"{v:.6g}" if k != "frames" else v) for k, v in row.items()}
                        for row in summary
                    )
            if r.recipe == "maze" and (r.path(root) / "trajectories.png").exists():
                shutil.copyfile(r.path(root) / "trajectories.png", dst.parent / "trajectories.png")
    return copied


def _mean_curve(seeds: list[dict[str, list[float]]]) -> tuple[list[float], list[float], int]:
    """Frames every seed has evaluated, the mean return there, and the number of seeds."""
    common = sorted(set.intersection(*(set(s["frames"]) for s in seeds)))
    by_seed = [dict(zip(s["frames"], s["return_mean"], strict=True)) for s in seeds]
    return common, [sum(d[f] for d in by_seed) / len(by_seed) for f in common], len(seeds)


def complete_runs(found: dict) -> tuple[dict, list[str]]:
    """`found` (`plot.collect`) with only the seeds of each method evaluated as far as its
    furthest seed, and a line per seed left out: a run still in progress would otherwise cut
    every mean curve (and the claim and IQM tables) down to the frames it has reached."""
    kept: dict = {}
    left_out = []
    for task, methods in found.items():
        for method, seeds in methods.items():
            reached = [max(s["frames"]) for s in seeds]
            furthest = max(reached)
            kept.setdefault(task, {})[method] = [
                s for s, r in zip(seeds, reached, strict=True) if r == furthest
            ]
            left_out += [
                f"{task}/{method}: a seed at {_k(r)} of {_k(furthest)}"
                for r in reached
                if r < furthest
            ]
    return kept, left_out


def _k(frames: float) -> str:
    """`50000 -> "50k"`; counts that are not whole thousands stay as they are."""
    return f"{int(frames) // 1000}k" if int(frames) % 1000 == 0 else f"{int(frames)}"


def claim_table(
    found: dict, at: tuple[int, ...] = (50_000, 100_000), fraction: float = 0.5, baseline="sac"
) -> str:
    """Per task and method: mean return at the frames `at` (seeds in brackets) and the first
    evaluated frame count where the mean return reaches `fraction` of the baseline's mean
    return at `at[-1]`. A method with no evaluation at a frame count shows `-`."""
    header = [f"return at {_k(a)}" for a in at]
    lines = [
        f"| task | method | {' | '.join(header)} | frames to {fraction:.0%} of "
        f"{baseline.upper()} at {_k(at[-1])} |",
        "| --- | --- " + "| --- " * (len(at) + 1) + "|",
    ]
    for task in sorted(found):
        curves = {m: _mean_curve(seeds) for m, seeds in sorted(found[task].items())}
        ref = None
        if baseline in curves:
            frames, mean, _ = curves[baseline]
            ref = dict(zip(frames, mean, strict=True)).get(at[-1])
        for method, (frames, mean, n) in curves.items():
            at_f = dict(zip(frames, mean, strict=True))
            cells = [f"{at_f[a]:.1f} ({n})" if a in at_f else "-" for a in at]
            if ref is None or ref <= 0:
                reach = "-"
            else:
                hit = [f for f, m in zip(frames, mean, strict=True) if m >= fraction * ref]
                reach = _k(hit[0]) if hit else f"not by {_k(frames[-1])}"
            lines.append(f"| {task} | {method} | {' | '.join(cells)} | {reach} |")
    return "\n".join(lines) + "\n"


def returns_table(data: Path) -> str:
    """Per task under `data`, one row per run (`<method>/seed<k>`): the evaluation return at
    every frame count any run of the task evaluated (`-` where this one has not)."""
    runs: dict[str, list[tuple[str, dict[int, float]]]] = {}
    for path in sorted(data.glob("*/*/seed*/eval.csv")):
        rows = _eval_rows(path)
        if rows:
            at = {int(float(r["frames"])): float(r["return_mean"]) for r in rows}
            runs.setdefault(path.parts[-4], []).append((f"{path.parts[-3]} {path.parts[-2]}", at))
    blocks = []
    for task, task_runs in runs.items():
        frames = sorted({f for _, at in task_runs for f in at})
        lines = [
            f"| {task} | {' | '.join(_k(f) for f in frames)} |",
            "| --- " * (len(frames) + 1) + "|",
        ]
        for name, at in task_runs:
            cells = [f"{at[f]:.1f}" if f in at else "-" for f in frames]
            lines.append(f"| {name} | {' | '.join(cells)} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def plot_train_metric(
    data: Path, task: str, metric: str, path: Path, log_scale: bool = False
) -> bool:
    """One line per method and seed of a `train.csv` column against frames; False if none."""
    fig, ax = agg_figure((5, 3.5))
    drawn = False
    for train_csv in sorted((data / task).glob("*/seed*/train.csv")):
        with open(train_csv, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get(metric)]
        if rows:
            label = f"{train_csv.parts[-3]} {train_csv.parts[-2]}"
            ax.plot(
                [float(r["frames"]) for r in rows],
                [float(r[metric]) for r in rows],
                marker="o",
                label=label,
            )
            drawn = True
    if drawn:
        ax.set(title=f"{task}: {metric} (training)", xlabel="environment frames")
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    return drawn


def report(
    data: Path, out: Path, fraction: float, reps: int, at: tuple[int, ...] = (50_000, 100_000)
) -> None:
    """Every figure and table of the results page from the collected CSVs alone."""
    found = plot.collect(data)
    if not found:
        raise SystemExit(f"no <task>/<method>/seed*/eval.csv under {data}")
    found, in_progress = complete_runs(found)
    for line in in_progress:
        print(f"left out of the curves and tables until it catches up: {line}")
    out.mkdir(parents=True, exist_ok=True)
    for task, methods in found.items():
        plot.plot_task(task, methods, out / f"{task}.png")
    for task in found:
        plot_train_metric(data, task, "action_saturated", out / f"{task}_saturation.png")
        # T of every run: fixed, scheduled (the maze) or adapted (schedule=auto, issue 12)
        plot_train_metric(data, task, "temperature", out / f"{task}_temperature.png", True)
    dmc = {t: m for t, m in found.items() if t != "two-goal-maze"}
    table = claim_table(dmc, at=at, fraction=fraction)
    (out / "claims.md").write_text(table)
    print(table)
    (out / "returns.md").write_text(returns_table(data))
    if len(dmc) > 1:
        print(plot.iqm_table(dmc, 1000.0, out, reps))
    print(f"figures and tables written to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["status", "run", "collect", "report"])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the campaign file")
    parser.add_argument("--root", type=Path, default=None, help="override the file's run root")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument(
        "--only",
        default=None,
        help="only these runs (comma-separated): whole parts of task/name/seedK, "
        "e.g. finger-spin/dqs, dqs-balanced, two-goal-maze, seed1",
    )
    parser.add_argument("--print", action="store_true", help="run: print commands, start none")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="collected CSVs")
    parser.add_argument("--out", type=Path, default=None, help="report: default <data>")
    parser.add_argument(
        "--replace-longer",
        action="store_true",
        help="collect: copy a run's eval.csv even over a collected copy that reaches further",
    )
    parser.add_argument("--fraction", type=float, default=0.5, help="of SAC's final return")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples (IQM)")
    parser.add_argument(
        "--at", default="50000,100000", help="report: frame counts of the table's return columns"
    )
    args = parser.parse_args(argv)
    if args.command == "report":
        at = tuple(int(a) for a in args.at.split(","))
        report(args.data, args.out or args.data, args.fraction, args.reps, at)
        return
    root, runs = load_spec(args.spec)
    root = args.root or root
    if args.only:
        selectors = [k.strip() for k in args.only.split(",") if k.strip()]
        unmatched = [k for k in selectors if not any(r.matches(k) for r in runs)]
        if unmatched:
            known = sorted({f"{r.task}/{r.name}" for r in runs})
            parser.error(
                f"--only: no run of {args.spec} is named by {unmatched} (whole parts of "
                f"task/name/seedK); its runs: {', '.join(known)}"
            )
        runs = [r for r in runs if any(r.matches(k) for k in selectors)]
    if args.command == "status":
        print(status(root, runs))
    elif args.command == "collect":
        copied = collect(root, runs, args.data, args.replace_longer)
        print(f"copied {copied} eval.csv files to {args.data}")
    elif args.print:
        for r in runs:
            if r.state(root) != "finished":
                print(" ".join(r.command(root)))
    else:
        if args.jobs < 1:
            raise SystemExit(f"--jobs must be >= 1, got {args.jobs}.")
        sys.exit(1 if run_all(root, runs, args.jobs) else 0)


if __name__ == "__main__":
    main()
