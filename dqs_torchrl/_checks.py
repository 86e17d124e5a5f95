"""Argument checks shared by the package: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int, unless it is not an integer >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def check_temperature(temperature: float | Tensor, name: str = "temperature") -> float:
    """Return ``temperature`` as a float, raising ``ValueError`` unless it is finite and > 0."""
    value = float(temperature)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}.")
    return value


def check_temperature_tensor(temperature: Tensor, name: str = "temperature") -> Tensor:
    """Like :func:`check_temperature` for a tensor of temperatures (every entry checked)."""
    if not bool(((temperature > 0) & torch.isfinite(temperature)).all()):
        raise ValueError(f"{name} must be finite and > 0 everywhere, got {temperature}.")
    return temperature
