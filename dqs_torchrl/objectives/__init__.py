"""DQS objectives: TorchRL ``LossModule`` subclasses."""

from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.dqs import DQSLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss

__all__ = ["DoubleQLoss", "DQSLoss", "IDEMScoreLoss"]
