"""Shared fixtures: tiny photos and a style image made on the fly, so every test runs offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# The read-only assets beside the repository (real VGG16 weights, styles, photos), when present.
ASSETS = Path(os.environ.get("FASTNST_ASSETS", REPO.parent / "shared" / "assets"))
VGG16_FILE = ASSETS / "vgg" / "vgg16_imagenet_features.pth"


def make_photo(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0, mode: str = "RGB") -> Path:
    """A smooth random picture (gradients + blobs), saved with the format given by the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 9)) for _ in range(3)]
    arr = ((np.stack(planes, -1) * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small photos in a folder tree (jpg and png, one in a subfolder)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(5):
        make_photo(root / f"p{i}.{'jpg' if i % 2 else 'png'}", (48 + 8 * i, 40), seed=i)
    make_photo(root / "sub" / "deep.jpg", (40, 56), seed=9)
    return root


@pytest.fixture(scope="session")
def style_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A high-contrast stripy 'painting'."""
    root = tmp_path_factory.mktemp("style")
    yy, xx = np.mgrid[0:64, 0:96]
    arr = np.stack([(np.sin(xx / 3.0) > 0) * 220, (np.cos(yy / 5.0) > 0) * 180, ((xx + yy) % 16 < 8) * 255], -1)
    path = root / "stripes.png"
    Image.fromarray(arr.astype(np.uint8), "RGB").save(path)
    return path


def tiny_train_args(run_dir: Path, photo_dir: Path, style_file: Path, steps: int = 4) -> list[str]:
    """Hydra overrides for a seconds-long run: random VGG, 8-channel net, 32 px crops."""
    return [
        "style=starry",
        f"style.image={style_file}",
        "style.image_size=48",
        f"data.root={photo_dir}",
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "loss.weights=random",
        "model.base_channels=8",
        "model.num_residual_blocks=1",
        f"trainer.max_steps={steps}",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "checkpoint_every_n_steps=2",
        f"run_dir={run_dir}",
    ]


def run_module(module: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in a subprocess with one torch thread (tests may run beside each other)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=full_env
    )
