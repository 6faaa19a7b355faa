"""A frozen ImageNet VGG as a feature extractor with named layers (``relu2_2``, ``conv4_3``, ...).

Only the layers up to the deepest one asked for are kept. The network is in eval mode, its
weights never receive gradients, and ImageNet normalisation happens inside, so callers pass
RGB in [0, 1].
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from fastnst._io import first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's configurations: numbers are conv widths, "M" a 2x2 max-pool.
_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
_WEIGHTS = {"vgg16": models.VGG16_Weights.IMAGENET1K_V1, "vgg19": models.VGG19_Weights.IMAGENET1K_V1}


class _MaxPool2x2Function(torch.autograd.Function):
    """2x2 max-pool, stride 2, from elementwise maxima: on CPUs about 10x faster than ``max_pool2d`` (which
    also writes an index tensor). The backward sends each gradient to the first maximum in
    row-major order of its window, as ``max_pool2d`` does."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        out = _max_of_quads(x)
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        x, out = ctx.saved_tensors
        h, w = out.shape[-2:]
        # The four strided writes below cover every element but a dropped odd last row/column.
        grad_in = torch.empty_like(x) if x.shape[-2:] == (2 * h, 2 * w) else torch.zeros_like(x)
        taken = torch.zeros_like(out, dtype=torch.bool)
        for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
            quad = x[..., a : 2 * h : 2, b : 2 * w : 2]
            hit = (quad == out) & ~taken if (a, b) != (1, 1) else ~taken
            torch.mul(grad, hit, out=grad_in[..., a : 2 * h : 2, b : 2 * w : 2])  # straight into the strided view
            taken |= hit
        return grad_in


def _max_of_quads(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor mode: a last odd row/column is dropped
    rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2, 2)`` with the same values and gradients, faster on CPUs (see ``_MaxPool2x2Function``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.shape[-2] < 2 or x.shape[-1] < 2:
            return F.max_pool2d(x, 2, 2)  # GPUs: the library kernel (the rewrite was measured on CPUs only)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MaxPool2x2Function.apply(x)
        return _max_of_quads(x)


class VGGWeightsError(RuntimeError):
    """The VGG weights could not be found or read; the message says what to do."""


def layer_names(arch: str) -> list[str]:
    """Names of the modules of ``torchvision.models.<arch>().features``, in order (``conv1_1``, ``relu1_1``, ..., ``pool5``)."""
    if arch not in _CFGS:
        raise ValueError(f"unknown VGG architecture {arch!r}; available: {', '.join(_CFGS)}")
    names: list[str] = []
    block, idx = 1, 1
    for v in _CFGS[arch]:
        if v == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            idx += 1
    return names


def _features_state(raw: dict[str, torch.Tensor], arch: str, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not raw:
        raise VGGWeightsError(f"{source}: not a state dict")
    keys = list(raw)
    if any(k.startswith("features.") for k in keys):
        raw = {k.removeprefix("features."): v for k, v in raw.items() if k.startswith("features.")}
    return {k: v.float() for k, v in raw.items()}


def load_vgg_state(weights: str, arch: str) -> dict[str, torch.Tensor] | None:
    """State dict of ``features`` for ``weights``: ``imagenet`` (torchvision's download/cache), ``random`` (None), or a file."""
    if weights == "random":
        return None
    if weights == "imagenet":
        spec = _WEIGHTS[arch]
        filename = os.path.basename(spec.url)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        try:
            raw = spec.get_state_dict(progress=True, check_hash=False)
        except (urllib.error.URLError, OSError, RuntimeError) as e:
            raise VGGWeightsError(
                f"cannot get the ImageNet {arch} weights: {cached} is missing and downloading {spec.url} failed "
                f"({e}); put that file there, or pass a local copy with loss.weights=/path/to/{filename}"
            ) from None
        return _features_state(raw, arch, str(cached))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise VGGWeightsError(
            f"VGG weights file {path} not found; loss.weights takes 'imagenet' (torchvision's download), "
            "'random' (tests only) or a path to a state dict with features.N.* keys"
        )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise VGGWeightsError(f"{path}: cannot read VGG weights ({first_line(e)})") from None
    return _features_state(raw, arch, str(path))


def _make_features(arch: str) -> nn.Sequential:
    """``torchvision.models.<arch>().features`` with the same module indices and init, without building the classifier."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers)


class VGGFeatures(nn.Module):
    """VGG ``features`` truncated after the deepest of ``layers``; returns a dict of the named activations."""

    def __init__(self, arch: str = "vgg16", layers: Iterable[str] = ("relu4_3",), weights: str = "imagenet") -> None:
        super().__init__()
        names = layer_names(arch)
        wanted = set(layers)
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"unknown {arch} layer(s) {', '.join(unknown)}; available: {', '.join(names)}")
        depth = max(names.index(n) for n in wanted) + 1
        full = _make_features(arch)
        state = load_vgg_state(weights, arch)
        if state is not None:
            state = {k: v for k, v in state.items() if int(k.split(".")[0]) < depth}
            try:
                full[:depth].load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise VGGWeightsError(f"VGG weights {weights!r} do not fit torchvision's {arch}: {first_line(e)}") from None
        self.arch = arch
        self.names = names[:depth]
        # Same layers, with the 2x2 max-pools in their faster, equal form (no parameters: the state dict is unchanged).
        self.layers = nn.Sequential(*(MaxPool2x2() if isinstance(m, nn.MaxPool2d) else m for m in full[:depth]))
        self.available = frozenset(wanted)
        for prev, m in zip(self.names, list(self.layers)[1:]):
            if isinstance(m, nn.ReLU):
                m.inplace = prev not in wanted  # an in-place ReLU would overwrite a conv output we return
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        # Always eval: VGG has no dropout/BN in ``features`` today, but the loss must never change with mode.
        return super().train(False)

    def forward(self, x: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        """Activations of ``layers`` for RGB ``x`` in [0, 1]; stops at the deepest one requested."""
        wanted = set(layers)
        if not wanted <= self.available:
            raise ValueError(f"layers {sorted(wanted - self.available)} were not requested when this VGGFeatures was built")
        stop = max(self.names.index(n) for n in wanted)
        out: dict[str, torch.Tensor] = {}
        if x.device.type == "cpu":
            # oneDNN's convolutions run faster on channels_last activations here (docs/benchmarks.md).
            x = x.contiguous(memory_format=torch.channels_last)
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        for i, (name, layer) in enumerate(zip(self.names, self.layers)):
            h = layer(h)
            if name in wanted:
                out[name] = h
            if i == stop:
                break
        return out
