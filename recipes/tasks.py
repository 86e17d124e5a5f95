"""Print the paper's eight DMC tasks, comma-separated, for hydra sweeps.

python recipes/dqs_dmc.py -m "env.task=$(python recipes/tasks.py)" seed=0,1,2
"""

from pathlib import Path

from omegaconf import OmegaConf

if __name__ == "__main__":
    cfg = OmegaConf.load(Path(__file__).parent / "config" / "dqs_dmc.yaml")
    print(",".join(cfg.paper_tasks))
