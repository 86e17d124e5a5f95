"""The built wheel is a library a TorchRL user can install beside their own torch: ranges for
the core only, the experiment stack in extras, exact versions only in constraints.txt; the
recipes ship as console scripts with their hydra configs."""

import configparser
import csv
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "torchrl", "tensordict"}
CONFIGS = ROOT / "dqs_torchrl" / "experiments" / "configs"
SCRIPTS = {
    "dqs-dmc": "dqs_torchrl.experiments.dqs_dmc:main",
    "dqs-maze": "dqs_torchrl.experiments.dqs_maze:main",
    "dqs-plot": "dqs_torchrl.experiments.plot:main",
    "dqs-campaign": "dqs_torchrl.experiments.campaign:main",
    "dqs-watch": "dqs_torchrl.experiments.watch:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, so the build leaves nothing in the repo."""
    src = tmp_path_factory.mktemp("src")
    for name in ["pyproject.toml", "README.md", "LICENSE"]:
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "dqs_torchrl", src / "dqs_torchrl", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-q", "-w", str(out)], check=True, timeout=120)
    (built,) = out.glob("dqs_torchrl-*.whl")
    return built


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(name).decode())


def test_core_requirements_are_ranges(wheel):
    meta = metadata(wheel)
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = {canonicalize_name(r.name): r for r in requires if r.marker is None}
    assert set(core) == CORE, f"core dependencies beyond torch/torchrl/tensordict: {set(core)}"
    # neighbours of the versions we test with (constraints.txt) are allowed
    allowed = {
        "torch": ["2.1.0", "2.12.0", "2.13.0", "2.13.0+cpu", "2.14.1"],
        "torchrl": ["0.14.0", "0.14.1"],
        "tensordict": ["0.14.3", "0.14.9"],
    }
    for name, versions in allowed.items():
        for version in versions:
            assert core[name].specifier.contains(version), (name, version, core[name])
    # no exact pin anywhere, extras included: those belong in constraints.txt
    pinned = [str(r) for r in requires if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins in the wheel's requirements: {pinned}"
    python = SpecifierSet(meta["Requires-Python"])
    assert python.contains("3.10") and python.contains("3.12") and not python.contains("3.9")
    assert set(meta.get_all("Provides-Extra")) >= {"dmc", "maze", "recipes", "dev"}


def test_wheel_ships_license_and_py_typed(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "dqs_torchrl/py.typed" in names
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    with zipfile.ZipFile(wheel) as zf:
        assert "MIT License" in zf.read(license_file).decode()
    assert metadata(wheel)["License-Expression"] == "MIT"


@pytest.mark.parametrize("extras", ["", "[dev]"])
def test_installs_beside_the_installed_torch(wheel, extras, tmp_path):
    """pip resolves the wheel (with every extra, for ``[dev]``) against this venv alone, with
    no index: nothing but dqs-torchrl itself would be installed, torch is not replaced."""
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no find-links, indexes or global constraints
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-q"]
    proc = subprocess.run(
        [*cmd, "--report", str(report), f"{wheel}{extras}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    install = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert [canonicalize_name(n) for n in install] == ["dqs-torchrl"], install


def test_constraints_pin_every_requirement(wheel):
    """constraints.txt, which ``make`` installs with: one exact version per line, torch at the
    local CPU wheel's 2.13.0, and every requirement of the wheel (core and extras) pinned."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and Version(version), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    assert pins["torch"] == "2.13.0"  # pip takes the local CPU wheel; unpinned: CUDA, GBs
    assert "dqs-torchrl" not in pins
    for req in map(Requirement, metadata(wheel).get_all("Requires-Dist")):
        name = canonicalize_name(req.name)
        if name != "dqs-torchrl":
            assert name in pins, f"{req} has no exact version in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_wheel_ships_the_recipe_configs_and_console_scripts(wheel):
    """Every hydra config (and the results campaign) is package data, and each console script
    names a module of the wheel, so ``dqs-dmc`` works after ``pip install``."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry_points).decode())
    configs = {f"{p.relative_to(ROOT).as_posix()}" for p in CONFIGS.rglob("*.yaml")}
    assert {"dqs_dmc.yaml", "dqs_maze.yaml", "algo/dqs.yaml", "campaign/results.yaml"} <= {
        c.split("configs/", 1)[1] for c in configs
    }
    assert configs <= names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert "dqs_torchrl/experiments/configs/__init__.py" in names  # hydra's pkg:// needs it
    assert dict(parser["console_scripts"]) == SCRIPTS
    for target in SCRIPTS.values():
        assert target.split(":")[0].replace(".", "/") + ".py" in names


def _console_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    assert script.exists(), (
        f"{script} is missing: reinstall the package (make install, or "
        f"pip install -c constraints.txt -e '.[dev]') so its console scripts exist"
    )
    return script


@pytest.mark.parametrize("recipe", ["dqs_dmc", "dqs_maze"])
def test_console_script_composes_the_same_config_as_the_recipe_script(recipe, tmp_path):
    """``dqs-dmc ARGS`` == ``python recipes/dqs_dmc.py ARGS``, run from anywhere: the same
    overrides give the same config, read from the package."""
    overrides = ["--cfg", "job", "algo=sac", "seed=3", "collector.frames_per_batch=10"]
    script = _console_script(recipe.replace("_", "-"))
    installed = subprocess.run(
        [str(script), *overrides], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    clone = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0 and clone.returncode == 0, installed.stderr + clone.stderr
    assert "seed: 3" in installed.stdout and "name: sac" in installed.stdout
    assert installed.stdout == clone.stdout


def test_dqs_dmc_console_script_trains_outside_the_repository(tmp_path):
    """The smoke preset through the installed ``dqs-dmc``, from a directory with no configs and
    without MUJOCO_GL set: the env factory picks the headless default itself."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run(
        [str(_console_script("dqs-dmc")), "+preset=smoke", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run_dir / "eval.csv", newline="") as f:
        assert [int(r["frames"]) for r in csv.DictReader(f)] == [150, 300]
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / "dqs_dmc.log").exists()  # hydra's job name: as with recipes/dqs_dmc.py
    assert any((run_dir / "checkpoints").glob("ckpt_*.pt"))


def _fresh_venv_holding_torch(tmp_path: Path) -> Path:
    """A new venv that already holds torch, torchrl, tensordict and the `dmc` stack (those of
    this venv, seen through a `.pth` file; dqs-torchrl itself hidden): a TorchRL user's env."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    theirs = tmp_path / "their-packages"
    theirs.mkdir()
    for entry in site.iterdir():
        if "dqs_torchrl" not in entry.name and not entry.name.startswith("__editable__"):
            (theirs / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (fresh_site,) = venv.glob("lib/python*/site-packages")
    (fresh_site / "their-packages.pth").write_text(f"{theirs}\n")
    return venv


def test_wheel_installs_into_a_fresh_venv_and_runs_the_readme_example(wheel, tmp_path):
    """Done-when of issue 9: a fresh venv that already holds a torch installs the wheel (no
    index: only dqs-torchrl is added, torch stays the user's) and runs the README's
    composition example from outside the repository, importing the installed copy."""
    venv = _fresh_venv_holding_torch(tmp_path)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.pop("PYTHONPATH", None)
    env.update(PIP_CONFIG_FILE=os.devnull, OMP_NUM_THREADS="1")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q"]
    proc = subprocess.run(
        [*pip, f"{wheel}[dmc]"], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    (fresh_site,) = venv.glob("lib/python*/site-packages")
    installed = {p.name.split("-")[0] for p in fresh_site.glob("*.dist-info")}
    assert installed == {"dqs_torchrl"}, installed  # torch and the rest were not replaced

    text = (ROOT / "README.md").read_text()
    code = re.search(r"## Compose.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("total_frames=2_000", "total_frames=1_100")
    code = code.replace("batch_size=256", "batch_size=16")
    check = (
        "import dqs_torchrl, torch\n"
        "print('FROM', dqs_torchrl.__file__)\n"
        "print('TORCH', torch.__file__)\n"
        "print('BUFFER', len(buffer))\n"
    )
    (tmp_path / "example.py").write_text(code + "\n" + check)
    proc = subprocess.run(
        [str(python), "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    assert Path(lines["FROM"]).is_relative_to(fresh_site), lines["FROM"]
    assert Path(lines["TORCH"]).is_relative_to(tmp_path / "their-packages"), lines["TORCH"]
    assert lines["BUFFER"] == "1100"
