"""Exact resume: the run state a checkpoint holds beyond networks and buffer, and its restore.

A run killed at any point continues from its last checkpoint as if it had never stopped (on
CPU, with one collector process, on the same machine): the environment is put back in the
episode it was in, the collector carries the same data into its next step, every random
generator continues where it was, and log rows written past the checkpoint are dropped.

dm_control and gymnasium have no serialisable environment state, but their simulation is
deterministic on one machine. So every reset is seeded from the run's seed and the reset's
index ([`SeededReset`][]), the actions since the last reset are recorded, and a resume
redoes that reset and replays those actions ([`restore_collector`][]).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.collectors import Collector
from torchrl.envs import EnvBase, Transform, TransformedEnv

__all__ = [
    "SeededReset",
    "collector_state",
    "find_seeded_reset",
    "reset_seed",
    "restore_collector",
    "rng_state",
    "set_rng_state",
    "truncate_eval_log",
    "truncate_scalar_logs",
]

log = logging.getLogger(__name__)


def reset_seed(seed: int, index: int) -> int:
    """The seed of reset number `index` in an environment seeded `seed`.

    `SeedSequence` mixes the two, so neighbouring seeds and indices give unrelated streams.

    Examples:
        >>> reset_seed(0, 3) == reset_seed(0, 3) != reset_seed(0, 4)
        True
    """
    return int(np.random.SeedSequence((seed % 2**64, index)).generate_state(1)[0])


class SeededReset(Transform):
    """Seeds every reset from `(seed, reset index)` and records the actions taken since.

    Reset number `n` of the base environment always starts the same episode, whatever came
    before it, and [`episode`][] holds what it takes to rebuild the episode in progress:
    the reset count and the actions of this episode. The base environment is reseeded with
    its own `set_seed` (dm_control's task generator, gymnasium's `np_random`). Meant for
    unbatched environments (one episode at a time), the last transform of the stack so it
    records the actions as the policy gave them.

    Examples:
        >>> from dqs_torchrl.experiments.envs import make_dmc_env
        >>> envs = [make_dmc_env("cartpole-balance").append_transform(SeededReset(0))
        ...         for _ in range(2)]
        >>> first = envs[0].reset()
        >>> _ = envs[1].reset(), envs[1].reset()  # another history, then reset number 0
        >>> envs[1].transform[-1].resets = 0
        >>> torch.equal(first["observation"], envs[1].reset()["observation"])
        True
        >>> _ = envs[0].rand_step(first)
        >>> state = envs[0].transform[-1].episode()
        >>> state["resets"], state["actions"].shape
        (1, torch.Size([1, 1]))
    """

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.resets = 0
        self.actions: list[Tensor] = []
        self._action_key: Any = None

    def _reset_env_preprocess(self, tensordict: TensorDictBase | None) -> TensorDictBase | None:
        # before the base reset, and through set_seed: the collector's resets pass no seed
        self.parent.base_env.set_seed(reset_seed(self.seed, self.resets), static_seed=True)
        self.resets += 1
        self.actions = []
        return super()._reset_env_preprocess(tensordict)

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        # the inverse pass of the last transform sees the action exactly as step() got it
        if self._action_key is None:
            self._action_key = self.parent.action_key
        self.actions.append(tensordict.get(self._action_key).clone())
        return tensordict

    def episode(self) -> dict[str, Any]:
        """The reset count and this episode's actions `[steps, *action_shape]`."""
        spec = self.parent.action_spec
        actions = (
            torch.stack(self.actions)
            if self.actions
            else torch.zeros(0, *spec.shape, dtype=spec.dtype)
        )
        return {"resets": self.resets, "actions": actions}


def find_seeded_reset(env: EnvBase | None) -> SeededReset | None:
    """The [`SeededReset`][] among `env`'s transforms, or `None`."""
    if not isinstance(env, TransformedEnv):
        return None
    transforms = getattr(env.transform, "transforms", [env.transform])
    return next((t for t in transforms if isinstance(t, SeededReset)), None)


def collector_state(collector: Any) -> dict[str, Any] | None:
    """What a single-process `Collector` carries from one batch to the next.

    The episode in progress ([`SeededReset.episode`][]), the carrier (the data the next step
    starts from: observation, step count, episode return, trajectory id) and the next
    trajectory id. `None` for multi-process collectors: their environments live in the
    workers, so a resume starts them afresh.
    """
    seeded = find_seeded_reset(getattr(collector, "env", None))
    if not isinstance(collector, Collector) or seeded is None:
        return None
    # TorchRL 0.14 has no public access to the in-flight carrier: Collector.load_state_dict
    # restores the counters but deliberately starts a new trajectory.
    return {
        **seeded.episode(),
        "carrier": collector._carrier.clone().to_dict(),
        "traj_pool": collector._traj_pool.state_dict()["traj_id"],
    }


