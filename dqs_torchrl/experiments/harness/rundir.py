"""One run per run directory: its lock, what counts as its results, and its identity.

A run directory belongs to one run. [`lock_run_dir`][] holds `<run_dir>/.lock` (an
`flock`) for the run's life, so a second process gets an error naming the holder.
[`open_run`][] decides, before anything is written, how a run may use the directory:

- a fresh run (`resume=false`) starts only where no run has left results (`eval.csv`
  rows, checkpoints, logs), unless `overwrite=true` moves them aside into
  `overwritten_<time>/`;
- `resume=true` loads the newest checkpoint and checks that it belongs to this config
  ([`run_identity`][]): a field that defines the run and differs is refused, fields in
  [`CHANGEABLE_ON_RESUME`][] may differ and are logged; `resume=true` without a
  checkpoint starts fresh only where there are no results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dqs_torchrl.experiments.harness.checkpoint import load_latest_checkpoint
from dqs_torchrl.experiments.harness.config import config_fields

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there go unlocked (lock_run_dir warns)
    fcntl = None

__all__ = [
    "CHANGEABLE_ON_RESUME",
    "RESULTS",
    "RunDirError",
    "check_networks",
    "lock_run_dir",
    "network_shapes",
    "open_run",
    "results_in",
    "run_identity",
]

log = logging.getLogger(__name__)

# Fields that may change when a run resumes: how long it runs, how it is evaluated,
# checkpointed and logged, where it computes. Every other field defines the run.
CHANGEABLE_ON_RESUME = (
    "collector.total_frames",
    "collector.num_workers",
    "collector.backend",
    "collector.sync",
    "eval.",
    "checkpoint.",
    "logger.",
    "progress_bar",
    "resume",
    "overwrite",
    "device",
    "paper_tasks",
)
# What a run writes in its directory; overwrite=true moves these, and only these, aside.
RESULTS = (
    "eval.csv",
    "checkpoints",
    "logs",
    "diagnostics",
    "config.yaml",
    "learning_curve.png",
    "trajectories.png",
    "videos",
)


class RunDirError(RuntimeError):
    """A run directory that this run may not use as asked; raised before anything is written."""


@contextmanager
def lock_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Hold `<run_dir>/.lock` (an exclusive `flock`) while the block runs.

    The file names its holder (pid, host, start time). The kernel releases the lock when the
    holder dies, even by `SIGKILL`; a lock file left behind is taken over by the next run.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with lock_run_dir(d):
        ...     with lock_run_dir(d):
        ...         pass
        Traceback (most recent call last):
        ...
        dqs_torchrl.experiments.harness.rundir.RunDirError: ... is in use by another run (pid ...
    """
    path = Path(run_dir) / ".lock"
    if fcntl is None:
        log.warning("no flock on this platform: %s is not locked against a second run", run_dir)
        yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise RunDirError(
                f"{Path(run_dir)} is in use by another run ({holder}). Wait for it to end, or "
                "run in another directory (hydra.run.dir=...)."
            ) from None
        try:  # the holder before us may have removed the file we opened: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)  # still held: no other run can have it now
        os.close(fd)


def results_in(run_dir: str | Path) -> list[str]:
    """What results of a run `run_dir` holds: `eval.csv` rows, checkpoints, logs.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "eval.csv").write_text("frames,return_mean\\n")
        >>> results_in(d)
        []
        >>> _ = (d / "eval.csv").write_text("frames,return_mean\\n100,2.5\\n")
        >>> results_in(d)
        ['eval.csv (1 rows)']
    """
    run_dir = Path(run_dir)
    found = []
    eval_csv = run_dir / "eval.csv"
    if eval_csv.is_file() and (rows := len(eval_csv.read_text().splitlines()[1:])):
        found.append(f"eval.csv ({rows} rows)")
    for name, pattern in (("checkpoints", "ckpt_*.pt"), ("logs", "*"), ("diagnostics", "*")):
        files = [p for p in (run_dir / name).rglob(pattern) if p.is_file()]
        if files:
            found.append(f"{name}/ ({len(files)} files)")
    return found


def _move_results_aside(run_dir: Path) -> Path:
    aside = run_dir / f"overwritten_{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
        n += 1
    aside.mkdir()
    for name in RESULTS:
        if (run_dir / name).exists():
            (run_dir / name).rename(aside / name)
    return aside


