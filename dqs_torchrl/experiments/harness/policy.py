"""A trained policy out of a run directory, in one call; and a policy-only export of it.

[`load_policy`][] rebuilds the policy of a run from its `config.yaml` and loads its weights
from the newest (or a given) checkpoint, or from a file [`export_policy`][] wrote: the
policy's weights and the config that rebuilds it, without the replay buffer, the critics and
the optimisers. The policy is a TorchRL module: `env.rollout(steps, policy)` acts with it,
sampling under `set_exploration_type(ExplorationType.RANDOM)` (and outside any context),
deterministically under `DETERMINISTIC`.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModuleBase

from dqs_torchrl.experiments.harness.agents import make_policy
from dqs_torchrl.experiments.harness.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
)

__all__ = [
    "POLICY_FORMAT",
    "TrainedPolicy",
    "export_policy",
    "load_policy",
    "load_run_config",
    "load_trained_policy",
]

POLICY_FORMAT = "dqs-torchrl-policy/1"
log = logging.getLogger(__name__)


def _is_policy_file(source: Path) -> bool:
    return source.is_file() and source.suffix == ".pt"


def _policy_blob(path: Path) -> dict[str, Any]:
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise CheckpointError(f"cannot read policy file {path}: {err}") from err
    if not isinstance(blob, dict) or blob.get("format") != POLICY_FORMAT:
        raise CheckpointError(
            f"{path} is not a policy file of export_policy (expected format {POLICY_FORMAT}); "
            "pass the run directory, with checkpoint=<its file>, for a training checkpoint."
        )
    return blob


def load_run_config(source: str | Path) -> DictConfig:
    """The config of a run: `config.yaml` of the run directory `source`, or the config
    inside a policy file that [`export_policy`][] wrote. `make_env(cfg, seed)` builds
    the run's environment from it. A config written by an earlier version gets the fields
    added since at what that version did (logged; see `with_current_fields`)."""
    source = Path(source)
    if _is_policy_file(source):
        return _blob_config(_policy_blob(source), source)
    path = source / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{source} is neither a run directory (no config.yaml) nor a policy file (.pt)."
        )
    return with_current_fields(OmegaConf.load(path), path)


def _blob_config(blob: dict[str, Any], source: Path) -> DictConfig:
    return with_current_fields(OmegaConf.create(blob["config"]), source)


_MISSING = object()
# Recipe fields added after runs had been made, each with the value that reproduces what the
# code did before the field existed (not necessarily today's default: algo.energy came in as
# the then behaviour `squashed` and the DMC default moved to `unbounded` later). A config
# without one of them is rebuilt with this value. Add a row whenever a field is added.
FIELDS_ADDED_SINCE_FIRST_RELEASE: dict[str, Any] = {
    "device": "auto",
    "overwrite": False,
    "collector.num_workers": 1,
    "collector.backend": "local",
    "collector.sync": True,
    "eval.video": False,
    "eval.video_format": "gif",
    "eval.video_size": [120, 160],
    "logger.mode": "offline",
    "algo.estimator": "idem",  # the gradient form, before the blended target
    "algo.compile_sampler": False,
    "algo.energy": "squashed",
    "algo.parameterization": "score",
    "algo.prior": "paper",
    "algo.score_batch_rows": None,  # every row
    # TemperatureController settings: read only with algo.temperature.schedule=auto, which
    # came with them; any value rebuilds an older run the same.
    "algo.temperature.target_entropy": "auto",
    "algo.temperature.lr": 0.1,
    "algo.temperature.min": 1.0e-3,
    "algo.temperature.max": 100.0,
    "algo.temperature.num_states": 8,
    "algo.temperature.num_samples": 64,
    "algo.temperature.interval": 10,
    "algo.temperature.warmup_updates": 5000,
}


def with_current_fields(cfg: DictConfig, source: str | Path = "the run's config") -> DictConfig:
    """`cfg`, a config an earlier version of the code wrote, with every field added since
    (`FIELDS_ADDED_SINCE_FIRST_RELEASE`) that it lacks set to the value that reproduces what
    the code did before that field existed; the additions are logged. Every field `cfg` has
    keeps its value; fields this version no longer has are kept too. Fields of the diffusion
    actor are added only to a DQS or QSM run's `algo`."""
    merged = copy.deepcopy(cfg)
    OmegaConf.set_struct(merged, False)
    diffusion = OmegaConf.select(cfg, "algo.name", default=None) in ("dqs", "qsm")
    added = []
    for key, value in FIELDS_ADDED_SINCE_FIRST_RELEASE.items():
        if key.startswith("algo.") and not diffusion:
            continue
        if OmegaConf.select(merged, key, default=_MISSING) is _MISSING:
            OmegaConf.update(merged, key, value, force_add=True)
            added.append(f"{key}={value!r}")
    if added:
        log.warning(
            "%s was written by an earlier version: set to what that version did: %s",
            source,
            "; ".join(added),
        )
    return merged


