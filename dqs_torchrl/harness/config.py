"""Up-front validation of recipe configs: every error names the field and what is allowed."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import torch
from omegaconf import DictConfig

from dqs_torchrl.actor import SPACINGS
from dqs_torchrl.objectives.idem import IDEMScoreLoss
from dqs_torchrl.samplers import SAMPLERS, STEP_SAMPLERS
from dqs_torchrl.temperature import SCHEDULES

__all__ = ["ConfigError", "resolve_device", "validate_config"]

_LOGGERS = ("csv", "wandb", "tensorboard")
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_BACKENDS = ("local", "ray")  # collection: this machine's processes, or Ray actors


class ConfigError(ValueError):
    """An invalid recipe configuration, caught before any training."""


def resolve_device(cfg: DictConfig) -> torch.device:
    """``cfg.device`` as a torch device: ``auto`` is CUDA when torch sees a GPU, else CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _get(cfg: DictConfig, field: str) -> Any:
    node: Any = cfg
    for part in field.split("."):
        if part not in node:
            raise ConfigError(f"config field {field!r} is missing.")
        node = node[part]
    return node


def _int(cfg: DictConfig, field: str, low: int) -> None:
    value = _get(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}.")


def _num(
    cfg: DictConfig,
    field: str,
    low: float,
    high: float = float("inf"),
    low_open: bool = True,
    optional: bool = False,
) -> None:
    value = _get(cfg, field)
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{field} must be a number in {bracket}{low}, {high}], got {value!r}.")


def _choice(cfg: DictConfig, field: str, allowed: tuple[str, ...]) -> None:
    value = _get(cfg, field)
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {', '.join(allowed)}; got {value!r}.")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid field of a recipe config.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"seed": -1})
        >>> validate_config(cfg)
        Traceback (most recent call last):
        ...
        dqs_torchrl.harness.config.ConfigError: seed must be an integer >= 0, got -1.
    """
    _int(cfg, "seed", 0)
    _choice(cfg, "env.suite", ("dmc", "maze"))
    if cfg.env.suite == "dmc":
        from dqs_torchrl.envs import split_task

        try:
            split_task(_get(cfg, "env.task"))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if _get(cfg, "env.max_episode_steps") is not None:
        _int(cfg, "env.max_episode_steps", 1)
    _int(cfg, "collector.total_frames", 1)
    _int(cfg, "collector.init_random_frames", 0)
    _int(cfg, "collector.frames_per_batch", 1)
    _int(cfg, "collector.num_workers", 1)
    _choice(cfg, "collector.backend", _BACKENDS)
    if not isinstance(_get(cfg, "collector.sync"), bool):
        raise ConfigError(f"collector.sync must be true or false; got {cfg.collector.sync!r}.")
    _choice(cfg, "device", ("auto", "cpu", "cuda"))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device=cuda but torch sees no CUDA device (torch.cuda.is_available() is False); "
            "use device=auto or device=cpu."
        )
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
    _int(cfg, "buffer.batch_size", 1)
    _int(cfg, "buffer.size", cfg.buffer.batch_size)
    _num(cfg, "optim.lr", 0.0)
    _num(cfg, "optim.gamma", 0.0, 1.0)
    _num(cfg, "optim.tau", 0.0, 1.0)
    _num(cfg, "optim.utd_ratio", 0.0)
    _num(cfg, "optim.clip_norm", 0.0, optional=True)
    _int(cfg, "eval.interval_frames", 1)
    _int(cfg, "eval.episodes", 1)
    _choice(cfg, "logger.backend", _LOGGERS)
    _int(cfg, "checkpoint.interval_frames", 1)
    _int(cfg, "checkpoint.keep_last", 1)
    _choice(cfg, "algo.name", ("dqs", "sac", "qsm"))
    if cfg.algo.name == "sac":
        return
    a = "algo."
    _int(cfg, a + "num_steps", 1)
    _int(cfg, a + "num_mc_samples", 1)
    if _get(cfg, a + "num_mc_samples_small") is not None:
        _int(cfg, a + "num_mc_samples_small", 1)
    _num(cfg, a + "small_sigma", 0.0)
    _choice(cfg, a + "estimator", IDEMScoreLoss.ESTIMATORS)
    _choice(cfg, a + "energy", IDEMScoreLoss.ENERGIES)
    _int(cfg, a + "score_cells", 1)
    _int(cfg, a + "embedding_dim", 2)
    _num(cfg, a + "sigma_min", 0.0)
    _num(cfg, a + "sigma_max", cfg.algo.sigma_min)
    _num(
        cfg, a + "sigma_end", cfg.algo.sigma_min, cfg.algo.sigma_max, low_open=False, optional=True
    )
    _choice(cfg, a + "sampler", tuple(SAMPLERS))
    _choice(cfg, a + "spacing", tuple(SPACINGS))
    compile_mode = _get(cfg, a + "compile_sampler")
    if compile_mode not in (True, False, *_COMPILE_MODES):
        raise ConfigError(
            f"algo.compile_sampler must be true, false or one of {', '.join(_COMPILE_MODES)}; "
            f"got {compile_mode!r}."
        )
    if compile_mode and cfg.algo.sampler not in STEP_SAMPLERS:
        raise ConfigError(
            "algo.compile_sampler must be false unless algo.sampler is one of "
            f"{', '.join(STEP_SAMPLERS)} (one score call per step); got "
            f"algo.sampler={cfg.algo.sampler!r}."
        )
    _num(cfg, a + "max_score_norm", 0.0, optional=True)
    _num(cfg, a + "ema_tau", 0.0, 1.0)
    _num(cfg, a + "qsm_scale", 0.0)
    _choice(cfg, a + "temperature.schedule", SCHEDULES)
    _num(cfg, a + "temperature.initial", 0.0)
    _num(cfg, a + "temperature.final", 0.0, optional=cfg.algo.temperature.schedule == "constant")
