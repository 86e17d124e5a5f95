"""The README's composition example runs as written (with smaller sizes, to stay fast)."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    code = re.search(r"## Compose.*?```python\n(.*?)```", text, re.S).group(1)
    # Same code, fewer frames and a smaller batch: 1_100 frames = 100 updates.
    code = code.replace("total_frames=2_000", "total_frames=1_100")
    code = code.replace("batch_size=256", "batch_size=32")
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert len(scope["buffer"]) == 1_100
    actor, score = scope["actor"], scope["score"]
    # the EMA actor moved away from its initial copy, and training happened
    live = dict(actor.score_network.named_parameters())
    ema = dict(actor.ema_network.named_buffers())
    assert any(not torch.equal(live[k], ema[k]) for k in live)
    assert score.temperature.item() == pytest.approx(0.05)


def test_readme_example_is_the_balanced_preset():
    """The composition example's sampler and estimator keywords are `fidelity=balanced`'s
    (configs/fidelity/balanced.yaml), so the README and the recipes' preset cannot drift."""
    import ast

    from omegaconf import OmegaConf

    from dqs_torchrl.experiments.configs import CONFIG_DIR

    preset = OmegaConf.load(Path(CONFIG_DIR) / "fidelity" / "balanced.yaml")
    code = re.search(r"## Compose.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    calls = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
            calls.setdefault(node.func.id, []).append(keywords)
    (sampler,) = [c for c in calls["dict"] if "sampler" in c]  # balanced = dict(...)
    (estimator,) = calls["IDEMScoreLoss"]
    sampler = {k: ast.literal_eval(v) for k, v in sampler.items()}
    estimator = {k: ast.literal_eval(v) for k, v in estimator.items()}
    keys = ("num_steps", "sampler", "sigma_end", "denoise", "prior", "parameterization")
    assert sampler == {k: preset[k] for k in keys} | {"sigma_min": preset.sigma_min}
    assert estimator == {
        "estimator": preset.estimator,
        "num_mc_samples": preset.num_mc_samples,
        "num_mc_samples_small": preset.num_mc_samples_small,
        "small_sigma": preset.small_sigma,
        "batch_rows": preset.score_batch_rows,
    }
