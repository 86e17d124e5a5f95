"""Networks of the paper (appendix B): the score network and the Q-network builder."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchrl.modules import MLP, ValueOperator

__all__ = ["ScoreModel", "SplitScoreModel", "SinusoidalEmbedding", "ScoreNetwork", "make_q_network"]


@runtime_checkable
class ScoreModel(Protocol):
    """What [`DiffusionActor`][dqs_torchrl.DiffusionActor] samples with: an `nn.Module` whose
    `forward(observation, x, tau, temperature)` returns the score estimate, shaped like
    `x`.

    `observation` is `[n, obs_dim]`, `x` `[n, action_dim]`, `tau` and `temperature`
    `[n, 1]`. The actor calls the module once per sampler step (twice per Heun step).
    Optional attributes `observation_dim` and `action_dim` let the actor and the losses
    check the data's sizes. [`ScoreNetwork`][] is one; a network that also has
    [`SplitScoreModel`][]'s methods is sampled faster.

    Examples:
        >>> class MyScore(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mlp = nn.Linear(3 + 2 + 1 + 1, 2)
        ...     def forward(self, observation, x, tau, temperature):
        ...         return self.mlp(torch.cat([observation, x, tau, temperature], -1))
        >>> isinstance(MyScore(), ScoreModel), isinstance(MyScore(), SplitScoreModel)
        (True, False)
    """

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        """The score at `(s, x, tau, T)`."""
        ...


@runtime_checkable
class SplitScoreModel(ScoreModel, Protocol):
    """A [`ScoreModel`][] whose first layer splits into a `(s, T)` part, a `tau` part
    and the rest, with `forward(s, x, tau, T) == bind_head()(condition(s, T) +
    time_features(tau), x)`.

    [`DiffusionActor`][dqs_torchrl.DiffusionActor] detects these methods: it then computes
    `condition` once per sampling call and `time_features` once per grid, and each step
    pays only for the head. [`ScoreNetwork`][] implements it.

    Examples:
        >>> isinstance(ScoreNetwork(3, 2, 16, 8), SplitScoreModel)
        True
    """

    def condition(self, observation: Tensor, temperature: Tensor) -> Tensor:
        """Features of `(s, T)`, `[n, F]`."""
        ...

    def time_features(self, tau: Tensor) -> Tensor:
        """Features of the diffusion times `tau` (`[m, 1]`), `[m, F]`."""
        ...

    def bind_head(self) -> Callable[[Tensor, Tensor], Tensor]:
        """`head(features, x) -> score` with the current weights bound."""
        ...


class SinusoidalEmbedding(nn.Module):
    """Transformer-style embedding `[sin(scale * v * f_k), cos(scale * v * f_k)]`.

    Frequencies `f_k = max_period ** (-k / (dim / 2))`, `k = 0 .. dim/2 - 1`.

    Examples:
        >>> emb = SinusoidalEmbedding(8)
        >>> emb(torch.zeros(3, 1)).shape
        torch.Size([3, 8])
    """

    def __init__(self, dim: int = 256, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}.")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", scale * freqs, persistent=False)

    def forward(self, value: Tensor) -> Tensor:
        """Embed `value` of shape `[..., 1]` into `[..., dim]`."""
        arg = value * self.freqs
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class ScoreNetwork(nn.Module):
    """The DQS score network `f_phi(s, x_tau, tau, T)`.

    An MLP with two hidden layers (ReLU) and a residual skip around the second, whose first
    layer reads the state, the noisy latent action and sinusoidal embeddings of `tau` and of
    `log T`. The first layer is split into a part that depends only on `(s, T)`
    ([`condition`][]), one that depends only on `tau` ([`time_features`][]) and one on
    `x`, so a sampler computes the first two once and pays only for `x` at each step;
    [`forward`][] is literally `head(condition + time_features, x)`.

    Args:
        observation_dim: size of the state (0 for a plain energy without a state).
        action_dim: size of the action.
        num_cells: hidden width (paper: 256).
        embedding_dim: size of each sinusoidal embedding (paper: 256).

    Examples:
        >>> net = ScoreNetwork(observation_dim=3, action_dim=2, num_cells=32, embedding_dim=16)
        >>> s, x = torch.randn(5, 3), torch.randn(5, 2)
        >>> tau, temperature = torch.rand(5, 1), torch.full((5, 1), 0.1)
        >>> net(s, x, tau, temperature).shape
        torch.Size([5, 2])
    """

    def __init__(
        self, observation_dim: int, action_dim: int, num_cells: int = 256, embedding_dim: int = 256
    ) -> None:
        super().__init__()
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.tau_embedding = SinusoidalEmbedding(embedding_dim, scale=1000.0)
        # log T in [-5, 3] covers T from 0.007 to 20; a smaller scale keeps nearby T close.
        self.temperature_embedding = SinusoidalEmbedding(embedding_dim, scale=100.0)
        self.condition_layer = nn.Linear(observation_dim + embedding_dim, num_cells)
        self.time_layer = nn.Linear(embedding_dim, num_cells, bias=False)
        self.action_layer = nn.Linear(action_dim, num_cells, bias=False)
        self.hidden_layer = nn.Linear(num_cells, num_cells)
        self.output_layer = nn.Linear(num_cells, action_dim)

    def condition(self, observation: Tensor, temperature: Tensor) -> Tensor:
        """First-layer features of `(s, T)`; `temperature` has shape `[..., 1]`."""
        t_emb = self.temperature_embedding(torch.log(temperature))
        return self.condition_layer(torch.cat([observation, t_emb], dim=-1))

    def time_features(self, tau: Tensor) -> Tensor:
        """First-layer features of the diffusion time; `tau` has shape `[..., 1]`."""
        return self.time_layer(self.tau_embedding(tau))

    def head(self, features: Tensor, x: Tensor) -> Tensor:
        """The rest of the network given the summed `(s, T)` and `tau` features."""
        return self.bind_head()(features, x)

    def bind_head(self) -> Callable[[Tensor, Tensor], Tensor]:
        """[`head`][] with the current weights bound to local variables.

        A sampler calls the head once per step; binding once per sampling call skips
        `nn.Module` dispatch in that hot loop (about a third of a batch-1 step on CPU).
        """
        weights = self.head_weights()

        def head(features: Tensor, x: Tensor) -> Tensor:
            return score_head(features, x, *weights)

        return head

    def head_weights(self) -> tuple[Tensor, ...]:
        """The weights `score_head` takes after `(features, x)`."""
        return (
            self.action_layer.weight,
            self.hidden_layer.weight,
            self.hidden_layer.bias,
            self.output_layer.weight,
            self.output_layer.bias,
        )

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        """Score estimate at `(s, x, tau, T)`; `tau` and `temperature` are `[..., 1]`."""
        return self.head(self.condition(observation, temperature) + self.time_features(tau), x)


def score_head(
    features: Tensor, x: Tensor, w_a: Tensor, w_h: Tensor, b_h: Tensor, w_o: Tensor, b_o: Tensor
) -> Tensor:
    """[`ScoreNetwork.head`][] as a pure function of its weights (what compiled loops trace)."""
    h1 = torch.relu(features + F.linear(x, w_a))
    h2 = torch.relu(F.linear(h1, w_h, b_h)) + h1
    return F.linear(h2, w_o, b_o)


def make_q_network(
    observation_dim: int,
    action_dim: int,
    num_cells: Sequence[int] = (256, 256),
    observation_key: str = "observation",
    action_key: str = "action",
) -> ValueOperator:
    """A Q-network `Q(s, a)` (MLP, ReLU) reading `observation` and `action` and writing
    `state_action_value`, as [`DoubleQLoss`][] and TorchRL's `SACLoss` expect.

    Examples:
        >>> from tensordict import TensorDict
        >>> q = make_q_network(3, 2, num_cells=(16, 16))
        >>> td = TensorDict(observation=torch.randn(4, 3), action=torch.rand(4, 2), batch_size=[4])
        >>> td = q(td)
        >>> td["state_action_value"].shape
        torch.Size([4, 1])
    """
    mlp = MLP(
        in_features=observation_dim + action_dim,
        out_features=1,
        num_cells=list(num_cells),
        activation_class=nn.ReLU,
    )
    return ValueOperator(mlp, in_keys=[observation_key, action_key])
