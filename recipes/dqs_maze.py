"""DQS (or ``algo=sac|qsm``) on the two-goal PointMaze of the paper's figure 2.

    python recipes/dqs_maze.py
    python recipes/dqs_maze.py algo=sac seed=1

The same ``main`` as the ``dqs-maze`` command (``dqs_torchrl/experiments/dqs_maze.py``); runs go
to ``runs/two-goal-maze/<algo>/seed<seed>/``.
"""

from dqs_torchrl.experiments.dqs_maze import main

if __name__ == "__main__":
    main()
