"""Gatys et al. image optimisation with the training loss: the quality yardstick.

    python -m fastnst.optimize --style starry -o out.png photo.jpg --size 512 --iterations 100
    python -m fastnst.optimize -m runs/starry/.../starry.pt -o out.png photo.jpg   # the model's loss settings
    python -m fastnst.optimize --style starry --init noise -o out.png photo.jpg     # from white noise, as Gatys et al.

Writes the image and, with ``--curve``, the total loss at every function evaluation (CSV).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastnst.optimize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo", type=Path, help="content photo")
    p.add_argument("-o", "--output", type=Path, required=True, help="image to write (png, jpg, ...)")
    p.add_argument("-m", "--model", help="take the loss settings (style, alpha, beta, layers, ...) from this model file")
    p.add_argument("--style", help="style config name (configs/style/NAME.yaml) when no model is given")
    p.add_argument("--style-image", help="a local style image (instead of the style's URL/cache)")
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--tv-weight", type=float)
    p.add_argument("--size", type=int, default=512, help="longer side of the photo during optimisation (default: 512)")
    p.add_argument("--iterations", type=int, default=100, help="L-BFGS iterations or Adam steps (default: 100)")
    p.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    p.add_argument("--lr", type=float, help="learning rate (default: 1 for L-BFGS, 0.05 for Adam)")
    p.add_argument("--init", choices=("photo", "noise"), default="photo", help="start from the photo (default; the yardstick of fastnst.evaluate) or from white noise (Gatys et al.)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise for --init noise (default: 0)")
    p.add_argument("--weights", default=os.environ.get("FASTNST_VGG_WEIGHTS", "imagenet"), help="VGG weights: imagenet, a file, or random")
    p.add_argument("--curve", type=Path, help="write the loss curve here (CSV: evaluation, total)")
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fastnst.images import ImageError, read_image, resize_long_side, write_image
    from fastnst.model_file import ModelFileError, load_model
    from fastnst.training.reference import build_reference_loss, loss_settings, optimise_image
    from fastnst.training.style import StyleImageError
    from fastnst.training.vgg import VGGWeightsError

    try:
        if args.output.exists() and not args.overwrite:
            raise ImageError(f"{args.output}: exists; not overwriting it (pass --overwrite to replace it)")
        meta = load_model(args.model)[1] if args.model else None
        settings = loss_settings(meta, args.style, style_image=args.style_image, alpha=args.alpha, beta=args.beta, tv_weight=args.tv_weight)
        loss = build_reference_loss(settings, args.weights)
        photo = resize_long_side(read_image(args.photo).rgb, args.size)
        images, curve, seconds = optimise_image(loss, photo[None], args.iterations, args.optimizer, args.lr, args.init, args.seed)
        out = images[args.iterations]
        write_image(out[0], args.output, overwrite=args.overwrite)
    except (ImageError, ModelFileError, StyleImageError, VGGWeightsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.curve:
        with open(args.curve, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["evaluation", "total"])
            w.writerows(enumerate(curve, 1))
    print(f"wrote {args.output}: total loss {curve[0]:.4g} -> {curve[-1]:.4g} in {args.iterations} {args.optimizer} iterations, {seconds[args.iterations]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
