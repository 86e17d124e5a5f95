"""Checkpoints written atomically, rotated, and loaded with `weights_only=True`."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "load_latest_checkpoint",
]

FORMAT = "dqs-torchrl/1"
_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is truncated, foreign or otherwise unreadable."""


def save_checkpoint(
    state: dict[str, Any], directory: str | Path, frames: int, keep_last: int = 3
) -> Path:
    """Write `state` to `directory/ckpt_<frames>.pt` atomically; keep the newest `keep_last`.

    The file is written to a temporary name in the same directory, flushed to disk and then
    renamed over the target, so a crash mid-save leaves every earlier checkpoint intact.

    Examples:
        >>> d = tempfile.mkdtemp()
        >>> p = save_checkpoint({"w": torch.ones(2)}, d, frames=10)
        >>> load_checkpoint(p)["w"]
        tensor([1., 1.])
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"ckpt_{frames:012d}.pt"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_ckpt_")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "frames": frames, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in sorted(_checkpoints(directory))[:-keep_last]:
        old.unlink()
    for orphan in directory.glob(".tmp_ckpt_*"):  # left by a process killed mid-save
        orphan.unlink(missing_ok=True)
    return target


def _checkpoints(directory: Path) -> list[Path]:
    return [p for p in directory.glob("ckpt_*.pt") if _NAME.match(p.name)]


def checkpoint_frames(path: str | Path) -> int:
    """The frame count in a checkpoint's name (`ckpt_<frames>.pt`, as [`save_checkpoint`][]
    names it), without loading it.

    Examples:
        >>> checkpoint_frames("runs/a/checkpoints/ckpt_000000060000.pt")
        60000
    """
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named as a checkpoint (ckpt_<12 digits>.pt)")
    return int(match.group(1))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in `directory` (by frame count), or `None`."""
    found = sorted(_checkpoints(Path(directory))) if Path(directory).is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by [`save_checkpoint`][] (`weights_only=True`).

    Raises [`CheckpointError`][] naming the file for a truncated, corrupt or foreign file.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes).")
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch raises several types for truncated/corrupt zips
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated or corrupt ({err})."
        ) from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dqs-torchrl checkpoint (expected format {FORMAT}).")
    return blob["state"]


def load_latest_checkpoint(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` and its state, or `None` when there is none.

    When the newest cannot be read (empty, truncated, corrupt), the [`CheckpointError`][]
    names it and the newest earlier checkpoint that loads, and says how to resume from that
    one. Nothing falls back silently: resuming from an earlier checkpoint drops the log rows
    written after it, so that is the user's call.

    Examples:
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = save_checkpoint({"frames": 10}, d, frames=10)
        >>> _ = (d / "ckpt_000000000020.pt").write_bytes(b"")
        >>> try:
        ...     load_latest_checkpoint(d)
        ... except CheckpointError as err:
        ...     print("empty (0 bytes)" in str(err), "ckpt_000000000010.pt (10 frames)" in str(err))
        True True
    """
    found = sorted(_checkpoints(Path(directory))) if Path(directory).is_dir() else []
    if not found:
        return None
    newest = found[-1]
    try:
        return newest, load_checkpoint(newest)
    except CheckpointError as err:
        for earlier in reversed(found[:-1]):
            try:
                frames = load_checkpoint(earlier)["frames"]
            except (CheckpointError, KeyError, TypeError):
                continue
            way_out = (
                f"The previous valid checkpoint is {earlier} ({frames} frames). To resume from "
                f"it, move the bad file out of the way (mv {newest} {newest}.bad) and run "
                "again with resume=true; log rows past it are dropped and logged again."
            )
            break
        else:
            way_out = (
                f"No earlier checkpoint in {directory} loads: start the run afresh with "
                "overwrite=true (the old files are moved aside, not deleted)."
            )
        raise CheckpointError(f"{err} {way_out}") from err
