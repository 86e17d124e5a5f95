"""`dqs-maze`: DQS (or `algo=sac|qsm`) on the two-goal PointMaze of the paper's figure 2.

    dqs-maze
    dqs-maze algo=sac seed=1

`python recipes/dqs_maze.py` runs the same `main`. Each evaluation writes
`trajectories.png` (the 100 evaluation trajectories) and adds the count of episodes ending at
each goal, and through each route to the top-left goal, to `eval.csv`; runs go to
`runs/two-goal-maze/<algo>/seed<seed>/`. The config is `configs/dqs_maze.yaml`.
"""

import hydra
from omegaconf import DictConfig

from dqs_torchrl.experiments.dqs_dmc import run


@hydra.main(version_base="1.3", config_path="configs", config_name="dqs_maze")
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    main()
