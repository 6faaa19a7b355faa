"""A wheel is a whole product: it carries the Hydra configs and the shipped models, and works away from a checkout."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, make_photo

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "fastnst", "configs", "checkpoints")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy, so the build leaves nothing in the repository; no build isolation, so offline.
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    shutil.rmtree(src / "fastnst" / "_shipped", ignore_errors=True)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel offline here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    (whl,) = out.glob("fastnst-*.whl")
    return whl


def test_wheel_carries_configs_and_models(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = "fastnst/_shipped/"
    expected = {f"{shipped}{p.relative_to(REPO).as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    expected |= {f"{shipped}checkpoints/{p.name}" for p in (REPO / "checkpoints").glob("*.pt")}
    assert len(expected) > 10 and expected <= names, sorted(expected - names)
    assert not any("__pycache__" in n for n in names if n.startswith(shipped))

    # Every command has its console script, and each one points at a callable main.
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = dict(
        (k.strip(), v.strip()) for k, v in (line.split("=") for line in zipfile.ZipFile(wheel).read(entry_points).decode().splitlines() if "=" in line)
    )
    assert set(scripts) == {f"fastnst-{c}" for c in ("train", "apply", "batch-apply", "export", "optimize", "evaluate")}
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_installed_wheel_trains_and_applies_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"  # no configs/ or checkpoints/ around it
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("FASTNST_MODELS", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)

    where = run("-c", "import fastnst.resources as r, fastnst.model_file as m; print(r.CONFIG_DIR); print(' '.join(sorted(m.available_models())))")
    assert where.returncode == 0, where.stderr
    config_dir, models = where.stdout.splitlines()
    assert Path(config_dir).is_relative_to(site)
    assert {"starry", "wave", "composition_vii"} <= set(models.split())

    composed = run("-m", "fastnst.train", "style=wave", "--cfg", "job")
    assert composed.returncode == 0, composed.stderr
    assert "name: wave" in composed.stdout

    photo = make_photo(elsewhere / "photo.png", (40, 32))
    applied = run("-m", "fastnst.apply", "-m", "starry", str(photo), "-o", "out.png")
    assert applied.returncode == 0, applied.stderr
    assert (elsewhere / "out.png").stat().st_size > 0
