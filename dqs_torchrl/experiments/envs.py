"""Environment factories with the usual TorchRL transforms."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from torchrl.envs import (
    CatTensors,
    Compose,
    DMControlEnv,
    DoubleToFloat,
    EnvBase,
    RewardSum,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.libs.dm_control import _has_dmc

__all__ = ["check_rendering", "dmc_renderer", "make_dmc_env", "split_task"]


def _headless_mujoco_gl(render: bool = False) -> None:
    """Set `MUJOCO_GL` unless the user chose a backend: `egl` (headless OpenGL) when frames
    will be rendered (`render=True`: `eval.video`), else `disable` (no OpenGL context:
    silences GLFW's display warning on a headless machine).

    dm_control and gymnasium read the variable when they are first imported, so this runs in
    the env factories, before their imports, and never at import time of this package; the
    first call of a process decides.
    """
    os.environ.setdefault("MUJOCO_GL", "egl" if render else "disable")


def split_task(task: str, render: bool = False) -> tuple[str, str]:
    """`"cheetah-run"` -> `("cheetah", "run")`; `ValueError` for an unknown task.

    `render=True` asks for a rendering `MUJOCO_GL` should this be the first dm_control
    import of the process ([`_headless_mujoco_gl`][]).

    Examples:
        >>> split_task("cheetah-run")
        ('cheetah', 'run')
    """
    _headless_mujoco_gl(render)
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
    render: bool = False,
) -> TransformedEnv:
    """A state-based dm_control task with observations concatenated into `"observation"`.

    Transforms: `CatTensors` (all state entries -> `observation`), `DoubleToFloat`,
    `StepCounter` (optionally truncating at `max_episode_steps`) and `RewardSum`
    (`episode_reward`). dm_control's 1000-step limit arrives as `truncated`, so TD targets
    bootstrap through it. `render=True` picks `MUJOCO_GL=egl` if the user set no backend
    (frames come from [`dmc_renderer`][], only when asked: no `pixels` entry is added).

    Examples:
        >>> env = make_dmc_env("cartpole-balance", seed=0)
        >>> env.observation_spec["observation"].shape
        torch.Size([5])
    """
    if not _has_dmc:
        raise ImportError("dm_control is not installed: pip install 'dqs-torchrl[dmc]'")
    _headless_mujoco_gl(render)
    domain, name = split_task(task, render)
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


def dmc_renderer(
    env: EnvBase, height: int = 240, width: int = 320, camera_id: int = 0
) -> Callable[[], np.ndarray]:
    """A function that renders the current frame of the dm_control task inside `env` (a
    `DMControlEnv`, possibly transformed) as a `[height, width, 3]`
    uint8 array.

    Rendering on demand, unlike `DMControlEnv(from_pixels=True)`, costs nothing at the steps
    that are not recorded and leaves the observation spec as it is.

    Examples:
        >>> env = make_dmc_env("cartpole-balance", seed=0)
        >>> render = dmc_renderer(env, 32, 48)
        >>> render().shape  # doctest: +SKIP
        (32, 48, 3)
    """
    base = env.base_env if isinstance(env, TransformedEnv) else env
    if not isinstance(base, DMControlEnv):
        raise TypeError(f"dmc_renderer needs a DMControlEnv, got {type(base).__name__}.")
    physics = base._env.physics  # TorchRL keeps the dm_control environment as `_env`
    return lambda: physics.render(height, width, camera_id=camera_id)


def check_rendering(task: str) -> str | None:
    """`None` when MuJoCo renders a frame of `task` in this process, else why not (the
    `MUJOCO_GL` backend and its error), for a config error to show."""
    _headless_mujoco_gl(render=True)
    backend = os.environ["MUJOCO_GL"]
    if backend.lower() in ("disable", "disabled", "off", "false", "0"):
        return f"MUJOCO_GL={backend} turns rendering off"
    try:
        from dm_control import suite

        physics = suite.load(*split_task(task, render=True)).physics
        physics.render(16, 16, camera_id=0)
    except Exception as err:  # each backend fails in its own way (ImportError, FatalError...)
        return f"MuJoCo cannot render with MUJOCO_GL={backend} ({type(err).__name__}: {err})"
    return None
