"""Diffusion Q-Sampling (DQS) for TorchRL.

The four public components are [`DiffusionActor`][], [`IDEMScoreLoss`][],
[`DoubleQLoss`][] and [`TemperatureScheduler`][] (or, in its slot,
[`TemperatureController`][], which adapts T to a target entropy); schedules, samplers and
networks are plain building blocks around them.
"""

from dqs_torchrl.actor import DiffusionActor
from dqs_torchrl.energy import EnergyCritic, squash, tanh_log_jacobian, unsquash
from dqs_torchrl.networks import (
    ScoreModel,
    ScoreNetwork,
    SinusoidalEmbedding,
    SplitScoreModel,
    make_q_network,
)
from dqs_torchrl.objectives import DoubleQLoss, DQSLoss, IDEMScoreLoss, QSMLoss
from dqs_torchrl.samplers import (
    SAMPLERS,
    sample_ancestral,
    sample_euler_maruyama,
    sample_heun,
    tweedie_denoise,
)
from dqs_torchrl.schedules import GeometricSchedule, geometric_sigmas, karras_sigmas
from dqs_torchrl.temperature import (
    TemperatureController,
    TemperatureScheduler,
    knn_entropy,
    squashed_entropy,
)

__all__ = [
    "DiffusionActor",
    "IDEMScoreLoss",
    "DoubleQLoss",
    "TemperatureScheduler",
    "TemperatureController",
    "DQSLoss",
    "QSMLoss",
    "ScoreNetwork",
    "ScoreModel",
    "SplitScoreModel",
    "SinusoidalEmbedding",
    "make_q_network",
    "EnergyCritic",
    "GeometricSchedule",
    "geometric_sigmas",
    "karras_sigmas",
    "SAMPLERS",
    "sample_euler_maruyama",
    "sample_ancestral",
    "sample_heun",
    "tweedie_denoise",
    "squash",
    "unsquash",
    "tanh_log_jacobian",
    "knn_entropy",
    "squashed_entropy",
]
__version__ = "0.1.0"
