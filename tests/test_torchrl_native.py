"""The objectives and the actor as TorchRL users expect them (issue 9, item 4): every value
estimator kind, ``reduction``, per-sample priorities for a prioritized buffer, buffers that stay
buffers, no private TorchRL state in ``DQSLoss``, and any score network with a plain forward."""

import ast
import functools
import inspect
import math
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, LazyTensorStorage, TensorDictPrioritizedReplayBuffer
from torchrl.objectives import LossModule, SoftUpdate, ValueEstimators
from torchrl.objectives.value import TD1Estimator, TDLambdaEstimator

import dqs_torchrl.objectives.dqs
from dqs_torchrl import (
    DiffusionActor,
    DoubleQLoss,
    DQSLoss,
    EnergyCritic,
    IDEMScoreLoss,
    ScoreModel,
    ScoreNetwork,
    SplitScoreModel,
    make_q_network,
)
from dqs_torchrl.schedules import GeometricSchedule

torch.set_num_threads(1)
OBS_DIM, ACT_DIM = 3, 2


class ObservationValue(nn.Module):
    """``Q(s, a) = s_0``: next-state values that do not depend on the sampled next action."""

    def __init__(self) -> None:
        super().__init__()
        # A single 1.0: convert_to_functional's re-draw (uniform in [min, max]) keeps it.
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.scale * observation[..., :1] + 0.0 * action[..., :1]


def _actor(obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM, **kwargs) -> DiffusionActor:
    torch.manual_seed(0)
    spec = Bounded(-1.0, 1.0, shape=(act_dim,))
    return DiffusionActor(ScoreNetwork(obs_dim, act_dim, 16, 8), spec, num_steps=4, **kwargs)


