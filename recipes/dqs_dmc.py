"""DQS (or the SAC / QSM baselines, ``algo=sac|qsm``) on a dm_control task.

    python recipes/dqs_dmc.py                                   # cheetah-run, paper defaults
    python recipes/dqs_dmc.py env.task=walker-run seed=1 algo=sac
    python recipes/dqs_dmc.py resume=true                       # continue an interrupted run

Logs, ``eval.csv``, ``learning_curve.png`` and checkpoints go to
``runs/<task>/<algo>/seed<seed>/``. The loop itself lives in
``dqs_torchrl/harness/loop.py`` and is shared with the maze recipe.
"""

import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

os.environ.setdefault("MUJOCO_GL", "disable")


@hydra.main(version_base="1.3", config_path="config", config_name="dqs_dmc")
def main(cfg: DictConfig) -> dict:
    from dqs_torchrl.harness import train

    summary = train(cfg, HydraConfig.get().runtime.output_dir)
    print(f"done: {summary}")
    return summary


if __name__ == "__main__":
    main()
