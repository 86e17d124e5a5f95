"""The training loop every recipe shares: collect, store, update, evaluate, log, checkpoint."""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger, get_logger
from tqdm.auto import tqdm

from dqs_torchrl.experiments.harness.agents import Agent, NonFiniteLossError, make_agent
from dqs_torchrl.experiments.harness.checkpoint import save_checkpoint
from dqs_torchrl.experiments.harness.config import (
    EVAL_SEED_OFFSET,
    config_fields,
    resolve_device,
    validate_config,
)
from dqs_torchrl.experiments.harness.plotting import plot_learning_curve
from dqs_torchrl.experiments.harness.resume import (
    SeededReset,
    collector_state,
    find_seeded_reset,
    restore_collector,
    rng_state,
    set_rng_state,
    truncate_eval_log,
    truncate_scalar_logs,
)
from dqs_torchrl.experiments.harness.rundir import (
    check_networks,
    lock_run_dir,
    open_run,
    run_identity,
)
from dqs_torchrl.experiments.harness.video import log_video, write_video

__all__ = ["train", "make_env", "make_logger", "hparams", "evaluate", "append_csv_row"]

log = logging.getLogger(__name__)

VIDEO_FPS = 30  # evaluation videos play at 30 frames/s, one frame per environment step


def make_env(cfg: DictConfig, seed: int) -> EnvBase:
    """The environment named by `cfg.env` (dm_control task or the two-goal maze).

    Its resets are seeded from `seed` and their index ([`SeededReset`][]), which is what
    lets a resumed run rebuild the episode its checkpoint was taken in. With
    `eval.video=true` a dm_control env picks a rendering `MUJOCO_GL` (`egl`) unless the
    user set one.
    """
    limit = (
        {}
        if cfg.env.max_episode_steps is None
        else {"max_episode_steps": cfg.env.max_episode_steps}
    )
    if cfg.env.suite == "maze":
        from dqs_torchrl.experiments.maze import make_maze_env

        env = make_maze_env(seed=seed, **limit)
    else:
        from dqs_torchrl.experiments.envs import make_dmc_env

        render = bool(OmegaConf.select(cfg, "eval.video", default=False))
        env = make_dmc_env(cfg.env.task, seed=seed, render=render, **limit)
    return env.append_transform(SeededReset(seed))


def make_logger(cfg: DictConfig, run_dir: Path) -> Logger:
    """The TorchRL logger of `cfg.logger` writing under `run_dir/logs`, with the run's
    resolved config logged as hyperparameters ([`hparams`][]).

    W&B runs in `logger.mode` (`wandb.init(mode=...)`: `offline` writes a local run to
    `wandb sync` later, `online` streams to the W&B server, `disabled` logs nothing);
    the CSV and TensorBoard loggers always write their files.
    """
    wandb = {"project": cfg.logger.project, "mode": cfg.logger.mode}
    logger = get_logger(
        cfg.logger.backend,
        logger_name=str(run_dir / "logs"),
        experiment_name=f"{cfg.algo.name}_{cfg.env.task}_s{cfg.seed}",
        **({"wandb_kwargs": wandb} if cfg.logger.backend == "wandb" else {}),
    )
    logger.log_hparams(hparams(cfg))
    return logger


def hparams(cfg: DictConfig) -> dict[str, int | float | str | bool]:
    """The run's resolved config as flat hyperparameters, `{"optim.lr": 0.0003, ...}`: lists
    and nulls as text, which every TorchRL logger takes (TensorBoard refuses them otherwise).

    Examples:
        >>> hparams(OmegaConf.create({"seed": 0, "algo": {"q_cells": [32, 32], "x": None}}))
        {'seed': 0, 'algo.q_cells': '[32, 32]', 'algo.x': 'None'}
    """
    plain = (bool, int, float, str)
    return {k: v if isinstance(v, plain) else str(v) for k, v in config_fields(cfg).items()}


def _make_collector(cfg: DictConfig, env: EnvBase, policy: Any, **kwargs: Any) -> Any:
    """TorchRL's `Collector`, or `MultiSyncCollector` over `collector.num_workers`
    processes (one environment each, seeded `seed + worker`) when that is above 1
    (`MultiAsyncCollector` with `collector.sync=false`: each batch comes from whichever
    worker is ready, so collection never waits for the slowest), or with
    `collector.backend=ray` a `RayCollector` over as many Ray actors (`_ray_collector`).
    """
    workers = cfg.collector.num_workers
    if workers == 1 and cfg.collector.backend == "local":
        return Collector(env, policy, **kwargs)
    env.close()
    kwargs.pop("auto_register_policy_transforms", None)
    makers = [partial(make_env, cfg, cfg.seed + i) for i in range(workers)]
    if cfg.collector.backend == "ray":
        return _ray_collector(makers, policy, sync=cfg.collector.sync, **kwargs)
    if not cfg.collector.sync:
        return MultiAsyncCollector(makers, policy, **kwargs)
    return MultiSyncCollector(makers, policy, cat_results="stack", **kwargs)