def run_identity(cfg: DictConfig) -> dict[str, Any]:
    """What defines the run of `cfg`: every config field but [`CHANGEABLE_ON_RESUME`][],
    and a hash of them. Checkpoints record it; [`open_run`][] compares it with the config
    of a resume. (The network shapes are recorded by the checkpoint's tensors themselves:
    [`check_networks`][].)

    Examples:
        >>> from omegaconf import OmegaConf
        >>> a = run_identity(OmegaConf.create({"seed": 0, "eval": {"episodes": 5}}))
        >>> a["fields"]
        {'seed': 0}
        >>> a["hash"] == run_identity(OmegaConf.create({"seed": 0}))["hash"]
        True
    """
    fields = {
        key: value
        for key, value in config_fields(cfg).items()
        if not key.startswith(CHANGEABLE_ON_RESUME)
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return {"fields": fields, "hash": digest[:16]}


def _differences(
    before: dict[str, Any], now: dict[str, Any], keys: Any, was: str = "in the checkpoint"
) -> list[str]:
    def show(fields: dict[str, Any], key: str) -> str:
        return repr(fields[key]) if key in fields else "(absent)"

    return [f"{k}: {show(before, k)} {was}, {show(now, k)} now" for k in sorted(keys)]


def _ways_out(run_dir: Path) -> str:
    return (
        f"Resume with the overrides that started that run (its config: {run_dir / 'config.yaml'}), "
        "run this config in a new directory (hydra.run.dir=...), or start afresh here with "
        "overwrite=true (the old run is moved aside, not deleted)."
    )


def open_run(cfg: DictConfig, run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """How the run of `cfg` starts in `run_dir`: the checkpoint to resume from and its
    state, or `None` for a fresh start. Raises [`RunDirError`][] (or
    [`CheckpointError`][dqs_torchrl.experiments.harness.checkpoint.CheckpointError]) before
    anything is written when the directory holds another run, or a checkpoint that cannot be read.

    A fresh start with `overwrite=true` moves the old run's [`RESULTS`][] into
    `overwritten_<time>/` first. Hold [`lock_run_dir`][] around the call.
    """
    run_dir = Path(run_dir)
    results = results_in(run_dir)
    if not cfg.resume:
        if results and not cfg.overwrite:
            raise RunDirError(
                f"{run_dir} holds the results of a run ({', '.join(results)}), which a fresh "
                "run (resume=false) would overwrite. Continue that run with resume=true, run "
                "in a new directory (hydra.run.dir=...), or start afresh here with "
                "overwrite=true (the old run is moved aside into overwritten_<time>/, not "
                "deleted)."
            )
        if results:
            aside = _move_results_aside(run_dir)
            log.warning("overwrite=true: the previous run in %s was moved into %s", run_dir, aside)
        return None
    found = load_latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        if results:
            raise RunDirError(
                f"resume=true, but {run_dir} has no checkpoint to resume from, and it holds "
                f"the results of a run ({', '.join(results)}) that a fresh start would "
                "overwrite. Start afresh here with overwrite=true (the old results are moved "
                "aside into overwritten_<time>/, not deleted), or run in a new directory "
                "(hydra.run.dir=...)."
            )
        log.info("resume=true: no checkpoint in %s, so the run starts fresh", run_dir)
        return None
    ckpt, state = found
    recorded = state.get("identity")
    identity = run_identity(cfg)
    now = identity["fields"]
    if recorded is not None and recorded["hash"] != identity["hash"]:
        before = recorded["fields"]
        differ = {k for k in before.keys() & now.keys() if before[k] != now[k]}
        if differ:
            listed = "\n  ".join(_differences(before, now, differ))
            raise RunDirError(
                f"{ckpt} belongs to another run than this config; these fields differ:\n"
                f"  {listed}\n{_ways_out(run_dir)}"
            )
        log.warning(
            "config fields added or removed since %s was written (another version of the "
            "code?), not checked: %s",
            ckpt,
            "; ".join(_differences(before, now, before.keys() ^ now.keys())),
        )
    if recorded is None:
        log.warning(
            "%s records no run identity (written by an older version): resuming without "
            "checking that it belongs to this config.",
            ckpt,
        )
    _log_changes(cfg, run_dir, checked=recorded is not None)
    return ckpt, state


def _log_changes(cfg: DictConfig, run_dir: Path, checked: bool) -> None:
    """Log how this config differs from the `config.yaml` of the run's previous start."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    before, now = config_fields(OmegaConf.load(path)), config_fields(cfg)
    keys = {
        k
        for k in before.keys() | now.keys()
        if before.get(k, ...) != now.get(k, ...) and k not in ("resume", "overwrite")
    }
    allowed = {k for k in keys if k.startswith(CHANGEABLE_ON_RESUME)}
    if allowed:
        changes = _differences(before, now, allowed, was="before")
        log.info("changed on resume (allowed): %s", "; ".join(changes))
    if keys - allowed and not checked:
        log.warning(
            "fields that define the run differ from %s (the config of its previous start); "
            "the run continues with this config: %s",
            path,
            "; ".join(_differences(before, now, keys - allowed, was="before")),
        )


def network_shapes(agent_state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of an agent's networks, by `<module>.<parameter>`."""
    return {
        f"{module}.{name}": tuple(value.shape)
        for module, params in agent_state["modules"].items()
        for name, value in params.items()
        if isinstance(value, Tensor)
    }


def check_networks(saved: dict[str, Any], current: dict[str, Any], ckpt: Path) -> None:
    """Refuse a checkpoint's agent state `saved` whose networks do not fit `current` (the
    state of the agent this config builds), naming the modules or tensors that differ."""
    before, now = network_shapes(saved), network_shapes(current)
    if before == now:
        return
    if sorted(saved["modules"]) != sorted(current["modules"]):
        detail = (
            f"it holds the modules {', '.join(sorted(saved['modules']))}; this config builds "
            f"{', '.join(sorted(current['modules']))}"
        )
    else:
        differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        listed = "\n  ".join(_differences(before, now, differ[:5]))
        detail = f"{len(differ)} tensors differ in shape, e.g.\n  {listed}"
    raise RunDirError(
        f"the networks in {ckpt} do not fit the agent of this config: {detail}\n"
        f"{_ways_out(ckpt.parent.parent)}"
    )
