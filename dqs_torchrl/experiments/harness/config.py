"""Up-front validation of recipe configs: every error names the field and what is allowed.

[`FIELDS`][] and [`DIFFUSION_FIELDS`][] hold the rule of every field a recipe config
has, one entry each, and nothing else does: a key that is in neither is refused (with the
closest known keys as a suggestion), and so is a missing one. The few rules between fields
that an entry cannot say (the ray package, `resume` with `overwrite`) follow in
[`validate_config`][].
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dqs_torchrl.actor import PARAMETERIZATIONS, PRIORS, SPACINGS
from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.objectives.idem import IDEMScoreLoss
from dqs_torchrl.samplers import SAMPLERS, STEP_SAMPLERS
from dqs_torchrl.temperature import SCHEDULES

__all__ = [
    "ConfigError",
    "DIFFUSION_FIELDS",
    "EVAL_SEED_OFFSET",
    "FIELDS",
    "compose_config",
    "config_fields",
    "resolve_device",
    "validate_config",
]

_LOGGERS = ("csv", "wandb", "tensorboard")
_LOGGER_MODES = ("online", "offline", "disabled")  # wandb.init(mode=...)
_VIDEO_FORMATS = ("gif", "mp4")  # harness.video.VIDEO_FORMATS, without importing it here
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_BACKENDS = ("local", "ray")  # collection: this machine's processes, or Ray actors
EVAL_SEED_OFFSET = 10_000  # the evaluation environment is seeded seed + EVAL_SEED_OFFSET
_MAX_SEED = 2**32 - 1 - EVAL_SEED_OFFSET  # numpy and dm_control take seeds below 2**32


class ConfigError(ValueError):
    """An invalid recipe configuration, caught before any training."""


def compose_config(overrides: Sequence[str] = (), config_name: str = "dqs_dmc") -> DictConfig:
    """The recipe config `config_name` with hydra `overrides`, composed as the command line
    `dqs-dmc <overrides>` composes it (package configs, defaults list, config groups) but
    without starting a run; validate it with [`validate_config`][].

    Examples:
        >>> cfg = compose_config(["algo=sac", "seed=3"])
        >>> cfg.algo.name, cfg.seed, cfg.optim.lr
        ('sac', 3, 0.0003)
        >>> compose_config(["fidelity=paper"]).algo.num_mc_samples
        1000
    """
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def resolve_device(cfg: DictConfig) -> torch.device:
    """`cfg.device` as a torch device: `auto` is CUDA when torch sees a GPU, else CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def config_fields(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of `cfg` (hydra's own node left out), resolved, by its dotted name.

    Examples:
        >>> config_fields(OmegaConf.create({"seed": 0, "optim": {"lr": 1e-3, "q": [1, 2]}}))
        {'seed': 0, 'optim.lr': 0.001, 'optim.q': [1, 2]}
    """
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    plain = OmegaConf.to_container(cfg, resolve=True)
    walk({k: v for k, v in plain.items() if k != "hydra"}, "")
    return flat


# A check gets the field's name, its value and every field of the config (for bounds that
# are other fields, given by name).
Check = Callable[[str, Any, dict[str, Any]], None]


def _bound(fields: dict[str, Any], bound: float | str) -> tuple[Any, str]:
    """A bound's value, and how a message shows it (a field as `name = value`)."""
    if isinstance(bound, str):
        return fields[bound], f"{bound} = {fields[bound]}"
    return bound, str(bound)


def _int(low: int | str, high: int | None = None, optional: bool = False) -> Check:
    def check(field: str, value: Any, fields: dict[str, Any]) -> None:
        if value is None and optional:
            return
        lo, shown = _bound(fields, low)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo
        if not ok or (high is not None and value > high):
            allowed = f">= {shown}" if high is None else f"in [{shown}, {high}]"
            null = " or null" if optional else ""
            raise ConfigError(f"{field} must be an integer {allowed}{null}, got {value!r}.")

    return check


def _num(
    low: float | str,
    high: float | str = math.inf,
    low_open: bool = True,
    optional: bool = False,
) -> Check:
    """A finite number in `(low, high]` (`[low, high]` with `low_open=False`)."""

    def check(field: str, value: Any, fields: dict[str, Any]) -> None:
        if value is None and optional:
            return
        (lo, lo_shown), (hi, hi_shown) = _bound(fields, low), _bound(fields, high)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > lo if low_open else value >= lo)
        if not (ok and value <= hi):
            if math.isinf(hi):
                allowed = f"{'>' if low_open else '>='} {lo_shown}"
            else:
                allowed = f"in {'(' if low_open else '['}{lo_shown}, {hi_shown}]"
            null = " or null" if optional else ""
            raise ConfigError(f"{field} must be a finite number {allowed}{null}, got {value!r}.")

    return check


def _choice(*allowed: Any) -> Check:
    def check(field: str, value: Any, fields: dict[str, Any]) -> None:
        if value not in allowed:
            raise ConfigError(f"{field} must be one of {', '.join(allowed)}; got {value!r}.")

    return check


def _bool(field: str, value: Any, fields: dict[str, Any]) -> None:
    # hydra reads `resume=no` as the string 'no', which Python would take for true
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be true or false; got {value!r}.")


def _text(field: str, value: Any, fields: dict[str, Any]) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field} must be a non-empty string, got {value!r}.")


