"""What a user takes out of a run: evaluation videos, the trained policy (loaded in one call or
exported alone), and the config logged as hyperparameters; ``logger.mode`` for W&B."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from test_recipes import ROOT, recipe_command
from torchrl.envs.utils import ExplorationType, set_exploration_type

from dqs_torchrl.experiments.configs import CONFIG_DIR
from dqs_torchrl.experiments.harness import (
    ConfigError,
    evaluate,
    export_policy,
    latest_checkpoint,
    load_checkpoint,
    load_policy,
    load_run_config,
    make_agent,
    make_env,
    make_logger,
    validate_config,
)


def _unset_gl(env: dict) -> dict:
    """The recipe's environment without MUJOCO_GL: the harness picks egl for videos."""
    env = dict(env)
    env.pop("MUJOCO_GL", None)
    return env


def _why_no_rendering() -> str | None:
    code = "from dqs_torchrl.experiments.envs import check_rendering as c; print(c('cheetah-run'))"
    env = _unset_gl(os.environ)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    out = proc.stdout.strip().splitlines()
    return None if out and out[-1] == "None" else (out[-1] if out else proc.stderr[-500:])


NO_RENDERING = _why_no_rendering()
needs_rendering = pytest.mark.skipif(
    NO_RENDERING is not None, reason=f"MuJoCo cannot render here: {NO_RENDERING}"
)


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """One DQS smoke run to 150 frames (50 updates) with eval.video=true: an evaluation and
    checkpoints at 100 and 150 frames."""
    run_dir = tmp_path_factory.mktemp("video_run")
    cmd, env = recipe_command(
        "dqs_dmc.py",
        run_dir,
        "eval.video=true",
        "eval.video_size=[48,64]",
        "collector.total_frames=150",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_unset_gl(env), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@needs_rendering
def test_eval_video_and_hparams_in_the_run_directory(video_run):
    video = video_run / "videos" / "eval_000000000150.gif"
    with Image.open(video) as gif:
        assert gif.size == (64, 48)  # eval.video_size is [height, width]
        assert gif.n_frames > 10  # the first 50-step episode, not one still
        gif.seek(gif.n_frames - 1)
        assert len(set(gif.convert("RGB").getdata())) > 10  # a rendered scene, not a blank
    hparams = (video_run / "logs" / "dqs_cheetah-run_s0" / "texts" / "hparams0.txt").read_text()
    assert "eval.video: True" in hparams.splitlines()
    assert "algo.q_cells: [32, 32]" in hparams.splitlines()  # the resolved config, flat


@needs_rendering
def test_load_policy_acts_like_the_checkpoints_agent(video_run, tmp_path):
    cfg = load_run_config(video_run)
    ckpt = latest_checkpoint(video_run / "checkpoints")
    state = load_checkpoint(ckpt)
    agent = make_agent(cfg, make_env(cfg, 0))
    agent.load_state_dict(state["agent"])
    exported = export_policy(video_run, tmp_path / "policy.pt")
    policies = [load_policy(video_run), load_policy(exported), agent.policy.eval()]
    assert not policies[0].training
    for mode in (ExplorationType.RANDOM, ExplorationType.DETERMINISTIC):
        actions = []
        for policy in policies:
            env = make_env(cfg, seed=123)  # the same observations for each policy
            torch.manual_seed(0)  # and the same sampler noise
            with set_exploration_type(mode), torch.no_grad():
                actions.append(env.rollout(20, policy)["action"])
        assert torch.equal(actions[0], actions[2]) and torch.equal(actions[1], actions[2])
    with set_exploration_type(ExplorationType.RANDOM), torch.no_grad():
        torch.manual_seed(1)  # another noise: another action (the policy samples)
        other = make_env(cfg, seed=123).rollout(20, policies[0])["action"]
    assert not torch.equal(other, actions[2])
    blob = torch.load(exported, weights_only=True)
    assert sorted(blob) == ["config", "format", "frames", "policy", "source"]
    assert blob["frames"] == 150 and blob["config"]["algo"]["name"] == "dqs"
    assert not any("qvalue" in key or "critic" in key for key in blob["policy"])
    assert exported.stat().st_size * 5 < ckpt.stat().st_size  # no buffer, critics, optimisers
    assert load_policy(video_run, checkpoint="ckpt_000000000100.pt") is not None


def test_video_refused_when_nothing_renders(tmp_path):
    """MUJOCO_GL=disable (set by the user) and eval.video=true: a config error before
    training that names the backend and the ways out."""
    cmd, env = recipe_command("dqs_dmc.py", tmp_path, "eval.video=true")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "eval.video=true needs MuJoCo to render" in proc.stderr
    assert "MUJOCO_GL=disable" in proc.stderr and "eval.video=false" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("dqs_dmc", overrides=["+preset=smoke", *overrides])


def test_video_config_errors():
    with pytest.raises(ConfigError, match="eval.video=true needs env.suite=dmc"):
        validate_config(_config("env.suite=maze", "env.task=two-goal-maze", "eval.video=true"))
    with pytest.raises(ConfigError, match=r"eval.video_size must be \[height, width\]"):
        validate_config(_config("eval.video_size=[48]"))
    try:
        import torchcodec  # noqa: F401
    except ImportError:  # the MP4 writer is missing here: the error says how to get it
        with pytest.raises(ConfigError, match="needs the torchcodec package.*video_format=gif"):
            validate_config(_config("eval.video=true", "eval.video_format=mp4"))


def test_logger_mode_disabled_reaches_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = make_logger(_config("logger.backend=wandb", "logger.mode=disabled"), tmp_path)
    assert logger.experiment.disabled  # wandb.init(mode="disabled"): nothing is written
    assert logger.experiment.config["optim.lr"] == 3.0e-4  # the hparams reached it
    logger.log_scalar("eval/return_mean", 1.0, 10)
    assert not list(tmp_path.rglob("*.wandb"))


@pytest.mark.parametrize("recipe", ["dqs_dmc", "dqs_maze"])
def test_a_run_config_from_an_earlier_version_loads_with_new_fields(recipe, tmp_path, caplog):
    """A run directory whose config.yaml predates fields (`algo.parameterization`, `algo.prior`,
    `algo.energy`) is rebuilt with what the code did before each field existed: `squashed` for
    the energy although the DMC default is now `unbounded`; every stored value is kept, and it
    works inside an initialised hydra too (as in a user's @hydra.main app)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(recipe, overrides=["algo=dqs", "seed=7", "algo.ema_tau=0.01"])
        sac = compose(recipe, overrides=["algo=sac"])
        OmegaConf.set_struct(cfg, False)
        OmegaConf.set_struct(sac, False)
        del cfg.algo["parameterization"], cfg.algo["prior"], cfg.algo["energy"]
        # a SAC run of that version had no `prior` (the maze's `fidelity=balanced` now writes
        # one into every algo's config; SAC reads none of the diffusion fields)
        sac.algo.pop("prior", None)
        cfg.algo.retired_field = 3  # a field this version no longer has is kept, not refused
        (tmp_path / "dqs").mkdir()
        (tmp_path / "sac").mkdir()
        (tmp_path / "dqs" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (tmp_path / "sac" / "config.yaml").write_text(OmegaConf.to_yaml(sac))
        with caplog.at_level("WARNING"):
            loaded = load_run_config(tmp_path / "dqs")
            loaded_sac = load_run_config(tmp_path / "sac")
    assert (loaded.algo.parameterization, loaded.algo.prior) == ("score", "paper")
    assert loaded.algo.energy == "squashed"  # the behaviour before the field, not the default
    assert loaded.seed == 7 and loaded.algo.ema_tau == 0.01 and loaded.algo.retired_field == 3
    assert loaded.env.max_episode_steps == cfg.env.max_episode_steps
    assert "algo.energy='squashed'" in caplog.text and "algo.prior='paper'" in caplog.text
    assert "prior" not in loaded_sac.algo  # SAC has no diffusion actor to rebuild


_WATCH = """
import sys, numpy as np
from dqs_torchrl.experiments import watch
arrays, out, sources = sys.argv[1], sys.argv[2], sys.argv[3:]
args = [*sources, "--out", out, "--steps", "20", "--every", "1", "--size", "32", "40"]
watch.main([*args, "--seed", "3", "--labels", "new", "old"])
try:
    watch.main(args)  # nothing overwritten without --force
except SystemExit as exit:
    print("exit", exit.code)
panels = watch.watch(sources, steps=20, seed=3, size=(32, 40))
video = watch.side_by_side(panels)
np.savez(arrays, video=video, returns=[p.episode_return for p in panels],
         frames=np.stack([p.frames for p in panels]), every2=len(watch.side_by_side(panels, 2)))
"""


@needs_rendering
def test_watch_puts_two_policies_side_by_side(video_run, tmp_path):
    """dqs-watch: the run's newest policy (150 frames) beside an export of its 100-frame
    checkpoint, 20 steps each from the same reset, in one labelled GIF. Rendering runs in a
    fresh process that leaves MUJOCO_GL to the tool (`make test` exports `disable`)."""
    from dqs_torchrl.experiments.watch import HEADER

    early = export_policy(video_run, tmp_path / "early.pt", checkpoint="ckpt_000000000100.pt")
    out, arrays = tmp_path / "both.gif", tmp_path / "panels.npz"
    env = _unset_gl(dict(os.environ, OMP_NUM_THREADS="1"))
    code = [sys.executable, "-c", _WATCH, str(arrays), str(out), str(video_run), str(early)]
    proc = subprocess.run(code, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(out) as gif:
        assert gif.size == (80, 32 + HEADER) and gif.n_frames > 10  # an animation
    printed = proc.stdout.splitlines()
    assert printed[0].startswith("new: 150 frames, return ")
    assert printed[1].startswith("old: 100 frames, return ")
    assert "exit 2" in printed and "exists; pass --force" in proc.stderr

    data = np.load(arrays)
    frames, video = data["frames"], data["video"]
    assert frames.shape == (2, 21, 32, 40, 3)  # two panels: the reset and 20 steps each
    assert video.shape == (21, 32 + HEADER, 80, 3) and data["every2"] == 11
    assert np.array_equal(video[:, HEADER:, :40], frames[0])
    assert np.array_equal(video[:, HEADER:, 40:], frames[1])
    assert not np.array_equal(frames[0, -1], frames[1, -1])  # two policies, two motions
    # the return shown is the episode's: the same policy and seeds rolled out by evaluate
    env_, policy = make_env(load_run_config(video_run), 3), load_policy(video_run)
    torch.manual_seed(3)  # after building the networks, as dqs-watch seeds the sampler
    returns, _ = evaluate(env_, policy, 1, False, max_steps=20)
    assert data["returns"][0] == pytest.approx(returns[0], rel=1e-5, abs=1e-6)
    assert printed[0] == f"new: 150 frames, return {returns[0]:.0f}"


@needs_rendering  # the run is the module's video run
def test_diagnose_samples_a_runs_networks_with_another_preset(video_run, capsys):
    """recipes/diagnose.py --samplers: the run's actor rebuilt with its own sampler settings
    draws exactly what the run's actor draws (same networks, EMA, schedule, parameterization
    and T), a preset's settings are its file's, another preset's row differs, every row is
    evaluated on the same episodes, and an unknown preset is refused with the known names."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import diagnose

    cfg = load_run_config(video_run)
    env = make_env(cfg, 0)
    agent = make_agent(cfg, env)
    agent.load_state_dict(load_checkpoint(latest_checkpoint(video_run / "checkpoints"))["agent"])
    actor, temperature = agent.policy, float(cfg.algo.temperature.initial)
    own = {k: cfg.algo[k] for k in diagnose.SAMPLER_FIELDS}
    rebuilt = diagnose.sampler_actor(actor, env.action_spec, cfg, own, temperature)
    obs = torch.randn(6, env.observation_spec["observation"].shape[-1])
    torch.manual_seed(5)
    expected = actor.sample(obs)
    torch.manual_seed(5)
    got = rebuilt.sample(obs)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))

    balanced = diagnose.preset_settings("balanced")
    assert balanced == {
        "prior": "matched",
        "sampler": "euler_maruyama",
        "num_steps": 20,
        "spacing": "geometric",
        "sigma_end": 1e-2,
        "denoise": True,
    }
    assert diagnose.preset_settings("paper")["prior"] == "paper"  # the file does not say

    rows = diagnose.diagnose(video_run, 8, 8, 4, ["balanced"], eval_episodes=1)
    assert [row["sampler"] for row in rows] == ["recipe", "balanced"]
    assert rows[0]["spread"] != rows[1]["spread"]
    assert all("stoch_return" in row and "det_return" in row for row in rows)

    with pytest.raises(SystemExit):
        diagnose.main([str(video_run), "--samplers", "fast,nope"])
    assert "unknown fidelity preset(s) ['nope']; known: ['accurate'" in capsys.readouterr().err