def _observation_value_loss(**kwargs) -> DoubleQLoss:
    critic = TensorDictModule(
        ObservationValue(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    return DoubleQLoss(_actor(1, 1), critic, **kwargs)


def _transitions(shape, obs_dim=OBS_DIM, act_dim=ACT_DIM, seed=0, done_every=None):
    g = torch.Generator().manual_seed(seed)
    flags = torch.zeros(*shape, 1, dtype=torch.bool)
    done, terminated = flags.clone(), flags.clone()
    if done_every is not None:  # a truncation and a termination inside the trajectories
        done[..., done_every - 1 :: done_every, :] = True
        terminated[..., 2 * done_every - 1 :: 2 * done_every, :] = True
    nxt = TensorDict(
        observation=torch.randn(*shape, obs_dim, generator=g),
        reward=torch.randn(*shape, 1, generator=g),
        done=done,
        terminated=terminated,
        batch_size=shape,
    )
    return TensorDict(
        observation=torch.randn(*shape, obs_dim, generator=g),
        action=torch.rand(*shape, act_dim, generator=g) * 2 - 1,
        next=nxt,
        batch_size=shape,
    )


# --- make_value_estimator: TD(0), TD(1), TD(lambda) as enum, class or instance --------------


def test_td_lambda_with_lambda_zero_is_td0_on_trajectories():
    loss = DoubleQLoss(_actor(), make_q_network(OBS_DIM, ACT_DIM, (16,)))
    batch = _transitions((4, 6), done_every=2)
    results = []
    for value_type, kwargs in (
        (ValueEstimators.TD0, {}),
        # TorchRL 0.14.1's vectorized TD(lambda) fails for gamma * lambda below 1e-7 (its
        # geometric filter is empty: IndexError); the loop form computes the same returns.
        (ValueEstimators.TDLambda, {"lmbda": 0.0, "vectorized": False}),
    ):
        loss.make_value_estimator(value_type, gamma=0.9, **kwargs)
        data = batch.clone()
        torch.manual_seed(3)  # the same next actions in both calls
        out = loss(data)
        results.append((out, data["td_error"]))
    (td0, td0_priority), (lam, lam_priority) = results
    assert td0_priority.shape == (4, 6)
    torch.testing.assert_close(lam_priority, td0_priority)
    torch.testing.assert_close(lam["loss_qvalue"], td0["loss_qvalue"])
    torch.testing.assert_close(lam["q_target_mean"], td0["q_target_mean"])


# Two trajectories of three steps, gamma = 0.5, rewards 1, next-state values V = 1, 2, 4 and
# Q(s, a) = 0, so the per-sample td_error is the return y itself. Row 0 never ends (its last
# step bootstraps on V = 4); row 1 is truncated after step 1 (done, not terminated: bootstrap
# on V = 2 and restart) and terminates after step 2 (no bootstrap).
#   TD(0):          y_t = 1 + 0.5 V_{t+1}
#   TD(1):          row 0: y_2 = 1 + 0.5*4 = 3, y_1 = 1 + 0.5*3 = 2.5, y_0 = 1 + 0.5*2.5 = 2.25
#                   row 1: y_2 = 1, y_1 = 1 + 0.5*2 = 2, y_0 = 1 + 0.5*2 = 2
#   TD(lambda=0.5): y_t = 1 + 0.5 (0.5 V_{t+1} + 0.5 y_{t+1})
#                   row 0: 3, 1 + 0.5 (1 + 3) / 2 = 2, ... y_1 = 2.25, y_0 = 1.8125
#                   row 1: 1, 2, y_0 = 1 + 0.5 (0.5 + 1) = 1.75
RETURNS = {
    "td0": [[1.5, 2.0, 3.0], [1.5, 2.0, 1.0]],
    "td1": [[2.25, 2.5, 3.0], [2.0, 2.0, 1.0]],
    "td_lambda": [[1.8125, 2.25, 3.0], [1.75, 2.0, 1.0]],
}


def _hand_trajectories() -> TensorDict:
    done = torch.zeros(2, 3, 1, dtype=torch.bool)
    terminated = done.clone()
    done[1, 1:] = True
    terminated[1, 2] = True
    next_values = torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1).expand(2, 3, 1)
    nxt = TensorDict(
        observation=next_values.clone(),
        reward=torch.ones(2, 3, 1),
        done=done,
        terminated=terminated,
        batch_size=[2, 3],
    )
    return TensorDict(
        observation=torch.zeros(2, 3, 1), action=torch.zeros(2, 3, 1), next=nxt, batch_size=[2, 3]
    )


@pytest.mark.parametrize(
    "value_type, kwargs, expected",
    [
        (ValueEstimators.TD0, {"gamma": 0.5}, "td0"),
        (ValueEstimators.TD1, {"gamma": 0.5}, "td1"),
        (ValueEstimators.TDLambda, {"gamma": 0.5, "lmbda": 0.5}, "td_lambda"),
        ("tdlambda", {"gamma": 0.5, "lmbda": 0.5}, "td_lambda"),  # TorchRL's string alias
        (TD1Estimator, {"gamma": 0.5}, "td1"),  # a class, built with the hyperparameters
        (TDLambdaEstimator(gamma=0.5, lmbda=0.5, value_network=None), {}, "td_lambda"),
    ],
    ids=["TD0", "TD1", "TDLambda", "alias", "class", "instance"],
)
def test_estimators_give_the_hand_computed_returns(value_type, kwargs, expected):
    loss = _observation_value_loss()
    assert loss.make_value_estimator(value_type, **kwargs) is loss
    batch = _hand_trajectories()
    out = loss(batch)
    want = torch.tensor(RETURNS[expected])
    torch.testing.assert_close(batch["td_error"], want)
    torch.testing.assert_close(out["q_target_mean"], want.mean())
    torch.testing.assert_close(out["loss_qvalue"], 2 * want.pow(2).mean())  # two Q-networks


def test_renamed_keys_reach_the_estimator_and_keep_its_hyperparameters():
    loss = _observation_value_loss()
    loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.5, lmbda=0.5)
    batch = _hand_trajectories().rename_key_(("next", "reward"), ("next", "r"))
    loss.set_keys(reward="r")
    assert float(loss.value_estimator.lmbda) == 0.5
    loss(batch)
    torch.testing.assert_close(batch["td_error"], torch.tensor(RETURNS["td_lambda"]))


def test_unsupported_estimator_names_the_supported_ones():
    loss = _observation_value_loss()
    with pytest.raises(NotImplementedError, match="TD0.*TD1.*TDLambda|Supported"):
        loss.make_value_estimator(ValueEstimators.GAE, gamma=0.5)


def test_multi_step_estimators_need_the_done_flag():
    loss = _observation_value_loss()
    batch = _hand_trajectories()
    del batch["next", "done"]
    loss(batch.clone())  # TD(0): bootstraps on terminated alone
    loss.make_value_estimator(ValueEstimators.TD1, gamma=0.5)
    with pytest.raises(KeyError, match=r"DoubleQLoss reads \('next', 'done'\)"):
        loss(batch)


# --- reduction and importance weights ---------------------------------------------------------


