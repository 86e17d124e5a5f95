"""The two-goal PointMaze of the paper's figure 2, as a TorchRL environment.

A ball (gymnasium-robotics `PointMaze`) starts near the centre of a small maze. Two goals,
top-left and bottom-right, are equally good: the reward is minus the Euclidean distance to the
*nearest* goal, so the optimal policy is multimodal. The top-left goal is reachable by two
corridors (up then left along the top row, or left then up along the left column, the two
separated by a wall block); the bottom-right goal by one (right, then down):

```text
# # # # # # #       row 0     y = +3.5 .. +2.5
# G . . # # #       row 1     G (-2, +2): top-left goal
# . # . # # #       row 2
# . . S . . #       row 3     S ( 0,  0): start, uniform noise +-0.25 in x and y
# # # # # . #       row 4
# # # # # G #       row 5     G (+2, -2): bottom-right goal
# # # # # # #       row 6
```

Coordinates are gymnasium-robotics': one unit per cell, origin at the maze centre, x to the
right, y *up* (row 0 is the top), so cell `(row, col)` has centre
`(col + 0.5 - 3.5, 3.5 - row - 0.5)`.

An episode terminates (`terminated`) when the ball comes within [`GOAL_RADIUS`][] of either
goal, and is truncated (`truncated`) after `max_episode_steps`. The rewards are all
negative, so reaching a goal (an absorbing state of value 0) sooner is always better and the
critic gets a bootstrap-free target at the goal; a goal is the only way to end an episode
early, so termination cannot be exploited. `terminate_at_goal=False` keeps going to the time
limit instead (the ball then parks at a goal, reward close to 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    GymWrapper,
    RewardSum,
    StepCounter,
    TransformedEnv,
)

from dqs_torchrl.experiments.envs import _headless_mujoco_gl

__all__ = [
    "GOALS",
    "GOAL_NAMES",
    "GOAL_RADIUS",
    "MAZE_MAP",
    "OUTCOMES",
    "START",
    "TwoGoalMaze",
    "cell_center",
    "classify_episode",
    "count_outcomes",
    "episode_xy",
    "make_maze_env",
    "plot_trajectories",
    "point_maze",
]

#: gymnasium-robotics `maze_map`: 1 = wall, 0 = free, "r" = the reset (start) cell,
#: "g" = a goal cell. Row 0 is the top of the maze.
MAZE_MAP: list[list[int | str]] = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, "g", 0, 0, 1, 1, 1],
    [1, 0, 1, 0, 1, 1, 1],
    [1, 0, 0, "r", 0, 0, 1],
    [1, 1, 1, 1, 1, 0, 1],
    [1, 1, 1, 1, 1, "g", 1],
    [1, 1, 1, 1, 1, 1, 1],
]
_ROWS, _COLS = len(MAZE_MAP), len(MAZE_MAP[0])

#: The ball counts as having reached a goal within this distance (PointMaze's own threshold).
GOAL_RADIUS = 0.45

_TOP_LEFT_CELL, _BOTTOM_RIGHT_CELL, _START_CELL = (1, 1), (5, 5), (3, 3)
# The cell next to the top-left goal on each of its two routes: whichever of these the ball
# was in last before reaching the goal is the route it took.
_ROUTE_CELLS = {"upper": (1, 2), "left": (2, 1)}

GOAL_NAMES: tuple[str, str] = ("top_left", "bottom_right")
#: The labels `classify_episode` gives and `count_outcomes` counts.
OUTCOMES: tuple[str, ...] = ("top_left_via_upper", "top_left_via_left", "bottom_right", "none")


def cell_center(row: int, col: int) -> tuple[float, float]:
    """The `(x, y)` centre of maze cell `(row, col)` in the env's coordinates.

    Examples:
        >>> cell_center(1, 1), cell_center(3, 3)
        ((-2.0, 2.0), (0.0, 0.0))
    """
    return col + 0.5 - _COLS / 2, _ROWS / 2 - row - 0.5


def _cell_of(xy: Tensor) -> tuple[Tensor, Tensor]:
    """`(row, col)` cell indices of positions `xy[..., 2]`."""
    row = torch.floor(_ROWS / 2 - xy[..., 1]).long()
    col = torch.floor(xy[..., 0] + _COLS / 2).long()
    return row, col


#: `[2, 2]`: the `(x, y)` of the top-left and the bottom-right goal.
GOALS: Tensor = torch.tensor([cell_center(*_TOP_LEFT_CELL), cell_center(*_BOTTOM_RIGHT_CELL)])
#: Centre of the start cell; the ball starts uniformly within +-0.25 of it in x and y.
START: tuple[float, float] = cell_center(*_START_CELL)


class TwoGoalMaze(gym.Wrapper):
    """PointMaze with a flat `(x, y, vx, vy)` observation and the two-goal reward.

    Reward = minus the distance to the nearest of `goals`; `terminated` once within
    `radius` of one (if `terminate_at_goal`). PointMaze's own single, noisy goal
    (`desired_goal`) is dropped and plays no part. `info["goal"]` is the index of the goal
    reached (-1 for none).

    Examples:
        >>> env = TwoGoalMaze(point_maze())
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape
        (4,)
        >>> obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        >>> bool(np.isclose(reward, -np.linalg.norm(GOALS.numpy() - obs[:2], axis=-1).min()))
        True
    """

    def __init__(
        self,
        env: gym.Env,
        goals: np.ndarray | Tensor = GOALS,
        radius: float = GOAL_RADIUS,
        terminate_at_goal: bool = True,
    ) -> None:
        super().__init__(env)
        self.goals = np.asarray(goals, dtype=np.float64)
        self.radius = radius
        self.terminate_at_goal = terminate_at_goal
        self.observation_space = env.observation_space["observation"]

    def _distances(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.linalg.norm(self.goals - obs["achieved_goal"], axis=-1)

    def _info(self, dist: np.ndarray) -> dict[str, Any]:
        return {"goal": int(dist.argmin()) if dist.min() <= self.radius else -1}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _ = self.env.reset(seed=seed, options=options)
        return obs["observation"], self._info(self._distances(obs))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, _, _, truncated, _ = self.env.step(action)
        dist = self._distances(obs)
        terminated = self.terminate_at_goal and bool(dist.min() <= self.radius)
        return obs["observation"], -float(dist.min()), terminated, truncated, self._info(dist)


def point_maze() -> gym.Env:
    """gymnasium-robotics' `PointMazeEnv` on [`MAZE_MAP`][], unwrapped: dict observations,
    its own single goal, never terminating (`continuing_task=True`, `reset_target=False`).

    Examples:
        >>> sorted(point_maze().observation_space.spaces)
        ['achieved_goal', 'desired_goal', 'observation']
    """
    _headless_mujoco_gl()
    from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

    # continuing_task=True: PointMaze never terminates on its own goal; TwoGoalMaze decides.
    env = PointMazeEnv(maze_map=MAZE_MAP, continuing_task=True, reset_target=False)
    # PointMaze compiles the maze from an XML it writes to the temp dir and never removes;
    # MuJoCo has loaded it by now.
    try:
        os.remove(env.tmp_xml_file_path)
    except OSError:
        pass
    return env


def make_maze_env(
    seed: int | None = None,
    max_episode_steps: int = 300,
    device: str | torch.device = "cpu",
    terminate_at_goal: bool = True,
) -> TransformedEnv:
    """The two-goal maze as a TorchRL env: `"observation"` = float32 `(x, y, vx, vy)`,
    `"action"` = 2-D force in `[-1, 1]`, reward = minus the distance to the nearest goal.

    Transforms: `DoubleToFloat`, `StepCounter` (`truncated` after `max_episode_steps`)
    and `RewardSum` (`episode_reward`). `seed` seeds the start-position noise; random
    actions (`env.rand_action`) draw from torch's global generator, so seed that too
    (`torch.manual_seed`) for a reproducible random rollout. One env step is 0.01 s of
    simulation; the ball's speed is clipped near 5, i.e. about 0.05 per step.

    Examples:
        >>> env = make_maze_env(seed=0, max_episode_steps=20)
        >>> env.observation_spec["observation"].shape, env.action_spec.space.high
        (torch.Size([4]), tensor([1., 1.]))
        >>> td = env.rollout(100)  # a random policy reaches no goal in 20 steps
        >>> td.shape, bool(td["next", "truncated"][-1]), bool(td["next", "terminated"].any())
        (torch.Size([20]), True, False)
        >>> classify_episode(episode_xy(td))["outcome"]
        'none'
    """
    gym_env = TwoGoalMaze(point_maze(), terminate_at_goal=terminate_at_goal)
    env = TransformedEnv(
        GymWrapper(gym_env, device=device),
        Compose(DoubleToFloat(), StepCounter(max_steps=max_episode_steps), RewardSum()),
    )
    if seed is not None:
        env.set_seed(seed)
    return env


def episode_xy(rollout: Any) -> Tensor:
    """Ball positions `[T + 1, 2]` of one episode from an `env.rollout` TensorDict `[T]`:
    the `T` pre-step observations plus the final next observation.

    Examples:
        >>> from tensordict import TensorDict
        >>> obs = torch.arange(12.0).reshape(3, 4)
        >>> td = TensorDict({"observation": obs, ("next", "observation"): obs + 1}, [3])
        >>> episode_xy(td).tolist()
        [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0], [9.0, 10.0]]
    """
    obs, last = rollout["observation"], rollout["next", "observation"][-1:]
    return torch.cat([obs, last], 0)[:, :2].cpu()


def classify_episode(xy: Tensor, radius: float = GOAL_RADIUS) -> dict[str, Any]:
    """Which goal a trajectory `xy[T, 2]` reached first and, for top-left, by which route.

    Returns `{"goal", "route", "outcome", "step"}`: `goal` is `"top_left"`,
    `"bottom_right"` or `None`; `route` is `"upper"` (up, then left along the top row)
    or `"left"` (left, then up along the left column) for top-left, `"right"` for
    bottom-right and `None` otherwise; `outcome` is one of [`OUTCOMES`][]; `step` is
    the first index within `radius` of a goal (`None` if never). The top-left route is the
    corridor cell next to the goal that the ball was in *last* before arriving, so an excursion
    into one corridor followed by the other route counts as the other route. (If neither cell
    was visited, which only sub-sampled trajectories allow, the one nearer the arrival point.)

    Examples:
        >>> upper = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 2.0], [-1.9, 2.0]])
        >>> classify_episode(upper)
        {'goal': 'top_left', 'route': 'upper', 'outcome': 'top_left_via_upper', 'step': 4}
        >>> classify_episode(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))["outcome"]
        'none'
    """
    xy = torch.as_tensor(xy, dtype=torch.float32).reshape(-1, 2).cpu()
    dist = torch.cdist(xy, GOALS)  # [T, 2]
    hit = (dist <= radius).any(-1).nonzero()
    if hit.numel() == 0:
        return {"goal": None, "route": None, "outcome": "none", "step": None}
    step = int(hit[0, 0])
    goal = GOAL_NAMES[int(dist[step].argmin())]
    if goal == "bottom_right":
        return {"goal": goal, "route": "right", "outcome": "bottom_right", "step": step}
    row, col = _cell_of(xy[:step])
    last = {r: -1 for r in _ROUTE_CELLS}
    for route, (r, c) in _ROUTE_CELLS.items():
        visits = ((row == r) & (col == c)).nonzero()
        if visits.numel():
            last[route] = int(visits[-1, 0])
    if max(last.values()) >= 0:
        route = max(last, key=last.__getitem__)
    else:
        route = min(_ROUTE_CELLS, key=lambda k: math.dist(cell_center(*_ROUTE_CELLS[k]), xy[step]))
    return {"goal": goal, "route": route, "outcome": f"top_left_via_{route}", "step": step}


def count_outcomes(trajectories: Iterable[Tensor]) -> dict[str, int]:
    """How many trajectories `xy[T, 2]` ended in each of [`OUTCOMES`][] (all keys present).

    Examples:
        >>> down = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, -1.0], [2.0, -1.8]])
        >>> count_outcomes([down, down[:2]])
        {'top_left_via_upper': 0, 'top_left_via_left': 0, 'bottom_right': 1, 'none': 1}
    """
    counts = dict.fromkeys(OUTCOMES, 0)
    for xy in trajectories:
        counts[classify_episode(xy)["outcome"]] += 1
    return counts


_COLORS = {
    "top_left_via_upper": "tab:blue",
    "top_left_via_left": "tab:green",
    "bottom_right": "tab:red",
    "none": "tab:gray",
}


def plot_trajectories(
    trajectories: Sequence[Tensor], path: str | os.PathLike, title: str = ""
) -> str:
    """Draw the maze, the goals (star, reach radius dashed), the start and the trajectories
    `xy[T, 2]` (coloured by [`classify_episode`][] outcome, counts in the legend), as in
    the paper's figure 2, and save a PNG to `path` (Agg backend; pyplot is not touched).

    Examples:
        >>> import os, tempfile
        >>> xy = torch.tensor([[0.0, 0.0], [0.0, 2.0], [-2.0, 2.0]])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     out = plot_trajectories([xy], os.path.join(d, "maze.png"), "example")
        ...     os.path.getsize(out) > 0
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Rectangle

    fig = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r, row in enumerate(MAZE_MAP):
        for c, cell in enumerate(row):
            if cell == 1:
                x, y = cell_center(r, c)
                ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, color="0.35", lw=0))
    counts = dict.fromkeys(OUTCOMES, 0)
    for xy in trajectories:
        xy = torch.as_tensor(xy).reshape(-1, 2).detach().cpu().float()
        outcome = classify_episode(xy)["outcome"]
        counts[outcome] += 1
        ax.plot(xy[:, 0], xy[:, 1], color=_COLORS[outcome], lw=0.8, alpha=0.6)
    for gx, gy in GOALS.tolist():
        ax.add_patch(Circle((gx, gy), GOAL_RADIUS, fill=False, ls="--", color="gold", lw=1.2))
        ax.plot(gx, gy, marker="*", ms=16, color="gold", mec="k", zorder=5)
    ax.plot(*START, marker="o", ms=8, color="k", zorder=5)
    handles = [
        Line2D([], [], color=_COLORS[k], label=f"{k.replace('_', ' ')}: {n}")
        for k, n in counts.items()
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_xlim(-_COLS / 2, _COLS / 2)
    ax.set_ylim(-_ROWS / 2, _ROWS / 2)
    ax.set_aspect("equal")
    ax.set_title(title or f"{sum(counts.values())} trajectories")
    fig.tight_layout()
    fig.savefig(path)
    return str(path)