def test_a_csv_row_under_another_header_is_refused_and_the_file_kept(tmp_path):
    """`append_csv_row` (eval.csv, diagnose --csv): a row whose columns differ from the file's
    header would be read under the wrong names; it is refused, naming the columns, and the
    file is unchanged. Rows with the file's columns append."""
    from dqs_torchrl.experiments.harness.loop import append_csv_row

    path = tmp_path / "rows.csv"
    append_csv_row(path, {"frames": 10, "return_mean": 1.5})
    append_csv_row(path, {"frames": 20, "return_mean": 2.5})
    before = path.read_text()
    assert before.splitlines() == ["frames,return_mean", "10,1.5", "20,2.5"]
    with pytest.raises(ValueError, match=r"missing from the row: \['return_mean'\].*\['gap'\]"):
        append_csv_row(path, {"frames": 30, "gap": 0.1})
    with pytest.raises(ValueError, match="another order"):
        append_csv_row(path, {"return_mean": 3.5, "frames": 30})
    assert path.read_text() == before
    path.write_text(before + "30,3.")  # a row cut short by a kill
    with pytest.raises(ValueError, match="last line is not ended"):
        append_csv_row(path, {"frames": 40, "return_mean": 4.5})
    path.write_text("")  # what a resume's truncation leaves before the first evaluation
    append_csv_row(path, {"frames": 50, "return_mean": 5.5})
    assert path.read_text().splitlines() == ["frames,return_mean", "50,5.5"]


def test_diagnose_csv_puts_rows_of_different_runs_under_one_header(tmp_path):
    """diagnose.py --csv: a DMC row (latent columns) and a maze row (goal columns) share one
    header, the union, with empty cells; a later call whose columns the file has appends under
    the file's header; one with a new column is refused and leaves the file as it was."""
    sys.path.insert(0, str(ROOT / "recipes"))
    import diagnose

    path = tmp_path / "diag.csv"
    diagnose.write_rows(
        path,
        [{"run": "a", "q_pct": 80.0, "latent_abs": 5.5}, {"run": "b", "q_pct": 70.0, "goal": 3}],
    )
    diagnose.write_rows(path, [{"goal": 4, "run": "c"}])
    lines = path.read_text().splitlines()
    assert lines == ["run,q_pct,latent_abs,goal", "a,80.0,5.5,", "b,70.0,,3", "c,,,4"]
    with pytest.raises(ValueError, match=r"not in the header: \['gap'\]"):
        diagnose.write_rows(path, [{"run": "d", "gap": 1.0}])
    assert path.read_text().splitlines() == lines
