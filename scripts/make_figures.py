#!/usr/bin/env python
"""Draw the README figure for colour preservation and strength from a model.

    python scripts/make_figures.py -m runs/starry/.../starry.pt -o docs/images/color_strength.jpg

The "photo" is a synthetic landscape drawn here (sky, sun, hills, a house, a lake), so the figure
redistributes no third-party photograph. Panels: photo | full style | --preserve-color |
--strength 0.25 | 0.5 | 0.75.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
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
