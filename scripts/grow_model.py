#!/usr/bin/env python
"""Grow a trained model into a wider and deeper network that computes the same function (Net2Net).

    python scripts/grow_model.py -m checkpoints/starry.pt -o starry_grown.pt --preset johnson
    python -m fastnst.train style=starry model=johnson init_from=starry_grown.pt curriculum.small_crop=null

How the shipped `starry_johnson` began (docs/training.md, "The classic network, longer"): the slim `starry`
(16 wide, 3 residual blocks) grown into the classic network (32 wide, 5 blocks), then trained further.
Every channel of the wider network copies one of the narrower (channel j copies j mod n), the next layer's
input weights are divided by the number of copies, instance norms copy their scale and shift, and the added
residual blocks start as the identity (their last norm's scale and shift are zero). Copies carry identical
instance-norm statistics, so the output is unchanged to float rounding. `--noise` (relative, default 1%)
then perturbs the copied conv weights so that twin channels get different gradients and can drift apart.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastnst.model_file import ModelFileError, load_model, save_model  # noqa: E402
from fastnst.net import PRESETS, TransformerNet  # noqa: E402


def grow(net: TransformerNet, base_channels: int, num_residual_blocks: int, noise: float = 0.0, seed: int = 0) -> TransformerNet:
    """``net`` as a network of ``base_channels`` (a multiple of its own) and ``num_residual_blocks`` (at least its own)."""
    if base_channels % net.base_channels or num_residual_blocks < net.num_residual_blocks:
        raise ValueError(
            f"can only grow: base_channels must be a multiple of {net.base_channels} and num_residual_blocks at least "
            f"{net.num_residual_blocks} (asked {base_channels}, {num_residual_blocks})"
        )
    wide = TransformerNet(base_channels, num_residual_blocks, net.global_skip)
    narrow = dict(net.named_modules())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in wide.named_modules():
            old = narrow.get(name)
            if isinstance(m, nn.Conv2d) and isinstance(old, nn.Conv2d):
                out_idx = torch.arange(m.out_channels) % old.out_channels
                in_idx = torch.arange(m.in_channels) % old.in_channels
                w = old.weight[out_idx][:, in_idx] * (old.in_channels / m.in_channels)
                m.weight.copy_(w * (1 + noise * torch.randn(w.shape, generator=gen)))
                m.bias.copy_(old.bias[out_idx])
            elif isinstance(m, nn.InstanceNorm2d) and isinstance(old, nn.InstanceNorm2d):
                idx = torch.arange(m.num_features) % old.num_features
                m.weight.copy_(old.weight[idx])
                m.bias.copy_(old.bias[idx])
        for block in wide.residuals[net.num_residual_blocks :]:
            last_norm = block.body[-1]
            nn.init.zeros_(last_norm.weight)
            nn.init.zeros_(last_norm.bias)
    return wide.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="model file or name to grow (as for fastnst.apply)")
    p.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    p.add_argument("--preset", choices=sorted(PRESETS), default="johnson", help="network to grow into (default: johnson)")
    p.add_argument("--noise", type=float, default=0.01, help="relative noise on the copied conv weights (default 0.01; 0: exact)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    try:
        net, meta = load_model(args.model)
        wide = grow(net, **PRESETS[args.preset], noise=args.noise, seed=args.seed)
        x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            diff = (wide(x) - net(x)).abs().max().item()
        meta = {k: v for k, v in meta.items() if k != "name"}
        meta.update(model=args.preset, grown_from={"model": str(args.model), "noise": args.noise, "steps": meta.get("steps")})
        save_model(wide, args.output, metadata=meta, overwrite=args.overwrite)
    except (ModelFileError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({args.preset}); max output change on a random image: {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
