"""The two-goal PointMaze (figure 2): layout, reward, termination, seeding, the route
classifier (checked against a scripted controller driving each route) and the plot."""

import math

import numpy as np
import pytest
import torch
from torchrl.data import Bounded

from dqs_torchrl.experiments.maze import (
    GOALS,
    MAZE_MAP,
    OUTCOMES,
    classify_episode,
    count_outcomes,
    episode_xy,
    make_maze_env,
    plot_trajectories,
)

torch.set_num_threads(1)

# Written out by hand, not taken from the module: top-left and bottom-right cell centres.
TOP_LEFT, BOTTOM_RIGHT = (-2.0, 2.0), (2.0, -2.0)

# Cell-centre waypoints of the three routes from the start (0, 0).
ROUTES = {
    "top_left_via_upper": [(0.0, 2.0), (-2.0, 2.0)],  # up, then left along the top row
    "top_left_via_left": [(-2.0, 0.0), (-2.0, 2.0)],  # left, then up the left column
    "bottom_right": [(2.0, 0.0), (2.0, -2.0)],  # right, then down
}


def nearest_goal_distance(xy: torch.Tensor) -> torch.Tensor:
    d1 = torch.hypot(xy[..., 0] - TOP_LEFT[0], xy[..., 1] - TOP_LEFT[1])
    d2 = torch.hypot(xy[..., 0] - BOTTOM_RIGHT[0], xy[..., 1] - BOTTOM_RIGHT[1])
    return torch.minimum(d1, d2)


def waypoint_controller(waypoints, kp=3.0, kd=0.6, tol=0.15):
    """PD control of the force toward the current waypoint; next waypoint once within tol."""
    targets = [torch.tensor(w) for w in waypoints]
    k = 0

    def policy(td):
        nonlocal k
        obs = td["observation"]
        xy, vel = obs[:2], obs[2:]
        while k < len(targets) - 1 and (targets[k] - xy).norm() < tol:
            k += 1
        td["action"] = (kp * (targets[k] - xy) - kd * vel).clamp(-1.0, 1.0)
        return td

    return policy


def in_free_cell(xy: torch.Tensor) -> bool:
    rows, cols = len(MAZE_MAP), len(MAZE_MAP[0])
    for x, y in xy.tolist():
        r, c = math.floor(rows / 2 - y), math.floor(x + cols / 2)
        if MAZE_MAP[r][c] == 1:
            return False
    return True


def test_layout_and_goals_match_gymnasium_robotics():
    from gymnasium_robotics.envs.maze.maze_v4 import Maze

    assert GOALS.tolist() == [list(TOP_LEFT), list(BOTTOM_RIGHT)]
    maze = Maze(MAZE_MAP, maze_size_scaling=1.0, maze_height=0.4)
    goal_cells = [(r, c) for r, row in enumerate(MAZE_MAP) for c, v in enumerate(row) if v == "g"]
    assert [maze.cell_rowcol_to_xy(np.array(rc)).tolist() for rc in goal_cells] == GOALS.tolist()
    assert maze.cell_rowcol_to_xy(np.array([3, 3])).tolist() == [0.0, 0.0]  # start cell "r"
    assert MAZE_MAP[2][2] == 1  # the block that separates the two top-left routes
    assert all(v == 1 for v in MAZE_MAP[0] + MAZE_MAP[-1])  # closed outer walls
    assert all(row[0] == 1 and row[-1] == 1 for row in MAZE_MAP)


def test_specs_and_start_state():
    env = make_maze_env(seed=0)
    assert env.observation_spec["observation"].shape == (4,)
    assert env.observation_spec["observation"].dtype == torch.float32
    assert isinstance(env.action_spec, Bounded) and env.action_spec.shape == (2,)
    assert env.action_spec.space.low.tolist() == [-1.0, -1.0]
    assert env.action_spec.space.high.tolist() == [1.0, 1.0]
    starts = torch.stack([env.reset()["observation"] for _ in range(20)])
    assert starts[:, :2].abs().max() <= 0.25  # near the centre, noisy
    assert starts[:, :2].std(0).min() > 0.05
    assert torch.all(starts[:, 2:] == 0)