def test_double_q_reduction_none_sum_mean_and_priority_weights():
    batch = _transitions((3, 4), obs_dim=1, act_dim=1)
    per_sample = _observation_value_loss(reduction="none")(batch.clone())["loss_qvalue"]
    assert per_sample.shape == (3, 4)
    for reduction, expected in (("sum", per_sample.sum()), ("mean", per_sample.mean())):
        out = _observation_value_loss(reduction=reduction)(batch.clone())
        torch.testing.assert_close(out["loss_qvalue"], expected)
        assert all(out[k].numel() == 1 for k in ("q_mean", "q_target_mean", "td_error"))
    weights = torch.rand(3, 4, generator=torch.Generator().manual_seed(1))
    weighted = _observation_value_loss()(batch.clone().set("priority_weight", weights))
    expected = (per_sample * weights).sum() / weights.sum()
    torch.testing.assert_close(weighted["loss_qvalue"], expected)
    with pytest.raises(ValueError, match="reduction must be one of"):
        _observation_value_loss(reduction="max")


def test_idem_reduction_none_sum_mean():
    def loss(reduction):
        actor = _actor(0, ACT_DIM)
        return IDEMScoreLoss(
            actor, EnergyCritic(lambda a: (a**2).sum(-1)), num_mc_samples=4, reduction=reduction
        )

    batch = TensorDict(observation=torch.zeros(3, 5, 0), action=torch.rand(3, 5, 2) * 2 - 1)
    batch.batch_size = [3, 5]

    def run(reduction):
        torch.manual_seed(2)  # the same tau, noise and Monte Carlo draws in every call
        return loss(reduction)(batch)["loss_actor"]

    per_sample = run("none")
    assert per_sample.shape == (3, 5)
    torch.testing.assert_close(run("sum"), per_sample.sum())
    torch.testing.assert_close(run("mean"), per_sample.mean())
    with pytest.raises(ValueError, match="reduction must be one of"):
        loss("avg")


# --- per-sample priorities: a prioritized replay buffer end to end ----------------------------


class TensorSegmentTree:
    """The four methods TorchRL's ``PrioritizedSampler`` calls on its compiled sum and min
    segment trees, over a plain float64 tensor (O(n) queries: fine for a test)."""

    def __init__(self, size: int, reduce: str) -> None:
        self.reduce = reduce
        fill = 0.0 if reduce == "sum" else math.inf
        self.values = torch.full((size,), fill, dtype=torch.float64)

    def __getitem__(self, index):
        return self.values[torch.as_tensor(index)]

    def __setitem__(self, index, value) -> None:
        self.values[torch.as_tensor(index)] = torch.as_tensor(value, dtype=torch.float64)

    def query(self, left: int, right: int) -> float:
        part = self.values[left:right]
        return float(part.sum() if self.reduce == "sum" else part.min())

    def scan_lower_bound(self, mass):
        mass = torch.as_tensor(mass, dtype=torch.float64)
        return torch.searchsorted(self.values.cumsum(0), mass, right=True)


@pytest.fixture
def segment_trees(monkeypatch):
    """TorchRL's compiled segment trees, or a tensor stand-in where they do not load.

    The torchrl 0.14.1 wheel's extension does not load against our torch 2.13.0 (undefined
    symbol), which leaves ``PrioritizedSampler`` unusable on CPU; with the stand-in, TorchRL's
    sampler and buffer code runs unchanged."""
    from torchrl.data.replay_buffers.samplers import prioritized

    if prioritized.SumSegmentTreeFp32 is None:
        for precision in ("Fp32", "Fp64"):
            for reduce in ("Sum", "Min"):
                tree = functools.partial(TensorSegmentTree, reduce=reduce.lower())
                monkeypatch.setattr(prioritized, f"{reduce}SegmentTree{precision}", tree)


@pytest.mark.usefixtures("segment_trees")
def test_prioritized_buffer_takes_the_td_errors_as_priorities():
    n, gamma = 16, 0.5
    data = _transitions((n,), obs_dim=1, act_dim=1, seed=4)
    data["next", "terminated"][::5] = True
    data["next", "done"][::5] = True
    buffer = TensorDictPrioritizedReplayBuffer(
        alpha=1.0, beta=1.0, storage=LazyTensorStorage(n), batch_size=64
    )
    buffer.extend(data)
    loss = _observation_value_loss()
    loss.make_value_estimator(gamma=gamma)

    batch = buffer.sample()
    assert (batch["priority_weight"] == 1).all()  # every priority still the default
    out = loss(batch)
    # Q(s, a) = s_0 and V(s') = s'_0: the TD error of transition i in closed form.
    nxt = data["next"]
    target = nxt["reward"] + gamma * (~nxt["terminated"]) * nxt["observation"]
    closed_form = (data["observation"] - target).abs().squeeze(-1)
    torch.testing.assert_close(batch["td_error"], closed_form[batch["index"]])
    assert out["td_error"].numel() == 1  # the logged metric stays a scalar
    buffer.update_tensordict_priority(batch)

    # Sampled items carry priority_weight = (p_i / min_j p_j)^-beta with beta = 1, alpha = 1:
    # p_i * weight_i is the same for every item iff p_i is its TD error (the default 1.0 for
    # items the first batch missed).
    priority = torch.ones(n)
    priority[batch["index"]] = closed_form[batch["index"]]
    again = buffer.sample(512)
    product = priority[again["index"]] * again["priority_weight"]
    torch.testing.assert_close(product, torch.full_like(product, priority.min()), rtol=1e-4, atol=0)


