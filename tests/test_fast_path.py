"""Fast paths against their references: same function, same numbers."""

import pytest
import torch
from torchrl.data import Bounded

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss, ScoreNetwork

torch.set_num_threads(1)
MU, S2, T = 0.3, 0.1, 0.5


def gaussian_loss(**kwargs) -> IDEMScoreLoss:
    # On the box [-1, 1], squash = tanh, so this Q makes the latent energy exactly
    # 0.5 (x - MU)^2 / S2 / T (no tanh correction): a Gaussian N(MU, S2 T) in x.
    def energy(a):
        return 0.5 * ((torch.atanh(a.clamp(-1 + 1e-6, 1 - 1e-6)) - MU) ** 2).sum(-1) / S2

    actor = DiffusionActor(ScoreNetwork(0, 2, 8, 8), Bounded(-1.0, 1.0, shape=(2,)))
    return IDEMScoreLoss(
        actor, EnergyCritic(energy), tanh_correction=False, temperature=T, **kwargs
    )


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.logspace(-4, 0, n).unsqueeze(-1)  # both sides of small_sigma=1e-2
    x = MU + 0.3 * torch.randn(n, 2, generator=g)
    return torch.zeros(n, 0), x, sigma


def test_adaptive_k_equals_separate_calls():
    """The fused two-group target equals two separate fixed-K calls with the same draws."""
    loss = gaussian_loss(num_mc_samples=32, num_mc_samples_small=2, small_sigma=1e-2)
    obs, x, sigma = batch()
    fused, diag = loss.score_target(obs, x, sigma, generator=torch.Generator().manual_seed(1))
    small = sigma.squeeze(-1) <= 1e-2
    g = torch.Generator().manual_seed(1)  # the fused path draws the large-sigma group first
    big_t, _ = loss.score_target(
        obs[~small], x[~small], sigma[~small], num_mc_samples=32, generator=g
    )
    small_t, small_diag = loss.score_target(
        obs[small], x[small], sigma[small], num_mc_samples=2, generator=g
    )
    # Same draws, same arithmetic except the batching of one matmul: float32 round-off only.
    torch.testing.assert_close(fused[~small], big_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[small], small_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diag["ess"][small], small_diag["ess"])


def test_adaptive_k_without_small_rows_is_the_fixed_k_estimator():
    loss = gaussian_loss(num_mc_samples=16, num_mc_samples_small=2, small_sigma=1e-6)
    obs, x, sigma = batch()
    a, _ = loss.score_target(obs, x, sigma, generator=torch.Generator().manual_seed(3))
    b, _ = loss.score_target(
        obs, x, sigma, num_mc_samples=16, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)


def test_small_k_is_accurate_where_sigma_is_small():
    """Where sigma <= 1e-2 the noised density is nearly the target: K=2 is within 2%."""
    loss = gaussian_loss(num_mc_samples=64, num_mc_samples_small=2, small_sigma=1e-2)
    obs, x, sigma = batch(256)
    target, _ = loss.score_target(obs, x, sigma, generator=torch.Generator().manual_seed(0))
    exact = -(x - MU) / (S2 * T + sigma**2)
    small = sigma.squeeze(-1) <= 1e-2
    rel = (target - exact).norm(dim=-1) / exact.norm(dim=-1)
    # The estimator's spread at sigma is ~ sigma / (S2 T) relative: <= 0.2 at sigma = 1e-2,
    # averaged over K=2 draws; the median over the small-sigma rows is far below 2%.
    assert rel[small].median() < 0.02
    assert rel[small].max() < 0.25


@pytest.mark.parametrize("steps", [10, 1000])
def test_actor_sampling_path_equals_plain_sampler(steps):
    """The actor's cached (s, T) and tau features give the same score as the plain forward."""
    from dqs_torchrl.samplers import sample_euler_maruyama

    torch.manual_seed(0)
    actor = DiffusionActor(
        ScoreNetwork(3, 2, 16, 8),
        Bounded(-1.0, 1.0, shape=(2,)),
        num_steps=steps,
        sigma_end=3e-2 if steps == 10 else None,
    )
    obs = torch.randn(5, 3)
    action, raw = actor.sample(obs, 0.3, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x = actor.schedule.sigma_max * torch.randn(5, 2, generator=g)
    with torch.no_grad():
        ref = sample_euler_maruyama(actor.score_fn(obs, 0.3), x, actor.sigmas, generator=g)
    # Split first layer vs one concatenated layer: float32 round-off accumulated over steps.
    torch.testing.assert_close(raw, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(action, actor.squash(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ancestral", "euler_maruyama"])
def test_compiled_sampler_loop_equals_eager_loop(sampler):
    """``compile_sampler=True`` traces the same steps with the same noise as the eager loop,
    exploration on and off, with the Tweedie step; only float32 rounding may differ
    (the compiled graph fuses ``x + c * score`` where the eager loop adds in place)."""
    torch.manual_seed(0)
    kwargs = dict(num_steps=10, sampler=sampler, sigma_end=1e-2, denoise=True, ema=True)
    eager = DiffusionActor(ScoreNetwork(3, 2, 16, 8), Bounded(-2.0, 2.0, shape=(2,)), **kwargs)
    compiled = DiffusionActor(
        ScoreNetwork(3, 2, 16, 8), Bounded(-2.0, 2.0, shape=(2,)), compile_sampler=True, **kwargs
    )
    compiled.load_state_dict(eager.state_dict())
    obs = torch.randn(4, 3)
    for deterministic in (False, True):
        a, x = eager.sample(
            obs, 0.3, deterministic=deterministic, generator=torch.Generator().manual_seed(5)
        )
        b, y = compiled.sample(
            obs, 0.3, deterministic=deterministic, generator=torch.Generator().manual_seed(5)
        )
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # The exploration noise is used: a different seed moves the sample.
    _, z = compiled.sample(obs, 0.3, generator=torch.Generator().manual_seed(6))
    _, x_random = compiled.sample(obs, 0.3, generator=torch.Generator().manual_seed(5))
    assert (z - x_random).abs().max() > 1e-2


def test_compile_sampler_rejects_heun():
    with pytest.raises(ValueError, match="compile_sampler needs sampler"):
        DiffusionActor(
            ScoreNetwork(3, 2, 16, 8),
            Bounded(-1.0, 1.0, shape=(2,)),
            sampler="heun",
            compile_sampler=True,
        )
