"""The three agents of the recipes — DQS, SAC and QSM — behind one small interface."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.envs import EnvBase
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import LossModule, SACLoss, SoftUpdate

from dqs_torchrl.actor import DiffusionActor
from dqs_torchrl.networks import ScoreNetwork, make_q_network
from dqs_torchrl.objectives import DoubleQLoss, IDEMScoreLoss, QSMLoss
from dqs_torchrl.temperature import TemperatureController, TemperatureScheduler

__all__ = ["Agent", "NonFiniteLossError", "make_agent", "make_policy", "make_sac"]


class NonFiniteLossError(RuntimeError):
    """A loss or score target became NaN or infinite; training must stop."""


class Agent:
    """Networks, losses, optimisers and target updaters of one algorithm.

    `policy` acts in the environment; [`update`][] does one gradient step on a replay
    batch (every loss in `losses` with its own optimiser, then every target updater) and
    returns scalar metrics; [`state_dict`][] holds everything a checkpoint needs.
    `scheduler` sets the temperature: a [`TemperatureScheduler`][] counts frames
    ([`step_frames`][]), a [`TemperatureController`][] steps after each update on its
    replay batch and adds its entropy estimate to the metrics as `policy_entropy`.
    """

    def __init__(
        self,
        policy: TensorDictModuleBase,
        losses: dict[str, tuple[LossModule, str]],
        optimizers: dict[str, torch.optim.Optimizer],
        updaters: list[SoftUpdate],
        clip_norm: float | None,
        scheduler: TemperatureScheduler | TemperatureController | None = None,
        postproc: Any = None,
    ) -> None:
        self.policy = policy
        self.losses = losses
        self.optimizers = optimizers
        self.updaters = updaters
        self.clip_norm = clip_norm
        self.scheduler = scheduler
        self.postproc = postproc
        self.num_updates = 0

    def update(self, batch: TensorDictBase) -> dict[str, float]:
        """One gradient step of every loss on `batch`, then the target updates.

        All losses are computed first and every scalar they report (losses, score-target
        norms, Q statistics) is checked: a NaN or infinity raises
        [`NonFiniteLossError`][] naming the quantity before any optimiser step, so the
        networks stay as they were.
        """
        outs = {name: loss_module(batch) for name, (loss_module, _) in self.losses.items()}
        for name, out in outs.items():
            for key, value in out.items():
                if value.numel() == 1 and not torch.isfinite(value):
                    raise NonFiniteLossError(
                        f"non-finite {key} = {value.item()} in the {name} loss at update "
                        f"{self.num_updates}; stopped before any optimiser step."
                    )
        metrics: dict[str, float] = {}
        for name, out in outs.items():
            loss_key = self.losses[name][1]
            keys = [loss_key] if loss_key else [k for k in out.keys() if k.startswith("loss")]
            optimizer = self.optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            sum(out[k] for k in keys).backward()
            if self.clip_norm is not None:
                params = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
            optimizer.step()
            metrics.update({k: v.item() for k, v in out.items() if v.numel() == 1})
        for updater in self.updaters:
            updater.step()
        self.num_updates += 1
        if isinstance(self.scheduler, TemperatureController):
            self.scheduler.step(batch)
            if self.scheduler.entropy is not None:
                metrics["policy_entropy"] = self.scheduler.entropy
        return metrics

    def step_frames(self, frames: int) -> None:
        if isinstance(self.scheduler, TemperatureScheduler):
            self.scheduler.step(frames)

    def modules(self) -> dict[str, nn.Module]:
        return {name: loss for name, (loss, _) in self.losses.items()} | {"policy": self.policy}

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.num_updates = int(state["num_updates"])


def _dims(env: EnvBase) -> tuple[int, int]:
    return env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1]


def _diffusion_actor(cfg: DictConfig, env: EnvBase, device: torch.device) -> DiffusionActor:
    obs_dim, act_dim = _dims(env)
    a = cfg.algo
    return DiffusionActor(
        ScoreNetwork(obs_dim, act_dim, a.score_cells, a.embedding_dim),
        env.action_spec,
        sigma_min=a.sigma_min,
        sigma_max=a.sigma_max,
        num_steps=a.num_steps,
        sampler=a.sampler,
        spacing=a.spacing,
        sigma_end=a.sigma_end,
        denoise=a.denoise,
        parameterization=a.parameterization,
        prior=a.prior,
        temperature=a.temperature.initial,
        ema=a.ema,
        compile_sampler=a.compile_sampler,
    ).to(device)


def _diffusion_agent(cfg: DictConfig, env: EnvBase, qsm: bool, device: torch.device) -> Agent:
    obs_dim, act_dim = _dims(env)
    a, o = cfg.algo, cfg.optim
    actor = _diffusion_actor(cfg, env, device)
    qloss = DoubleQLoss(actor, make_q_network(obs_dim, act_dim, a.q_cells).to(device))
    qloss.make_value_estimator(gamma=o.gamma)
    if qsm:
        aloss = QSMLoss(actor, qloss, scale=a.qsm_scale, max_score_norm=a.max_score_norm)
        targets = [actor, qloss]
    else:
        aloss = IDEMScoreLoss(
            actor,
            qloss,
            num_mc_samples=a.num_mc_samples,
            num_mc_samples_small=a.num_mc_samples_small,
            small_sigma=a.small_sigma,
            estimator=a.estimator,
            max_score_norm=a.max_score_norm,
            tanh_correction=a.tanh_correction,
            energy=a.energy,
            batch_rows=a.score_batch_rows,
        )
        targets = [actor, qloss, aloss]
    # Buffers the losses create (coefficients, target parameters) follow the networks; the
    # optimisers are built after the move, on the parameters as they are on the device.
    qloss.to(device)
    aloss.to(device)
    t = a.temperature
    if t.schedule == "auto":  # T adapted to a target entropy, stepped by Agent.update
        scheduler = TemperatureController(
            targets,
            actor,
            target_entropy=t.target_entropy,
            initial=t.initial,
            lr=t.lr,
            min_temperature=t.min,
            max_temperature=t.max,
            num_states=t.num_states,
            num_samples=t.num_samples,
            interval=t.interval,
            warmup_steps=t.warmup_updates,
        )
    else:
        scheduler = TemperatureScheduler(
            targets,
            schedule=t.schedule,
            initial=t.initial,
            final=t.final,
            total_frames=cfg.collector.total_frames,
        )
    updaters = [SoftUpdate(qloss, tau=o.tau)]
    if a.ema:
        updaters.append(SoftUpdate(aloss, tau=a.ema_tau))
    return Agent(
        policy=actor,
        losses={"critic": (qloss, "loss_qvalue"), "actor": (aloss, "loss_actor")},
        optimizers={
            "critic": torch.optim.Adam(qloss.parameters(), lr=o.lr),
            "actor": torch.optim.Adam(actor.score_network.parameters(), lr=o.lr),
        },
        updaters=updaters,
        clip_norm=o.clip_norm,
        scheduler=scheduler,
        postproc=actor.fill_latent_action,
    )


def make_sac(
    env: EnvBase,
    num_cells: tuple[int, ...] = (256, 256),
    gamma: float = 0.99,
    device: torch.device | str = "cpu",
) -> tuple[ProbabilisticActor, SACLoss]:
    """TorchRL's SAC (tanh-Gaussian actor, two critics, automatic entropy tuning) on `device`."""
    obs_dim, act_dim = _dims(env)
    actor = _sac_actor(env, num_cells, device)
    loss = SACLoss(
        actor,
        make_q_network(obs_dim, act_dim, num_cells).to(device),
        num_qvalue_nets=2,
        action_spec=env.action_spec.to(device),
        target_entropy="auto",
        alpha_init=1.0,
    )
    loss.make_value_estimator(gamma=gamma)
    return actor, loss.to(device)


