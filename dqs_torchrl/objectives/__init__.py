"""DQS objectives: TorchRL `LossModule` subclasses."""

from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.dqs import DQSLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss
from dqs_torchrl.objectives.qsm import QSMLoss

__all__ = ["DoubleQLoss", "DQSLoss", "IDEMScoreLoss", "QSMLoss"]
