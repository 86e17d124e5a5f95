"""Trained dm_control policies side by side in one labelled video.

    python recipes/watch.py ~/dqs-runs/cheetah-run/dqs/seed1 ~/dqs-runs/cheetah-run/sac/seed1 \
        --out cheetah.gif

The same ``main`` as the ``dqs-watch`` command (``dqs_torchrl/experiments/watch.py``, where
the options are described).
"""

from dqs_torchrl.experiments.watch import main

if __name__ == "__main__":
    main()