def test_reward_is_minus_distance_to_nearest_goal():
    env = make_maze_env(seed=1)
    # At reset: the ball is at rest and there is no gravity, so a zero force leaves it in
    # place and the first reward is minus the nearest-goal distance of the reset position.
    td = env.reset()
    td["action"] = torch.zeros(2)
    out = env.step(td)
    assert torch.allclose(out["next", "observation"][:2], td["observation"][:2], atol=1e-6)
    expected = -nearest_goal_distance(td["observation"][:2])
    assert torch.allclose(out["next", "reward"], expected.reshape(1), atol=1e-5)
    # After random steps (near the centre, so the nearest goal changes between steps) and
    # along a route to the top-left goal.
    torch.manual_seed(0)
    for policy in (None, waypoint_controller(ROUTES["top_left_via_upper"])):
        r = env.rollout(150, policy)
        expected = -nearest_goal_distance(r["next", "observation"][:, :2])
        assert torch.allclose(r["next", "reward"].squeeze(-1), expected, atol=1e-5)
        assert torch.allclose(
            r["next", "episode_reward"].squeeze(-1), expected.cumsum(0), rtol=1e-4, atol=1e-3
        )


@pytest.mark.parametrize("outcome", list(ROUTES))
def test_scripted_routes_reach_goal_and_are_classified(outcome):
    env = make_maze_env(seed=2)
    r = env.rollout(300, waypoint_controller(ROUTES[outcome]))
    xy = episode_xy(r)
    goal = BOTTOM_RIGHT if outcome == "bottom_right" else TOP_LEFT
    assert math.dist(xy[-1].tolist(), goal) <= 0.45
    assert bool(r["next", "terminated"][-1]) and not bool(r["next", "truncated"][-1])
    assert not r["next", "done"][:-1].any()
    assert in_free_cell(xy)  # coordinates and walls agree: the ball never sits in a wall cell
    label = classify_episode(xy)
    assert label["outcome"] == outcome
    assert label["goal"] == ("bottom_right" if outcome == "bottom_right" else "top_left")
    assert label["step"] == len(xy) - 1  # arrival is the terminal step


def test_route_is_the_corridor_used_last():
    """Go up and along the top row to the cell next to the goal, turn back, then go round by
    the left column: the arrival is by the left route."""
    env = make_maze_env(seed=3)
    detour = [(0.0, 2.0), (-0.9, 2.0), (0.0, 2.0), (0.0, 0.0), (-2.0, 0.0), (-2.0, 2.0)]
    r = env.rollout(600, waypoint_controller(detour))
    xy = episode_xy(r)
    assert ((xy[:, 0] < -0.6) & (xy[:, 1] > 1.5)).any()  # it was in the upper route's cell
    label = classify_episode(xy)
    assert label["outcome"] == "top_left_via_left" and label["step"] == len(xy) - 1
    upper = torch.tensor([[0.0, 0.0], [0.0, 2.0], [-1.0, 2.0]])
    back_then_left = torch.cat([upper, torch.tensor([[0.0, 0.0], [-2.0, 0.0], [-2.0, 1.0]])])
    goal = torch.tensor([[-2.0, 1.7]])
    assert classify_episode(torch.cat([upper, goal]))["route"] == "upper"
    assert classify_episode(torch.cat([back_then_left, goal]))["route"] == "left"


def test_no_termination_option_and_truncation():
    env = make_maze_env(seed=4, max_episode_steps=150, terminate_at_goal=False)
    r = env.rollout(1000, waypoint_controller(ROUTES["bottom_right"]))
    assert r.shape == (150,)
    assert not r["next", "terminated"].any() and bool(r["next", "truncated"][-1])
    assert classify_episode(episode_xy(r))["outcome"] == "bottom_right"
    assert r["next", "reward"][-1].item() > -0.45  # parked at the goal
    idle = make_maze_env(seed=4, max_episode_steps=25).rollout(1000)
    assert idle.shape == (25,) and bool(idle["next", "truncated"][-1])
    assert not idle["next", "terminated"].any()


def test_seeding_gives_identical_rollouts():
    def rollout(seed):
        env = make_maze_env(seed=seed)
        torch.manual_seed(0)
        return torch.cat([env.rollout(60)["next", "observation"] for _ in range(2)])

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_count_outcomes_and_plot(tmp_path):
    env = make_maze_env(seed=5)
    trajs = [episode_xy(env.rollout(300, waypoint_controller(w))) for w in ROUTES.values()]
    trajs.append(episode_xy(env.rollout(40)))  # random: reaches nothing
    counts = count_outcomes(trajs)
    assert list(counts) == list(OUTCOMES)
    assert counts == {k: 1 for k in OUTCOMES}
    path = plot_trajectories(trajs, tmp_path / "maze.png", title="scripted routes")
    data = (tmp_path / "maze.png").read_bytes()
    assert str(path).endswith("maze.png") and len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