def _list(item: Check, what: str) -> Check:
    def check(field: str, value: Any, fields: dict[str, Any]) -> None:
        ok = isinstance(value, list) and bool(value)
        try:
            for x in value if ok else []:
                item(field, x, fields)
        except ConfigError:
            ok = False
        if not ok:
            raise ConfigError(f"{field} must be a non-empty list of {what}, got {value!r}.")

    return check


def _dmc_task(field: str, value: Any, fields: dict[str, Any]) -> None:
    from dqs_torchrl.experiments.envs import split_task

    _text(field, value, fields)
    try:
        # the first dm_control import fixes the OpenGL backend: a rendering one for videos
        split_task(value, render=fields.get("eval.video") is True)
    except ValueError as err:
        raise ConfigError(str(err).replace("env.task", field)) from None


def _task(field: str, value: Any, fields: dict[str, Any]) -> None:
    if fields["env.suite"] == "dmc":
        _dmc_task(field, value, fields)
    elif value != "two-goal-maze":
        raise ConfigError(f"{field} must be two-goal-maze with env.suite=maze; got {value!r}.")


def _device(field: str, value: Any, fields: dict[str, Any]) -> None:
    _choice("auto", "cpu", "cuda")(field, value, fields)
    if value == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but torch sees no CUDA device (torch.cuda.is_available() is False); "
            "use device=auto or device=cpu."
        )


def _compile_mode(field: str, value: Any, fields: dict[str, Any]) -> None:
    if not (isinstance(value, bool) or value in _COMPILE_MODES):
        raise ConfigError(
            f"{field} must be true, false or one of {', '.join(_COMPILE_MODES)}; got {value!r}."
        )
    if value and fields["algo.sampler"] not in STEP_SAMPLERS:
        raise ConfigError(
            f"{field} must be false unless algo.sampler is one of "
            f"{', '.join(STEP_SAMPLERS)} (one score call per step); got "
            f"algo.sampler={fields['algo.sampler']!r}."
        )


def _video_size(field: str, value: Any, fields: dict[str, Any]) -> None:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and x >= 16 for x in value)
    if not ok:
        raise ConfigError(
            f"{field} must be [height, width] in pixels, each an integer >= 16; got {value!r}."
        )


def _target_entropy(field: str, value: Any, fields: dict[str, Any]) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value != "auto" and not (number and math.isfinite(value)):
        raise ConfigError(
            f"{field} must be auto (-|A| nats of the box-normalised action, SAC's target) or "
            f"a finite number of nats below |A| log 2; got {value!r}."
        )


def _final_temperature(field: str, value: Any, fields: dict[str, Any]) -> None:
    constant = fields["algo.temperature.schedule"] in ("constant", "auto")  # final unused
    _num(0.0, optional=constant)(field, value, fields)


