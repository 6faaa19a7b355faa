"""Score a model on held-out photos, optionally against the Gatys reference.

    python -m fastnst.evaluate -m starry --photos coco128/val --size 512 --gatys 100 300 --json eval.json --grid grid.png

For each photo (resized so its longer side is ``--size``): the model's content, style (also split by
style layer), TV and total loss under the model's own loss settings (the training loss module); with
``--gatys``, the same for Gatys et al. image optimisation at those L-BFGS iteration counts, the ratio
model-total / Gatys-total, and the speed ratio. Prints a table, writes JSON and a sample grid
(photo | model | Gatys at the largest count). The API is :func:`evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

TERMS = ("content", "style", "tv", "total")


def spectral_peak(image: torch.Tensor, periods: tuple[int, ...] = (2, 4)) -> float:
    """Checkerboard measure of a (3, H, W) image: the largest ratio, over patterns that repeat every
    ``periods`` pixels along rows or columns, of the luminance spectrum's power at that frequency to
    the power of its neighbouring frequencies. Smooth spectra (photos, brush strokes) give about 1;
    the checkerboard of a deconvolution decoder gives a spike (tens)."""
    from fastnst.color import luminance

    luma = luminance(image.float())[0]
    power = torch.fft.fft2(luma - luma.mean()).abs().square()
    worst = 0.0
    for axis in (0, 1):
        profile = power.mean(dim=1 - axis)  # power per frequency along this axis
        n = profile.shape[0]
        for period in periods:
            k = round(n / period)
            if n < 8 * period:
                continue
            around = torch.cat([profile[k - 3 : k - 1], profile[(k + 2) % n : (k + 4) % n or None]])
            worst = max(worst, float(profile[k] / around.mean().clamp_min(1e-12)))
    return worst


def border_step(image: torch.Tensor, band: int = 8) -> float:
    """Border artefact measure, in 8-bit levels: the mean over the four sides of the largest per-channel
    difference between the mean colour of the outermost ``band`` pixels and of the band inside it."""
    img = image.float() * 255
    sides = [
        (img[:, :band], img[:, band : 2 * band]),
        (img[:, -band:], img[:, -2 * band : -band]),
        (img[:, :, :band], img[:, :, band : 2 * band]),
        (img[:, :, -band:], img[:, :, -2 * band : -band]),
    ]
    return float(sum((a.mean(dim=(1, 2)) - b.mean(dim=(1, 2))).abs().max() for a, b in sides) / 4)


def artefacts(out: torch.Tensor, photo: torch.Tensor) -> dict[str, float]:
    """Checkerboard and border measures of a stylised (3, H, W) image next to its photo's, and its range."""
    return {
        "checkerboard": spectral_peak(out),
        "checkerboard_photo": spectral_peak(photo),
        "border_step": border_step(out),
        "border_step_photo": border_step(photo),
        "min": float(out.min()),
        "max": float(out.max()),
    }


