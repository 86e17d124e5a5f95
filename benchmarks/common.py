"""Shared pieces of the benchmarks: configurations, agents, timing, machine info, Markdown
output, and energies with known Boltzmann distributions.

Every benchmark script imports this module (``benchmarks/`` is put on ``sys.path`` by the
scripts themselves, so they run as ``.venv/bin/python benchmarks/<name>.py`` from the repository
root) and writes its own section of ``docs/performance.md`` with :func:`write_section`.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from dqs_torchrl.experiments.configs import CONFIG_DIR

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE_MD = ROOT / "docs" / "performance.md"

# ---------------------------------------------------------------------------------------------
# Problem sizes (dm_control cheetah-run) and the hyper-parameters of the harness
# (dqs_dmc.yaml and algo/dqs.yaml in dqs_torchrl/experiments/configs/).
# ---------------------------------------------------------------------------------------------

OBS_DIM = 17
ACTION_DIM = 6
NUM_CELLS = (256, 256)  # Q-networks and SAC actor
SCORE_CELLS = 256  # score network width
EMBEDDING_DIM = 256
BATCH_SIZE = 256
TEMPERATURE = 0.05
LR = 3e-4
GAMMA = 0.99
POLYAK = 0.005  # target Q-networks and EMA of the score network
CLIP_NORM = 10.0
SIGMA_MIN, SIGMA_MAX = 1e-5, 1.0

# The configurations compared by every script. Keys are the DiffusionActor keyword arguments
# (num_steps, sampler, spacing, sigma_end, denoise, ema) and the IDEMScoreLoss ones
# (num_mc_samples, num_mc_samples_small, small_sigma, estimator); use actor_kwargs /
# score_kwargs.
FIDELITY_DIR = CONFIG_DIR / "fidelity"


def _fidelity(name: str, description: str, **changes: Any) -> dict[str, Any]:
    """A recipe fidelity preset (``fidelity/<name>.yaml`` of the recipes' configs,
    ``dqs_torchrl/experiments/configs/``), so the benchmarks measure exactly what
    ``fidelity=<name>`` runs; ``changes`` derive a variant."""
    from omegaconf import OmegaConf

    config = dict(OmegaConf.to_container(OmegaConf.load(FIDELITY_DIR / f"{name}.yaml")))
    return {"description": description, **config, "ema": True, "compile_sampler": False, **changes}


CONFIGS: dict[str, dict[str, Any]] = {
    "paper": _fidelity("paper", "paper table 1: K=1000; Euler-Maruyama, 1000 uniform-tau steps"),
    "fast": _fidelity(
        "fast",
        "fidelity=fast: blended target K=16 (K=2 at sigma<=1e-2); ancestral 10 geometric steps "
        "to 1e-2 + Tweedie",
    ),
    "fast_compiled": _fidelity(
        "fast", "fast with DiffusionActor(compile_sampler=True)", compile_sampler=True
    ),
    "fast_idem64": _fidelity(
        "fast",
        "fast with the gradient-form target at K=64 (K=2 at sigma<=1e-2): the previous estimator",
        estimator="idem",
        num_mc_samples=64,
    ),
}

_ACTOR_KEYS = ("num_steps", "sampler", "spacing", "sigma_end", "denoise", "ema", "compile_sampler")
_SCORE_KEYS = ("num_mc_samples", "num_mc_samples_small", "small_sigma", "estimator")


def actor_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``DiffusionActor`` keyword arguments of a configuration."""
    return {k: config[k] for k in _ACTOR_KEYS}


