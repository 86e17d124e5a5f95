"""The tutorials run as written: each page's python blocks, in order, in one namespace."""

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted((DOCS / "tutorials").glob("*.md"))


# The reproduce page runs an 8-run sweep through the command line: the suite starts it early.
@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem == "reproduce" else p for p in PAGES],
    ids=[p.stem for p in PAGES],
)
def test_tutorial_runs(page, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)  # anything a tutorial writes lands in a temporary folder
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert blocks, f"{page} has no python code"
    scope: dict = {"__name__": "__tutorial__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name}[block {i}]", "exec"), scope)
    check = scope.get("tutorial_check")
    if check is not None:  # a page may end with a function asserting its own claims
        check()
