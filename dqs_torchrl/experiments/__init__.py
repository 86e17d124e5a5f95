"""Experiment code: what runs the paper's experiments with the library, not the library.

`import dqs_torchrl` never imports this package, and importing this package imports none of
its modules: each needs its own extra (`pip install "dqs-torchrl[recipes]"` brings them
all) and none changes global state when imported.

- [`dqs_torchrl.experiments.envs`][]: dm_control tasks as TorchRL envs (extra `dmc`);
- [`dqs_torchrl.experiments.maze`][]: the two-goal PointMaze of figure 2 (extra `maze`);
- [`dqs_torchrl.experiments.harness`][]: what the recipes share: agents, the training loop,
  config validation, checkpoints, resume, run directories, learning curves (`recipes`);
- the recipes' entry points, each with a console script: [`dqs_dmc`][] (`dqs-dmc`),
  [`dqs_maze`][] (`dqs-maze`), [`plot`][] (`dqs-plot`) and [`campaign`][]
  (`dqs-campaign`), their hydra configs in `configs/` (package data).
"""
