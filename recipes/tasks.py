"""Print the paper's eight DMC tasks, comma-separated, for hydra sweeps.

python recipes/dqs_dmc.py -m "env.task=$(python recipes/tasks.py)" seed=0,1,2
"""

from omegaconf import OmegaConf

from dqs_torchrl.experiments.configs import CONFIG_DIR

if __name__ == "__main__":
    cfg = OmegaConf.load(CONFIG_DIR / "dqs_dmc.yaml")
    print(",".join(cfg.paper_tasks))