def _ray_collector(makers: list[Any], policy: Any, sync: bool = True, **kwargs: Any) -> Any:
    """`RayCollector`: one remote `Collector` actor (1 CPU) per environment maker, their
    batches gathered synchronously and stacked `[workers, frames]` like MultiSyncCollector.

    Starts a local Ray instance with one CPU per worker, or joins the cluster `RAY_ADDRESS`
    names. Weight sync is connected here: `update_policy_weights_()` then pushes the
    policy's current weights to every actor.
    """
    import os

    from torchrl.collectors.distributed import RayCollector

    # Ray reports usage statistics to its servers a minute after start unless told not to
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a new instance of our own, not one that `ray start` left running
    local = {"address": "local", "num_cpus": len(makers), "include_dashboard": False}
    collector = RayCollector(
        makers,
        policy,
        sync=sync,
        ray_init_config={} if os.environ.get("RAY_ADDRESS") else local,
        remote_configs={"num_cpus": 1},  # TorchRL's default also reserves 2 GiB and a GPU share
        collector_kwargs={"auto_register_policy_transforms": False},  # as train() asks locally
        **kwargs,
    )
    # The first push connects a gloo process group with every actor. TorchRL 0.14.1 gives the
    # actors a fixed 60 s to join; on a loaded 2-core machine (a test suite beside 2 actors)
    # joining took longer and the run died, so the driver side waits up to 10 minutes.
    from torchrl.weight_update import _ray as ray_weight_sync

    ray_weight_sync._DIST_TIMEOUT = max(ray_weight_sync._DIST_TIMEOUT, timedelta(minutes=10))
    collector.update_policy_weights_()
    return collector


def _on(batch: Any, device: torch.device) -> Any:
    """A replay batch on the update device (the buffer stays on the CPU)."""
    return batch if device.type == "cpu" else batch.to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(
    env: EnvBase,
    policy: Any,
    episodes: int,
    deterministic: bool,
    max_steps: int = 1000,
    render: Callable[[], np.ndarray] | None = None,
    frames: list[np.ndarray] | None = None,
) -> tuple[list[float], list[torch.Tensor]]:
    """Run `episodes` episodes; return their returns and their observation trajectories.

    With `render` (e.g. [`dmc_renderer`][dqs_torchrl.experiments.envs.dmc_renderer]), the frames of
    the first episode (after the reset and after every step) are appended to `frames`.
    """
    mode = ExplorationType.DETERMINISTIC if deterministic else ExplorationType.RANDOM
    returns, trajectories = [], []
    params = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
    on_device = params is not None and params.device.type != "cpu"  # env steps on the CPU
    with torch.no_grad(), set_exploration_type(mode):
        for episode in range(episodes):
            record = render is not None and frames is not None and episode == 0
            kwargs: dict[str, Any] = {}
            if record:
                # the callback runs after each step; the reset frame is taken from the
                # reset that rollout does itself, through a reset of our own first
                tensordict = env.reset()
                frames.append(render())
                kwargs = {
                    "auto_reset": False,
                    "tensordict": tensordict,
                    "callback": lambda *_: frames.append(render()),
                }
            rollout = env.rollout(
                max_steps,
                policy,
                break_when_any_done=True,
                auto_cast_to_device=on_device,
                **kwargs,
            )
            returns.append(rollout["next", "reward"].sum().item())
            trajectories.append(
                torch.cat([rollout["observation"][:1], rollout["next", "observation"]])
            )
    return returns, trajectories


def _buffer_state(buffer: TensorDictReplayBuffer) -> dict[str, Any]:
    n = len(buffer)
    data = buffer.storage[:n] if n else TensorDict()
    return {"data": data.to_dict(), "length": n, "cursor": buffer._writer._cursor}


def _load_buffer(buffer: TensorDictReplayBuffer, state: dict[str, Any]) -> None:
    if state["data"]:
        data = TensorDict.from_dict(state["data"], batch_size=[state["length"]])
        buffer.extend(data)
    buffer._writer._cursor = state["cursor"]


