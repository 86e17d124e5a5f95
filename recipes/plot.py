"""Aggregate many runs into the paper's plots and an rliable IQM across tasks.

    python recipes/plot.py                      # reads runs/<task>/<algo>/seed*/eval.csv
    python recipes/plot.py --runs runs --out runs/plots --scale 1000

The same ``main`` as the ``dqs-plot`` command (``dqs_torchrl/experiments/plot.py``, where the
figures, the IQM table and the performance profile are described).
"""

from dqs_torchrl.experiments.plot import main

if __name__ == "__main__":
    main()
