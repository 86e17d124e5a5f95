"""How the benchmarks set up torch and time calls: threads and seeds, device synchronisation,
wall-clock per call, medians.

Examples:
    >>> times = time_calls(lambda: sum(range(100)), repeats=3)
    >>> len(times), all(t > 0 for t in times)
    (3, True)
    >>> derive_seed(0, "critic") == derive_seed(0, "critic") != derive_seed(1, "critic")
    True
"""

from __future__ import annotations

import argparse
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch


def add_timing_args(parser: argparse.ArgumentParser, repeats: int, warmup: int, what: str) -> None:
    """``--repeats``, ``--warmup`` and ``--device`` of the timing scripts."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed {what}")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed {what} first")
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda; CUDA untested so far"
    )


def setup_torch(threads: int, seed: int) -> None:
    """Fix the number of CPU threads and seed the global generator."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set (or parallel work already started)
        pass
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A seed determined by ``parts`` (their ``repr``), the same in every process (unlike
    ``hash``), so each measurement draws its own reproducible stream."""
    return zlib.crc32(repr(parts).encode())


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Seconds per call of ``fn`` (``time.perf_counter``) for ``repeats`` calls after
    ``warmup`` untimed ones; CUDA is synchronised around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


class Stopwatch:
    """Accumulates the time spent inside the functions it wraps (device synchronised).

    Examples:
        >>> watch = Stopwatch("cpu")
        >>> slow_sum = watch.wrap(lambda n: sum(range(n)))
        >>> slow_sum(1000), watch.total > 0
        (499500, True)
    """

    def __init__(self, device: str | torch.device) -> None:
        self.device = device
        self.total = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            synchronize(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(self.device)
            self.total += time.perf_counter() - start
            return out

        return timed