def score_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``IDEMScoreLoss`` keyword arguments of a configuration."""
    return {k: config[k] for k in _SCORE_KEYS}


def select_configs(names: str) -> dict[str, dict[str, Any]]:
    """``"paper,fast"`` -> the named entries of :data:`CONFIGS` (``"all"`` for every one)."""
    if names == "all":
        return dict(CONFIGS)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; known: {', '.join(CONFIGS)}")
    return {n: CONFIGS[n] for n in chosen}


def config_summary(config: dict[str, Any]) -> str:
    """A one-line description of the sampler and estimator settings of a configuration."""
    k = f"{config['estimator']} K={config['num_mc_samples']}"
    if config["num_mc_samples_small"] is not None:
        k += f" (K={config['num_mc_samples_small']} at sigma<={config['small_sigma']:g})"
    end = config["sigma_end"] if config["sigma_end"] is not None else SIGMA_MIN
    tweedie = " + Tweedie" if config["denoise"] else ""
    tweedie += ", compiled loop" if config["compile_sampler"] else ""
    return (
        f"{k}; {config['sampler']} {config['num_steps']} {config['spacing']} steps "
        f"to {end:g}{tweedie}"
    )


# ---------------------------------------------------------------------------------------------
# Agents: the DQS and SAC updates of the harness (dqs_torchrl.experiments.harness.agents),
# without an env.
# ---------------------------------------------------------------------------------------------


def fake_env(device: str | torch.device = "cpu") -> SimpleNamespace:
    """What ``make_sac`` reads from an environment: the observation and action specs."""
    from torchrl.data import Bounded, Composite, Unbounded

    return SimpleNamespace(
        observation_spec=Composite(observation=Unbounded(shape=(OBS_DIM,), device=device)),
        action_spec=Bounded(-1.0, 1.0, shape=(ACTION_DIM,), device=device),
    )


def make_diffusion_actor(config: dict[str, Any], device: str | torch.device = "cpu"):
    """The cheetah-sized ``DiffusionActor`` of a configuration, at temperature 0.05."""
    from dqs_torchrl import DiffusionActor, ScoreNetwork

    actor = DiffusionActor(
        ScoreNetwork(OBS_DIM, ACTION_DIM, SCORE_CELLS, EMBEDDING_DIM),
        fake_env(device).action_spec,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        temperature=TEMPERATURE,
        **actor_kwargs(config),
    )
    return actor.to(device)


def make_dqs_agent(config: dict[str, Any], device: str | torch.device = "cpu"):
    """A harness ``Agent`` for DQS, built as ``harness.agents._diffusion_agent`` builds it
    (two 256x256 critics, Polyak 0.005, EMA actor, Adam 3e-4, grad clip 10, T=0.05), plus the
    adaptive-K arguments of the configuration."""
    from torchrl.objectives import SoftUpdate

    from dqs_torchrl import DoubleQLoss, IDEMScoreLoss, make_q_network
    from dqs_torchrl.experiments.harness.agents import Agent

    actor = make_diffusion_actor(config, device)
    qloss = DoubleQLoss(
        actor, make_q_network(OBS_DIM, ACTION_DIM, NUM_CELLS), temperature=TEMPERATURE
    )
    qloss.make_value_estimator(gamma=GAMMA)
    aloss = IDEMScoreLoss(
        actor, qloss, temperature=TEMPERATURE, tanh_correction=True, **score_kwargs(config)
    )
    qloss.to(device)
    aloss.to(device)
    updaters = [SoftUpdate(qloss, tau=POLYAK)]
    if config["ema"]:
        updaters.append(SoftUpdate(aloss, tau=POLYAK))
    return Agent(
        policy=actor,
        losses={"critic": (qloss, "loss_qvalue"), "actor": (aloss, "loss_actor")},
        optimizers={
            "critic": torch.optim.Adam(qloss.parameters(), lr=LR),
            "actor": torch.optim.Adam(actor.score_network.parameters(), lr=LR),
        },
        updaters=updaters,
        clip_norm=CLIP_NORM,
        postproc=actor.fill_latent_action,
    )


def make_sac_agent(device: str | torch.device = "cpu"):
    """A harness ``Agent`` for TorchRL's SAC (``make_sac``: 256x256 actor and two critics),
    built as ``harness.agents._sac_agent`` builds it."""
    from torchrl.objectives import SoftUpdate

    from dqs_torchrl.experiments.harness.agents import Agent, make_sac

    actor, loss = make_sac(fake_env(device), NUM_CELLS, GAMMA)
    actor.to(device)
    loss.to(device)
    return Agent(
        policy=actor,
        losses={"sac": (loss, "")},
        optimizers={"sac": torch.optim.Adam(loss.parameters(), lr=LR)},
        updaters=[SoftUpdate(loss, tau=POLYAK)],
        clip_norm=CLIP_NORM,
    )


def synthetic_batch(
    batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"
):
    """A replay batch of cheetah-run sizes with random content (observations, box actions and
    their latents, rewards, no terminations)."""
    from tensordict import TensorDict

    from dqs_torchrl import unsquash

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    action = torch.rand(batch_size, ACTION_DIM, generator=generator) * 2 - 1
    low, high = -torch.ones(ACTION_DIM), torch.ones(ACTION_DIM)
    flags = torch.zeros(batch_size, 1, dtype=torch.bool)
    td = TensorDict(
        observation=randn(batch_size, OBS_DIM),
        action=action,
        action_raw=unsquash(action, low, high),
        next=TensorDict(
            observation=randn(batch_size, OBS_DIM),
            reward=torch.rand(batch_size, 1, generator=generator),
            done=flags,
            terminated=flags.clone(),
            truncated=flags.clone(),
            batch_size=[batch_size],
        ),
        batch_size=[batch_size],
    )
    return td.to(device)


# ---------------------------------------------------------------------------------------------
# Setup, timing and machine information
# ---------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser, default_seed: int = 0) -> None:
    """``--quick``, ``--threads``, ``--seed``, ``--output`` and ``--no-write``."""
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (< 30 s): checks the script runs"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--seed", type=int, default=default_seed, help="base seed")
    parser.add_argument(
        "--output", type=Path, default=PERFORMANCE_MD, help="Markdown file to update"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave the Markdown file alone"
    )


def add_timing_args(
    parser: argparse.ArgumentParser, configs: str, repeats: int, warmup: int, what: str
) -> None:
    """``--configs``, ``--repeats``, ``--warmup`` and ``--device`` of the timing scripts."""
    parser.add_argument("--configs", default=configs, help="names in CONFIGS")
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


def synchronize(device: str | torch.device) -> None:
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


# ---------------------------------------------------------------------------------------------
# Markdown output
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Energies with known Boltzmann distributions: isotropic Gaussian mixtures
# ---------------------------------------------------------------------------------------------


class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, s_k^2 I)``, possibly with one set of parameters per row.

    As a Boltzmann density it is ``exp(-E)`` with ``E = -log p``. The VE-noised density at
    noise ``sigma`` is the same mixture with variances ``s_k^2 + sigma^2``, so :meth:`score`
    is exact at every ``sigma`` (float32: every variance is >= min s_k^2, far from round-off).

    Args:
        means: ``[K, d]``, or ``[N, K, d]`` for row-wise (state-dependent) mixtures.
        stds: ``[K]`` component standard deviations.
        weights: ``[K]`` or ``[N, K]``, summing to one.
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor) -> None:
        self.means = means.float()
        self.stds = stds.float()
        self.weights = weights.float()
        self.log_weights = self.weights.log()

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    def score(self, x: Tensor, sigma: float) -> Tensor:
        """``grad_x log p_sigma(x)`` of the noised mixture (``x``: ``[N, d]``)."""
        var = self.stds**2 + sigma**2  # [K]
        diff = x.unsqueeze(-2) - self.means  # [N, K, d]
        log_r = self.log_weights - 0.5 * diff.pow(2).sum(-1) / var - 0.5 * self.dim * torch.log(var)
        resp = torch.softmax(log_r, dim=-1)  # [N, K]
        return -(resp.unsqueeze(-1) * diff / var.unsqueeze(-1)).sum(-2)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` exact samples (``n`` must equal ``N`` for row-wise mixtures)."""
        weights = self.weights.expand(n, self.num_components)
        comp = torch.multinomial(weights, 1, generator=generator).squeeze(-1)
        means = self.means.expand(n, *self.means.shape[-2:])[torch.arange(n), comp]
        noise = torch.randn(n, self.dim, generator=generator)
        return means + self.stds[comp].unsqueeze(-1) * noise

    def assign(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean of each row."""
        dist = (x.unsqueeze(-2) - self.means).pow(2).sum(-1)
        return dist.argmin(-1)

    def mode_weight_error(self, x: Tensor) -> float:
        """``max_k |fraction of x nearest to mu_k - w_k|`` (rows of a row-wise mixture must
        share their weights, e.g. one state repeated)."""
        counts = torch.bincount(self.assign(x), minlength=self.num_components).float()
        weights = self.weights if self.weights.dim() == 1 else self.weights[0]
        return float((counts / x.shape[0] - weights).abs().max())


def mixture_2d() -> GaussianMixture:
    """Three 2-D components with weights 0.6 / 0.3 / 0.1 (prior mean offset ~(0.32, 0.14))."""
    means = torch.tensor([[0.8, 0.0], [-0.4, 0.7], [-0.4, -0.7]])
    return GaussianMixture(means, torch.tensor([0.15, 0.1, 0.12]), torch.tensor([0.6, 0.3, 0.1]))


def mixture_6d() -> GaussianMixture:
    """Three 6-D components with weights 0.5 / 0.35 / 0.15 (means 1.7 apart, stds 0.1-0.2)."""
    means = torch.tensor(
        [
            [0.8, 0.3, -0.2, 0.0, 0.4, -0.3],
            [-0.6, 0.5, 0.3, -0.4, 0.0, 0.2],
            [0.1, -0.7, 0.2, 0.6, -0.4, 0.3],
        ]
    )
    return GaussianMixture(means, torch.tensor([0.15, 0.2, 0.1]), torch.tensor([0.5, 0.35, 0.15]))


def state_mixture_2d(state: Tensor) -> GaussianMixture:
    """A state-dependent 2-D mixture for a batch of scalar states ``[N]``: three components
    whose means move and whose weights ``softmax(0.5 + 1.5 s, 0, -0.5 - 1.5 s)`` change with
    the state (s=-1: .09/.24/.67, s=0: .51/.31/.19, s=1: .87/.12/.02)."""
    s = state.float().reshape(-1, 1)
    base = torch.tensor([[0.7, 0.3], [-0.6, 0.5], [0.0, -0.7]])
    shift = torch.tensor([[0.0, 0.2], [0.15, 0.0], [-0.2, 0.0]])
    means = base + s.unsqueeze(-1) * shift  # [N, 3, 2]
    logits = torch.cat([0.5 + 1.5 * s, torch.zeros_like(s), -0.5 - 1.5 * s], dim=-1)
    return GaussianMixture(means, torch.tensor([0.12, 0.1, 0.12]), torch.softmax(logits, -1))


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Unbiased estimate of the energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (can be
    slightly negative for equal distributions)."""
    return 2 * _mean_cross(x, y) - _mean_within(x) - _mean_within(y)


def _mean_cross(x: Tensor, y: Tensor) -> float:
    d = torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.mean())


def _mean_within(x: Tensor) -> float:
    n = x.shape[0]
    d = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.sum() / (n * (n - 1)))


def energy_distance_cached(x: Tensor, y: Tensor, y_within: float) -> float:
    """:func:`energy_distance` with ``E|Y-Y'|`` precomputed (``_mean_within(y)``)."""
    return 2 * _mean_cross(x, y) - _mean_within(x) - y_within


def mean_within(x: Tensor) -> float:
    """The unbiased ``E|X-X'|`` of one sample set (for :func:`energy_distance_cached`)."""
    return _mean_within(x)
