"""What a trained agent's critic and policy look like on the states it visited.

    python recipes/diagnose.py ~/dqs-runs/finger-spin/dqs/seed0            # newest checkpoint
    python recipes/diagnose.py RUN_DIR --paper-sampler                     # + table 1's sampler
    python recipes/diagnose.py RUN_DIR --csv diag.csv                      # append one row

Loads the run's ``config.yaml`` and newest checkpoint, takes ``--states`` states from the most
recent part of its replay buffer, and reports (one line, and a CSV row with ``--csv``):

- the critic: ``q_std``, the mean over states of the standard deviation of ``min_j Q_j(s, a)``
  over ``--actions`` uniform actions, and ``q_range_over_t``, the mean of ``(max - min) / T``
  over them: how far ``exp(Q/T)`` is from uniform (``~0``: flat, the policy is noise);
- the policy, ``--samples`` actions per state, in box units ``u`` in ``[-1, 1]``:
  ``abs_u`` (mean ``|u|``; 0.5 for uniform noise), ``sat`` (fraction of ``|u| > 0.9``),
  ``spread`` (standard deviation of ``u`` within a state: the policy's own randomness),
  ``q_gain`` (mean ``Q(s, a_pi) - Q(s, a_uniform)`` over ``T``), ``q_pct`` (mean percentile
  of ``Q(s, a_pi)`` among the uniform actions' values: 50 for noise, 100 for greedy);
- for DQS with the paper-form energy (``algo.energy=unbounded``), where the latent is read
  and where it acts: ``latent_abs`` (mean ``|x|``), ``latent_out`` (fraction of components
  with ``|x| > 1``, outside the box the critic was trained on) and ``read_gap``, the mean of
  ``(Q(s, c + h x) - Q(s, squash(x))) / T``: how much better the energy believes its samples
  are than the actions the environment receives;
- with ``--grid N`` on tasks with at most two action dimensions: the critic on an ``N^d`` grid
  of the box, the exact Boltzmann policy ``exp(Q/T)`` of the box there (``boltz_spread``,
  ``boltz_abs_u``, ``boltz_sat``, ``boltz_gap``: ``(E[Q] - max Q) / T``) and, per sampler,
  ``gap``: ``(E[Q(s, a_pi)] - max Q) / T`` (for SAC, T = 1: raw Q units);
- with ``--eval-episodes N``: the mean return of N episodes sampling the policy and N with
  its deterministic mode (for DQS, the noise-free annealed ascent from the prior's mean); on
  the maze also where the sampled episodes ended (``episodes_<outcome>``, as in ``eval.csv``);
- for DQS/QSM with ``--samplers fast,balanced,...`` (names of the recipes' ``fidelity`` presets;
  ``--paper-sampler`` is ``--samplers paper``, table 1's 1000 Euler-Maruyama steps): a row each
  for the same trained networks sampled with that preset's sampler (its ``sampler``,
  ``num_steps``, ``spacing``, ``sigma_end``, ``denoise`` and ``prior``; the network's own
  ``parameterization`` and noise schedule), with ``--eval-episodes`` evaluated too: how much of a
  run's behaviour is its sampler's.

    python recipes/diagnose.py RUN_DIR --samplers fast,balanced --eval-episodes 20
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from torchrl.data import TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type

from dqs_torchrl import DiffusionActor
from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness.agents import make_agent
from dqs_torchrl.experiments.harness.checkpoint import latest_checkpoint, load_checkpoint
from dqs_torchrl.experiments.harness.config import compose_config
from dqs_torchrl.experiments.harness.loop import append_csv_row, csv_header, make_env
from dqs_torchrl.experiments.harness.policy import load_run_config


def _policy_actions(
    agent, obs: torch.Tensor, actor: DiffusionActor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(action, latent)``: the latent is ``None`` for a policy without one (SAC)."""
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        if actor is None and isinstance(agent.policy, DiffusionActor):
            actor = agent.policy
        if actor is not None:
            return actor.sample(obs)
        td = agent.policy(TensorDict(observation=obs, batch_size=obs.shape[:-1]))
        return td["action"], None


SAMPLER_FIELDS = ("sampler", "num_steps", "spacing", "sigma_end", "denoise", "prior")


