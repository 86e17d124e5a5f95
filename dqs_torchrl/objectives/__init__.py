"""DQS objectives: TorchRL ``LossModule`` subclasses."""

from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss

__all__ = ["DoubleQLoss", "IDEMScoreLoss"]
