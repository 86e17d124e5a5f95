"""Argument checks shared by the package: each raises `ValueError` naming the argument."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive_int(value: object, name: str) -> int:
    """`value` as an int, unless it is not an integer >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, module: str) -> str:
    """`reduction` unless it is not one of TorchRL's `"mean"`, `"sum"`, `"none"`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{module}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    return reduction


def check_temperature(temperature: float | Tensor, name: str = "temperature") -> float:
    """Return `temperature` as a float, raising `ValueError` unless it is finite and > 0."""
    value = float(temperature)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}.")
    return value


def check_temperature_tensor(temperature: Tensor, name: str = "temperature") -> Tensor:
    """Like [`check_temperature`][] for a tensor of temperatures (every entry checked)."""
    if not bool(((temperature > 0) & torch.isfinite(temperature)).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got {temperature}.")
    return temperature


class MissingKeyError(KeyError):
    """A key a module reads is missing from the tensordict (its message prints as written)."""

    def __str__(self) -> str:
        return str(self.args[0])


def require_keys(tensordict: object, keys: list, module: str, remap: str = "") -> None:
    """Raise [`MissingKeyError`][] naming the missing `keys`, the `module` reading them
    and how to remap them (default: `<module>.set_keys(...)`)."""
    # One lookup per key (the actor calls this at every environment step); the keys present
    # are listed only for the error message.
    missing = [k for k in keys if tensordict.get(k, None) is None]  # type: ignore[attr-defined]
    if missing:
        present = tensordict.keys(include_nested=True, leaves_only=True)  # type: ignore[attr-defined]
        raise MissingKeyError(
            f"{module} reads {', '.join(repr(k) for k in missing)}, missing from the tensordict "
            f"(it holds {', '.join(sorted(map(repr, present)))}); if your data names it "
            f"otherwise, {remap or f'remap with {module}.set_keys(...)'}."
        )


def check_last_dim(tensor: Tensor, expected: int | None, what: str, module: str) -> None:
    """Raise `ValueError` unless `tensor.shape[-1] == expected` (no check if unknown)."""
    if expected is not None and (tensor.ndim == 0 or tensor.shape[-1] != expected):
        got = tuple(tensor.shape)
        raise ValueError(
            f"{module}: {what} has shape {got}, but its networks expect a last dimension of "
            f"{expected}."
        )


def as_bool_flag(flag: Tensor, name: str, module: str) -> Tensor:
    """A done / terminated flag as `bool`: 0/1 floats or ints are converted, others refused."""
    if flag.dtype == torch.bool:
        return flag
    if not bool(((flag == 0) | (flag == 1)).all()):
        raise ValueError(
            f"{module}: {name!r} must be boolean (or 0/1), got dtype {flag.dtype} with values "
            f"{flag.unique()[:5].tolist()}."
        )
    return flag != 0
