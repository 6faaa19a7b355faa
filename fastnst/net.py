"""The image transformation network of Johnson et al. 2016, with the now-standard fixes.

Layout (``base_channels=C``, ``num_residual_blocks=R``)::

    9x9 conv C  -> 3x3 conv stride 2 -> 2C -> 3x3 conv stride 2 -> 4C      (encoder)
    R residual blocks of 4C                                                 (residuals)
    nearest upsample x2 + 3x3 conv 2C -> upsample x2 + 3x3 conv C -> 9x9 conv 3   (decoder)

Every convolution uses reflection padding, every hidden one is followed by affine instance
norm and ReLU. Upsample + conv replaces the paper's transposed convolutions, which leave
checkerboard artefacts (Odena et al. 2016); instance norm replaces batch norm (Ulyanov et al.
2016).

Input and output are RGB in [0, 1]. The output mapping is ``sigmoid`` of the last
convolution, so every output pixel lies strictly inside (0, 1) with no clamping step and no
dead gradients at the range limits.

Any height and width work: the input is padded (reflection, or replication for images too
small to reflect) to a multiple of 4 and at least :data:`MIN_SIZE`, and the output is cropped
back to the input size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Named size presets. ``johnson`` is the network of the paper (32-64-128, 5 residual blocks).
#: ``slim`` keeps the layout with half the width and 3 residual blocks (4.6x fewer FLOPs).
PRESETS: dict[str, dict[str, int]] = {
    "johnson": {"base_channels": 32, "num_residual_blocks": 5},
    "slim": {"base_channels": 16, "num_residual_blocks": 3},
}

#: Smallest padded side the layers accept (two stride-2 stages, then 3x3 reflection padding).
MIN_SIZE = 8


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, padding_mode="reflect")


class ConvBlock(nn.Sequential):
    """[nearest upsample x2] -> reflection-padded conv -> affine instance norm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, upsample: bool = False) -> None:
        layers: list[nn.Module] = []
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        layers += [_conv(in_ch, out_ch, kernel_size, stride), nn.InstanceNorm2d(out_ch, affine=True), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class ResidualBlock(nn.Module):
    """conv -> IN -> ReLU -> conv -> IN, plus the identity (He et al. 2016, as in Johnson et al.)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            _conv(channels, channels, 3),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformerNet(nn.Module):
    """Feed-forward style network: ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, H, W)`` in (0, 1).

    Args:
        base_channels: width of the first stage; the encoder doubles it twice (paper: 32).
        num_residual_blocks: residual blocks at 1/4 resolution (paper: 5).
        global_skip: predict a change to the photo, ``sigmoid(logit(photo) + decoder(...))``, with the
            last conv zero-initialised so a new network returns the photo itself. Not in the paper;
            training starts where Gatys et al. start (from the photo) and keeps the content far
            better early on (docs/training.md).
    """

    def __init__(self, base_channels: int = 32, num_residual_blocks: int = 5, global_skip: bool = False) -> None:
        super().__init__()
        if base_channels < 1 or num_residual_blocks < 0:
            raise ValueError(
                f"base_channels must be >= 1 and num_residual_blocks >= 0, got {base_channels}, {num_residual_blocks}"
            )
        self.base_channels = int(base_channels)
        self.num_residual_blocks = int(num_residual_blocks)
        self.global_skip = bool(global_skip)
        c = self.base_channels
        self.encoder = nn.Sequential(
            ConvBlock(3, c, 9),
            ConvBlock(c, 2 * c, 3, stride=2),
            ConvBlock(2 * c, 4 * c, 3, stride=2),
        )
        self.residuals = nn.Sequential(*(ResidualBlock(4 * c) for _ in range(self.num_residual_blocks)))
        self.decoder = nn.Sequential(
            ConvBlock(4 * c, 2 * c, 3, upsample=True),
            ConvBlock(2 * c, c, 3, upsample=True),
            _conv(c, 3, 9),
        )
        if self.global_skip:
            final = self.decoder[-1][-1] if isinstance(self.decoder[-1], nn.Sequential) else self.decoder[-1]
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)

    def config(self) -> dict[str, int | bool]:
        """Constructor arguments; stored in model files so the network can be rebuilt."""
        cfg: dict[str, int | bool] = {"base_channels": self.base_channels, "num_residual_blocks": self.num_residual_blocks}
        if self.global_skip:  # absent means False: files written before the option still load
            cfg["global_skip"] = True
        return cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x, (top, left) = pad_for_network(x)
        y = self.decoder(self.residuals(self.encoder(x)))
        if self.global_skip:
            y = y.float() + photo_logit(x)
        return torch.sigmoid(y)[..., top : top + h, left : left + w]


def photo_logit(x: torch.Tensor) -> torch.Tensor:
    """logit of a photo in [0, 1], in float32 (bf16 would blur it), clamped so 0 and 1 stay finite."""
    # clamp + logit rather than logit's eps argument: the same values, and ONNX/TorchScript export them.
    return torch.logit(x.float().clamp(1e-3, 1 - 1e-3))


def padded_size(size: int) -> int:
    """Side length the network actually runs on for an input side of ``size``."""
    return max(MIN_SIZE, -(-size // 4) * 4)


def pad_for_network(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``x`` to :func:`padded_size` on both axes, split evenly; returns the offsets (top, left)."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h) - h, padded_size(w) - w
    if ph == 0 and pw == 0:
        return x, (0, 0)
    top, left = ph // 2, pw // 2
    pad = (left, pw - left, top, ph - top)
    # Reflection needs each pad smaller than the side; tiny images fall back to replication.
    mode = "reflect" if max(left, pw - left) < w and max(top, ph - top) < h else "replicate"
    return F.pad(x, pad, mode=mode), (top, left)


def build_model(preset: str | None = None, **overrides: Any) -> TransformerNet:
    """A :class:`TransformerNet` from a preset name (see :data:`PRESETS`) and/or explicit arguments."""
    kwargs: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}")
        kwargs.update(PRESETS[preset])
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return TransformerNet(**kwargs)


def count_flops(model: TransformerNet, height: int, width: int) -> int:
    """Floating-point operations (2 x multiply-adds of the convolutions) of one forward pass.

    Normalisation, activations and padding are left out: they are a few percent of the total.
    """
    total = 0

    def hook(module: nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        macs = output.shape[2] * output.shape[3] * module.out_channels * (module.in_channels // module.groups) * kh * kw
        total += 2 * output.shape[0] * macs

    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        shadow = TransformerNet(**model.config())
        for m in shadow.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_hook(hook)
        shadow(torch.empty(1, 3, height, width))
    return total