def restore_collector(collector: Any, state: dict[str, Any]) -> bool:
    """Put a freshly built `collector` back where [`collector_state`][] found it.

    Redoes the reset that began the episode in progress, replays its actions, then restores
    the carrier and the trajectory counter. Returns whether the replayed environment matches
    the checkpoint bit for bit; when it does not (another machine or MuJoCo build), the
    replayed state is kept so that transitions stay consistent with the simulator, and the
    resumed run is no longer identical to an uninterrupted one.
    """
    env = collector.env
    seeded = find_seeded_reset(env)
    seeded.resets = int(state["resets"]) - 1
    replayed = env.reset()
    for action in state["actions"]:
        replayed.set(env.action_key, action)
        _, replayed = env.step_and_maybe_reset(replayed)
    device = collector._carrier.device
    carrier = TensorDict.from_dict(state["carrier"], batch_size=env.batch_size, device=device)
    exact = seeded.resets == int(state["resets"]) and all(
        carrier.get(key, None) is not None and torch.equal(value, carrier.get(key))
        for key, value in replayed.items(include_nested=True, leaves_only=True)
    )
    if not exact:
        carrier = replayed.update(carrier.select("collector", strict=False))
        if device is None:
            carrier.clear_device_()
    collector._carrier = carrier
    collector._traj_pool.load_state_dict({"traj_id": state["traj_pool"]})
    return exact


def rng_state() -> dict[str, Any]:
    """The torch, numpy and python `random` generator states, as `weights_only` types.

    Examples:
        >>> state = rng_state()
        >>> a = torch.rand(1), np.random.rand(), random.random()
        >>> set_rng_state(state)
        >>> a == (torch.rand(1), np.random.rand(), random.random())
        True
    """
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        # The CUDA generators too, when a GPU is in use (their kernels may still not be
        # deterministic: exact resume is promised on the CPU only).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by [`rng_state`][]."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _row_step(line: str, columns: int = 2) -> int | None:
    """The step (first field) of a complete row of `columns` numbers, else `None`."""
    fields = line.rstrip("\r\n").split(",")
    if not line.endswith("\n") or len(fields) != columns:
        return None
    try:
        for field in fields[1:]:
            float(field)
        return int(fields[0])
    except ValueError:
        return None


def _rewrite(path: Path, lines: list[str], keep: list[str]) -> None:
    """Write `keep` over `path` atomically (remove it when empty), unless nothing changed."""
    if keep == lines:
        return
    if not keep:
        path.unlink()
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_log_")
    with os.fdopen(fd, "w", newline="") as f:
        f.writelines(keep)
    os.replace(tmp, path)


def truncate_scalar_logs(log_dir: str | Path, frames: int) -> None:
    """Drop the rows past `frames` from the scalar files of TorchRL's `CSVLogger`.

    A run killed after its last checkpoint has logged rows that the resumed run logs again;
    a row cut short by the kill goes too. Each file is rewritten atomically.

    Examples:
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "scalars").mkdir()
        >>> _ = (d / "scalars" / "loss.csv").write_text("50,1.0\\n100,0.5\\n150,0.2\\n20")
        >>> truncate_scalar_logs(d, 100)
        >>> (d / "scalars" / "loss.csv").read_text()
        '50,1.0\\n100,0.5\\n'
    """
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return
    for path in sorted(log_dir.rglob("*.csv")):
        if "scalars" not in path.relative_to(log_dir).parts:
            continue
        lines = path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if (step := _row_step(line)) is not None and step <= frames]
        _rewrite(path, lines, keep)


def truncate_eval_log(path: str | Path, frames: int) -> None:
    """Drop the rows past `frames` from the harness's `eval.csv`, as
    [`truncate_scalar_logs`][] does for the scalar logs: a row (or header) cut short by a
    kill goes too, so the next evaluation appends to whole rows. Rewritten atomically; removed
    when no row is left (the next evaluation writes the header again).

    Examples:
        >>> path = Path(tempfile.mkdtemp()) / "eval.csv"
        >>> _ = path.write_text("frames,return_mean\\n100,1.5\\n200,2.5\\n2")
        >>> truncate_eval_log(path, 200)
        >>> path.read_text()
        'frames,return_mean\\n100,1.5\\n200,2.5\\n'
        >>> _ = path.write_text("frames,retu")  # killed while writing the header
        >>> truncate_eval_log(path, 200)
        >>> path.exists()
        False
    """
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:  # keep csv's \r\n line ends as they are
        lines = f.readlines()
    header = lines[0] if lines and lines[0].endswith("\n") else ""
    columns = header.count(",") + 1
    rows = [
        line
        for line in lines[1:]
        if header and (step := _row_step(line, columns)) is not None and step <= frames
    ]
    _rewrite(path, lines, [header, *rows] if rows else [])
