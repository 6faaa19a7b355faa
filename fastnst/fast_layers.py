"""Exact rewrites of the decoder's layers that run faster on CPUs (inference only).

* :class:`SubpixelUpsampleConv` replaces ``nearest upsample x2 -> reflection-padded 3x3 conv``. Each of
  the four output phases (row/column parity) of that pair only ever sees two low-resolution rows and
  columns, so it is a 2x2 convolution of the low-resolution input with summed taps: 4 instead of 9
  multiply-adds per output pixel and channel, and no upsampled tensor. Reflection padding of the
  upsampled image equals replication padding of the low-resolution one.
* :class:`PhaseConv2d` computes a stride-1 convolution with few output channels (the final 9x9 conv
  to RGB) on the 2x2 space-to-depth of its input: 4x the channels on both sides, a 5x5 kernel, then
  depth-to-space. Same result, but a matrix shape that vector units can fill (3 output channels
  leave most of them idle).

Both hold only re-arranged copies of the original weights; ``tests/test_fast_layers.py`` checks
they match the layers they replace.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fastnst.net import ConvBlock, TransformerNet


class SubpixelUpsampleConv(nn.Module):
    """``Upsample(2, nearest)`` then ``conv`` (3x3, stride 1, reflection padding 1), computed at low resolution."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError("SubpixelUpsampleConv replaces 3x3 stride-1 convolutions with padding 1")
        w = conv.weight.detach()
        # Row taps (dy = 0, 1, 2 of the upsampled image) fold onto two low-resolution rows per phase.
        rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]
        kernels = []
        for a in (0, 1):
            wr = rows[a]  # (out, in, 2, 3)
            cols = [torch.stack([wr[..., 0], wr[..., 1] + wr[..., 2]], -1), torch.stack([wr[..., 0] + wr[..., 1], wr[..., 2]], -1)]
            kernels += [cols[0], cols[1]]  # phases (a, 0), (a, 1)
        self.weight = nn.Parameter(torch.cat(kernels, 0).contiguous(), requires_grad=False)  # (4 * out, in, 2, 2)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False) if conv.bias is not None else None
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
        o = self.out_channels
        # All four phases in one convolution of the padded input (one large matrix product, no shifted
        # copies of the input): phase (a, b) is rows a..a+h-1, columns b..b+w-1 of its output channels.
        bias = None if self.bias is None else self.bias.repeat(4)
        y = F.conv2d(xp, self.weight, bias)  # (n, 4 * o, h + 1, w + 1)
        out = torch.empty((n, o, h, 2, w, 2), dtype=y.dtype, device=y.device)
        for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[:, :, :, a, :, b] = y[:, k * o : (k + 1) * o, a : a + h, b : b + w]  # out[:, :, 2i + a, 2j + b]
        return out.view(n, o, 2 * h, 2 * w)


class PhaseConv2d(nn.Module):
    """A stride-1, odd-kernel, reflection-padded ``conv`` computed on the 2x2 space-to-depth of its input."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.padding_mode != "reflect":
            raise ValueError("PhaseConv2d replaces square, odd, stride-1, reflection-padded convolutions")
        self.pad = k // 2
        taps = (k + 2) // 2  # kernel size on the half-resolution grid: offsets p with 0 <= 2p + q - a < k
        w = conv.weight.detach()
        o, c = w.shape[:2]
        big = torch.zeros(o, 2, 2, c, 2, 2, taps, taps, dtype=w.dtype)
        for a in (0, 1):
            for b in (0, 1):
                for qr in (0, 1):
                    for qc in (0, 1):
                        for p in range(taps):
                            u = 2 * p + qr - a
                            if not 0 <= u < k:
                                continue
                            for s in range(taps):
                                v = 2 * s + qc - b
                                if 0 <= v < k:
                                    big[:, a, b, :, qr, qc, p, s] = w[:, :, u, v]
        # Output channel o*4 + a*2 + b (pixel_shuffle order), input channel c*4 + qr*2 + qc (pixel_unshuffle order).
        self.weight = nn.Parameter(big.reshape(o * 4, c * 4, taps, taps).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().repeat_interleave(4).clone(), requires_grad=False) if conv.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, (self.pad,) * 4, mode="reflect")
        h, w = xp.shape[-2:]
        # Odd padded sizes need one more row/column for space-to-depth; it never reaches a kept output.
        if h % 2 or w % 2:
            xp = F.pad(xp, (0, w % 2, 0, h % 2))
        y = F.conv2d(F.pixel_unshuffle(xp, 2), self.weight, self.bias)
        return F.pixel_shuffle(y, 2)[..., : x.shape[-2], : x.shape[-1]]


def fast_copy(net: TransformerNet) -> TransformerNet:
    """A copy of ``net`` for inference with the decoder's upsample+conv pairs and final conv rewritten."""
    fast = copy.deepcopy(net)
    for i, block in enumerate(fast.decoder):
        if isinstance(block, ConvBlock) and isinstance(block[0], nn.Upsample):
            fast.decoder[i] = nn.Sequential(SubpixelUpsampleConv(block[1]), *list(block)[2:])
        elif isinstance(block, nn.Conv2d) and block.out_channels < 8:
            fast.decoder[i] = PhaseConv2d(block)
    return fast