# Every field of every recipe, in the order they are checked (a bound that names another
# field comes after it).
FIELDS: dict[str, Check] = {
    "seed": _int(0, _MAX_SEED),
    "env.suite": _choice("dmc", "maze"),
    "env.task": _task,
    "env.max_episode_steps": _int(1, optional=True),
    "collector.total_frames": _int(1),
    "collector.init_random_frames": _int(0),
    "collector.frames_per_batch": _int(1),
    "collector.num_workers": _int(1),
    "collector.backend": _choice(*_BACKENDS),
    "collector.sync": _bool,
    "buffer.batch_size": _int(1),
    "buffer.size": _int("buffer.batch_size"),
    "optim.lr": _num(0.0),
    "optim.gamma": _num(0.0, 1.0),
    "optim.tau": _num(0.0, 1.0),
    "optim.utd_ratio": _num(0.0),
    "optim.clip_norm": _num(0.0, optional=True),
    "eval.interval_frames": _int(1),
    "eval.episodes": _int(1),
    "eval.deterministic": _bool,
    "eval.video": _bool,
    "eval.video_format": _choice(*_VIDEO_FORMATS),
    "eval.video_size": _video_size,
    "logger.backend": _choice(*_LOGGERS),
    "logger.mode": _choice(*_LOGGER_MODES),
    "logger.project": _text,
    "checkpoint.interval_frames": _int(1),
    "checkpoint.keep_last": _int(1),
    "device": _device,
    "resume": _bool,
    "overwrite": _bool,
    "progress_bar": _bool,
    "paper_tasks": _list(_dmc_task, "dm_control task names"),
    "algo.name": _choice("dqs", "sac", "qsm"),
    "algo.q_cells": _list(_int(1), "integers >= 1, e.g. [256, 256]"),
}
# The diffusion actor's fields: checked for algo=dqs and qsm; known, and unused, with
# algo=sac, which the shared presets (fidelity, smoke) give them too.
DIFFUSION_FIELDS: dict[str, Check] = {
    "algo.score_cells": _int(1),
    "algo.embedding_dim": _int(2),
    "algo.num_steps": _int(1),
    "algo.num_mc_samples": _int(1),
    "algo.num_mc_samples_small": _int(1, optional=True),
    "algo.score_batch_rows": _int(1, optional=True),
    "algo.small_sigma": _num(0.0),
    "algo.estimator": _choice(*IDEMScoreLoss.ESTIMATORS),
    "algo.energy": _choice(*IDEMScoreLoss.ENERGIES),
    "algo.sigma_min": _num(0.0),
    "algo.sigma_max": _num("algo.sigma_min"),
    "algo.sigma_end": _num("algo.sigma_min", "algo.sigma_max", low_open=False, optional=True),
    "algo.sampler": _choice(*SAMPLERS),
    "algo.spacing": _choice(*SPACINGS),
    "algo.denoise": _bool,
    "algo.parameterization": _choice(*PARAMETERIZATIONS),
    "algo.prior": _choice(*PRIORS),
    "algo.compile_sampler": _compile_mode,
    "algo.max_score_norm": _num(0.0, optional=True),
    "algo.tanh_correction": _bool,
    "algo.ema": _bool,
    "algo.ema_tau": _num(0.0, 1.0),
    "algo.qsm_scale": _num(0.0),
    "algo.temperature.schedule": _choice(*SCHEDULES, "auto"),
    "algo.temperature.initial": _num(0.0),
    "algo.temperature.final": _final_temperature,
    # the TemperatureController's settings, used by schedule=auto
    "algo.temperature.target_entropy": _target_entropy,
    "algo.temperature.lr": _num(0.0),
    "algo.temperature.min": _num(0.0),
    "algo.temperature.max": _num("algo.temperature.min"),
    "algo.temperature.num_states": _int(1),
    "algo.temperature.num_samples": _int(2),
    "algo.temperature.interval": _int(1),
    "algo.temperature.warmup_updates": _int(0),
}
_NOT_REQUIRED = ("paper_tasks",)  # a list for sweeps (recipes/tasks.py); runs never read it


def _unknown_key(key: str) -> ConfigError:
    known = {*FIELDS, *DIFFUSION_FIELDS}
    known |= {name.rsplit(".", i)[0] for name in known for i in range(1, name.count(".") + 1)}
    known = {name for name in known if not key.startswith(f"{name}.")}  # not its own parent
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else "."
    return ConfigError(
        f"unknown config key {key!r} (a typo, or a '+' override of a field no recipe has){hint}"
    )


