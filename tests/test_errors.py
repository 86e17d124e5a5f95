"""Bad arguments raise ValueError with a message that names the argument."""

import math

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.data import Bounded, Categorical, Composite, Unbounded

from dqs_torchrl import (
    DiffusionActor,
    DoubleQLoss,
    EnergyCritic,
    GeometricSchedule,
    IDEMScoreLoss,
    ScoreNetwork,
    TemperatureScheduler,
    geometric_sigmas,
    karras_sigmas,
    make_q_network,
)

torch.set_num_threads(1)

OBS_DIM, ACT_DIM = 3, 2


def _spec():
    return Bounded(-1.0, 1.0, shape=(ACT_DIM,))


def _actor(**kwargs):
    return DiffusionActor(ScoreNetwork(OBS_DIM, ACT_DIM, 8, 8), _spec(), num_steps=3, **kwargs)


def _critic():
    return EnergyCritic(lambda a: (a**2).sum(-1))


class _Q(nn.Module):
    def forward(self, observation, action):
        return torch.cat([observation, action], -1).sum(-1, keepdim=True)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_non_positive_or_non_finite_temperature(value):
    with pytest.raises(ValueError, match="temperature"):
        _actor(temperature=value)
    with pytest.raises(ValueError, match="temperature"):
        IDEMScoreLoss(_actor(), _critic(), temperature=value)
    with pytest.raises(ValueError, match="temperature"):
        DoubleQLoss(_actor(), make_q_network(OBS_DIM, ACT_DIM, (8,)), temperature=value)
    with pytest.raises(ValueError, match="initial"):
        TemperatureScheduler([_actor()], initial=value)
    with pytest.raises(ValueError, match="final"):
        TemperatureScheduler(
            [_actor()], schedule="exponential", initial=1.0, final=value, total_frames=10
        )


def test_valid_temperatures_are_accepted():
    # The checks above reject bad values, not every value.
    assert float(_actor(temperature=0.05).temperature) == pytest.approx(0.05)
    assert float(IDEMScoreLoss(_actor(), _critic(), temperature=0.05).temperature) == (
        pytest.approx(0.05)
    )


@pytest.mark.parametrize(("sigma_min", "sigma_max"), [(1.0, 1.0), (2.0, 1.0)])
def test_sigma_min_not_below_sigma_max(sigma_min, sigma_max):
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        _actor(sigma_min=sigma_min, sigma_max=sigma_max)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        GeometricSchedule(sigma_min, sigma_max)


@pytest.mark.parametrize("sigma_min", [0.0, -1e-5])
def test_non_positive_sigma_min(sigma_min):
    with pytest.raises(ValueError, match=r"sigma_min .*> 0"):
        _actor(sigma_min=sigma_min)


@pytest.mark.parametrize("sigma_end", [1.0, 2.0, 1e-6])
def test_sigma_end_outside_the_schedule(sigma_end):
    with pytest.raises(ValueError, match="sigma_end"):
        _actor(sigma_min=1e-5, sigma_max=1.0, sigma_end=sigma_end)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_num_mc_samples_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="num_mc_samples"):
        IDEMScoreLoss(_actor(), _critic(), num_mc_samples=value)
    if value is not True:
        with pytest.raises(ValueError, match="num_mc_samples_small"):
            IDEMScoreLoss(_actor(), _critic(), num_mc_samples=8, num_mc_samples_small=value)


@pytest.mark.parametrize("value", [0, -1, 2.0])
def test_num_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="num_steps"):
        DiffusionActor(ScoreNetwork(OBS_DIM, ACT_DIM, 8, 8), _spec(), num_steps=value)
    with pytest.raises(ValueError, match="num_steps"):
        geometric_sigmas(value, 1.0, 1e-3)
    with pytest.raises(ValueError, match="num_steps"):
        karras_sigmas(value, 1.0, 1e-3)
    with pytest.raises(ValueError, match="num_steps"):
        GeometricSchedule(1e-5, 1.0).sigmas(value)


