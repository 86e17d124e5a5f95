"""What every benchmark script shares around its measurement: the command line (``--quick``,
``--threads``, ``--seed``, ``--output``, ``--no-write``), the machine it ran on, and its
section of ``docs/performance.md`` (Markdown tables, header, rewrite between markers).

Every script writes its own section with :func:`emit`; ``benchmarks/`` is put on
``sys.path`` by the scripts themselves, so they run as ``.venv/bin/python
benchmarks/<name>.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "performance.md"


def add_common_args(parser: argparse.ArgumentParser, default_seed: int = 0) -> None:
    """``--quick``, ``--threads``, ``--seed``, ``--output`` and ``--no-write``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, a few iterations (seconds): checks the script runs",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--seed", type=int, default=default_seed, help="base seed")
    parser.add_argument(
        "--output", type=Path, default=PERFORMANCE_MD, help="Markdown file to update"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave the Markdown file alone"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str | torch.device = "cpu") -> str:
    """CPU model, cores, torch/torchrl versions, threads, device and the load average."""
    import torchrl

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = f"{os.cpu_count()} logical cores" + (f" ({usable} usable)" if usable else "")
    text = (
        f"{cpu_model()}, {cores}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchrl {torchrl.__version__}, torch threads {threads}"
    )
    if torch.device(device).type == "cuda":
        text += f", device {torch.cuda.get_device_name(device)}"
    else:
        text += ", device cpu"
    try:
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        text += f"; load average at start {load}"
    except OSError:
        pass
    return text


def command_line() -> str:
    """The command that is running, with the interpreter relative to the repository."""
    exe = Path(sys.executable)
    try:
        exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
    except ValueError:
        exe_text = str(exe)
    script = Path(sys.argv[0]).resolve()
    script_text = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join([exe_text, script_text, *sys.argv[1:]])


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers with ``digits`` significant digits; strings as they are; None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 10**digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub Markdown table; cells go through :func:`fmt`."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


SECTION_ORDER = ("update_cost", "action_latency", "sampler_fidelity", "score_target_accuracy")

_PREAMBLE = """# Performance

Measured by the scripts in `benchmarks/` (one section per script, rewritten by each run between
its `BEGIN`/`END` markers; edit outside the markers only). Each section names the machine, the
exact command, the date and the seeds. Timings are medians over repeats; sections marked
*quick* come from `--quick` runs (tiny sizes, to check the scripts) and are not results.
"""


def section_header(
    title: str,
    *,
    quick: bool,
    threads: int,
    seeds: str,
    extra: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> str:
    """Title, quick warning, machine, command, date, seeds (and any extra bullet lines)."""
    lines = [f"## {title}", ""]
    if quick:
        lines += [
            "> **Quick check (`--quick`): tiny sizes on a possibly contended machine, to test "
            "the script. Not a result.**",
            "",
        ]
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines += [
        f"- Machine: {machine_info(threads, device)}",
        f"- Command: `{command_line()}`",
        f"- Date: {date}",
        f"- Seeds: {seeds}",
    ]
    lines += [f"- {e}" for e in extra]
    return "\n".join(lines) + "\n"


def write_section(name: str, body: str, path: Path = PERFORMANCE_MD) -> None:
    """Replace (or insert, in :data:`SECTION_ORDER`) the section ``name`` of ``path``.

    The section is delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``. The file is
    created when missing and locked while rewritten (scripts may run concurrently).
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read() or _PREAMBLE
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            text = head + block + ("\n" + tail if tail else "")
        else:
            later = SECTION_ORDER[SECTION_ORDER.index(name) + 1 :] if name in SECTION_ORDER else ()
            positions = [text.find(f"<!-- BEGIN {n} -->") for n in later]
            positions = [p for p in positions if p >= 0]
            if positions:
                at = min(positions)
                text = text[:at] + block + "\n" + text[at:]
            else:
                text = text.rstrip("\n") + "\n\n" + block
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        fcntl.flock(handle, fcntl.LOCK_UN)
    print(f"\nwrote section {name!r} of {path}")


def emit(name: str, body: str, args: argparse.Namespace) -> None:
    """Print the section and, unless ``--no-write``, store it in the Markdown file."""
    print(body)
    if not args.no_write:
        write_section(name, body, args.output)
