"""Every benchmark script in its ``--quick`` form (the recipes' smoke sizes, a few iterations):
each runs through its ``main(argv)`` in this process (one import of torch for all) and the
Markdown section it prints is read back: the rows it must have, finite numbers, and the
relations between columns that hold whatever the machine's speed."""

import doctest
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def run(capsys, script: str, *argv: str) -> str:
    """The section ``benchmarks/<script>.py --quick --no-write *argv`` prints."""
    importlib.import_module(script).main(["--quick", "--no-write", *argv])
    return capsys.readouterr().out


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of ``text`` as (headers, rows of cells)."""
    found, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip("|").split("|")])
        elif block:
            found.append((block[0], block[2:]))  # block[1] is the --- separator
            block = []
    return found


def number(cell: str) -> float:
    """The leading number of a cell (``"0.00105 (K=2)"`` -> 0.00105)."""
    value = float(cell.split()[0])
    assert math.isfinite(value), cell
    return value


def column(headers: list[str], rows: list[list[str]], name: str) -> list[float]:
    return [number(row[headers.index(name)]) for row in rows]


def test_update_cost_quick(capsys):
    text = run(capsys, "update_cost")
    (headers, rows), (parts_headers, parts) = tables(text)
    assert [row[0] for row in rows] == ["SAC (TorchRL SACLoss)", "paper", "fast"]
    # the recipe config composed with fidelity=paper / fast and the smoke preset
    assert rows[1][1] == "idem K=4; euler_maruyama 5 geometric steps to 1e-05"
    assert rows[2][1].startswith("blend K=4 (K=2 at sigma<=0.01); ancestral 5 geometric")
    assert "32x32 critics" in text and "energy squashed" in text
    ms = column(headers, rows, "ms / update (median)")
    ratios = column(headers, rows, "ratio to SAC")
    assert all(m > 0 for m in ms) and ratios[0] == 1
    for m, ratio in zip(ms[1:], ratios[1:], strict=True):
        assert ratio == pytest.approx(m / ms[0], rel=0.02)

    assert [row[0] for row in parts] == ["paper", "fast"]
    for row in parts:
        total, critic, sampling, target, regression, soft, share = map(number, row[1:])
        assert min(total, critic, sampling, target, soft) > 0
        assert sampling < critic  # the next actions are sampled inside the critic step
        # two breakdown rounds: their medians are means, so the stages add up to the total
        assert critic + target + regression + soft == pytest.approx(total, rel=0.03)
        assert share == pytest.approx(target / total, rel=0.03)


def test_action_latency_quick_writes_its_section(capsys, tmp_path):
    """With ``--output`` the section goes into the file, before the sections that follow it
    in ``SECTION_ORDER``, and the text around it stays."""
    output = tmp_path / "performance.md"
    later = "<!-- BEGIN sampler_fidelity -->\nkept\n<!-- END sampler_fidelity -->\n"
    output.write_text("# Performance\n\nintro\n\n" + later)
    importlib.import_module("action_latency").main(["--quick", "--output", str(output)])
    text = capsys.readouterr().out
    written = output.read_text()
    assert written.index("intro") < written.index("<!-- BEGIN action_latency -->")
    assert written.index("<!-- END action_latency -->") < written.index(later)

    [(headers, rows)] = tables(text)
    assert [(row[0], row[2]) for row in rows] == [
        (actor, batch) for batch in ("1", "16") for actor in ("SAC actor", "paper", "fast")
    ]
    assert "| SAC actor | tanh-Normal, RANDOM | 1 | - |" in written
    forward = column(headers, rows, "TensorDict forward ms / call")
    per_step = column(headers, rows, "ms / env step")
    ratios = column(headers, rows, "ratio to SAC (same batch)")
    assert all(v > 0 for v in forward + ratios)
    for row, call, step in zip(rows, forward, per_step, strict=True):
        assert step == pytest.approx(call / int(row[2]), rel=0.02)
    assert column(headers, [r for r in rows if r[0] != "SAC actor"], "sample() ms / call")
    assert [ratios[0], ratios[3]] == [1, 1]


def test_sampler_fidelity_quick(capsys):
    from dqs_torchrl.samplers import SAMPLERS

    text = run(capsys, "sampler_fidelity")
    (_, reference), (_, passing), (headers, every) = tables(text)
    assert [row[0].split(" (")[0] for row in reference] == [
        "exact vs exact",
        "reference: euler_maruyama geometric 50 1e-05",
        "pass limits",
    ]
    assert "(NFE 50)" in reference[1][0]
    # each sampler on 2 grids x 2 step counts, with and without Tweedie, and the reference
    assert len(every) == len(SAMPLERS) * 2 * 2 * 2 + 2
    assert {row[0] for row in every} == set(SAMPLERS)
    nfe = {tuple(row[:5]): int(row[5]) for row in every}
    for (sampler, spacing, steps, end, tweedie), count in nfe.items():
        if tweedie == "yes":  # the Tweedie step is one more score call
            assert count == nfe[sampler, spacing, steps, end, "no"] + 1
    for name in ("2-D", "6-D", "state 2-D"):
        assert all(0 <= e <= 1 for e in column(headers, every, f"{name} mode err"))
        column(headers, every, f"{name} dist")  # finite
    meets = [row[-1] for row in every]
    assert "all" in meets and len(passing) == meets.count("all")
    for cell in meets:
        assert cell in ("all", "-") or set(cell.split(", ")) <= {"2-D", "6-D", "state 2-D"}


def test_sampler_fidelity_prior_sweep_quick(capsys):
    text = run(capsys, "sampler_fidelity", "--prior-sweep")
    (bias_headers, bias), *samplers = tables(text)
    targets = ["2-D", "6-D", "state 2-D", "box 2-D", "3-mode 1-D"]
    assert bias_headers == ["sigma_max", "start", *targets]
    assert [row[:2] for row in bias[1:]] == [
        ["2", "N(0, sigma_max^2)"],
        ["2", "N(v score(0), v = sigma_max^2 + 1)"],
    ]
    paper_start, matched = ([number(c) for c in row[2:]] for row in bias[1:])
    # the documented finding: at sigma_max = 2 the matched start leaves less bias everywhere
    assert all(0 <= m < p for m, p in zip(matched, paper_start, strict=True))
    assert "**fast (ancestral 10 + Tweedie)**:" in text and "**paper (EM 50)**:" in text
    for headers, rows in samplers:
        assert len(rows) == 3
        for name in targets:
            assert all(0 <= e <= 1 for e in column(headers, rows, f"{name} mode err"))


def test_score_target_accuracy_quick(capsys):
    text = run(capsys, "score_target_accuracy")
    found = tables(text)
    for critic in ("synthetic", "fitted", "random"):
        assert f"**{critic}** critic, Q range 10" in text
    assert len(found) == 3
    for headers, (cost, *rows) in found:
        assert headers == [
            "tau (sigma)",
            *("K=1", "K=16", "K=64", "blend K=2", "blend K=16"),
            "default (blend 4/2)",  # fidelity=fast, with the smoke preset's K
            "reference ESS (of 1000)",
            "ref vs ref",
        ]
        assert [number(c) for c in cost[1:6]] == [1, 16, 64, 2, 16]
        assert 2 < number(cost[6]) < 4  # the default's mean K over tau, between its two K
        assert [row[0] for row in rows] == ["0.4 (0.001)", "0.8 (0.1)", "1 (1)"]
        assert all(number(c) > 0 for row in rows for c in row[1:])
        # at sigma = 1e-3 every estimator agrees with the reference, whose draws all count
        assert max(number(c) for c in rows[0][1:-2]) < 0.05
        assert number(rows[0][-2]) > 500


def test_configs_come_from_the_recipe_config():
    """``--override`` reaches every DQS agent, SAC stays the recipes' ``algo=sac``, and an
    unknown name stops the script with the known ones."""
    from recipe_agents import sac_config, select_configs
    from update_cost import parse_args

    args = parse_args(["--quick", "--override", "algo.energy=unbounded"])
    configs = select_configs(args)
    assert list(configs) == ["paper", "fast"]
    assert {cfg.algo.energy for cfg in configs.values()} == {"unbounded"}
    assert configs["paper"].algo.estimator == "idem" and configs["fast"].algo.denoise
    assert sac_config(args).algo.name == "sac"
    with pytest.raises(SystemExit, match="known: paper, fast"):
        select_configs(parse_args(["--configs", "fats"]))


@pytest.mark.parametrize("module", ["recipe_agents", "timing", "energies"])
def test_module_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_script_runs_from_its_command_line(tmp_path):
    """``python benchmarks/<script>.py`` run from another folder finds its sibling modules
    (the scripts put their folder on ``sys.path``) and prints its section."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sampler_fidelity.py"), "--quick", "--no-write"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## Sampler fidelity with the exact score" in proc.stdout
    assert len(tables(proc.stdout)) == 3
