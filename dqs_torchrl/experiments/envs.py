"""Environment factories with the usual TorchRL transforms."""

from __future__ import annotations

import os

from torchrl.envs import (
    CatTensors,
    Compose,
    DMControlEnv,
    DoubleToFloat,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.libs.dm_control import _has_dmc

__all__ = ["make_dmc_env", "split_task"]


def _headless_mujoco_gl() -> None:
    """Set `MUJOCO_GL=disable` (no OpenGL context: silences GLFW's display warning on a
    headless machine) unless the user chose a backend, e.g. `MUJOCO_GL=egl` for pixels.

    dm_control and gymnasium read the variable when they are first imported, so this runs in
    the env factories, before their imports, and never at import time of this package.
    """
    os.environ.setdefault("MUJOCO_GL", "disable")


def split_task(task: str) -> tuple[str, str]:
    """`"cheetah-run"` -> `("cheetah", "run")`; `ValueError` for an unknown task.

    Examples:
        >>> split_task("cheetah-run")
        ('cheetah', 'run')
    """
    _headless_mujoco_gl()
    from dm_control import suite

    domain, sep, name = task.partition("-")
    # Task names may contain underscores (e.g. "ball_in_cup-catch"), never dashes.
    if not sep or (domain, name) not in suite.ALL_TASKS:
        known = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS)
        raise ValueError(
            f"env.task must be a dm_control 'domain-task', got {task!r}; known: {known}."
        )
    return domain, name


def make_dmc_env(
    task: str = "cheetah-run",
    seed: int | None = None,
    device: str = "cpu",
    max_episode_steps: int | None = None,
) -> TransformedEnv:
    """A state-based dm_control task with observations concatenated into `"observation"`.

    Transforms: `CatTensors` (all state entries -> `observation`), `DoubleToFloat`,
    `StepCounter` (optionally truncating at `max_episode_steps`) and `RewardSum`
    (`episode_reward`). dm_control's 1000-step limit arrives as `truncated`, so TD targets
    bootstrap through it.

    Examples:
        >>> env = make_dmc_env("cartpole-balance", seed=0)
        >>> env.observation_spec["observation"].shape
        torch.Size([5])
    """
    if not _has_dmc:
        raise ImportError("dm_control is not installed: pip install 'dqs-torchrl[dmc]'")
    _headless_mujoco_gl()
    domain, name = split_task(task)
    base = DMControlEnv(domain, name, device=device)
    obs_keys = [k for k in base.observation_spec.keys() if k != "pixels"]
    env = TransformedEnv(
        base,
        Compose(
            CatTensors(in_keys=obs_keys, out_key="observation", del_keys=True),
            DoubleToFloat(),
            StepCounter(max_steps=max_episode_steps),
            RewardSum(),
        ),
    )
    if seed is not None:
        env.set_seed(seed)
    return env
