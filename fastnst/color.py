"""Colour preservation and style strength, applied after the network (light side).

Colour preservation follows Gatys et al. 2016, *Preserving Color in Neural Artistic Style
Transfer*, luminance-only transfer: the result keeps the photo's chroma and takes only the
stylised image's luminance, in YCbCr (ITU-R BT.601 full range, the JPEG convention). Where the
stylised luminance with the photo's chroma would leave the RGB cube, the luminance is limited to
the range that this chroma allows, so the chroma is kept *exactly* and no channel is clipped.

Style strength ``s`` in [0, 1] is a linear blend ``photo + s * (stylised - photo)`` in gamma-encoded
sRGB, which is close to perceptually uniform (linear-light blending would over-weight highlights).
Every pixel moves along the straight line from the photo to the full stylisation, so the distance
to the photo grows in proportion to ``s``: 0 is the photo, 1 the model's output.
"""

from __future__ import annotations

import torch

# RGB -> YCbCr (BT.601, full range; Cb, Cr centred on 0 here).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) with Y in [0, 1] and Cb, Cr in [-0.5, 0.5]."""
    r, g, b = x.unbind(-3)
    y = _KR * r + _KG * g + _KB * b
    cb = (b - y) / (2 * (1 - _KB))
    cr = (r - y) / (2 * (1 - _KR))
    return torch.stack([y, cb, cr], dim=-3)


def _chroma_offsets(cb: torch.Tensor, cr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R - Y, G - Y, B - Y for the given chroma: RGB = Y + these."""
    r_off = 2 * (1 - _KR) * cr
    b_off = 2 * (1 - _KB) * cb
    g_off = -(_KR * r_off + _KB * b_off) / _KG
    return r_off, g_off, b_off


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cb, cr = x.unbind(-3)
    r_off, g_off, b_off = _chroma_offsets(cb, cr)
    return torch.stack([y + r_off, y + g_off, y + b_off], dim=-3)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The BT.601 luma of RGB ``x``, repeated on three channels (what a luminance-only loss sees)."""
    y = (_KR * x[..., 0:1, :, :] + _KG * x[..., 1:2, :, :] + _KB * x[..., 2:3, :, :])
    return y.expand_as(x)


def preserve_color(stylised: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The photo's chroma with the stylised luminance (limited to what that chroma allows in RGB)."""
    styl = stylised.float()
    ycc = rgb_to_ycbcr(photo.float())
    cb, cr = ycc[..., 1, :, :], ycc[..., 2, :, :]
    r_off, g_off, b_off = _chroma_offsets(cb, cr)
    low = -torch.minimum(torch.minimum(r_off, g_off), b_off)
    high = 1 - torch.maximum(torch.maximum(r_off, g_off), b_off)
    y = rgb_to_ycbcr(styl)[..., 0, :, :]
    # The photo's own luma satisfies low <= Y <= high, so the interval is never empty.
    y = torch.maximum(torch.minimum(y, high), low)
    return torch.stack([y + r_off, y + g_off, y + b_off], dim=-3).clamp_(0, 1)


def blend(stylised: torch.Tensor, photo: torch.Tensor, strength: float) -> torch.Tensor:
    """``photo + strength * (stylised - photo)``; ``strength`` in [0, 1]."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    if strength == 1.0:
        return stylised
    return torch.lerp(photo.float(), stylised.float(), strength)
