"""Exact resume's groundwork: episodes that can be rebuilt, and logs cut back to the checkpoint.

A run killed at any point continues from its last checkpoint as if it had never stopped (on
CPU, with one collector process, on the same machine): the environment is put back in the
episode it was in, the collector carries the same data into its next step, every random
generator continues where it was, and log rows written past the checkpoint are dropped.
What a checkpoint holds, and its restore, is
[`RunState`][dqs_torchrl.experiments.harness.state.RunState]'s.

dm_control and gymnasium have no serialisable environment state, but their simulation is
deterministic on one machine. So every reset is seeded from the run's seed and the reset's
index ([`SeededReset`][]), the actions since the last reset are recorded, and a resume
redoes that reset and replays those actions
([`restore_collector`][dqs_torchrl.experiments.harness.state.restore_collector]). Log rows
past the checkpoint go with [`truncate_scalar_logs`][] and [`truncate_eval_log`][].
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torch import Tensor
from torchrl.envs import EnvBase, Transform, TransformedEnv

__all__ = [
    "SeededReset",
    "find_seeded_reset",
    "reset_seed",
    "truncate_eval_log",
    "truncate_scalar_logs",
]


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
