"""End to end on a real dm_control task: Collector, replay buffer, both losses, SoftUpdate,
the temperature scheduler, by hand and through ``torchrl.trainers.Trainer.train()``."""

import math

import pytest
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.objectives import SoftUpdate

from dqs_torchrl import (
    DiffusionActor,
    DoubleQLoss,
    DQSLoss,
    IDEMScoreLoss,
    ScoreNetwork,
    TemperatureScheduler,
    make_q_network,
)
from dqs_torchrl.experiments.envs import make_dmc_env
from dqs_torchrl.trainer import DQSTrainer

torch.set_num_threads(1)
TASK = "cartpole-balance"  # 5-D state, 1-D action: the cheapest real dm_control task


def build(seed: int = 0):
    torch.manual_seed(seed)
    env = make_dmc_env(TASK, seed=seed)
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec.shape[-1]
    actor = DiffusionActor(
        ScoreNetwork(obs_dim, act_dim, 32, 16),
        env.action_spec,
        num_steps=8,
        ema=True,
        temperature=1.0,
    )
    qloss = DoubleQLoss(actor, make_q_network(obs_dim, act_dim, num_cells=(32, 32)))
    qloss.make_value_estimator(gamma=0.99)
    aloss = IDEMScoreLoss(actor, qloss, num_mc_samples=8, max_score_norm=100.0)
    return env, actor, qloss, aloss


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module, prefix):
    after = module.state_dict()
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return all(
        not torch.equal(before[k], after[k])
        for k in keys
        if before[k].is_floating_point() and "freqs" not in k
    )


def make_collector(env, actor, total_frames):
    return Collector(
        env,
        actor,
        frames_per_batch=50,
        total_frames=total_frames,
        init_random_frames=100,
        postproc=actor.fill_latent_action,
    )


def test_manual_loop_trains_everything():
    env, actor, qloss, aloss = build()
    total = 300
    scheduler = TemperatureScheduler(
        [actor, qloss, aloss], schedule="exponential", initial=1.0, final=0.1, total_frames=total
    )
    q_opt = torch.optim.Adam(qloss.parameters(), lr=1e-3)
    a_opt = torch.optim.Adam(aloss.parameters(), lr=1e-3)
    q_updater, ema_updater = SoftUpdate(qloss, tau=0.05), SoftUpdate(aloss, tau=0.05)
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=32)
    before_q, before_a = snapshot(qloss), snapshot(aloss)
    seen = []
    for batch in make_collector(env, actor, total):
        buffer.extend(batch.reshape(-1))
        scheduler.step(batch.numel())
        for _ in range(5):
            sample = buffer.sample()
            out_q, out_a = qloss(sample), aloss(sample)
            for opt, loss in ((q_opt, out_q["loss_qvalue"]), (a_opt, out_a["loss_actor"])):
                opt.zero_grad()
                loss.backward()
                opt.step()
            q_updater.step()
            ema_updater.step()
            seen.append(out_q["loss_qvalue"].item() + out_a["loss_actor"].item())
    assert len(buffer) == total
    assert "action_raw" in buffer[:].keys()  # warm-up frames got their latents too
    assert all(math.isfinite(v) for v in seen)
    assert changed(before_q, qloss, "qvalue_network_params")
    assert changed(before_q, qloss, "target_qvalue_network_params")
    assert changed(before_a, aloss, "score_network_params")
    assert changed(before_a, aloss, "target_score_network_params")  # the EMA actor moved
    # exponential 1.0 -> 0.1 over `total` frames: all three modules end at 0.1
    for module in (actor, qloss, aloss):
        assert module.temperature.item() == pytest.approx(0.1)


def test_trainer_train_runs_dqs():
    env, actor, qloss, aloss = build(seed=1)
    loss = DQSLoss(qloss, aloss)
    total = 200
    scheduler = TemperatureScheduler(
        [actor, qloss, aloss], schedule="linear", initial=1.0, final=0.5, total_frames=total
    )
    trainer = DQSTrainer(
        collector=make_collector(env, actor, total),
        loss_module=loss,
        optimizer=torch.optim.Adam(loss.parameters(), lr=1e-3),
        replay_buffer=TensorDictReplayBuffer(storage=LazyTensorStorage(1000)),
        batch_size=32,
        total_frames=total,
        temperature_scheduler=scheduler,
        optim_steps_per_batch=4,
        progress_bar=False,
    )
    before = snapshot(loss)
    trainer.train()
    assert scheduler.frames == total
    assert actor.temperature.item() == pytest.approx(0.5)
    assert len(trainer.replay_buffer) == total
    assert changed(before, loss, "qvalue_network_params")
    assert changed(before, loss, "target_qvalue_network_params")
    assert changed(before, loss, "score_network_params")
    assert changed(before, loss, "target_score_network_params")
    out = loss(trainer.replay_buffer.sample(32))
    assert torch.isfinite(out["loss_qvalue"]) and torch.isfinite(out["loss_actor"])


def test_score_target_reads_the_live_critic():
    env, actor, qloss, aloss = build(seed=2)
    obs = env.reset()["observation"].expand(16, -1)
    x, sigma = torch.randn(16, 1), torch.full((16, 1), 0.3)

    def target():
        return aloss.score_target(obs, x, sigma, generator=torch.Generator().manual_seed(0))[0]

    first = target()
    assert torch.equal(first, target())  # same draws, same critic: same target
    batch = TensorDict(
        observation=obs,
        action=torch.rand(16, 1) * 2 - 1,
        next=TensorDict(
            observation=obs,
            reward=torch.ones(16, 1),
            done=torch.zeros(16, 1, dtype=torch.bool),
            terminated=torch.zeros(16, 1, dtype=torch.bool),
            batch_size=[16],
        ),
        batch_size=[16],
    )
    opt = torch.optim.SGD(qloss.parameters(), lr=0.5)
    qloss(batch)["loss_qvalue"].backward()
    opt.step()
    assert not torch.allclose(first, target(), atol=1e-4)  # a critic update moves the targets
    # and the loss holds no parameter copy of the critic
    critic_ids = {id(p) for p in qloss.parameters()}
    assert not critic_ids & {id(p) for p in aloss.parameters()}


def test_actor_as_policy_of_env_rollout():
    env, actor, _, _ = build(seed=3)
    rollout = env.rollout(20, actor)
    assert rollout["action"].shape == (20, 1)
    assert env.action_spec.is_in(rollout["action"])
    # the latent maps onto the action, so the losses never have to invert tanh
    assert torch.allclose(actor.squash(rollout["action_raw"]), rollout["action"])
