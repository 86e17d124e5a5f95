"""DQS (or ``algo=sac|qsm``) on the two-goal PointMaze of the paper's figure 2.

    python recipes/dqs_maze.py
    python recipes/dqs_maze.py algo=sac seed=1

Each evaluation writes ``trajectories.png`` (the 100 evaluation trajectories) and adds the
count of episodes ending at each goal, and through each route to the top-left goal, to
``eval.csv``; runs go to ``runs/two-goal-maze/<algo>/seed<seed>/``.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

os.environ.setdefault("MUJOCO_GL", "disable")


@hydra.main(version_base="1.3", config_path="config", config_name="dqs_maze")
def main(cfg: DictConfig) -> dict:
    from dqs_torchrl.harness import train

    summary = train(cfg, HydraConfig.get().runtime.output_dir)
    print(f"done: {summary}")
    return summary


if __name__ == "__main__":
    main()
