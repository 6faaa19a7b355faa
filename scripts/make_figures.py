#!/usr/bin/env python
"""Draw the README figures from models.

    python scripts/make_figures.py -m starry -o docs/images/color_strength.jpg
    python scripts/make_figures.py --gallery docs/images/gallery -m starry wave composition_vii

The "photos" are synthetic scenes drawn here (a landscape: sky, sun, hills, a house, a lake; a
harbour town: houses, windows, boats, water), so the figures redistribute no third-party
photograph. Colour figure panels: photo | full style | --preserve-color | --strength 0.25 | 0.5 | 0.75.
Gallery: NAME_landscape.jpg and NAME_town.jpg per model, plus the two scenes themselves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastnst.images import to_pil  # noqa: E402
from fastnst.model_file import resolve_model  # noqa: E402
from fastnst.stylize import Stylizer  # noqa: E402


def landscape(width: int = 384, height: int = 256, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    img = np.zeros((height, width, 3))
    sky = np.stack([0.35 + 0.4 * yy, 0.55 + 0.3 * yy, 0.95 - 0.1 * yy], -1)
    img[:] = sky
    sun = (xx - 0.78) ** 2 * (width / height) ** 2 + (yy - 0.2) ** 2 < 0.006
    img[sun] = (1.0, 0.85, 0.35)
    for k, (base, amp, freq, col) in enumerate([(0.55, 0.07, 7, (0.25, 0.45, 0.25)), (0.68, 0.05, 11, (0.15, 0.35, 0.12))]):
        ridge = base + amp * np.sin(xx * freq + k) + 0.02 * np.sin(xx * 41)
        img[yy > ridge] = col
    lake = yy > 0.82
    img[lake] = np.stack([0.2 + 0.1 * np.sin(xx[lake] * 60), 0.35 + 0.05 * yy[lake], 0.6 + 0.05 * np.sin(xx[lake] * 30)], -1)
    pil = Image.fromarray((np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    d.rectangle([int(0.2 * width), int(0.6 * height), int(0.34 * width), int(0.76 * height)], fill=(190, 60, 45))
    d.polygon([(int(0.18 * width), int(0.6 * height)), (int(0.27 * width), int(0.48 * height)), (int(0.36 * width), int(0.6 * height))], fill=(110, 40, 30))
    d.rectangle([int(0.25 * width), int(0.67 * height), int(0.29 * width), int(0.76 * height)], fill=(60, 35, 20))
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)


def town(width: int = 384, height: int = 256, seed: int = 1) -> torch.Tensor:
    """A harbour town at dusk: a gradient sky, a row of gabled houses with lit windows, boats on water."""
    rng = np.random.default_rng(seed)
    yy = np.mgrid[0:height, 0:width][0] / height
    sky = np.stack([0.95 - 0.5 * yy, 0.6 - 0.3 * yy, 0.45 + 0.2 * yy], -1)
    pil = Image.fromarray((np.clip(sky, 0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(pil)
    water_top = int(0.72 * height)
    x = 0
    while x < width:
        w = int(rng.integers(36, 60))
        top = int(rng.integers(int(0.3 * height), int(0.45 * height)))
        colour = tuple(int(c) for c in rng.integers(90, 230, 3))
        d.rectangle([x, top, x + w, water_top], fill=colour, outline=(40, 30, 30))
        d.polygon([(x - 2, top), (x + w // 2, top - int(0.5 * w)), (x + w + 2, top)], fill=(120, 45, 40), outline=(40, 30, 30))
        for wy in range(top + 8, water_top - 12, 18):
            for wx in range(x + 6, x + w - 10, 14):
                d.rectangle([wx, wy, wx + 7, wy + 9], fill=(255, 225, 120) if rng.random() < 0.6 else (50, 50, 70))
        x += w
    d.rectangle([0, water_top, width, height], fill=(30, 60, 95))
    for k in range(0, width, 6):
        d.line([(k, water_top + 4 + (k * 7) % 50), (k + 4, water_top + 4 + (k * 7) % 50)], fill=(200, 180, 120))
    for bx in (0.15, 0.55, 0.8):
        cx, cy = int(bx * width), int(0.86 * height)
        d.polygon([(cx - 28, cy), (cx + 28, cy), (cx + 18, cy + 12), (cx - 18, cy + 12)], fill=(235, 235, 225))
        d.line([(cx, cy), (cx, cy - 40)], fill=(60, 40, 30), width=2)
        d.polygon([(cx + 2, cy - 38), (cx + 2, cy - 4), (cx + 24, cy - 4)], fill=(220, 70, 60))
    arr = np.asarray(pil, dtype=np.float32) / 255 + rng.normal(0, 0.015, (height, width, 3))
    return torch.from_numpy(np.clip(arr, 0, 1).astype(np.float32)).permute(2, 0, 1)


def gallery(models: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    scenes = {"landscape": landscape(512, 336), "town": town(512, 336)}
    for scene, photo in scenes.items():
        to_pil(photo).save(out / f"{scene}.jpg", quality=88)
    for model in models:
        runner = Stylizer(model, "cpu", "fp32")
        name = resolve_model(model).stem  # the model's file name: starry and starry_johnson get their own images
        for scene, photo in scenes.items():
            to_pil(runner(photo[None])[0]).save(out / f"{name}_{scene}.jpg", quality=88)
        print(f"wrote {out}/{name}_*.jpg")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", nargs="+", required=True, help="model file(s) or name(s)")
    p.add_argument("-o", "--output", type=Path, help="colour/strength figure (one model)")
    p.add_argument("--gallery", type=Path, help="folder for the gallery images (every model)")
    args = p.parse_args()
    if args.gallery:
        gallery(args.model, args.gallery)
    if not args.output:
        return
    args.model = args.model[0]
    photo = landscape()[None]
    panels = [photo[0]]
    for kwargs in ({}, {"preserve_color": True}, {"strength": 0.25}, {"strength": 0.5}, {"strength": 0.75}):
        panels.append(Stylizer(args.model, "cpu", "fp32", **kwargs)(photo)[0])
    gap = torch.ones(3, photo.shape[2], 4)
    row = torch.cat([t for panel in panels for t in (panel, gap)][:-1], dim=2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    to_pil(row).save(args.output, quality=88)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
