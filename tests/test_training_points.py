"""``IDEMScoreLoss(uniform_fraction=...)``: training latents drawn uniformly on the action box
next to the replay's (issue 11, item 2)."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss, ScoreNetwork

torch.set_num_threads(1)

REPLAY = 20.0  # a replay latent no uniform draw can produce (|atanh| <= 7.3 after clipping)


def _loss(dim: int = 2, energy: str = "squashed", **kwargs) -> IDEMScoreLoss:
    torch.manual_seed(0)
    actor = DiffusionActor(
        ScoreNetwork(1, dim, num_cells=32, embedding_dim=16),
        Bounded(torch.tensor([-2.0, 0.0][:dim]), torch.tensor([1.0, 3.0][:dim]), shape=(dim,)),
    )
    # A two-mode energy with a curvature, so that targets and the regression are not trivial.
    critic = EnergyCritic(lambda s, a: (a**2 - 1.0).pow(2).sum(-1) - s[..., 0], True)
    return IDEMScoreLoss(actor, critic, num_mc_samples=8, energy=energy, **kwargs)


def _batch(n: int, dim: int = 2, value: float = REPLAY) -> TensorDict:
    return TensorDict(
        observation=torch.randn(n, 1, generator=torch.Generator().manual_seed(1)),
        action=torch.full((n, dim), 0.5),
        action_raw=torch.full((n, dim), value),
        batch_size=[n],
    )


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_the_fraction_of_uniform_training_latents_is_the_one_asked(fraction):
    loss = _loss(uniform_fraction=fraction)
    latents = loss.training_latents(_batch(40))
    uniform = (latents != REPLAY).all(-1)
    assert int(uniform.sum()) == math.floor(fraction * 40 + 0.5)
    assert ((latents == REPLAY).all(-1) | uniform).all()  # no row half-replaced


def test_uniform_latents_are_the_latents_of_uniform_box_actions():
    # squashed: tanh of the latent is U(-1, 1) per coordinate (quarters of mass 0.25 each,
    # standard error 0.003 with 20,000 draws); unbounded: the latent is U(-1, 1) itself.
    for energy, to_unit in (("squashed", torch.tanh), ("unbounded", lambda x: x)):
        torch.manual_seed(3)
        u = to_unit(_loss(energy=energy, uniform_fraction=1.0).uniform_latents(20_000))
        assert u.shape == (20_000, 2) and bool((u.abs() < 1).all())
        quarters = torch.bucketize(u, torch.tensor([-0.5, 0.0, 0.5]))
        for j in range(2):
            fractions = torch.bincount(quarters[:, j], minlength=4) / 20_000
            assert (fractions - 0.25).abs().max() < 0.015, (energy, fractions)


def test_zero_fraction_is_the_replay_loss_bit_for_bit():
    # The loss without the option, written out from its public pieces with the same global
    # seed: replay latents, tau ~ U[0, 1], x = x_a + sigma eps, the K-sample target, the
    # sigma^2-weighted regression. Any extra random draw at fraction 0 would change it.
    batch = _batch(32, value=0.3)
    batch["action_raw"] = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    loss = _loss(uniform_fraction=0.0)
    torch.manual_seed(5)
    got = loss(batch)["loss_actor"]

    torch.manual_seed(5)
    x_a, obs = batch["action_raw"], batch["observation"]
    tau = torch.rand_like(x_a[:, :1])
    sigma = loss.actor_network.schedule.sigma(tau)
    x = x_a + sigma * torch.randn_like(x_a)
    target, _ = loss.score_target(obs, x, sigma)
    pred = loss.actor_network.score_network(obs, x, tau, loss.temperature.expand_as(tau))
    expected = ((pred - target).pow(2).sum(-1, keepdim=True) * (sigma**2 + 1e-3)).mean()
    assert torch.equal(got, expected)
    default = _loss()  # the class default is 0
    torch.manual_seed(5)
    assert torch.equal(default(batch)["loss_actor"], got)


def test_full_fraction_ignores_the_replay_latents():
    # With every latent drawn uniformly, the loss no longer depends on the replay's latents.
    loss = _loss(uniform_fraction=1.0)
    values = []
    for value in (0.0, 5.0):
        torch.manual_seed(7)
        values.append(loss(_batch(16, value=value))["loss_actor"])
    assert torch.equal(values[0], values[1])
    replay = _loss()
    torch.manual_seed(7)
    assert not torch.equal(replay(_batch(16, value=0.0))["loss_actor"], values[0])


def test_uniform_rows_keep_the_batch_shape_and_reduction():
    loss = _loss(uniform_fraction=0.3, reduction="none")
    batch = _batch(20).reshape(4, 5)
    out = loss(batch)["loss_actor"]
    assert out.shape == (4, 5) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_uniform_fraction_is_checked(value):
    with pytest.raises(ValueError, match=r"uniform_fraction must be a number in \[0, 1\]"):
        _loss(uniform_fraction=value)


def test_batch_rows_is_the_loss_of_the_first_rows():
    # batch_rows=n regresses on the first n rows only: the same number, draw for draw, as the
    # loss of those rows given alone; and not the loss of all the rows.
    batch = _batch(32, value=0.3)
    batch["action_raw"] = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    batch["priority_weight"] = torch.rand(32, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    got = _loss(batch_rows=8)(batch)["loss_actor"]
    torch.manual_seed(5)
    alone = _loss()(batch[:8])["loss_actor"]
    torch.manual_seed(5)
    every = _loss()(batch)["loss_actor"]
    assert torch.equal(got, alone)
    assert not torch.equal(got, every)
    # A batch no larger than batch_rows is used whole; reduction="none" gives one loss per row
    # used, flat, whatever the batch's shape.
    torch.manual_seed(5)
    assert torch.equal(_loss(batch_rows=32)(batch)["loss_actor"], every)
    for rows, expected in ((6, (6,)), (32, (20,))):
        out = _loss(batch_rows=rows, reduction="none")(_batch(20).reshape(4, 5))["loss_actor"]
        assert out.shape == expected
    # Rows the batch's dims do not cover (a 0-dim tensordict holding 10 rows) are refused,
    # not silently all used.
    flat = TensorDict(observation=torch.zeros(10, 1), action_raw=torch.zeros(10, 2))
    with pytest.raises(ValueError, match=r"batch_rows=4.*10 rows, batch_size \[\]"):
        _loss(batch_rows=4)(flat)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_batch_rows_is_checked(value):
    with pytest.raises(ValueError, match=r"batch_rows must be an integer >= 1"):
        _loss(batch_rows=value)