def _sac_actor(
    env: EnvBase, num_cells: tuple[int, ...], device: torch.device | str
) -> ProbabilisticActor:
    obs_dim, act_dim = _dims(env)
    spec = env.action_spec.to(device)
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=2 * act_dim,
            num_cells=list(num_cells),
            activation_class=nn.ReLU,
        ),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net.to(device), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        spec=spec,
        distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low, "high": spec.space.high},
        return_log_prob=False,
    )


def _sac_agent(cfg: DictConfig, env: EnvBase, device: torch.device) -> Agent:
    o = cfg.optim
    actor, loss = make_sac(env, tuple(cfg.algo.q_cells), o.gamma, device)
    return Agent(
        policy=actor,
        losses={"sac": (loss, "")},
        optimizers={"sac": torch.optim.Adam(loss.parameters(), lr=o.lr)},
        updaters=[SoftUpdate(loss, tau=o.tau)],
        clip_norm=o.clip_norm,
    )


def make_policy(
    cfg: DictConfig, env: EnvBase, device: torch.device | str = "cpu"
) -> TensorDictModuleBase:
    """The policy of the agent [`make_agent`][] builds for `cfg` and `env`, alone: no
    critic, losses or optimisers. Its `state_dict` has the keys of `Agent.policy`'s, so
    the policy entry of a checkpoint loads into it."""
    name = cfg.algo.name
    device = torch.device(device)
    if name == "sac":
        return _sac_actor(env, tuple(cfg.algo.q_cells), device)
    if name in ("dqs", "qsm"):
        return _diffusion_actor(cfg, env, device)
    raise ValueError(f"algo.name must be one of dqs, sac, qsm; got {name!r}.")


def make_agent(cfg: DictConfig, env: EnvBase, device: torch.device | str = "cpu") -> Agent:
    """Build the agent named by `cfg.algo.name` (`dqs`, `sac` or `qsm`) for `env`,
    its networks, losses and optimiser states on `device` (the environment stays where it
    is; the collector moves observations and actions)."""
    name = cfg.algo.name
    device = torch.device(device)
    if name == "sac":
        return _sac_agent(cfg, env, device)
    if name in ("dqs", "qsm"):
        return _diffusion_agent(cfg, env, qsm=name == "qsm", device=device)
    raise ValueError(f"algo.name must be one of dqs, sac, qsm; got {name!r}.")
