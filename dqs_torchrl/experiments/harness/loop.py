"""The training loop every recipe shares: collect, store, update, evaluate, log, checkpoint.

[`train`][] reads top to bottom; what a checkpoint holds and how a resume puts it back is
[`RunState`][dqs_torchrl.experiments.harness.state.RunState]'s.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.record.loggers import Logger, get_logger
from tqdm.auto import tqdm

from dqs_torchrl.experiments.harness.agents import Agent, NonFiniteLossError, make_agent
from dqs_torchrl.experiments.harness.config import (
    EVAL_SEED_OFFSET,
    config_fields,
    resolve_device,
    validate_config,
)
from dqs_torchrl.experiments.harness.plotting import plot_learning_curve
from dqs_torchrl.experiments.harness.resume import (
    SeededReset,
    truncate_eval_log,
    truncate_scalar_logs,
)
from dqs_torchrl.experiments.harness.rundir import lock_run_dir, open_run
from dqs_torchrl.experiments.harness.state import RunState
from dqs_torchrl.experiments.harness.video import log_video, write_video

__all__ = [
    "train",
    "make_env",
    "make_logger",
    "hparams",
    "evaluate",
    "append_csv_row",
    "csv_header",
]

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
    # joining took longer and the run died, so the driver side waits up to 10 minutes. The
    # limit is a private module constant: neither RayCollector nor RayWeightSyncScheme takes it.
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
    the first episode (after the reset and after every step: one more than its steps) are
    appended to `frames`.
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
            if record:  # rollout calls back after every step but its last
                frames.append(render())
            returns.append(rollout["next", "reward"].sum().item())
            trajectories.append(
                torch.cat([rollout["observation"][:1], rollout["next", "observation"]])
            )
    return returns, trajectories


class _EvalLog:
    """`eval.csv` in the run directory: one row per evaluation, kept across resumes."""

    def __init__(self, path: Path, resume_frames: int) -> None:
        self.path = path
        truncate_eval_log(path, resume_frames)  # rows past the checkpoint, or cut by a kill

    def append(self, row: dict[str, Any]) -> None:
        append_csv_row(self.path, row)


def csv_header(path: Path) -> list[str] | None:
    """The column names on the first line of the CSV at `path`; `None` for a missing or empty
    file (where [`append_csv_row`][] writes its own)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Append `row` to the CSV file at `path`, writing the header (its keys) if the file is new.

    A file whose header names other columns is refused (a `ValueError` naming the file and the
    columns): its rows would be read under the wrong names; so is one whose last line is not
    ended (a row cut short: the new row would be glued to it).
    """
    header = csv_header(path)
    new = header is None
    if not new:
        with open(path, "rb") as f:  # only the last byte: is the last line ended?
            f.seek(-1, os.SEEK_END)
            ended = f.read(1) == b"\n"
        if not ended or not header:
            what = "its last line is not ended" if header else "no header on its first line"
            raise ValueError(
                f"{path}: {what} (not a CSV this code wrote, or one cut short); "
                "write these rows to another file"
            )
        if header != list(row):
            missing = [k for k in header if k not in row]
            extra = [k for k in row if k not in header]
            raise ValueError(
                f"{path}: its header has other columns than this row (missing from the row: "
                f"{missing}; not in the header: {extra}; or another order); "
                "write these rows to another file"
            )
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
    resume_from = open_run(cfg, run_dir)  # the checkpoint to resume from, or None
    seed_everything(cfg.seed)
    env, eval_env = make_env(cfg, cfg.seed), make_env(cfg, cfg.seed + EVAL_SEED_OFFSET)
    device = resolve_device(cfg)
    agent = make_agent(cfg, env, device)
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.buffer.size), batch_size=cfg.buffer.batch_size
    )
    run = RunState(cfg, agent, buffer, eval_env)
    if resume_from is not None:
        run.restore(*resume_from)
    OmegaConf.save(cfg, run_dir / "config.yaml")  # after a resume could fail: nothing is lost
    eval_log = _EvalLog(run_dir / "eval.csv", run.frames)
    truncate_scalar_logs(run_dir / "logs", run.frames)  # rows logged past the checkpoint
    logger = make_logger(cfg, run_dir)
    if run.frames >= cfg.collector.total_frames:
        return {"run_dir": str(run_dir), "frames": run.frames}
    collector = _collector_for(cfg, env, agent, device, run.frames)
    bar = _progress_bar(cfg, run.frames)
    try:
        run.restore_collection(collector)  # a resume's episode in progress, then the RNGs
        for batch in collector:
            batch = batch.reshape(-1)
            buffer.extend(batch)
            run.frames += batch.numel()
            agent.step_frames(batch.numel())
            for _ in range(run.updates_due(batch.numel())):
                run.metrics = _update(agent, _on(buffer.sample(), device), run_dir, run.frames)
            if not isinstance(collector, Collector):  # workers in other processes, Ray actors
                collector.update_policy_weights_()  # act with the new weights
            _log_training(logger, batch, run, eval_env)
            if run.evaluation_due():
                run.last_eval = _evaluate_and_plot(
                    cfg, eval_env, agent, run.frames, run_dir, eval_log, logger
                )
            if run.checkpoint_due():
                run.save(run_dir / "checkpoints", collector)
            _show_progress(bar, batch.numel(), run)
    finally:
        bar.close()
        collector.shutdown()
    return _summary(run_dir, run)


def _collector_for(
    cfg: DictConfig, env: EnvBase, agent: Agent, device: torch.device, frames: int
) -> Any:
    """The collector of a run that has collected `frames` already: the frames still to go,
    at random while fewer than `collector.init_random_frames` are in."""
    total = cfg.collector.total_frames
    return _make_collector(
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


def _progress_bar(cfg: DictConfig, frames: int) -> tqdm:
    return tqdm(
        total=cfg.collector.total_frames,
        initial=frames,
        unit="frame",
        disable=not cfg.progress_bar,
        dynamic_ncols=True,
    )


def _show_progress(bar: tqdm, frames: int, run: RunState) -> None:
    bar.update(frames)
    last = "-" if run.last_eval is None else f"{run.last_eval:.1f}"
    bar.set_postfix(eval=last, updates=run.agent.num_updates, refresh=False)


def _summary(run_dir: Path, run: RunState) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "frames": run.frames,
        **({} if run.last_eval is None else {"eval": run.last_eval}),
        "updates": run.agent.num_updates,
        "eval_csv": str(run_dir / "eval.csv"),
        "curve": str(run_dir / "learning_curve.png"),
    }


def _update(agent: Agent, batch: Any, run_dir: Path, frames: int) -> dict[str, float]:
    """One update of `agent` on `batch`, its metrics. A non-finite loss stops the run with a
    diagnostic snapshot of the agent in `run_dir/diagnostics`; the checkpoints stay as they are."""
    try:
        return agent.update(batch)
    except NonFiniteLossError as err:
        snap = run_dir / "diagnostics" / f"nonfinite_{frames:012d}.pt"
        snap.parent.mkdir(exist_ok=True)
        torch.save({"frames": frames, "agent": agent.state_dict()}, snap)
        raise NonFiniteLossError(
            f"{err} frames={frames}. Diagnostic snapshot: {snap}; the last "
            f"good checkpoint in {run_dir / 'checkpoints'} is untouched."
        ) from None


def _log_training(logger: Logger, batch: Any, run: RunState, eval_env: EnvBase) -> None:
    """The batch's finished episodes, the last update's metrics, how the actions fill the
    action box, and the temperature, at `run.frames`."""
    frames = run.frames
    done = batch["next", "done"].squeeze(-1)
    if done.any():
        episode_return = batch["next", "episode_reward"][done].mean().item()
        logger.log_scalar("train/episode_return", episode_return, frames)
    for key, value in run.metrics.items():
        logger.log_scalar(f"train/{key}", value, frames)
    box = eval_env.action_spec.space
    for key, value in action_stats(batch["action"], box.low, box.high).items():
        logger.log_scalar(f"train/{key}", value, frames)
    if run.agent.scheduler is not None:
        logger.log_scalar("train/temperature", run.agent.scheduler.value, frames)


def action_stats(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    """How the collected actions fill the box: the mean of `|u|` and the fraction of
    components with `|u| > 0.9`, where `u` in `[-1, 1]` is the action rescaled from the
    box `[low, high]` (uniform noise gives 0.5 and 0.1, bang-bang actions 1 and 1)."""
    u = (2.0 * (action.float() - low) / (high - low) - 1.0).abs()
    return {"action_abs_mean": u.mean().item(), "action_saturated": (u > 0.9).float().mean().item()}


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
