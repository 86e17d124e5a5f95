"""`dqs-dmc`: DQS (or the SAC / QSM baselines, `algo=sac|qsm`) on a dm_control task.

    dqs-dmc                                    # cheetah-run, the paper's table 1 settings
    dqs-dmc env.task=walker-run seed=1 algo=sac
    dqs-dmc resume=true                        # continue an interrupted run
    dqs-dmc -m seed=0,1,2 env.task=cheetah-run,walker-run

`python recipes/dqs_dmc.py` (a clone) and `python -m dqs_torchrl.experiments.dqs_dmc` run
the same `main` with the same overrides. The config is `configs/dqs_dmc.yaml` beside this
file. Logs, `eval.csv`, `learning_curve.png` and checkpoints go to
`runs/<task>/<algo>/seed<seed>/` under the current directory. The loop itself lives in
`harness/loop.py` and is shared with the maze recipe.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dqs_torchrl.experiments.harness import train


def run(cfg: DictConfig) -> dict:
    """Train in the run directory hydra made for `cfg`; the loop's summary."""
    summary = train(cfg, HydraConfig.get().runtime.output_dir)
    print(f"done: {summary}")
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="dqs_dmc")
def main(cfg: DictConfig) -> dict:
    return run(cfg)


if __name__ == "__main__":
    main()
