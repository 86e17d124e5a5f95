"""`DQSLoss`: both DQS objectives behind one `LossModule`, for one optimizer and trainers."""

from __future__ import annotations

import re
import warnings

from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss

__all__ = ["DQSLoss"]


class DQSLoss(LossModule):
    """`DoubleQLoss` + `IDEMScoreLoss` as one loss: `loss_qvalue` and `loss_actor`.

    The two losses touch disjoint parameters (the score target reads the critic detached, the
    critic target samples the actor without gradients), so summing them and stepping one
    optimizer equals stepping two. The target Q-networks and, with `ema=True` actors, the
    EMA of the score network are re-exposed here, so one `SoftUpdate(DQSLoss(...))` updates
    both — what `torchrl.trainers.Trainer` expects of `loss_module` and
    `target_net_updater`. The per-sample `td_error` of the critic is written into the
    batch as [`DoubleQLoss`][] does (for a prioritized replay buffer).

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl.objectives import SoftUpdate
        >>> from dqs_torchrl import DiffusionActor, ScoreNetwork, make_q_network
        >>> actor = DiffusionActor(ScoreNetwork(3, 2, 16, 8), Bounded(-1.0, 1.0, shape=(2,)),
        ...                        ema=True)
        >>> qvalue = DoubleQLoss(actor, make_q_network(3, 2, num_cells=(16, 16)))
        >>> loss = DQSLoss(qvalue, IDEMScoreLoss(actor, qvalue))
        >>> updater = SoftUpdate(loss, tau=0.005)  # updates these:
        >>> sorted(name for name, _ in loss.named_children() if name.startswith("target_"))
        ['target_qvalue_network_params', 'target_score_network_params']
    """

    def __init__(self, qvalue_loss: DoubleQLoss, actor_loss: IDEMScoreLoss) -> None:
        super().__init__()
        if actor_loss.critic is not qvalue_loss:
            raise ValueError("actor_loss must read the critic of qvalue_loss (critic=qvalue_loss).")
        self.qvalue_loss = qvalue_loss
        self.actor_loss = actor_loss
        # Re-exposed (the same tensors) so that SoftUpdate(self) finds and updates them. Read
        # through named_children(): attribute access to a part's target_*_params warns
        # while no updater is associated with that part.
        for part, name in ((qvalue_loss, "qvalue_network"), (actor_loss, "score_network")):
            targets = dict(part.named_children()).get(f"target_{name}_params")
            if targets is not None:
                setattr(self, f"{name}_params", getattr(part, f"{name}_params"))
                setattr(self, f"target_{name}_params", targets)
                # The one private name left, and only our own: LossModule looks this flag up
                # on every read of target_<name>_params (KeyError without it) and
                # SoftUpdate(self) sets it. TorchRL fills it publicly only in
                # convert_to_functional, which would re-draw the networks.
                self._has_update_associated[name] = False

    @property
    def in_keys(self) -> list[NestedKey]:
        return list(dict.fromkeys(self.qvalue_loss.in_keys + self.actor_loss.in_keys))

    @property
    def out_keys(self) -> list[str]:
        return self.qvalue_loss.out_keys + self.actor_loss.out_keys

    def make_value_estimator(self, value_type=None, **hyperparams) -> DQSLoss:
        """Forwarded to [`DoubleQLoss.make_value_estimator`][] (e.g. `gamma=0.99`)."""
        self.qvalue_loss.make_value_estimator(value_type, **hyperparams)
        return self

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with warnings.catch_warnings():
            # The parts' targets are this loss's: an updater on it (SoftUpdate(DQSLoss)) updates
            # them, and this loss itself warns, before forward, while it has none. Each part
            # would still warn that no updater is associated with *it*: that flag is private
            # to the part (set only by a TargetNetUpdater built on it, which would also reset
            # its targets), so its warning, a public constant, is filtered here instead.
            warnings.filterwarnings("ignore", re.escape(self.TARGET_NET_WARNING), UserWarning)
            out = self.qvalue_loss(tensordict)
            out.update(self.actor_loss(tensordict))
        return out
