"""The latent energy of the Boltzmann policy and the map from latent to bounded actions.

The policy lives on the action box `[low, high]`; the diffusion runs in an unbounded latent
`x` mapped by `a = squash(x) = low + (tanh(x) + 1) (high - low) / 2`. For `exp(-E)` in
`x` to be the image of `pi(a|s) ∝ exp(Q(s,a)/T)` on the box, the latent log-density
carries the change of variables:

$$
-E(s, x) = Q(s, \\mathrm{squash}(x)) / T + \\sum_j \\log(1 - \\tanh(x_j)^2) + \\mathrm{const}.
$$

The paper-literal form drops the log-Jacobian (then `exp(-E)` is not normalisable in `x`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tensordict.nn import TensorDictModule
from torch import Tensor, nn

__all__ = ["squash", "unsquash", "tanh_log_jacobian", "EnergyCritic"]


def squash(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Map a latent `x` to the box: `low + (tanh(x) + 1) * (high - low) / 2`.

    Examples:
        >>> squash(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([4.0]))
        tensor([1.])
    """
    return low + (torch.tanh(x) + 1.0) * (high - low) / 2.0


def unsquash(action: Tensor, low: Tensor, high: Tensor, eps: float = 1e-6) -> Tensor:
    """Inverse of [`squash`][], clipped away from the box faces by `eps`.

    Examples:
        >>> low, high = torch.tensor([-2.0]), torch.tensor([4.0])
        >>> unsquash(squash(torch.tensor([0.3]), low, high), low, high)
        tensor([0.3000])
    """
    u = (2.0 * (action - low) / (high - low) - 1.0).clamp(-1.0 + eps, 1.0 - eps)
    return torch.atanh(u)


def tanh_log_jacobian(x: Tensor) -> Tensor:
    """`sum_j log(1 - tanh(x_j)^2)`, computed as `2 (log 2 - x - softplus(-2x))`.

    The rewritten form stays finite where tanh saturates (`|x| > 10`).

    Examples:
        >>> x = torch.tensor([[0.5, -30.0]])
        >>> bool(torch.isfinite(tanh_log_jacobian(x)).all())
        True
        >>> naive = torch.log(1 - torch.tanh(torch.tensor([[0.5]])) ** 2).sum(-1)
        >>> torch.allclose(tanh_log_jacobian(torch.tensor([[0.5]])), naive)
        True
    """
    return (2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))).sum(-1)


class _NegEnergy(nn.Module):
    def __init__(self, energy_fn: Callable[..., Tensor], uses_observation: bool) -> None:
        super().__init__()
        self.energy_fn = energy_fn
        self.uses_observation = uses_observation

    def forward(self, observation: Tensor, action: Tensor) -> Tensor:
        energy = (
            self.energy_fn(observation, action) if self.uses_observation else self.energy_fn(action)
        )
        return -energy.unsqueeze(-1)


class EnergyCritic(TensorDictModule):
    """Wrap a user energy `E(a)` (or `E(s, a)`) as a critic with `Q = -E`.

    With it, [`IDEMScoreLoss`][dqs_torchrl.IDEMScoreLoss] trains a
    [`DiffusionActor`][dqs_torchrl.DiffusionActor] to sample `p(a) ∝ exp(-E(a) / T)` on the actor's
    action box, outside any RL loop.

    Args:
        energy_fn: `E(action) -> Tensor[...]` or, with `uses_observation=True`,
            `E(observation, action) -> Tensor[...]`. No parameters are needed.
        uses_observation: whether `energy_fn` takes the observation.

    Examples:
        >>> from tensordict import TensorDict
        >>> critic = EnergyCritic(lambda a: (a ** 2).sum(-1))
        >>> td = TensorDict(observation=torch.zeros(2, 0), action=torch.ones(2, 3), batch_size=[2])
        >>> critic(td)["state_action_value"]
        tensor([[-3.],
                [-3.]])
    """

    def __init__(
        self,
        energy_fn: Callable[..., Tensor],
        uses_observation: bool = False,
        observation_key: str = "observation",
        action_key: str = "action",
    ) -> None:
        super().__init__(
            _NegEnergy(energy_fn, uses_observation),
            in_keys=[observation_key, action_key],
            out_keys=["state_action_value"],
        )