@pytest.mark.parametrize(
    "spec",
    [
        Unbounded(shape=(ACT_DIM,)),
        Categorical(4),
        Bounded(-1, 1, shape=(ACT_DIM,), dtype=torch.int64),  # a discrete box
        Bounded(-math.inf, math.inf, shape=(ACT_DIM,)),
        Bounded(1.0, -1.0, shape=(ACT_DIM,)),  # low > high
        Composite(other=_spec()),  # no "action" entry
    ],
    ids=["unbounded", "categorical", "discrete-box", "infinite-box", "empty-box", "composite"],
)
def test_action_spec_must_be_a_finite_continuous_box(spec):
    with pytest.raises(ValueError, match="action_spec"):
        DiffusionActor(ScoreNetwork(OBS_DIM, ACT_DIM, 8, 8), spec, num_steps=3)


def test_box_spec_inside_a_composite_is_accepted():
    actor = DiffusionActor(
        ScoreNetwork(OBS_DIM, ACT_DIM, 8, 8), Composite(action=_spec()), num_steps=3
    )
    assert torch.equal(actor.low, -torch.ones(ACT_DIM))


@pytest.mark.parametrize(
    ("in_keys", "out_keys"),
    [
        (["obs", "action"], ["state_action_value"]),
        (["observation", "act"], ["state_action_value"]),
        (["observation", "action"], ["q"]),
    ],
)
def test_critic_with_wrong_keys(in_keys, out_keys):
    critic = TensorDictModule(_Q(), in_keys=in_keys, out_keys=out_keys)
    with pytest.raises(ValueError, match="critic must read 'observation' and 'action'"):
        IDEMScoreLoss(_actor(), critic)
    with pytest.raises(ValueError, match="critic must read 'observation' and 'action'"):
        DoubleQLoss(_actor(), critic)