def evaluate(
    model: str,
    photos: list[Path],
    size: int = 512,
    gatys: list[int] | None = None,
    weights: str = "imagenet",
    style_image: str | None = None,
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Mean loss terms of ``model`` (and of Gatys at each count in ``gatys``) over ``photos``; see the module doc."""
    from fastnst.training.reference import exact_fp32

    with exact_fp32():
        return _evaluate(model, photos, size, gatys, weights, style_image, precision, progress)


def _evaluate(
    model: str, photos: list[Path], size: int, gatys: list[int] | None, weights: str, style_image: str | None, precision: str, progress: bool
) -> dict[str, Any]:
    from fastnst.images import read_image, resize_long_side
    from fastnst.stylize import Stylizer
    from fastnst.training.reference import build_reference_loss, loss_settings, optimise_image, score

    runner = Stylizer(model, "cpu" if not torch.cuda.is_available() else "auto", precision)
    settings = loss_settings(runner.metadata, style_image=style_image)
    loss = build_reference_loss(settings, weights, runner.device)
    per_photo: list[dict[str, Any]] = []
    samples: list[list[torch.Tensor]] = []
    model_seconds = 0.0
    for i, path in enumerate(photos):
        photo = resize_long_side(read_image(path).rgb, size)[None].to(runner.device)
        runner(photo)  # warm-up at this size, so the timing is the steady state
        t0 = time.perf_counter()
        out = runner(photo)
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        model_seconds += time.perf_counter() - t0
        row: dict[str, Any] = {"photo": path.name, "model": score(loss, out, photo), "artefacts": artefacts(out[0].cpu(), photo[0].cpu())}
        panel = [photo[0].cpu(), out[0].cpu()]
        if gatys:
            images, _, seconds = optimise_image(loss, photo, gatys)
            for n in gatys:
                row[f"gatys{n}"] = score(loss, images[n], photo) | {"seconds": seconds[n]}
            panel.append(images[max(gatys)][0].cpu())
        per_photo.append(row)
        if len(samples) < 4:
            samples.append(panel)
        if progress:
            print(f"[{i + 1}/{len(photos)}] {path.name}: model total {row['model']['total']:.4g}" + "".join(f", gatys{n} {row[f'gatys{n}']['total']:.4g}" for n in gatys or []), file=sys.stderr)
    result: dict[str, Any] = {
        "model": str(model),
        "metadata": runner.metadata,
        "loss_settings": {k: v for k, v in settings.items() if k not in ("style_sha256",)},
        "size": size,
        "photos": len(photos),
        "precision": runner.plan.precision,
        "model_mean": {t: statistics.fmean(r["model"][t] for r in per_photo) for t in TERMS},
        "model_style_by_layer": _style_by_layer(per_photo, "model"),
        "model_images_per_second": len(photos) / model_seconds if model_seconds else None,
        "artefacts_worst": {
            "checkerboard": max(r["artefacts"]["checkerboard"] for r in per_photo),
            "border_step": max(r["artefacts"]["border_step"] for r in per_photo),
            "min": min(r["artefacts"]["min"] for r in per_photo),
            "max": max(r["artefacts"]["max"] for r in per_photo),
        },
        "per_photo": per_photo,
    }
    for n in gatys or []:
        key = f"gatys{n}"
        result[f"{key}_mean"] = {t: statistics.fmean(r[key][t] for r in per_photo) for t in TERMS}
        result[f"{key}_style_by_layer"] = _style_by_layer(per_photo, key)
        result[f"{key}_seconds_per_photo"] = statistics.fmean(r[key]["seconds"] for r in per_photo)
        result[f"ratio_total_model_over_{key}"] = result["model_mean"]["total"] / result[f"{key}_mean"]["total"]
        result[f"ratio_content_model_over_{key}"] = result["model_mean"]["content"] / result[f"{key}_mean"]["content"]
        result[f"speedup_over_{key}"] = result[f"{key}_seconds_per_photo"] * result["model_images_per_second"]
    result["_samples"] = samples
    return result


def _style_by_layer(per_photo: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Mean style term of each style layer (weighted by its layer weight, not by beta; they sum to ``style``)."""
    layers = [k for k in per_photo[0][key] if k.startswith("style/")]
    return {k.removeprefix("style/"): statistics.fmean(r[key][k] for r in per_photo) for k in layers}


def sample_grid(samples: list[list[torch.Tensor]], height: int = 256) -> torch.Tensor:
    """Rows of photo | model | Gatys panels, each scaled to ``height``, on white."""
    import torch.nn.functional as F

    rows = []
    for panels in samples:
        scaled = [F.interpolate(p[None], size=(height, max(1, round(p.shape[-1] * height / p.shape[-2]))), mode="bilinear", antialias=True)[0] for p in panels]
        gap = torch.ones(3, height, 4)
        rows.append(torch.cat([t for s in scaled for t in (s, gap)][:-1], dim=2))
    width = max(r.shape[-1] for r in rows)
    rows = [torch.cat([r, torch.ones(3, height, width - r.shape[-1])], 2) for r in rows]
    return torch.cat([t for r in rows for t in (r, torch.ones(3, 4, width))][:-1], dim=1).clamp(0, 1)


def format_table(result: dict[str, Any]) -> str:
    gatys_keys = [k.removesuffix("_mean") for k in result if k.startswith("gatys") and k.endswith("_mean")]  # e.g. gatys100
    lines = ["| method | content | style | tv | total | s/photo |", "|---|---|---|---|---|---|"]
    mm = result["model_mean"]
    ips = result["model_images_per_second"]
    lines.append(f"| model ({result['precision']}) | {mm['content']:.4g} | {mm['style']:.4g} | {mm['tv']:.4g} | {mm['total']:.4g} | {1 / ips:.3f} |")
    for key in gatys_keys:
        gm = result[f"{key}_mean"]
        lines.append(f"| Gatys L-BFGS {key[5:]} | {gm['content']:.4g} | {gm['style']:.4g} | {gm['tv']:.4g} | {gm['total']:.4g} | {result[f'{key}_seconds_per_photo']:.1f} |")
    # Where the style term comes from: each layer's share of the total, as beta x its Gram error.
    beta = result["loss_settings"]["beta"]
    layers = list(result["model_style_by_layer"])
    lines += ["", "| beta x style, by layer | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for key, label in [("model", "model"), *[(k, f"Gatys L-BFGS {k[5:]}") for k in gatys_keys]]:
        lines.append(f"| {label} | " + " | ".join(f"{beta * result[f'{key}_style_by_layer'][n]:.4g}" for n in layers) + " |")
    a = result["artefacts_worst"]
    lines.append(
        f"\nartefacts (worst photo): checkerboard peak {a['checkerboard']:.2f} (about 1 = none), "
        f"border step {a['border_step']:.1f}/255, output range [{a['min']:.3f}, {a['max']:.3f}]"
    )
    for key in gatys_keys:
        lines.append(
            f"\nmodel / {key}: total {result[f'ratio_total_model_over_{key}']:.3f}, content {result[f'ratio_content_model_over_{key}']:.3f}, "
            f"model is {result[f'speedup_over_{key}']:.0f}x faster per photo"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastnst.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model file or name")
    p.add_argument("--photos", type=Path, required=True, help="folder of held-out photos (never trained on)")
    p.add_argument("--size", type=int, default=512, help="longer side of each photo (default: 512)")
    p.add_argument("--limit", type=int, help="use only the first N photos (sorted)")
    p.add_argument("--gatys", type=int, nargs="*", default=[], help="L-BFGS iteration counts of the Gatys reference, e.g. 100 300 (slow)")
    p.add_argument("--weights", default=os.environ.get("FASTNST_VGG_WEIGHTS", "imagenet"), help="VGG weights: imagenet, a file, or random")
    p.add_argument("--style-image", help="local style image, if the model's style is not found by name")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--grid", type=Path, help="write a sample grid (photo | model | Gatys) here")
    args = p.parse_args(argv)

    from fastnst.images import ImageError, list_images, write_image
    from fastnst.model_file import ModelFileError
    from fastnst.training.style import StyleImageError
    from fastnst.training.vgg import VGGWeightsError

    try:
        photos = list_images(args.photos) if args.photos.is_dir() else []
        if not photos:
            raise ValueError(f"{args.photos}: no photos found")
        photos = photos[: args.limit] if args.limit else photos
        result = evaluate(args.model, photos, args.size, sorted(set(args.gatys)), args.weights, args.style_image, args.precision)
    except (ImageError, ModelFileError, StyleImageError, VGGWeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    samples = result.pop("_samples")
    print(format_table(result))
    if args.grid:
        write_image(sample_grid(samples), args.grid, overwrite=True)
        print(f"wrote {args.grid}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
