"""The core claim: a ``DiffusionActor`` trained by ``IDEMScoreLoss`` samples ``exp(Q(s, a) / T)``.

Setup. A fixed critic on the action box [-1, 1] and two states s in {-1, +1}:

    Q(s, a) = log( w(s) N(a; -0.5, 0.2^2) + (1 - w(s)) N(a; +0.5, 0.2^2) ),  w(+1) = 0.7,
    w(-1) = 0.3,

so the Boltzmann policy pi(a | s) ∝ exp(Q / T) has two modes whose masses are unequal and swap
with the state. At T = 1 the mass of a < 0 is ~0.70 / 0.30; at T = 0.5 (pi ∝ mixture^2) it is
~0.84 / 0.16. The exact masses are computed here by quadrature of exp(Q / T) over the box.

ONE score network (temperature is one of its inputs) is trained at both temperatures, on
latents of uniformly random actions (no sample of the target is ever used), and must then
reproduce the exact mass of a < 0 within 0.05 for all four (state, T) pairs. Since the exact
masses at the two temperatures differ by ~0.15 > 2 * 0.05, a network that ignored T (or s)
cannot pass.

Error budget of the 0.05 tolerance (torch 2.13, CPU):

- sampling noise of a mass from 4000 draws: standard error <= 0.008;
- the sampler starts at N(0, sigma_max^2), not at the noised target: with sigma_max = 2 an exact
  reverse SDE would give masses 0.012-0.014 too balanced (computed below; 0.035-0.045 with the
  paper's sigma_max = 1, which is why sigma_max = 2 here);
- the learned score: the rest. Measured max |error| over the four cases after the 5000 updates
  used here (torch 2.13, CPU, session 9): ``fidelity=paper`` (iDEM's gradient form, K=1000):
  0.028 and 0.027 with training seeds 1 (the one used) and 2, largest at T = 0.5 in state +1
  (0.817-0.819 vs 0.844) and T = 1 in state -1 (0.329-0.330 vs 0.302), towards 0.5;
  ``fidelity=fast`` (blend, K=16, K=2 at sigma <= 1e-2): 0.011 and 0.024 with seeds 1 and 2.
  With 8000 updates (this test's count until session 9) they were 0.024 / 0.026 (paper) and
  0.024 / 0.018 / 0.025 (fast, seeds 1-3): the last 3000 updates bought ~0.003 of accuracy for
  3/8 of the suite's two longest tests. The fast estimator trains a network that samples as
  well as the paper's K=1000 (issue 4), in a third to a half of the training time.

Settings (and why): sigma in [1e-2, 2]. Noise below 1e-2 does not move mass (the latent modes
are ~0.2 wide); above ~1.5 the K-sample iDEM target gets so noisy (sigma^2-weighted variance
~5-15 per sample at sigma 2-3 and T = 0.5, vs ~1 of signal) that it dominates the loss, so
sigma_max = 2 trades a 0.013 start bias for faster learning. Both temperatures in every update
(half batch each, losses summed); cosine learning-rate decay and an EMA of the weights
(``SoftUpdate``), which keep the final masses from wandering by +-0.02 between checkpoints;
5000 updates (above). Training CPU time on one core, with two RL runs sharing the 2-core
machine: 52-60 s (fast), 126-129 s (paper).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from tensordict import TensorDict
from torch import Tensor
from torchrl.data import Bounded
from torchrl.objectives import SoftUpdate

from dqs_torchrl import DiffusionActor, EnergyCritic, IDEMScoreLoss, ScoreNetwork, unsquash
from dqs_torchrl.experiments.configs import CONFIG_DIR

FIDELITY_DIR = CONFIG_DIR / "fidelity"
STATES = (1.0, -1.0)
TEMPERATURES = (1.0, 0.5)
LEFT_WEIGHT = 0.7  # w(+1); w(-1) = 1 - LEFT_WEIGHT
MODE, WIDTH = 0.5, 0.2  # modes at a = -MODE and +MODE, std WIDTH

SEED = 1
UPDATES = 5000
BATCH_PER_TEMPERATURE = 128
SIGMA_MIN, SIGMA_MAX, NUM_STEPS = 1e-2, 2.0, 200
NUM_DRAWS = 4000  # per (state, T)
TOLERANCE = 0.05


def score_estimator(fidelity: str) -> dict[str, Any]:
    """The Monte Carlo estimator settings of the recipes' ``fidelity=<fidelity>``
    (``dqs_torchrl/experiments/configs/fidelity/<fidelity>.yaml``)."""
    cfg = OmegaConf.load(FIDELITY_DIR / f"{fidelity}.yaml")
    keys = ("num_mc_samples", "num_mc_samples_small", "small_sigma", "estimator")
    return {key: cfg[key] for key in keys}


def q_value(observation: Tensor, action: Tensor) -> Tensor:
    """Q(s, a) for observations ``[..., 1]`` and actions ``[..., 1]``; returns ``[...]``.

    The mixture's log-density with the two Gaussians' common factor taken out (with
    z = a MODE / WIDTH^2): log(w N(a; -MODE) + (1 - w) N(a; MODE)) = log w - z
    + softplus(2 z + log((1 - w) / w)) - (a^2 + MODE^2) / (2 WIDTH^2) - log(WIDTH sqrt(2 pi)).
    Half the elementwise passes of the literal form: the paper preset evaluates it, with its
    gradient, at 1000 perturbed points per training latent (``test_q_value_is_the_mixture``
    checks it against the literal form)."""
    s, a = observation[..., 0], action[..., 0]
    left = s > 0
    log_w = torch.where(left, math.log(LEFT_WEIGHT), math.log1p(-LEFT_WEIGHT))
    log_odds = torch.where(left, 1.0, -1.0) * math.log((1.0 - LEFT_WEIGHT) / LEFT_WEIGHT)
    z = a * (MODE / WIDTH**2)
    constant = -0.5 * (MODE / WIDTH) ** 2 - math.log(WIDTH * math.sqrt(2 * math.pi))
    return F.softplus(2.0 * z + log_odds) - z + log_w - (0.5 / WIDTH**2) * a * a + constant


def test_q_value_is_the_mixture():
    s = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0]).unsqueeze(-1)
    a = torch.tensor([-1.0, -0.5, 0.0, 0.3, 0.9], dtype=torch.float64).unsqueeze(-1)
    w = torch.where(s[:, 0] > 0, LEFT_WEIGHT, 1.0 - LEFT_WEIGHT).double()
    normal = torch.distributions.Normal(torch.tensor([-MODE, MODE]).double(), WIDTH)
    literal = torch.log(
        w * normal.log_prob(a).exp()[:, 0] + (1 - w) * normal.log_prob(a).exp()[:, 1]
    )
    torch.testing.assert_close(q_value(s.double(), a), literal)


def boltzmann_negative_mass(state: float, temperature: float) -> float:
    """Exact mass of a < 0 under pi(a | s) ∝ exp(Q(s, a) / T) on [-1, 1] (fine-grid quadrature)."""
    a = torch.linspace(-1.0, 1.0, 200_001, dtype=torch.float64).unsqueeze(-1)
    log_p = q_value(torch.full_like(a, state), a) / temperature
    p = torch.exp(log_p - log_p.max())
    return (p[a[:, 0] < 0].sum() / p.sum()).item()


def prior_start_bias(state: float, temperature: float) -> float:
    """Mass error of an EXACT reverse SDE started at N(0, SIGMA_MAX^2) instead of at the noised
    target: E_{x1 ~ N(0, SIGMA_MAX^2)}[P(x0 < 0 | x1)] - P(x0 < 0), by quadrature in the latent
    x = atanh(a), whose density carries the tanh Jacobian (as the loss's does)."""
    x0 = torch.linspace(-5.0, 5.0, 4001, dtype=torch.float64)
    observation = torch.full((x0.numel(), 1), state, dtype=torch.float64)
    log_p = q_value(observation, torch.tanh(x0).unsqueeze(-1)) / temperature
    log_p = log_p + 2.0 * (math.log(2.0) - x0 - F.softplus(-2.0 * x0))  # log(1 - tanh^2)
    x1 = torch.linspace(-6 * SIGMA_MAX, 6 * SIGMA_MAX, 1201, dtype=torch.float64)
    posterior = torch.softmax(log_p - 0.5 * ((x1.unsqueeze(-1) - x0) / SIGMA_MAX) ** 2, dim=-1)
    start = torch.softmax(-0.5 * (x1 / SIGMA_MAX) ** 2, dim=0)
    ideal = (start * posterior[:, x0 < 0].sum(-1)).sum()
    return (ideal - torch.softmax(log_p, dim=0)[x0 < 0].sum()).item()


def uniform_action_latents(n: int) -> Tensor:
    """Latents of actions drawn uniformly on the box: a proposal that knows nothing of Q."""
    action = 2.0 * torch.rand(n, 1) - 1.0
    return unsquash(action, torch.tensor([-1.0]), torch.tensor([1.0]))


def train_actor(seed: int = SEED, updates: int = UPDATES, **estimator: Any) -> DiffusionActor:
    torch.manual_seed(seed)
    actor = DiffusionActor(
        ScoreNetwork(observation_dim=1, action_dim=1, num_cells=128, embedding_dim=64),
        Bounded(-1.0, 1.0, shape=(1,)),
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        num_steps=NUM_STEPS,
        ema=True,
    )
    critic = EnergyCritic(lambda s, a: -q_value(s, a), uses_observation=True)  # Q = -E
    loss = IDEMScoreLoss(actor, critic, **estimator)
    ema = SoftUpdate(loss, tau=0.002)  # the actor samples with this average
    params = list(actor.score_network.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, updates, eta_min=5e-5)
    for _ in range(updates):
        # The loss reads one scalar temperature: evaluate it once per temperature on half a
        # batch each and sum, so every update trains the network at both temperatures.
        total = 0.0
        for temperature in TEMPERATURES:
            loss.temperature = temperature
            observation = torch.randint(0, 2, (BATCH_PER_TEMPERATURE, 1)).float() * 2.0 - 1.0
            batch = TensorDict(
                observation=observation,
                action_raw=uniform_action_latents(BATCH_PER_TEMPERATURE),
                batch_size=[BATCH_PER_TEMPERATURE],
            )
            total = total + loss(batch)["loss_actor"]
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        schedule.step()
        ema.step()
    return actor


def sampled_negative_mass(actor: DiffusionActor, state: float, temperature: float) -> float:
    actions, _ = actor.sample(torch.full((NUM_DRAWS, 1), state), temperature)
    return (actions < 0).float().mean().item()


# The paper preset trains for ~2 min on a quiet core and can take twice that on a loaded machine:
# near the suite's 300 s default, which is meant for tests that hang, not for this one.
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("fidelity", ["paper", "fast"])
def test_learned_sampler_matches_the_boltzmann_mode_masses(fidelity):
    exact = {(s, t): boltzmann_negative_mass(s, t) for s in STATES for t in TEMPERATURES}
    # The target is a real test of both inputs: the heavy mode swaps with the state, and the
    # masses at the two temperatures are further apart than twice the tolerance, so a sampler
    # that ignored s or T would miss at least one case by more than TOLERANCE.
    for t in TEMPERATURES:
        assert exact[(1.0, t)] > 0.65 and exact[(-1.0, t)] < 0.35
    for s in STATES:
        assert abs(exact[(s, 0.5)] - exact[(s, 1.0)]) > 2 * TOLERANCE + 0.02
    # Starting the sampler at N(0, SIGMA_MAX^2) costs at most ~0.014 of the budget.
    for s, t in exact:
        assert abs(prior_start_bias(s, t)) < 0.02

    # One test function, not a module fixture shared by two tests: under pytest-xdist the two
    # tests could land on different workers and each would train its own network.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite runs under pytest-xdist -n 2 on two cores
    try:
        actor = train_actor(**score_estimator(fidelity))
        torch.manual_seed(0)
        measured = {key: sampled_negative_mass(actor, *key) for key in exact}
        deterministic = {
            t: actor.sample(torch.tensor([[1.0], [-1.0]]), t, deterministic=True)[0][:, 0]
            for t in TEMPERATURES
        }
    finally:
        torch.set_num_threads(threads)

    report = ", ".join(
        f"s={s:+.0f} T={t}: {measured[(s, t)]:.3f} vs {exact[(s, t)]:.3f}" for s, t in exact
    )
    for key in exact:
        assert abs(measured[key] - exact[key]) <= TOLERANCE, report
    # The temperature input is used: lowering T sharpens the imbalance in each state.
    for s in STATES:
        shift = abs(measured[(s, 0.5)] - 0.5) - abs(measured[(s, 1.0)] - 0.5)
        exact_shift = abs(exact[(s, 0.5)] - 0.5) - abs(exact[(s, 1.0)] - 0.5)
        assert shift > exact_shift / 2, report
    # Exploration off: the noiseless sampler from x = 0 ascends log p_sigma, which at large
    # sigma points towards the mean of pi(. | s), i.e. towards the heavier mode: the greedy
    # action must switch sides with the state, at both temperatures.
    for t, (plus, minus) in deterministic.items():
        assert plus < -0.2 and minus > 0.2, (t, plus, minus)
