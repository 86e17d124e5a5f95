"""`QSMLoss`: the Q-score matching baseline (Psenka et al., 2024) on the DQS actor."""

from __future__ import annotations

import torch
from torch import Tensor

from dqs_torchrl.actor import DiffusionActor
from dqs_torchrl.objectives.double_q import DoubleQLoss
from dqs_torchrl.objectives.idem import IDEMScoreLoss

__all__ = ["QSMLoss"]


class QSMLoss(IDEMScoreLoss):
    """Q-score matching: regress the score network onto `M * grad_x Q(s, squash(x))`.

    The same data flow and loss as [`IDEMScoreLoss`][] (noised replay latents, the same
    weighting), but the target is the scaled action gradient of the critic at the noisy point
    itself: no Monte Carlo average over the noise, no temperature, no change of variables.
    The policy it learns follows `grad Q` rather than sampling `exp(Q/T)`, which is why it
    collapses onto one mode where DQS keeps several.

    Args:
        actor_network: the [`DiffusionActor`][] to train.
        critic: a [`DoubleQLoss`][] or a critic TensorDict module.

    Keyword Args:
        scale: `M`, the gradient scale (QSM's `alpha`).
        max_score_norm: as in [`IDEMScoreLoss`][].
        loss_weighting: as in [`IDEMScoreLoss`][].
        reduction: as in [`IDEMScoreLoss`][].

    Examples:
        >>> from torchrl.data import Bounded
        >>> from tensordict import TensorDict
        >>> from dqs_torchrl import DiffusionActor, EnergyCritic, ScoreNetwork
        >>> actor = DiffusionActor(ScoreNetwork(0, 1, 16, 8), Bounded(-1.0, 1.0, shape=(1,)))
        >>> loss = QSMLoss(actor, EnergyCritic(lambda a: (a ** 2).sum(-1)), scale=2.0)
        >>> x = torch.full((1, 1), 0.5)
        >>> target, _ = loss.score_target(torch.zeros(1, 0), x, torch.zeros(1, 1))
        >>> # Q = -tanh(x)^2, so M dQ/dx = -2 * 2 tanh(x) (1 - tanh(x)^2)
        >>> t = torch.tanh(x)
        >>> torch.allclose(target, -4 * t * (1 - t ** 2))
        True
    """

    def __init__(
        self,
        actor_network: DiffusionActor,
        critic: DoubleQLoss,
        *,
        scale: float = 1.0,
        max_score_norm: float | None = None,
        loss_weighting: str = "sigma2",
        reduction: str = "mean",
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}.")
        super().__init__(
            actor_network,
            critic,
            num_mc_samples=1,
            max_score_norm=max_score_norm,
            tanh_correction=False,
            loss_weighting=loss_weighting,
            reduction=reduction,
        )
        self.scale = float(scale)

    def score_target(
        self, observation: Tensor, x: Tensor, sigma: Tensor, **kwargs
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`M * grad_x Q(s, squash(x))` at the noisy latent `x` (`sigma` unused)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            q = self.q_value(observation, self.actor_network.squash(x))
            (grad,) = torch.autograd.grad(q.sum(), x)
        target = self.scale * grad
        clipped = torch.zeros(target.shape[:-1], dtype=torch.bool, device=x.device)
        if self.max_score_norm is not None:
            norm = target.norm(dim=-1, keepdim=True)
            clipped = norm.squeeze(-1) > self.max_score_norm
            target = target * (self.max_score_norm / norm.clamp_min(self.max_score_norm))
        return target, {"ess": torch.ones_like(clipped, dtype=target.dtype), "clipped": clipped}
