"""The recipes' hydra configs, shipped as package data.

`dqs-dmc` and `dqs-maze` (and `recipes/dqs_dmc.py`, `recipes/dqs_maze.py`, which call
the same `main`) read them from here: hydra finds a config folder of an installed package
only when it is a Python package, hence this file.

Examples:
    >>> sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    ['dqs_dmc.yaml', 'dqs_maze.yaml']
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR"]