def test_critic_with_the_right_keys_is_accepted():
    critic = TensorDictModule(
        _Q(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    assert IDEMScoreLoss(_actor(), critic).critic is critic
    assert DoubleQLoss(_actor(), critic).num_qvalue_nets == 2


def test_unknown_names():
    with pytest.raises(ValueError, match="sampler must be one of"):
        _actor(sampler="euler")
    with pytest.raises(ValueError, match="spacing must be one of"):
        _actor(spacing="uniform")
    with pytest.raises(ValueError, match="schedule must be one of"):
        TemperatureScheduler([_actor()], schedule="cosine")
    with pytest.raises(ValueError, match="loss_weighting"):
        IDEMScoreLoss(_actor(), _critic(), loss_weighting="snr")
    with pytest.raises(ValueError, match="energy must be one of"):
        IDEMScoreLoss(_actor(), _critic(), energy="clipped")


def test_other_loss_and_scheduler_arguments():
    with pytest.raises(ValueError, match="max_score_norm"):
        IDEMScoreLoss(_actor(), _critic(), max_score_norm=0.0)
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        DoubleQLoss(_actor(), make_q_network(OBS_DIM, ACT_DIM, (8,)), num_qvalue_nets=0)
    with pytest.raises(ValueError, match="final and total_frames"):
        TemperatureScheduler([_actor()], schedule="exponential", initial=10.0, final=1.0)
    with pytest.raises(ValueError, match="total_frames"):
        TemperatureScheduler([_actor()], schedule="linear", initial=10.0, final=1.0, total_frames=0)
    with pytest.raises(ValueError, match="temperature buffer"):
        TemperatureScheduler([nn.Linear(2, 2)])


@pytest.mark.parametrize("value", [0, -1])
def test_score_target_num_mc_samples_must_be_a_positive_integer(value):
    loss = IDEMScoreLoss(_actor(), _critic(), num_mc_samples=8)
    x = torch.zeros(4, ACT_DIM)
    with pytest.raises(ValueError, match="num_mc_samples"):
        loss.score_target(torch.zeros(4, OBS_DIM), x, torch.full((4, 1), 0.1), num_mc_samples=value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_call_time_temperature_is_checked(value):
    from tensordict import TensorDict

    actor = _actor()
    obs = torch.zeros(4, OBS_DIM)
    with pytest.raises(ValueError, match="temperature"):
        actor.sample(obs, value)
    td = TensorDict(observation=obs, temperature=torch.full((4, 1), value), batch_size=[4])
    with pytest.raises(ValueError, match="temperature"):
        actor(td)


# --- the library's edges: data that does not fit the modules (issue 10) ---------------------


def _batch(n=4, obs_dim=OBS_DIM, act_dim=ACT_DIM, flag_dtype=torch.bool, drop=()):
    from tensordict import TensorDict

    flags = torch.zeros(n, 1, dtype=flag_dtype)
    nxt = {"observation": torch.randn(n, obs_dim), "reward": torch.randn(n, 1)}
    nxt |= {"done": flags, "terminated": flags.clone()}
    td = TensorDict(
        observation=torch.randn(n, obs_dim),
        action=torch.rand(n, act_dim) * 2 - 1,
        next=TensorDict(nxt, batch_size=[n]),
        batch_size=[n],
    )
    for key in drop:
        del td[key]
    return td


def _double_q():
    loss = DoubleQLoss(_actor(), make_q_network(OBS_DIM, ACT_DIM, (8,)))
    loss.make_value_estimator(gamma=0.99)
    return loss


@pytest.mark.parametrize(
    "drop, key",
    [
        (["observation"], "'observation'"),
        ([("next", "reward")], "('next', 'reward')"),
        ([("next", "terminated")], "('next', 'terminated')"),
        ([("next", "observation")], "('next', 'observation')"),
    ],
)
def test_double_q_loss_names_a_missing_key(drop, key):
    with pytest.raises(
        KeyError, match=r"DoubleQLoss reads .*" + key.replace("(", r"\(").replace(")", r"\)")
    ):
        _double_q()(_batch(drop=drop))


def test_double_q_loss_bootstraps_without_the_optional_done_flag():
    out = _double_q()(_batch(drop=[("next", "done")]))
    assert torch.isfinite(out["loss_qvalue"])


def test_float_done_flags_give_the_same_loss_as_bool_flags():
    torch.manual_seed(0)
    loss = _double_q()
    batch = _batch()
    batch["next", "terminated"][0] = True
    as_float = batch.clone()
    for key in (("next", "done"), ("next", "terminated")):
        as_float[key] = batch[key].float()
    torch.manual_seed(1)
    expected = loss(batch)["loss_qvalue"]
    torch.manual_seed(1)
    assert torch.equal(loss(as_float)["loss_qvalue"], expected)
    assert as_float["next", "terminated"].dtype == torch.float32  # the caller's data untouched
    as_float["next", "terminated"][1] = 0.5
    with pytest.raises(ValueError, match="'terminated'.* must be boolean"):
        loss(as_float)


def test_wrong_observation_or_action_size_names_module_expected_and_got():
    with pytest.raises(ValueError, match=r"DoubleQLoss: 'observation' has shape \(4, 5\).*3"):
        _double_q()(_batch(obs_dim=5))
    with pytest.raises(ValueError, match=r"DoubleQLoss: 'action' has shape \(4, 3\).*2"):
        _double_q()(_batch(act_dim=3))
    score = IDEMScoreLoss(_actor(), _critic(), num_mc_samples=2)
    with pytest.raises(ValueError, match=r"IDEMScoreLoss: 'observation' has shape \(4, 5\)"):
        score(_batch(obs_dim=5))
    with pytest.raises(KeyError, match="IDEMScoreLoss reads 'action'"):
        score(_batch(drop=["action"]))
    with pytest.raises(ValueError, match=r"DiffusionActor: the observation has shape \(4, 5\)"):
        _actor()(_batch(obs_dim=5))
    with pytest.raises(KeyError, match="DiffusionActor reads 'observation'"):
        _actor()(_batch(drop=["observation"]))


def test_action_spec_that_does_not_fit_the_score_network():
    with pytest.raises(ValueError, match="3 dimensions but the score network .*action_dim=2"):
        DiffusionActor(ScoreNetwork(OBS_DIM, ACT_DIM, 8, 8), Bounded(-1.0, 1.0, shape=(3,)))


@pytest.mark.parametrize("frames", [-500, 2.5, True])
def test_scheduler_steps_forward_by_whole_frames_only(frames):
    scheduler = TemperatureScheduler([_actor()], initial=1.0)
    with pytest.raises(ValueError, match="frames must be an integer >= 0"):
        scheduler.step(frames)
    assert scheduler.frames == 0