# --- DQSLoss on TorchRL's public API ------------------------------------------------------------


def test_dqs_loss_reads_no_private_attribute_of_torchrl_objects():
    # Its only private name is its own LossModule flag, which TorchRL offers no public way to
    # fill (see the comment there); the parts' private state (_modules, their flags) is not read.
    tree = ast.parse(inspect.getsource(dqs_torchrl.objectives.dqs))
    private = {
        (ast.unparse(node.value), node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }
    assert private == {("self", "_has_update_associated")}


def test_dqs_loss_shares_the_targets_and_silences_the_parts_once_updated():
    actor = _actor(ema=True)
    qloss = DoubleQLoss(actor, make_q_network(OBS_DIM, ACT_DIM, (16,)))
    aloss = IDEMScoreLoss(actor, qloss, num_mc_samples=4)
    loss = DQSLoss(qloss, aloss)
    qchildren, achildren = dict(qloss.named_children()), dict(aloss.named_children())
    assert loss.target_qvalue_network_params is qchildren["target_qvalue_network_params"]
    assert loss.target_score_network_params is achildren["target_score_network_params"]
    batch = _transitions((8,)).set("action_raw", torch.randn(8, ACT_DIM))

    def target_net_warnings():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = loss(batch)
        return out, [w for w in caught if LossModule.TARGET_NET_WARNING in str(w.message)]

    assert len(target_net_warnings()[1]) == 1  # no updater yet: DQSLoss itself says so, once
    SoftUpdate(loss, tau=0.1)
    out, caught = target_net_warnings()
    assert not caught  # nor do the parts, whose targets the updater on DQSLoss moves
    assert {"loss_qvalue", "loss_actor", "td_error"} <= set(out.keys())
    assert batch["td_error"].shape == (8,)  # the critic's priority reaches the batch


# --- the score network's buffers stay buffers -------------------------------------------------


def test_score_network_buffers_are_not_parameters_of_the_loss_or_the_actor():
    actor = _actor(ema=True)
    loss = IDEMScoreLoss(actor, EnergyCritic(lambda a: (a**2).sum(-1)), num_mc_samples=4)
    for module in (loss, actor):
        names = [name for name, _ in module.named_parameters()]
        assert names and not [name for name in names if "freqs" in name], names
    # The loss trains exactly the score network's parameters, the same tensors.
    assert {id(p) for p in loss.parameters()} == {id(p) for p in actor.score_network.parameters()}
    buffers = dict(loss.named_buffers())
    for name in ("tau_embedding.freqs", "temperature_embedding.freqs"):
        assert f"score_network_params.{name}" in buffers
        assert f"target_score_network_params.{name}" in buffers


def test_soft_update_still_moves_the_ema_towards_the_live_weights():
    actor = _actor(ema=True)
    loss = IDEMScoreLoss(actor, EnergyCritic(lambda a: (a**2).sum(-1)), num_mc_samples=4)
    updater = SoftUpdate(loss, tau=0.25)
    with torch.no_grad():
        for p in actor.score_network.parameters():
            p.add_(1.0)
    ema_before = {k: v.clone() for k, v in actor.ema_network.state_dict().items()}
    updater.step()
    live = actor.score_network.state_dict()
    for name, after in actor.ema_network.state_dict().items():
        expected = 0.75 * ema_before[name] + 0.25 * live[name]
        torch.testing.assert_close(after, expected)
        if "freqs" not in name:
            assert not torch.equal(after, ema_before[name])


# --- DiffusionActor with any ScoreModel ---------------------------------------------------------


class GaussianScore(nn.Module):
    """A user's score network with only ``forward``: the exact score of ``N(mean, var)``
    noised by the actor's geometric schedule (the latent target is Gaussian)."""

    def __init__(self, mean: float, var: float, schedule: GeometricSchedule) -> None:
        super().__init__()
        self.mean, self.var, self.schedule = mean, var, schedule
        self.unused = nn.Linear(1, 1)  # a parameter, so an EMA copy has something to hold

    def forward(self, observation, x, tau, temperature):
        return -(x - self.mean) / (self.var * temperature + self.schedule.sigma(tau) ** 2)


class PlainForward(nn.Module):
    """Hides a ScoreNetwork's feature split: only ``forward`` is left."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, observation, x, tau, temperature):
        return self.net(observation, x, tau, temperature)


@pytest.mark.parametrize(
    "sampler, kwargs",
    [
        ("euler_maruyama", {}),
        ("ancestral", {}),
        ("heun", {}),
        ("ancestral", {"spacing": "karras", "sigma_end": 1e-2, "denoise": True, "ema": True}),
    ],
)
def test_a_plain_forward_score_network_samples_its_distribution(sampler, kwargs):
    # Latent N(0, 0.02). A mean away from the prior's 0 would be biased by Heun's deterministic
    # flow from N(0, sigma_max^2) (the prior is not the noised target there), not by the actor.
    mean, var, temperature = 0.0, 0.04, 0.5
    schedule = GeometricSchedule(1e-3, 1.0)
    net = GaussianScore(mean, var, schedule)
    assert isinstance(net, ScoreModel) and not isinstance(net, SplitScoreModel)
    actor = DiffusionActor(
        net,
        Bounded(-1.0, 1.0, shape=(2,)),
        sigma_min=1e-3,
        num_steps=100,
        sampler=sampler,
        temperature=temperature,
        **kwargs,
    )
    assert not actor.split_features
    g = torch.Generator().manual_seed(0)
    _, raw = actor.sample(torch.zeros(4000, 0), generator=g)
    assert abs(raw.mean().item() - mean) < 0.01
    # The temperature reaches the network: the spread is sqrt(var * T), not sqrt(var).
    assert abs(raw.std().item() / math.sqrt(var * temperature) - 1) < 0.05


@pytest.mark.parametrize("sampler", ["euler_maruyama", "ancestral", "heun"])
@pytest.mark.parametrize("kwargs", [{}, {"sigma_end": 1e-2, "denoise": True}])
def test_the_plain_forward_path_gives_the_fast_paths_samples(sampler, kwargs):
    torch.manual_seed(0)
    net = ScoreNetwork(OBS_DIM, ACT_DIM, 32, 16)
    assert isinstance(net, SplitScoreModel)
    spec = Bounded(-2.0, 3.0, shape=(ACT_DIM,))
    fast = DiffusionActor(net, spec, num_steps=30, sampler=sampler, **kwargs)
    plain = DiffusionActor(PlainForward(net), spec, num_steps=30, sampler=sampler, **kwargs)
    assert fast.split_features and not plain.split_features
    observation = torch.randn(8, OBS_DIM, generator=torch.Generator().manual_seed(1))
    for deterministic in (False, True):
        a, raw_a = fast.sample(
            observation,
            0.5,
            deterministic=deterministic,
            generator=torch.Generator().manual_seed(7),
        )
        b, raw_b = plain.sample(
            observation,
            0.5,
            deterministic=deterministic,
            generator=torch.Generator().manual_seed(7),
        )
        # The same grid, taus, noise and arithmetic; only the tau features' matmul is batched
        # differently (per row, not per grid point). Bitwise equal on our CPU; allowed to differ
        # by float32 round-off elsewhere, far below what a wrong tau or T would change (> 1e-3).
        torch.testing.assert_close(raw_b, raw_a, rtol=0, atol=1e-6)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_idem_trains_a_plain_forward_score_network():
    torch.manual_seed(0)
    net = PlainForward(ScoreNetwork(0, ACT_DIM, 16, 8))
    actor = DiffusionActor(net, Bounded(-1.0, 1.0, shape=(ACT_DIM,)), num_steps=4, ema=True)
    loss = IDEMScoreLoss(actor, EnergyCritic(lambda a: (a**2).sum(-1)), num_mc_samples=4)
    batch = TensorDict(observation=torch.zeros(8, 0), action=torch.rand(8, ACT_DIM) * 2 - 1)
    batch.batch_size = [8]
    loss(batch)["loss_actor"].backward()
    assert all(p.grad is not None for p in net.parameters())
    SoftUpdate(loss, tau=0.1).step()
    action, _ = actor.sample(torch.zeros(3, 0))
    assert action.shape == (3, ACT_DIM)