def _checkpoint_path(run_dir: Path, checkpoint: str | Path | None) -> Path:
    if checkpoint is None:
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no checkpoint.")
        return found
    path = Path(checkpoint)
    if not path.is_file() and (run_dir / "checkpoints" / path).is_file():
        return run_dir / "checkpoints" / path  # a file name in the run's checkpoints/
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {checkpoint} (nor in {run_dir / 'checkpoints'}).")
    return path


def _policy_state(
    source: Path, checkpoint: str | Path | None
) -> tuple[DictConfig, dict[str, Any], int, Path]:
    """The config, the policy's state dict, its frame count and the file it came from."""
    if _is_policy_file(source):
        if checkpoint is not None:
            raise ValueError(f"{source} is a policy file: it holds one policy, pass no checkpoint.")
        blob = _policy_blob(source)
        return _blob_config(blob, source), blob["policy"], blob["frames"], source
    path = _checkpoint_path(source, checkpoint)
    state = load_checkpoint(path)
    return load_run_config(source), state["agent"]["modules"]["policy"], state["frames"], path


class TrainedPolicy(NamedTuple):
    """What [`load_trained_policy`][] reads: the policy, the run's config, the frames it was
    trained for and the file its weights came from."""

    policy: TensorDictModuleBase
    config: DictConfig
    frames: int
    source: Path


def load_trained_policy(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> TrainedPolicy:
    """[`load_policy`][] with what a caller labels the policy by: the run's config, the
    frame count of the checkpoint (or policy file) and its path, from one read of the file.

    Examples:
        >>> trained = load_trained_policy("runs/cheetah-run/dqs/seed0")  # doctest: +SKIP
        >>> trained.frames, trained.config.algo.name  # doctest: +SKIP
        (100000, 'dqs')
    """
    from dqs_torchrl.experiments.harness.loop import make_env

    cfg, state, frames, path = _policy_state(Path(run_dir), checkpoint)
    env = make_env(cfg, cfg.seed)  # for its observation and action specs
    try:
        policy = make_policy(cfg, env, device)
    finally:
        env.close()
    policy.load_state_dict(state)
    return TrainedPolicy(policy.eval(), cfg, int(frames), path)


def load_policy(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> TensorDictModuleBase:
    """The trained policy of a run, in eval mode on `device`, ready for
    `env.rollout(steps, policy)`.

    `run_dir` is a run directory (the newest checkpoint of its `checkpoints/`, or
    `checkpoint`: a path, or a file name in `checkpoints/`) or a policy file written by
    [`export_policy`][]. The policy is rebuilt from the run's config (the environment is
    built once for its specs), so code and config must match the run's networks.

    Examples:
        >>> from torchrl.envs.utils import ExplorationType, set_exploration_type
        >>> policy = load_policy("runs/cheetah-run/dqs/seed0")  # doctest: +SKIP
        >>> env = make_env(load_run_config("runs/cheetah-run/dqs/seed0"), seed=1)  # doctest: +SKIP
        >>> with set_exploration_type(ExplorationType.RANDOM):  # doctest: +SKIP
        ...     rollout = env.rollout(1000, policy)
    """
    return load_trained_policy(run_dir, checkpoint, device).policy


def export_policy(
    run_dir: str | Path, path: str | Path, checkpoint: str | Path | None = None
) -> Path:
    """Write the policy of a run's newest (or given) checkpoint to `path`: its weights, the
    run's config and the frame count, nothing else (no replay buffer, critics or optimisers).
    [`load_policy`][] reads it; so does `torch.load(path, weights_only=True)`.

    Examples:
        >>> export_policy("runs/cheetah-run/dqs/seed0", "cheetah_dqs.pt")  # doctest: +SKIP
        PosixPath('cheetah_dqs.pt')
        >>> policy = load_policy("cheetah_dqs.pt")  # doctest: +SKIP
    """
    run_dir, path = Path(run_dir), Path(path)
    cfg, state, frames, source = _policy_state(run_dir, checkpoint)
    blob = {
        "format": POLICY_FORMAT,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "policy": {k: v.detach().cpu() for k, v in state.items()},
        "frames": frames,
        "source": str(source),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:  # atomic, like the checkpoints: a kill mid-write leaves no half file at `path`
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