def validate_config(cfg: DictConfig) -> None:
    """Raise [`ConfigError`][] for an unknown key, or the first invalid or missing field.

    Examples:
        >>> for bad in ({"seed": -1}, {"optim": {"lrr": 1}}):
        ...     try:
        ...         validate_config(OmegaConf.create(bad))
        ...     except ConfigError as error:
        ...         print(error)
        seed must be an integer in [0, 4294957295], got -1.
        unknown config key 'optim.lrr' ...; did you mean optim.lr?
    """
    fields = config_fields(cfg)
    for key in fields:
        if key not in FIELDS and key not in DIFFUSION_FIELDS:
            raise _unknown_key(key)
    checks = list(FIELDS.items())
    if fields.get("algo.name") in ("dqs", "qsm"):  # SAC leaves them unchecked (and unused)
        checks += DIFFUSION_FIELDS.items()
    for field, check in checks:
        if field in fields:
            check(field, fields[field], fields)
        elif field not in _NOT_REQUIRED:
            raise ConfigError(f"config field {field!r} is missing.")
    if fields.get("algo.name") in ("dqs", "qsm") and fields["algo.temperature.schedule"] == "auto":
        if fields["algo.name"] != "dqs":
            raise ConfigError(
                "algo.temperature.schedule=auto needs algo.name=dqs (QSM's score target has no "
                f"temperature to adapt); got algo.name={fields['algo.name']!r}."
            )
        low, high = fields["algo.temperature.min"], fields["algo.temperature.max"]
        if not low <= fields["algo.temperature.initial"] <= high:
            raise ConfigError(
                "algo.temperature.initial must lie in [algo.temperature.min, "
                f"algo.temperature.max] = [{low}, {high}] with algo.temperature.schedule=auto; "
                f"got {fields['algo.temperature.initial']!r}."
            )
    if cfg.resume and cfg.overwrite:
        raise ConfigError(
            "resume=true and overwrite=true contradict each other: resume continues the run in "
            "the directory, overwrite moves it aside to start afresh."
        )
    if cfg.eval.video:
        _check_video(cfg)
    if cfg.collector.backend == "ray":
        try:
            metadata.version("ray")
        except metadata.PackageNotFoundError:
            raise ConfigError(
                "collector.backend=ray needs the ray package, which is not installed: "
                "pip install -e '.[ray]' (or use collector.backend=local)."
            ) from None
        if cfg.collector.frames_per_batch % cfg.collector.num_workers:
            raise ConfigError(
                "collector.frames_per_batch must be a multiple of collector.num_workers with "
                f"collector.backend=ray, got {cfg.collector.frames_per_batch} and "
                f"{cfg.collector.num_workers}."
            )


def _check_video(cfg: DictConfig) -> None:
    """`eval.video=true` needs a dm_control task, a MuJoCo that renders, and the writer of
    `eval.video_format`: each missing piece is named with its fix."""
    from dqs_torchrl.experiments.envs import check_rendering
    from dqs_torchrl.experiments.harness.video import missing_video_writer

    if cfg.env.suite != "dmc":
        raise ConfigError(
            f"eval.video=true needs env.suite=dmc (the maze is not rendered); got "
            f"env.suite={cfg.env.suite!r}. Use eval.video=false."
        )
    missing = missing_video_writer(cfg.eval.video_format)
    if missing:
        other = "gif" if cfg.eval.video_format == "mp4" else "mp4"
        raise ConfigError(
            f"eval.video_format={cfg.eval.video_format} needs the {missing} package, which is "
            f"not installed: pip install {missing}, or eval.video_format={other}."
        )
    why = check_rendering(cfg.env.task)
    if why:
        raise ConfigError(
            f"eval.video=true needs MuJoCo to render, and it cannot here: {why}. Set MUJOCO_GL "
            "to a backend this machine has (egl: libEGL and a GPU or Mesa; osmesa: libOSMesa; "
            "glfw: a display), or use eval.video=false."
        )