def fidelity_presets() -> list[str]:
    """The names of the recipes' ``fidelity`` presets (``configs/fidelity/*.yaml``)."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "fidelity").glob("*.yaml"))


def preset_settings(preset: str) -> dict:
    """The sampler settings (``SAMPLER_FIELDS``) that ``fidelity=<preset>`` gives the DQS
    recipe, composed as the recipe composes them (a preset that does not set ``prior`` keeps
    the recipe's)."""
    if preset not in fidelity_presets():
        raise ValueError(f"unknown fidelity preset {preset!r}; known: {fidelity_presets()}.")
    algo = compose_config([f"fidelity={preset}"]).algo
    return {k: algo[k] for k in SAMPLER_FIELDS}


def sampler_actor(
    actor: DiffusionActor,
    action_spec: TensorSpec,
    cfg: DictConfig,
    settings: dict,
    temperature: float,
) -> DiffusionActor:
    """The trained ``actor``'s networks (its EMA too) sampled with other sampler ``settings``;
    the network's parameterization, noise schedule and temperature stay the run's (they say
    what the network was trained to output)."""
    other = DiffusionActor(
        actor.score_network,
        action_spec,
        sigma_min=cfg.algo.sigma_min,
        sigma_max=cfg.algo.sigma_max,
        parameterization=cfg.algo.parameterization,
        temperature=temperature,
        ema=actor.ema_network is not None,
        **settings,
    )
    if actor.ema_network is not None:
        other.ema_network.load_state_dict(actor.ema_network.state_dict())
    return other


def diagnose(
    run_dir: Path,
    states: int,
    actions: int,
    samples: int,
    presets: list[str] = (),
    eval_episodes: int = 0,
    grid: int = 0,
) -> list[dict]:
    cfg = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {run_dir / 'checkpoints'}")
    state = load_checkpoint(ckpt)
    env = make_env(cfg, cfg.seed)
    agent = make_agent(cfg, env)
    agent.load_state_dict(state["agent"])
    buf = state["buffer"]
    obs_all = TensorDict.from_dict(buf["data"], batch_size=[buf["length"]])["observation"]
    recent = obs_all[-min(len(obs_all), 10_000) :]
    gen = torch.Generator().manual_seed(0)
    obs = recent[torch.randint(len(recent), (states,), generator=gen)].float()
    low, high = env.action_spec.space.low.float(), env.action_spec.space.high.float()
    d = low.shape[-1]
    temperature = float(cfg.algo.temperature.initial) if cfg.algo.name != "sac" else 1.0
    if agent.scheduler is not None:
        temperature = float(agent.scheduler.value)
    torch.manual_seed(0)  # the policy's own draws
    uni = low + (high - low) * torch.rand(actions, states, d, generator=gen)
    obs_u = obs.expand(actions, *obs.shape)
    with torch.no_grad():
        q_uni = _q(agent, obs_u, uni)  # [actions, states]
    rows = []
    base = {
        "run": str(run_dir),
        "frames": int(state["frames"]),
        "T": temperature,
        "q_mean": q_uni.mean().item(),
        "q_std": q_uni.std(0).mean().item(),
        "q_range_over_t": ((q_uni.max(0).values - q_uni.min(0).values) / temperature).mean().item(),
    }
    q_max = None
    if grid and d <= 2:
        lin = torch.linspace(0, 1, grid)
        u_grid = torch.stack(torch.meshgrid(*[lin] * d, indexing="ij"), -1).reshape(-1, d)
        a_grid = low + (high - low) * u_grid
        u_grid = 2 * u_grid - 1
        with torch.no_grad():
            q_grid = torch.stack(
                [_q(agent, o.expand(len(a_grid), o.shape[-1]), a_grid) for o in obs]
            )
        boltz = torch.softmax(q_grid / temperature, -1)  # [states, grid^d]
        mean = boltz @ u_grid
        q_max = q_grid.max(-1).values
        base |= {
            "boltz_spread": (boltz @ u_grid.pow(2) - mean.pow(2)).clamp_min(0).sqrt().mean().item(),
            "boltz_abs_u": (boltz @ u_grid.abs()).mean().item(),
            "boltz_sat": (boltz @ (u_grid.abs() > 0.9).float()).mean().item(),
            "boltz_gap": (((boltz * q_grid).sum(-1) - q_max) / temperature).mean().item(),
        }
    samplers: list[tuple[str, DiffusionActor | None]] = [("recipe", None)]
    if presets and cfg.algo.name == "sac":
        print(
            f"{run_dir}: a SAC run has no diffusion sampler; --samplers {','.join(presets)} "
            "skipped for it (its row is the recipe's policy)",
            file=sys.stderr,
        )
    if cfg.algo.name != "sac":
        for name in presets:
            samplers.append(
                (
                    name,
                    sampler_actor(
                        agent.policy, env.action_spec, cfg, preset_settings(name), temperature
                    ),
                )
            )
    for name, actor in samplers:
        obs_s = obs.expand(samples, *obs.shape)
        torch.manual_seed(0)  # the same draws for every sampler
        act, latent = _policy_actions(agent, obs_s, actor)  # [samples, states, d]
        act = act.float()
        u = 2 * (act - low) / (high - low) - 1
        with torch.no_grad():
            q_pi = _q(agent, obs_s, act)
        pct = (q_uni.unsqueeze(0) < q_pi.unsqueeze(1)).float().mean(1)  # [samples, states]
        row = base | {
            "sampler": name,
            "abs_u": u.abs().mean().item(),
            "sat": (u.abs() > 0.9).float().mean().item(),
            "spread": u.std(0).mean().item(),
            "q_gain": ((q_pi.mean(0) - q_uni.mean(0)) / temperature).mean().item(),
            "q_pct": 100 * pct.mean().item(),
        }
        if q_max is not None:
            row["gap"] = ((q_pi.mean(0) - q_max) / temperature).mean().item()
        if latent is not None and cfg.algo.get("energy") == "unbounded":
            read = (high + low) / 2 + latent.float() * (high - low) / 2  # where the energy reads Q
            with torch.no_grad():
                q_read = _q(agent, obs_s, read)
            row |= {
                "latent_abs": latent.abs().mean().item(),
                "latent_out": (latent.abs() > 1).float().mean().item(),
                "read_gap": ((q_read - q_pi) / temperature).mean().item(),
            }
        rows.append(row)
    if eval_episodes:
        from dqs_torchrl.experiments.harness.loop import evaluate

        for row, (_, actor) in zip(rows, samplers, strict=True):
            for mode in (False, True):
                # every sampler meets the same episodes: states neither the run nor its eval saw
                eval_env = make_env(cfg, cfg.seed + 20_000)
                torch.manual_seed(0)
                returns, paths = evaluate(eval_env, actor or agent.policy, eval_episodes, mode)
                eval_env.close()
                row["det_return" if mode else "stoch_return"] = sum(returns) / len(returns)
                if cfg.env.suite == "maze" and not mode:  # where the sampled episodes ended
                    from dqs_torchrl.experiments.maze import count_outcomes

                    outcomes = count_outcomes(path[:, :2] for path in paths)
                    row |= {f"episodes_{k}": v for k, v in outcomes.items()}
    return rows


def _q(agent, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    if "critic" in agent.losses:
        return agent.losses["critic"][0].min_q(obs, action).squeeze(-1)
    loss = agent.losses["sac"][0]
    td = TensorDict(observation=obs, action=action, batch_size=action.shape[:-1])
    values = []
    for params in loss.qvalue_network_params.unbind(0):
        with params.to_module(loss.qvalue_network):
            values.append(loss.qvalue_network(td.clone())["state_action_value"])
    return torch.stack(values).min(0).values.squeeze(-1)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MUJOCO_GL", "disable")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--actions", type=int, default=256, help="uniform actions per state")
    parser.add_argument("--samples", type=int, default=32, help="policy actions per state")
    parser.add_argument(
        "--samplers",
        default="",
        help=f"comma-separated fidelity presets to sample the same networks with: "
        f"{', '.join(fidelity_presets())}",
    )
    parser.add_argument("--paper-sampler", action="store_true", help="--samplers paper")
    parser.add_argument(
        "--grid", type=int, default=0, help="points per action dimension (d <= 2): exact exp(Q/T)"
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=0, help="also evaluate, stochastic and deterministic"
    )
    parser.add_argument("--csv", type=Path, default=None, help="append the rows here")
    args = parser.parse_args(argv)
    presets = [name for name in args.samplers.split(",") if name]
    if args.paper_sampler and "paper" not in presets:
        presets.append("paper")
    unknown = [name for name in presets if name not in fidelity_presets()]
    if unknown:
        parser.error(
            f"--samplers: unknown fidelity preset(s) {unknown}; known: {fidelity_presets()}"
        )
    torch.set_num_threads(1)
    rows: list[dict] = []
    try:
        for run_dir in args.run_dirs:
            for row in diagnose(
                run_dir,
                args.states,
                args.actions,
                args.samples,
                presets,
                args.eval_episodes,
                args.grid,
            ):
                print(
                    "  ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    )
                )
                rows.append(row)
    finally:  # the rows of the runs diagnosed before a failure are kept too
        if args.csv and rows:
            write_rows(args.csv, rows)


def write_rows(path: Path, rows: list[dict]) -> None:
    """Append `rows` to the CSV at `path` under one header: the union of their columns (a maze
    run has goal columns, an unbounded energy latent ones), in order of first appearance, or
    the file's own header when it has every one of them; a row's missing columns stay empty.
    A file whose header lacks some is refused by `append_csv_row`, naming them."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    header = csv_header(path)
    if header and set(columns) <= set(header):
        columns = header
    for row in rows:
        append_csv_row(path, {k: row.get(k, "") for k in columns})


if __name__ == "__main__":
    main()
