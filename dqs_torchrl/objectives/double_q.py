"""``DoubleQLoss``: policy evaluation for DQS with two Q-networks and Polyak targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictParams
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    _vmap_func,
    default_value_kwargs,
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator

from dqs_torchrl._checks import as_bool_flag, check_last_dim, check_temperature, require_keys
from dqs_torchrl.actor import DiffusionActor

__all__ = ["DoubleQLoss", "check_critic_keys"]


def check_critic_keys(
    critic: TensorDictModule, observation: NestedKey, action: NestedKey, value: NestedKey
) -> None:
    """Raise ``ValueError`` unless ``critic`` reads ``observation`` and ``action`` and writes
    ``value``."""
    in_keys, out_keys = list(getattr(critic, "in_keys", [])), list(getattr(critic, "out_keys", []))
    missing = [k for k in (observation, action) if k not in in_keys]
    if missing or value not in out_keys:
        raise ValueError(
            f"the critic must read {observation!r} and {action!r} and write {value!r}; it reads "
            f"{in_keys} and writes {out_keys}. Remap with TensorDictModule(in_keys=..., "
            "out_keys=...) or loss.set_keys(...)."
        )


class DoubleQLoss(LossModule):
    """TD(0) critic loss of DQS: two Q-networks, Polyak targets, next actions from the actor.

    .. math::

        y = r + \\gamma (1 - \\mathrm{terminated}) \\min_j \\bar Q_j(s', a'), \\quad
        a' \\sim \\pi_\\phi(\\cdot|s') \\text{ at the loss's temperature}, \\qquad
        \\mathcal L = \\sum_j \\mathbb E (Q_j(s, a) - y)^2.

    There is no entropy bonus: DQS's Q is the plain Q of its Boltzmann policy. The two
    Q-networks are functional copies of ``qvalue_network`` (re-drawn by TorchRL's
    ``convert_to_functional``: the module passed in is a template, not the trained critic);
    their Polyak targets are found by ``SoftUpdate(loss, tau=0.005)``. The discount is set with
    ``make_value_estimator(gamma=...)``. Bootstrapping uses ``("next", "terminated")``, so time
    limits (``truncated``) bootstrap as they should.

    :class:`~dqs_torchrl.IDEMScoreLoss` accepts this loss as its critic and then always reads
    the current parameters (:meth:`min_q`).

    Args:
        actor_network: the :class:`~dqs_torchrl.DiffusionActor` drawing next actions.
        qvalue_network: a critic reading ``observation`` and ``action`` and writing
            ``state_action_value`` (e.g. :func:`~dqs_torchrl.make_q_network`).

    Keyword Args:
        num_qvalue_nets: number of Q-networks (2: double Q-learning).
        temperature: temperature of the next-action sampler; set by the scheduler.
        loss_function: ``"l2"``, ``"l1"`` or ``"smooth_l1"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Bounded
        >>> from torchrl.objectives import SoftUpdate
        >>> from dqs_torchrl import DiffusionActor, ScoreNetwork, make_q_network
        >>> actor = DiffusionActor(ScoreNetwork(3, 2, 32, 16), Bounded(-1.0, 1.0, shape=(2,)),
        ...                        num_steps=5)
        >>> loss = DoubleQLoss(actor, make_q_network(3, 2, num_cells=(32, 32)))
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> flags = torch.zeros(8, 1, dtype=torch.bool)
        >>> batch = TensorDict(observation=torch.randn(8, 3), action=torch.rand(8, 2),
        ...     next=TensorDict(observation=torch.randn(8, 3), reward=torch.randn(8, 1),
        ...     done=flags, terminated=flags, batch_size=[8]), batch_size=[8])
        >>> out = loss(batch)
        >>> out["loss_qvalue"].backward()
        >>> updater.step()
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read or written by the loss; change them with ``set_keys``."""

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    _schedulable_buffers = frozenset({"temperature"})

    def __init__(
        self,
        actor_network: DiffusionActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        temperature: float = 1.0,
        loss_function: str = "l2",
    ) -> None:
        super().__init__()
        check_critic_keys(
            qvalue_network,
            self.tensor_keys.observation,
            self.tensor_keys.action,
            self.tensor_keys.state_action_value,
        )
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}.")
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=True
        )
        # The actor is trained elsewhere: keep it out of this loss's parameters.
        self.__dict__["actor_network"] = actor_network
        self.num_qvalue_nets = num_qvalue_nets
        self.loss_function = loss_function
        self.register_coeff_buffer("temperature", check_temperature(temperature))
        self._vmap_qnetwork = _vmap_func(self.qvalue_network, (None, 0), randomness="error")

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [
            k.observation,
            k.action,
            ("next", k.observation),
            ("next", k.reward),
            ("next", k.done),
            ("next", k.terminated),
        ]

    @property
    def out_keys(self) -> list[str]:
        return ["loss_qvalue", "q_mean", "q_target_mean", "td_error"]

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams
    ) -> DoubleQLoss:
        """Build the TD(0) estimator; ``gamma`` is the discount (e.g. ``gamma=0.99``)."""
        value_type = value_type or self.default_value_estimator
        if value_type != ValueEstimators.TD0:
            raise NotImplementedError(f"DoubleQLoss supports TD(0) only, got {value_type}.")
        self.value_type = value_type
        self._value_estimator = TD0Estimator(
            **{**default_value_kwargs(value_type), **hyperparams}, value_network=None
        )
        k = self.tensor_keys
        self._value_estimator.set_keys(
            value=k.value, reward=k.reward, done=k.done, terminated=k.terminated
        )
        return self

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self.make_value_estimator(self.value_type, gamma=self._value_estimator.gamma)

    def q_values(self, observation: Tensor, action: Tensor, *, target: bool = False) -> Tensor:
        """All Q-networks at ``(s, a)``: shape ``[num_qvalue_nets, *batch, 1]``.

        Uses the current parameters (detached: gradients reach ``action`` only), or the Polyak
        targets with ``target=True``.
        """
        params = (
            self.target_qvalue_network_params if target else self.qvalue_network_params.detach()
        )
        td = TensorDict(
            {self.tensor_keys.observation: observation, self.tensor_keys.action: action},
            batch_size=observation.shape[:-1],
        )
        return self._vmap_qnetwork(td, params).get(self.tensor_keys.state_action_value)

    def min_q(self, observation: Tensor, action: Tensor) -> Tensor:
        """``min_j Q_j(s, a)`` with the current, detached parameters: shape ``[*batch, 1]``."""
        return self.q_values(observation, action).min(0).values

    def _target_value(self, tensordict: TensorDictBase) -> Tensor:
        k = self.tensor_keys
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            next_obs = tensordict.get(("next", k.observation))
            next_action, _ = self.actor_network.sample(next_obs, self.temperature)
            next_value = self.q_values(next_obs, next_action, target=True).min(0).values
            return self.value_estimator.value_estimate(tensordict, next_value=next_value)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._value_estimator is None:
            self.make_value_estimator()
        k = self.tensor_keys
        # ("next", "done") is optional (TD(0) bootstraps on "terminated" alone); the others are
        # needed, and a batch without "terminated" would silently bootstrap through terminal
        # states, so it is refused rather than guessed.
        require_keys(
            tensordict, [key for key in self.in_keys if key != ("next", k.done)], "DoubleQLoss"
        )
        tensordict = tensordict.copy()  # shallow: the flags below are replaced, not mutated
        for key in (("next", k.done), ("next", k.terminated)):
            flag = tensordict.get(key, None)
            if flag is not None:
                tensordict.set(key, as_bool_flag(flag, str(key), "DoubleQLoss"))
        obs_dim = getattr(self.actor_network.score_network, "observation_dim", None)
        check_last_dim(tensordict.get(k.observation), obs_dim, repr(k.observation), "DoubleQLoss")
        check_last_dim(
            tensordict.get(k.action),
            self.actor_network.low.shape[-1],
            repr(k.action),
            "DoubleQLoss",
        )
        target = self._target_value(tensordict).squeeze(-1)
        td = tensordict.select(k.observation, k.action)
        pred = self._vmap_qnetwork(td, self.qvalue_network_params).get(k.state_action_value)
        pred = pred.squeeze(-1)
        loss = distance_loss(pred, target.expand_as(pred), self.loss_function).sum(0).mean()
        return TensorDict(
            {
                "loss_qvalue": loss,
                "q_mean": pred.detach().mean(),
                "q_target_mean": target.mean(),
                "td_error": (pred.detach() - target).abs().mean(),
            },
            batch_size=[],
        )
