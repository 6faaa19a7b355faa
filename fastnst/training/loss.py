"""The perceptual loss of Johnson et al. 2016 (content + Gram style + total variation).

One module serves training, image optimisation and evaluation, so the numbers they report are
the same quantity:

* content = sum over content layers of ``mean((phi(y) - phi(x))^2)``
* style   = sum over style layers l of ``w_l * mean((G_l(y) - G_l(s))^2)``, with
  ``G(f) = f f^T / (C*H*W)`` computed in float32 (autocast off: Grams of bf16/fp16 features
  lose too many digits)
* tv      = ``mean((y[i+1,j] - y[i,j])^2) + mean((y[i,j+1] - y[i,j])^2)``
* total   = ``alpha * content + beta * style + tv_weight * tv``

where y is the stylised image, x the content photo and s the style image, all RGB in [0, 1].
The style Grams are computed once (:meth:`PerceptualLoss.set_style`), the photo's features
without gradient and only up to the deepest content layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastnst.color import luminance
from fastnst.training.vgg import VGGFeatures

TERMS = ("content", "style", "tv", "total")


class _GramFunction(torch.autograd.Function):
    """``G = f f^T / (C*H*W)`` in float32, with a one-product backward: ``dL/df = (dG + dG^T) f / (C*H*W)``
    (autograd's ``bmm`` would run two products and a transposed copy). For bfloat16 features (autocast)
    that product runs in bfloat16, as the convolutions' own backward passes do: 2-3x faster on CPUs."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, features: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        channels_last = not features.is_contiguous() and features.is_contiguous(memory_format=torch.channels_last)
        # (N, C, HW) as a view in either layout: channels_last features are (N, HW, C) rows, used transposed.
        f = features.permute(0, 2, 3, 1).reshape(n, h * w, c).transpose(1, 2) if channels_last else features.reshape(n, c, h * w)
        ctx.save_for_backward(f)
        ctx.in_shape, ctx.channels_last = features.shape, channels_last
        f32 = f.float()
        return torch.bmm(f32, f32.transpose(1, 2)).div_(c * h * w)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (f,) = ctx.saved_tensors
        n, c, hw = f.shape
        sym = (grad + grad.transpose(1, 2)).div_(c * hw)
        work = f.dtype if f.dtype == torch.bfloat16 else torch.float32  # fp16 could underflow: fp32 there
        fw, sw = f.to(work), sym.to(work)
        if ctx.channels_last:  # the gradient in the features' own layout: (N, HW, C) rows = f^T sym
            _, _, h, w = ctx.in_shape
            return torch.bmm(fw.transpose(1, 2), sw).view(n, h, w, c).permute(0, 3, 1, 2).to(f.dtype)
        return torch.bmm(sw, fw).view(ctx.in_shape).to(f.dtype)


class _SquaredErrorFunction(torch.autograd.Function):
    """``mean((a - b)^2)`` of bfloat16 features with a float32 sum: one difference kept for the backward.
    (Autocast runs ``mse_loss`` in float32: two casts forward and more backward, 4x slower on CPUs.)"""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = torch.sub(a, b.to(a.dtype))
        ctx.save_for_backward(diff)
        return torch.sum(diff * diff, dtype=torch.float32) / diff.numel()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (diff,) = ctx.saved_tensors
        return diff * (grad * (2.0 / diff.numel())).to(diff.dtype), None


def content_mse(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean((features - target)^2)`` as a float32 scalar (the content term of one layer)."""
    if features.dtype == torch.bfloat16:  # fp16 (GPU autocast) squares could overflow: the float32 path there
        with torch.autocast(device_type=features.device.type, enabled=False):
            return _SquaredErrorFunction.apply(features, target)
    return F.mse_loss(features.float(), target.float())


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) float32 Gram matrices normalised by C*H*W."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        return _GramFunction.apply(features)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of vertically and horizontally adjacent pixels (anisotropic, squared)."""
    x = x.float()
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


class PerceptualLoss(nn.Module):
    """``total = alpha * content + beta * style + tv_weight * tv`` over a frozen VGG.

    Args:
        vgg: the feature extractor (its layers must include all content and style layers).
        content_layers: VGG layer names for the content loss (e.g. ``["relu2_2"]``).
        style_layers: VGG layer name -> weight for the style loss.
        alpha, beta, tv_weight: weights of the content, style and total-variation terms.
        luminance_only: compare luminance only (Gatys et al. 2016, colour preservation): the output,
            the photo and the style image are reduced to their BT.601 luma before VGG, so the network
            learns the style's strokes and contrast, not its palette; apply it with the photo's colours.
    """

    def __init__(
        self,
        vgg: VGGFeatures,
        content_layers: Sequence[str],
        style_layers: Mapping[str, float],
        alpha: float = 1.0,
        beta: float = 1e5,
        tv_weight: float = 10.0,
        luminance_only: bool = False,
    ) -> None:
        super().__init__()
        self.luminance_only = bool(luminance_only)
        if isinstance(content_layers, str):
            content_layers = [content_layers]
        if not content_layers or not style_layers:
            raise ValueError("need at least one content layer and one style layer")
        for key, value in (("alpha", alpha), ("beta", beta), ("tv_weight", tv_weight), *((f"style_layers.{k}", v) for k, v in style_layers.items())):
            if not value >= 0:  # also rejects NaN
                raise ValueError(f"loss.{key} must be a number >= 0, got {value}")
        self.vgg = vgg
        self.content_layers = list(content_layers)
        self.style_weights = {k: float(v) for k, v in style_layers.items()}
        self.alpha, self.beta, self.tv_weight = float(alpha), float(beta), float(tv_weight)
        self._targets: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def set_style(self, style_image: torch.Tensor) -> None:
        """Compute and keep the style image's Gram matrices (the targets) once."""
        if style_image.ndim == 3:
            style_image = style_image.unsqueeze(0)
        if self.luminance_only:
            style_image = luminance(style_image)
        param = next(self.vgg.parameters())
        feats = self.vgg(style_image.to(param.device, param.dtype), self.style_weights)
        for name in self.style_weights:
            self.register_buffer(f"target_{name}", gram_matrix(feats[name]), persistent=False)

    def target_gram(self, name: str) -> torch.Tensor:
        try:
            return getattr(self, f"target_{name}")
        except AttributeError:
            raise RuntimeError("PerceptualLoss.set_style(style_image) must be called before computing the loss") from None

    @torch.no_grad()
    def content_features(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """The photo's content-layer features, without gradient, VGG run only as deep as needed."""
        return self.vgg(luminance(content) if self.luminance_only else content, self.content_layers)

    def forward(
        self, output: torch.Tensor, content: torch.Tensor, content_features: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss terms for stylised ``output`` against photo ``content`` (both (N, 3, H, W) in [0, 1]).

        Returns a dict with ``content``, ``style``, ``tv`` (unweighted) and ``total`` (weighted sum), and
        ``style/<layer>`` for each style layer (its weighted Gram error; these sum to ``style``).
        """
        if content_features is None:
            content_features = self.content_features(content)
        seen = luminance(output) if self.luminance_only else output
        feats = self.vgg(seen, [*self.content_layers, *self.style_weights])
        zero = output.new_zeros((), dtype=torch.float32)
        c_loss = sum((content_mse(feats[n], content_features[n]) for n in self.content_layers), zero)
        s_loss = zero
        by_layer: dict[str, torch.Tensor] = {}
        for name, weight in self.style_weights.items():
            g = gram_matrix(feats[name])
            by_layer[f"style/{name}"] = term = weight * F.mse_loss(g, self.target_gram(name).expand_as(g))
            s_loss = s_loss + term
        tv = total_variation(output)
        total = self.alpha * c_loss + self.beta * s_loss + self.tv_weight * tv
        return {"content": c_loss, "style": s_loss, "tv": tv, "total": total, **by_layer}


def build_loss(
    arch: str = "vgg16",
    weights: str = "imagenet",
    content_layers: Sequence[str] = ("relu2_2",),
    style_layers: Mapping[str, float] | None = None,
    alpha: float = 1.0,
    beta: float = 1e5,
    tv_weight: float = 10.0,
    luminance_only: bool = False,
) -> PerceptualLoss:
    """A :class:`PerceptualLoss` with its VGG built from names (what the ``loss`` config group holds)."""
    if isinstance(content_layers, str):
        content_layers = [content_layers]
    style_layers = dict(style_layers or {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0})
    vgg = VGGFeatures(arch, [*content_layers, *style_layers], weights)
    return PerceptualLoss(vgg, content_layers, style_layers, alpha, beta, tv_weight, luminance_only)