class _EvalLog:
    """`eval.csv` in the run directory: one row per evaluation, kept across resumes."""

    def __init__(self, path: Path, resume_frames: int) -> None:
        self.path = path
        truncate_eval_log(path, resume_frames)  # rows past the checkpoint, or cut by a kill

    def append(self, row: dict[str, Any]) -> None:
        append_csv_row(self.path, row)


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to the CSV file at `path`, writing the header (its keys) if the file is new."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train the agent of `cfg` in `run_dir`; resume from its last checkpoint if asked.

    The run holds the directory's lock for its life and, before writing anything, refuses a
    directory that holds another run and a checkpoint of another run
    ([`dqs_torchrl.experiments.harness.rundir`][]). Returns a summary: frames, updates, the last
    evaluation, and the paths written.
    """
    validate_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(run_dir):
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    ckpt_dir = run_dir / "checkpoints"
    resume_from = open_run(cfg, run_dir)
    identity = run_identity(cfg)
    seed_everything(cfg.seed)

    env = make_env(cfg, cfg.seed)
    eval_env = make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    device = resolve_device(cfg)
    agent = make_agent(cfg, env, device)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.buffer.size), batch_size=cfg.buffer.batch_size
    )

    frames = 0
    state: dict[str, Any] = {}
    if resume_from is not None:
        ckpt, state = resume_from
        check_networks(state["agent"], agent.state_dict(), ckpt)
        agent.load_state_dict(state["agent"])
        _load_buffer(buffer, state["buffer"])
        frames = int(state["frames"])
        if "eval_env" in state:
            find_seeded_reset(eval_env).resets = int(state["eval_env"]["resets"])
        log.info("resumed from %s at %d frames", ckpt, frames)
    OmegaConf.save(cfg, run_dir / "config.yaml")  # after a resume could fail: nothing is lost
    eval_log = _EvalLog(run_dir / "eval.csv", frames)
    truncate_scalar_logs(run_dir / "logs", frames)  # rows a killed run logged past its checkpoint
    logger = make_logger(cfg, run_dir)

    total = cfg.collector.total_frames
    summary: dict[str, Any] = {"run_dir": str(run_dir), "frames": frames}
    if frames >= total:
        return summary
    collector = _make_collector(
        cfg,
        env,
        agent.policy,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=total - frames,
        init_random_frames=max(0, cfg.collector.init_random_frames - frames),
        postproc=agent.postproc,
        auto_register_policy_transforms=False,
        # On a GPU the policy acts there; envs and the replay data stay on the CPU.
        **(
            {"policy_device": device, "env_device": "cpu", "storing_device": "cpu"}
            if device.type != "cpu"
            else {}
        ),
    )
    # Workers in other processes (or Ray actors) hold copies of the policy: push after updates.
    remote_workers = not isinstance(collector, Collector)
    loop = state.get("loop", {})  # absent from checkpoints older than exact resume
    next_eval = loop.get(
        "next_eval", (frames // cfg.eval.interval_frames + 1) * cfg.eval.interval_frames
    )
    next_ckpt = loop.get(
        "next_ckpt",
        (frames // cfg.checkpoint.interval_frames + 1) * cfg.checkpoint.interval_frames,
    )
    debt = loop.get("debt", 0.0)  # fractional updates owed by utd_ratio
    metrics: dict[str, float] = dict(loop.get("metrics", {}))  # logged again until the next update
    last_eval: float | None = loop.get("last_eval")
    if last_eval is not None:
        summary["eval"] = last_eval
    box = (eval_env.action_spec.space.low, eval_env.action_spec.space.high)
    bar = tqdm(
        total=total, initial=frames, unit="frame", disable=not cfg.progress_bar, dynamic_ncols=True
    )
    try:
        if state:
            _resume_collection(collector, state)
        for batch in collector:
            batch = batch.reshape(-1)
            buffer.extend(batch)
            frames += batch.numel()
            agent.step_frames(batch.numel())
            if frames > cfg.collector.init_random_frames:
                debt += batch.numel() * cfg.optim.utd_ratio
                while debt >= 1:
                    debt -= 1
                    try:
                        metrics = agent.update(_on(buffer.sample(), device))
                    except NonFiniteLossError as err:
                        snap = run_dir / "diagnostics" / f"nonfinite_{frames:012d}.pt"
                        snap.parent.mkdir(exist_ok=True)
                        torch.save({"frames": frames, "agent": agent.state_dict()}, snap)
                        raise NonFiniteLossError(
                            f"{err} frames={frames}. Diagnostic snapshot: {snap}; the last "
                            f"good checkpoint in {ckpt_dir} is untouched."
                        ) from None
            if remote_workers:
                collector.update_policy_weights_()  # workers act with the new weights
            done = batch["next", "done"].squeeze(-1)
            if done.any():
                logger.log_scalar(
                    "train/episode_return",
                    batch["next", "episode_reward"][done].mean().item(),
                    frames,
                )
            for key, value in metrics.items():
                logger.log_scalar(f"train/{key}", value, frames)
            for key, value in action_stats(batch["action"], *box).items():
                logger.log_scalar(f"train/{key}", value, frames)
            if agent.scheduler is not None:
                logger.log_scalar("train/temperature", agent.scheduler.value, frames)
            if frames >= next_eval or frames >= total:
                if frames >= next_eval:  # not the end-of-run one: a longer resume keeps the grid
                    next_eval += cfg.eval.interval_frames
                last_eval = _evaluate_and_plot(
                    cfg, eval_env, agent, frames, run_dir, eval_log, logger
                )
                summary["eval"] = last_eval
            if frames >= next_ckpt or frames >= total:
                if frames >= next_ckpt:
                    next_ckpt += cfg.checkpoint.interval_frames
                save_checkpoint(
                    {
                        "agent": agent.state_dict(),
                        "buffer": _buffer_state(buffer),
                        "frames": frames,
                        "loop": {
                            "next_eval": next_eval,
                            "next_ckpt": next_ckpt,
                            "debt": debt,
                            "metrics": metrics,
                            "last_eval": last_eval,
                        },
                        "eval_env": {"resets": find_seeded_reset(eval_env).resets},
                        "collector": collector_state(collector),
                        "identity": identity,  # what a resume must match (rundir.open_run)
                        "rng": rng_state(),  # last: nothing draws between here and the next batch
                    },
                    ckpt_dir,
                    frames,
                    keep_last=cfg.checkpoint.keep_last,
                )
            bar.update(batch.numel())
            bar.set_postfix(
                eval=f"{last_eval:.1f}" if last_eval is not None else "-",
                updates=agent.num_updates,
                refresh=False,
            )
    finally:
        bar.close()
        collector.shutdown()
    summary.update(
        frames=frames,
        updates=agent.num_updates,
        eval_csv=str(run_dir / "eval.csv"),
        curve=str(run_dir / "learning_curve.png"),
    )
    return summary


def action_stats(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    """How the collected actions fill the box: the mean of `|u|` and the fraction of
    components with `|u| > 0.9`, where `u` in `[-1, 1]` is the action rescaled from the
    box `[low, high]` (uniform noise gives 0.5 and 0.1, bang-bang actions 1 and 1)."""
    u = (2.0 * (action.float() - low) / (high - low) - 1.0).abs()
    return {"action_abs_mean": u.mean().item(), "action_saturated": (u > 0.9).float().mean().item()}


def _resume_collection(collector: Any, state: dict[str, Any]) -> None:
    """Put the environment and the collector back where the checkpoint found them, then the
    random generators (last, so nothing done here draws from them)."""
    if state.get("collector") is None or not isinstance(collector, Collector):
        log.warning(
            "no collector state to restore (a multi-process collector, or a checkpoint older "
            "than exact resume): the episode in progress restarts, so the resumed run is not "
            "identical to an uninterrupted one."
        )
    elif not restore_collector(collector, state["collector"]):
        log.warning(
            "replaying the episode in progress did not reproduce the checkpoint's environment "
            "state bit for bit (another machine or MuJoCo build?): the run continues from the "
            "replayed state and is not identical to an uninterrupted one."
        )
    if "rng" in state:
        set_rng_state(state["rng"])
    else:
        torch.set_rng_state(state["torch_rng"])


def _evaluate_and_plot(
    cfg: DictConfig,
    env: EnvBase,
    agent: Agent,
    frames: int,
    run_dir: Path,
    eval_log: _EvalLog,
    logger: Any,
) -> float:
    render, images = None, None
    if cfg.eval.video:
        from dqs_torchrl.experiments.envs import dmc_renderer

        render, images = dmc_renderer(env, *cfg.eval.video_size), []
    returns, trajectories = evaluate(
        env, agent.policy, cfg.eval.episodes, cfg.eval.deterministic, render=render, frames=images
    )
    if images:
        path = run_dir / "videos" / f"eval_{frames:012d}.{cfg.eval.video_format}"
        write_video(path, np.stack(images), fps=VIDEO_FPS)
        log_video(logger, "eval/video", path, np.stack(images), VIDEO_FPS, frames)
    row: dict[str, Any] = {
        "frames": frames,
        "return_mean": float(np.mean(returns)),
        "return_min": float(np.min(returns)),
        "return_max": float(np.max(returns)),
    }
    if cfg.env.suite == "maze":
        from dqs_torchrl.experiments.maze import count_outcomes, plot_trajectories

        xy = [t[:, :2] for t in trajectories]
        row.update({f"episodes_{k}": v for k, v in count_outcomes(xy).items()})
        plot_trajectories(
            xy, run_dir / "trajectories.png", title=f"{cfg.algo.name}, {frames} frames"
        )
    eval_log.append(row)
    for key, value in row.items():
        if key != "frames":
            logger.log_scalar(f"eval/{key}", value, frames)
    plot_learning_curve(
        eval_log.path,
        run_dir / "learning_curve.png",
        title=f"{cfg.algo.name} on {cfg.env.task}, seed {cfg.seed}",
    )
    return row["return_mean"]
