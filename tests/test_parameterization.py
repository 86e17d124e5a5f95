"""``DiffusionActor(parameterization="noise")``: the network outputs ``sigma * score`` and every
reader of the score (each sampler path, the matched prior's centre, the Tweedie step, the
compiled loop, ``IDEMScoreLoss``) divides it by ``sigma``. Checked against an actor with the
paper's parameterization whose (plain, non-split) network divides the same weights' output
by ``sigma`` itself: the two must draw the same samples and give the same loss."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tensordict import TensorDict
from torch import Tensor, nn
from torchrl.data import Bounded

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss, ScoreNetwork
from dqs_torchrl.schedules import GeometricSchedule

SPEC = Bounded(torch.tensor([-2.0, 0.0]), torch.tensor([1.0, 3.0]), shape=(2,))


class DividedBySigma(nn.Module):
    """A plain score model: ``net(s, x, tau, T) / sigma(tau)`` (no split features)."""

    def __init__(self, net: ScoreNetwork, schedule: GeometricSchedule) -> None:
        super().__init__()
        self.net, self.schedule = net, schedule
        self.observation_dim, self.action_dim = net.observation_dim, net.action_dim

    def forward(self, observation: Tensor, x: Tensor, tau: Tensor, temperature: Tensor) -> Tensor:
        return self.net(observation, x, tau, temperature) / self.schedule.sigma(tau)


def actor_pair(**kwargs) -> tuple[DiffusionActor, DiffusionActor]:
    torch.manual_seed(0)
    net = ScoreNetwork(3, 2, 16, 8)
    noise = DiffusionActor(net, SPEC, parameterization="noise", **kwargs)
    reference = DiffusionActor(
        DividedBySigma(copy.deepcopy(net), noise.schedule), SPEC, parameterization="score", **kwargs
    )
    return noise, reference


@pytest.mark.parametrize(
    ("sampler", "prior"),
    [("euler_maruyama", "paper"), ("ancestral", "matched"), ("heun", "matched")],
)
def test_noise_actor_samples_the_network_divided_by_sigma(sampler, prior):
    kwargs = dict(num_steps=6, sampler=sampler, sigma_max=1.5, sigma_min=1e-2, prior=prior)
    noise, reference = actor_pair(denoise=True, **kwargs)
    assert noise.split_features and not reference.split_features  # two different code paths
    obs = torch.randn(16, 3)
    for deterministic in (False, True):
        draws = [
            actor.sample(
                obs, 0.4, deterministic=deterministic, generator=torch.Generator().manual_seed(3)
            )[1]
            for actor in (noise, reference)
        ]
        torch.testing.assert_close(draws[0], draws[1], rtol=1e-5, atol=1e-5)
    # Not a vacuous equality: the paper's parameterization of the same weights samples
    # something else (its outputs are read as scores, 1 / sigma smaller at small sigma).
    plain = DiffusionActor(copy.deepcopy(noise.score_network), SPEC, denoise=True, **kwargs)
    other = plain.sample(obs, 0.4, generator=torch.Generator().manual_seed(3))[1]
    same = noise.sample(obs, 0.4, generator=torch.Generator().manual_seed(3))[1]
    assert (other - same).abs().max() > 1e-2


def test_noise_actor_score_fn_and_loss_read_the_scaled_output():
    noise, reference = actor_pair(num_steps=4)
    obs, x = torch.randn(8, 3), torch.randn(8, 2)
    for sigma in (0.01, 0.3, 1.0):
        torch.testing.assert_close(
            noise.score_fn(obs, 0.5)(x, sigma), reference.score_fn(obs, 0.5)(x, sigma)
        )

    def q(observation: Tensor, action: Tensor) -> Tensor:
        return -(action - observation[..., :2]).pow(2).sum(-1)

    batch = TensorDict(observation=obs, action=SPEC.rand((8,)), batch_size=[8])
    losses = []
    for actor in (noise, reference):
        loss = IDEMScoreLoss(actor, EnergyCritic(q, uses_observation=True), num_mc_samples=8)
        loss.temperature = 0.5
        torch.manual_seed(11)
        losses.append(loss(batch.clone())["loss_actor"])
    torch.testing.assert_close(losses[0], losses[1])
    # and the gradient reaches the noise actor's own network
    losses[0].backward()
    assert noise.score_network.output_layer.weight.grad.abs().sum() > 0


def test_compiled_noise_actor_equals_the_eager_one():
    kwargs = dict(num_steps=4, sampler="ancestral", sigma_end=1e-2, denoise=True, prior="matched")
    eager, _ = actor_pair(**kwargs)
    compiled = DiffusionActor(
        ScoreNetwork(3, 2, 16, 8), SPEC, parameterization="noise", compile_sampler=True, **kwargs
    )
    compiled.load_state_dict(eager.state_dict())
    obs = torch.randn(4, 3)
    for deterministic in (False, True):
        x, y = (
            actor.sample(
                obs, 0.3, deterministic=deterministic, generator=torch.Generator().manual_seed(5)
            )[1]
            for actor in (eager, compiled)
        )
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


def test_unknown_parameterization_is_named():
    with pytest.raises(
        ValueError, match=r"parameterization must be one of \['score', 'noise'\], got 'eps'"
    ):
        DiffusionActor(ScoreNetwork(3, 2, 16, 8), SPEC, parameterization="eps")


def test_noise_parameterization_warns_where_the_weight_floor_dominates():
    """With sigma^2 + 1e-3 weighting, a noise-output network's error at sigma is weighted
    1 + 1e-3 / sigma^2: 1e7 at the paper's sigma_min = 1e-5. The loss says so; at 1e-2 not."""
    critic = EnergyCritic(lambda a: -a.pow(2).sum(-1))
    net = ScoreNetwork(0, 2, 16, 8)
    low = DiffusionActor(net, SPEC, parameterization="noise", sigma_min=1e-5)
    with pytest.warns(UserWarning, match=r"sigma_min=1e-05.*up to 1e\+07"):
        IDEMScoreLoss(low, critic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IDEMScoreLoss(DiffusionActor(net, SPEC, parameterization="noise", sigma_min=1e-2), critic)
        IDEMScoreLoss(DiffusionActor(net, SPEC, sigma_min=1e-5), critic)  # the paper's: silent
