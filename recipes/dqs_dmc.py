"""DQS (or the SAC / QSM baselines, ``algo=sac|qsm``) on a dm_control task.

    python recipes/dqs_dmc.py                                   # cheetah-run, paper defaults
    python recipes/dqs_dmc.py env.task=walker-run seed=1 algo=sac
    python recipes/dqs_dmc.py resume=true                       # continue an interrupted run

The same ``main`` as the ``dqs-dmc`` command of an installed package: the recipe is
``dqs_torchrl/experiments/dqs_dmc.py``, its config ``dqs_torchrl/experiments/configs/``, its
loop ``dqs_torchrl/experiments/harness/loop.py``. Logs, ``eval.csv``, ``learning_curve.png``
and checkpoints go to ``runs/<task>/<algo>/seed<seed>/``.
"""

from dqs_torchrl.experiments.dqs_dmc import main

if __name__ == "__main__":
    main()
