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
