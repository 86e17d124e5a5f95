"""`DoubleQLoss`: policy evaluation for DQS with two Q-networks and Polyak targets."""

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
    dispatch_value_estimator,
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator, ValueEstimatorBase

from dqs_torchrl._checks import (
    as_bool_flag,
    check_last_dim,
    check_reduction,
    check_temperature,
    require_keys,
)
from dqs_torchrl.actor import DiffusionActor

__all__ = ["DoubleQLoss", "check_critic_keys"]


def check_critic_keys(
    critic: TensorDictModule, observation: NestedKey, action: NestedKey, value: NestedKey
) -> None:
    """Raise `ValueError` unless `critic` reads `observation` and `action` and writes
    `value`."""
    in_keys, out_keys = list(getattr(critic, "in_keys", [])), list(getattr(critic, "out_keys", []))
    missing = [k for k in (observation, action) if k not in in_keys]
    if missing or value not in out_keys:
        raise ValueError(
            f"the critic must read {observation!r} and {action!r} and write {value!r}; it reads "
            f"{in_keys} and writes {out_keys}. Remap with TensorDictModule(in_keys=..., "
            "out_keys=...) or loss.set_keys(...)."
        )


class DoubleQLoss(LossModule):
    """Critic loss of DQS: two Q-networks, Polyak targets, next actions from the actor.

    With the default TD(0) estimator,

    $$
    y = r + \\gamma (1 - \\mathrm{terminated}) V(s'), \\quad
    V(s') = \\min_j \\bar Q_j(s', a'), \\quad
    a' \\sim \\pi_\\phi(\\cdot|s') \\text{ at the loss's temperature}, \\qquad
    \\mathcal L = \\sum_j \\mathbb E (Q_j(s, a) - y)^2.
    $$

    There is no entropy bonus: DQS's Q is the plain Q of its Boltzmann policy. The two
    Q-networks are functional copies of `qvalue_network` (re-drawn by TorchRL's
    `convert_to_functional`: the module passed in is a template, not the trained critic);
    their Polyak targets are found by `SoftUpdate(loss, tau=0.005)`. Bootstrapping uses
    `("next", "terminated")`, so time limits (`truncated`) bootstrap as they should.

    The target comes from [`make_value_estimator`][] (discount `gamma=...`): TD(0), TD(1)
    or TD(lambda), given as TorchRL's `ValueEstimators` value, an estimator class or an
    instance. Each is fed the next-state values `V(s')` above; TD(1) and TD(lambda) then
    mix them along the time dimension (the last batch dimension, or the one named
    `"time"`): `y_t = r_t + gamma (1 - terminated_t) ((1 - lambda) V(s_{t+1}) + lambda
    y_{t+1})`, cut at `("next", "done")` and bootstrapped at the last step. Those need
    batches of trajectories (`[batch, time]`, or the flat slices of TorchRL's
    `SliceSampler`, which marks slice ends `done`), not independently drawn
    transitions.

    Each call also writes the per-sample TD error `max_j |Q_j(s, a) - y|` into the input
    tensordict under `tensor_keys.priority` (`"td_error"`), so that
    `TensorDictPrioritizedReplayBuffer.update_tensordict_priority(batch)` updates the
    priorities; the batch's `priority_weight` (importance weights of such a buffer), when
    present, weights the per-sample losses, as in TorchRL's losses.

    [`IDEMScoreLoss`][dqs_torchrl.IDEMScoreLoss] accepts this loss as its critic and then always
    reads the current parameters ([`min_q`][]).

    Args:
        actor_network: the [`DiffusionActor`][] drawing next actions.
        qvalue_network: a critic reading `observation` and `action` and writing
            `state_action_value` (e.g. [`make_q_network`][dqs_torchrl.make_q_network]).

    Keyword Args:
        num_qvalue_nets: number of Q-networks (2: double Q-learning).
        temperature: temperature of the next-action sampler; set by the scheduler.
        loss_function: `"l2"`, `"l1"` or `"smooth_l1"`.
        reduction: `"mean"` (default), `"sum"` or `"none"` (`loss_qvalue` per sample,
            in the batch's shape), as in TorchRL's losses. The diagnostics `q_mean`,
            `q_target_mean` and `td_error` (the mean absolute TD error) stay scalars.

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
        >>> batch["td_error"].shape  # the per-sample priority, written into the batch
        torch.Size([8])

        TD(lambda), on a batch shaped `[trajectories, time]`:

        >>> from torchrl.objectives import ValueEstimators
        >>> _ = loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=0.9)
        >>> trajectories = batch.reshape(2, 4)
        >>> loss(trajectories)["loss_qvalue"].shape, trajectories["td_error"].shape
        (torch.Size([]), torch.Size([2, 4]))
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read or written by the loss; change them with `set_keys`."""

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    _schedulable_buffers = frozenset({"temperature"})

    def __init__(
        self,
        actor_network: DiffusionActor,
        qvalue_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        temperature: float = 1.0,
        loss_function: str = "l2",
        reduction: str = "mean",
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
        self.reduction = check_reduction(reduction, type(self).__name__)
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
        self,
        value_type: ValueEstimators | type[ValueEstimatorBase] | ValueEstimatorBase | None = None,
        **hyperparams,
    ) -> DoubleQLoss:
        """Build the estimator of the critic's target, as TorchRL's `LossModule`.

        `value_type` is a `ValueEstimators` value (`TD0`, the default, `TD1` or
        `TDLambda`), an estimator class (built with `hyperparams`) or an estimator instance
        (used as it is). `hyperparams` are the estimator's: `gamma` (the discount),
        `lmbda` for TD(lambda). The estimator reads no value network: the loss hands it the
        next-state values of the actor's next actions under the target Q-networks.
        """
        if isinstance(value_type, ValueEstimatorBase):
            return super().make_value_estimator(value_type)
        if isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase):
            super().make_value_estimator(value_type, **{"value_network": None, **hyperparams})
            self.value_estimator.set_keys(**self._estimator_keys())
            return self
        dispatch_value_estimator(
            self,
            value_type or self.default_value_estimator,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys=self._estimator_keys(),
            **{"value_network": None, **hyperparams},
        )
        return self

    def _estimator_keys(self) -> dict[str, NestedKey]:
        k = self.tensor_keys
        return {"value": k.value, "reward": k.reward, "done": k.done, "terminated": k.terminated}

    def q_values(self, observation: Tensor, action: Tensor, *, target: bool = False) -> Tensor:
        """All Q-networks at `(s, a)`: shape `[num_qvalue_nets, *batch, 1]`.

        Uses the current parameters (detached: gradients reach `action` only), or the Polyak
        targets with `target=True`.
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
        """`min_j Q_j(s, a)` with the current, detached parameters: shape `[*batch, 1]`."""
        return self.q_values(observation, action).min(0).values

    def _target_value(self, tensordict: TensorDictBase) -> Tensor:
        """The estimator's target `y`, `[*batch, 1]`, from `V(s') = min_j Qbar_j(s', a')`."""
        k = self.tensor_keys
        with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
            next_obs = tensordict.get(("next", k.observation))
            next_action, _ = self.actor_network.sample(next_obs, self.temperature)
            next_value = self.q_values(next_obs, next_action, target=True).min(0).values
            return self.value_estimator.value_estimate(tensordict, next_value=next_value)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        k = self.tensor_keys
        # ("next", "done") is optional for TD(0), which bootstraps on "terminated" alone; the
        # multi-step estimators cut trajectories at "done" and need it. The others are always
        # needed: a batch without "terminated" would silently bootstrap through terminal
        # states, so it is refused rather than guessed.
        one_step = isinstance(self.value_estimator, TD0Estimator)
        required = [key for key in self.in_keys if key != ("next", k.done) or not one_step]
        require_keys(tensordict, required, "DoubleQLoss")
        priority_target = tensordict  # the caller's batch receives the per-sample td_error
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
        loss = distance_loss(pred, target.expand_as(pred), self.loss_function).sum(0)
        weights = self._maybe_get_priority_weight(tensordict)
        loss = self._reduce_loss(loss, tensordict, weights=weights)
        td_error = (pred.detach() - target).abs()
        # Per sample, the worst of the Q-networks (as SACLoss): the replay priority.
        priority_target.set(k.priority, td_error.max(0).values)
        return TensorDict(
            {
                "loss_qvalue": loss,
                "q_mean": pred.detach().mean(),
                "q_target_mean": target.mean(),
                "td_error": td_error.mean(),
            },
            batch_size=[],
        )
