"""``DQSLoss``: both DQS objectives behind one ``LossModule``, for one optimizer and trainers."""

from __future__ import annotations

from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss

__all__ = ["DQSLoss"]


class DQSLoss(LossModule):
    """``DoubleQLoss`` + ``IDEMScoreLoss`` as one loss: ``loss_qvalue`` and ``loss_actor``.

    The two losses touch disjoint parameters (the score target reads the critic detached, the
    critic target samples the actor without gradients), so summing them and stepping one
    optimizer equals stepping two. The target Q-networks and, with ``ema=True`` actors, the
    EMA of the score network are re-exposed here, so one ``SoftUpdate(DQSLoss(...))`` updates
    both — what ``torchrl.trainers.Trainer`` expects of ``loss_module`` and
    ``target_net_updater``.

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl.objectives import SoftUpdate
        >>> from dqs_torchrl import DiffusionActor, ScoreNetwork, make_q_network
        >>> actor = DiffusionActor(ScoreNetwork(3, 2, 16, 8), Bounded(-1.0, 1.0, shape=(2,)),
        ...                        ema=True)
        >>> qvalue = DoubleQLoss(actor, make_q_network(3, 2, num_cells=(16, 16)))
        >>> loss = DQSLoss(qvalue, IDEMScoreLoss(actor, qvalue))
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> sorted(updater._target_names)
        ['target_qvalue_network_params', 'target_score_network_params']
    """

    def __init__(self, qvalue_loss: DoubleQLoss, actor_loss: IDEMScoreLoss) -> None:
        super().__init__()
        if actor_loss.critic is not qvalue_loss:
            raise ValueError("actor_loss must read the critic of qvalue_loss (critic=qvalue_loss).")
        self.qvalue_loss = qvalue_loss
        self.actor_loss = actor_loss
        self.qvalue_network_params = qvalue_loss.qvalue_network_params
        self.target_qvalue_network_params = qvalue_loss._modules["target_qvalue_network_params"]
        self._has_update_associated["qvalue_network"] = False
        if "target_score_network_params" in actor_loss._modules:
            self.score_network_params = actor_loss.score_network_params
            self.target_score_network_params = actor_loss._modules["target_score_network_params"]
            self._has_update_associated["score_network"] = False

    @property
    def in_keys(self) -> list[NestedKey]:
        return list(dict.fromkeys(self.qvalue_loss.in_keys + self.actor_loss.in_keys))

    @property
    def out_keys(self) -> list[str]:
        return self.qvalue_loss.out_keys + self.actor_loss.out_keys

    def make_value_estimator(self, value_type=None, **hyperparams) -> DQSLoss:
        """Forwarded to :meth:`DoubleQLoss.make_value_estimator` (e.g. ``gamma=0.99``)."""
        self.qvalue_loss.make_value_estimator(value_type, **hyperparams)
        return self

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if all(self._has_update_associated.values()):
            # A SoftUpdate on this loss also serves its parts: silence their warnings.
            for part in (self.qvalue_loss, self.actor_loss):
                for key in part._has_update_associated:
                    part._has_update_associated[key] = True
        out = self.qvalue_loss(tensordict)
        out.update(self.actor_loss(tensordict))
        return out
