"""Exact rewrites of the decoder's layers that run faster on CPUs (inference, and training steps on CPUs).

* :class:`SubpixelUpsampleConv` replaces ``nearest upsample x2 -> reflection-padded 3x3 conv``. Each of
  the four output phases (row/column parity) of that pair only ever sees two low-resolution rows and
  columns, so it is a 2x2 convolution of the low-resolution input with summed taps: 4 instead of 9
  multiply-adds per output pixel and channel, and no upsampled tensor. Reflection padding of the
  upsampled image equals replication padding of the low-resolution one.
* :class:`PhaseConv2d` computes a stride-1 convolution with few output channels (the final 9x9 conv
  to RGB) as its four output phases: one stride-2 convolution with 4x the output channels and a 10x10
  kernel (each phase's copy of the 9x9 kernel shifted by its offset), then depth-to-space. Same result,
  the same multiply-adds, but a matrix shape that vector units can fill (3 output channels leave most
  of them idle). An earlier form convolved the 2x2 space-to-depth of the input; this one needs no
  rearranged copy of the input and ran 1.4x faster (73 vs 103 ms at 1080p, 16 channels, bf16).

* :class:`SingleImageInstanceNorm` is instance norm computed as batch norm of one image at a time, forward
  and backward. For channels_last activations (:func:`fast_copy` with ``channels_last=True`` and
  :func:`training_view` with ``channels_last=True``; see :mod:`fastnst.hardware` for where each is chosen) ``F.instance_norm`` first copies its
  input to NCHW for its (1, N * C, H, W) view; batch norm of a single image reads the channels_last tensor
  where it lies.

The first two hold only re-arranged copies of the original weights; ``tests/test_fast_layers.py`` checks
that every rewrite matches the layers it replaces, in both memory layouts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fastnst.net import ConvBlock, TransformerNet


def _pad(x: torch.Tensor, pad: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """``F.pad`` in ``x``'s own dtype: CPU autocast would run reflection/replication pads in float32, two
    extra copies per layer for the same values (padding only moves numbers)."""
    with torch.autocast(x.device.type, enabled=False):
        return F.pad(x, pad, mode=mode)


def subpixel_kernel(w: torch.Tensor) -> torch.Tensor:
    """The (4 * out, in, 2, 2) kernel of :class:`SubpixelUpsampleConv` from a (out, in, 3, 3) one (differentiable)."""
    # Row taps (dy = 0, 1, 2 of the upsampled image) fold onto two low-resolution rows per phase.
    rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]
    kernels = []
    for wr in rows:  # (out, in, 2, 3) for row phase a = 0, 1
        kernels += [torch.stack([wr[..., 0], wr[..., 1] + wr[..., 2]], -1), torch.stack([wr[..., 0] + wr[..., 1], wr[..., 2]], -1)]
    return torch.cat(kernels, 0)  # phases (0, 0), (0, 1), (1, 0), (1, 1)


_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) parity of an output pixel, pixel_shuffle's order


def phase_kernel(w: torch.Tensor) -> torch.Tensor:
    """The (4 * out, in, k + 1, k + 1) kernel of :class:`PhaseConv2d` from a (out, in, k, k) one (differentiable):
    output channel ``o * 4 + a * 2 + b`` is ``w[o]`` shifted by (a, b), so a stride-2 convolution gives phase (a, b)."""
    o, c, k = w.shape[0], w.shape[1], w.shape[-1]
    shifted = [F.pad(w, (b, 1 - b, a, 1 - a)) for a, b in _PHASES]
    return torch.stack(shifted, 1).reshape(o * 4, c, k + 1, k + 1)


class _Rewrite(nn.Module):
    """Holds either a frozen re-arranged copy of a conv's weights (inference) or the conv itself (training:
    the kernel is re-derived from ``conv.weight`` on every call, so gradients reach the original weights)."""

    def __init__(self, conv: nn.Conv2d, trainable: bool, kernel: Callable[[torch.Tensor], torch.Tensor], bias_repeat: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self._kernel, self._bias_repeat = kernel, bias_repeat
        self.conv = conv if trainable else None
        if not trainable:
            self.weight = nn.Parameter(kernel(conv.weight.detach()).contiguous(), requires_grad=False)
            self.bias = nn.Parameter(bias_repeat(conv.bias.detach()).clone(), requires_grad=False) if conv.bias is not None else None

    def weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.conv is None:
            return self.weight, self.bias
        bias = self.conv.bias
        return self._kernel(self.conv.weight), None if bias is None else self._bias_repeat(bias)


class SubpixelUpsampleConv(_Rewrite):
    """``Upsample(2, nearest)`` then ``conv`` (3x3, stride 1, reflection padding 1), computed at low resolution."""

    def __init__(self, conv: nn.Conv2d, trainable: bool = False) -> None:
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError("SubpixelUpsampleConv replaces 3x3 stride-1 convolutions with padding 1")
        super().__init__(conv, trainable, subpixel_kernel, lambda b: b.repeat(4))
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        weight, bias = self.weights()
        xp = _pad(x, (1, 1, 1, 1), "replicate")
        o = self.out_channels
        # All four phases in one convolution of the padded input (one large matrix product, no shifted
        # copies of the input): phase (a, b) is rows a..a+h-1, columns b..b+w-1 of its output channels.
        return _Interleave.apply(F.conv2d(xp, weight, bias))  # (n, 4 * o, h + 1, w + 1) -> (n, o, 2h, 2w)


class _Interleave(torch.autograd.Function):
    """Phase (a, b) of :class:`SubpixelUpsampleConv` is rows a..a+h-1, columns b..b+w-1 of its output
    channels of the (n, 4 * o, h + 1, w + 1) convolution: write them interleaved, out[:, :, 2i + a, 2j + b].
    Its own backward fills one gradient tensor (four slice assignments would each zero-fill and add one)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor) -> torch.Tensor:
        n, o4, h1, w1 = y.shape
        o, h, w = o4 // 4, h1 - 1, w1 - 1
        ctx.y_shape = y.shape
        if is_channels_last(y):  # keep the layout: an NCHW result would be copied back by the next layer
            out = torch.empty((n, h, 2, w, 2, o), dtype=y.dtype, device=y.device)
            y_hwc = y.permute(0, 2, 3, 1)  # a view of the channels_last storage
            for k, (a, b) in enumerate(_PHASES):
                out[:, :, a, :, b] = y_hwc[:, a : a + h, b : b + w, k * o : (k + 1) * o]
            return out.view(n, 2 * h, 2 * w, o).permute(0, 3, 1, 2)
        out = torch.empty((n, o, h, 2, w, 2), dtype=y.dtype, device=y.device)
        for k, (a, b) in enumerate(_PHASES):
            out[:, :, :, a, :, b] = y[:, k * o : (k + 1) * o, a : a + h, b : b + w]
        return out.view(n, o, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        n, o4, h1, w1 = ctx.y_shape
        o, h, w = o4 // 4, h1 - 1, w1 - 1
        g = grad.reshape(n, o, h, 2, w, 2)
        grad_y = grad.new_zeros(ctx.y_shape)
        for k, (a, b) in enumerate(_PHASES):
            grad_y[:, k * o : (k + 1) * o, a : a + h, b : b + w] = g[:, :, :, a, :, b]
        return grad_y


def is_channels_last(x: torch.Tensor) -> bool:
    """Stored channels_last (and not also NCHW-contiguous, as tensors with one channel or pixel are)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _PerImageBatchNorm(torch.autograd.Function):
    """Batch norm of each image of ``x`` alone (= instance norm), forward and backward, into one output.

    ``torch.native_batch_norm`` and its backward read a channels_last image where it lies (``F.instance_norm``
    copies to NCHW first); a float32 weight with a bf16 ``x`` (autocast) takes the mixed-type kernels: float32
    statistics, bf16 output. Each image's result is written into its slice of one tensor (no ``torch.cat``).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        out = torch.empty_like(x)
        means, invstds = [], []
        for i in range(len(x)):
            _, mean, invstd = torch.ops.aten.native_batch_norm.out(
                x[i : i + 1], weight, bias, None, None, True, 0.0, eps,
                out=out[i : i + 1], save_mean=weight.new_empty(0), save_invstd=weight.new_empty(0),
            )  # fmt: skip
            means.append(mean)
            invstds.append(invstd)
        ctx.save_for_backward(x, weight, torch.stack(means), torch.stack(invstds))
        ctx.eps = eps  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, means, invstds = ctx.saved_tensors  # type: ignore[attr-defined]
        grad = grad.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)
        grad_x = torch.empty_like(x)
        grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(weight)
        for i in range(len(x)):
            _, gw, gb = torch.ops.aten.native_batch_norm_backward.out(
                grad[i : i + 1], x[i : i + 1], weight, None, None, means[i], invstds[i], True, ctx.eps, [True, True, True],  # type: ignore[attr-defined]
                out0=grad_x[i : i + 1], out1=torch.empty_like(weight), out2=torch.empty_like(weight),
            )  # fmt: skip
            grad_w += gw
            grad_b += gb
        return grad_x, grad_w, grad_b, None


class SingleImageInstanceNorm(nn.Module):
    """``InstanceNorm2d(affine=True)`` (sharing its parameters) as batch norm of each image alone.

    For channels_last activations: inference (:func:`fast_copy`) and training steps (:func:`training_view`)."""

    def __init__(self, norm: nn.InstanceNorm2d) -> None:
        super().__init__()
        if not norm.affine or norm.track_running_stats:
            raise ValueError("SingleImageInstanceNorm replaces affine instance norms without running statistics")
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The statistics of a batch of one image are that image's per-channel statistics.
        return _PerImageBatchNorm.apply(x, self.weight, self.bias, self.eps)  # type: ignore[no-any-return]


class PhaseConv2d(_Rewrite):
    """A stride-1, odd-kernel, reflection-padded ``conv`` computed as its four output phases (one stride-2 conv)."""

    def __init__(self, conv: nn.Conv2d, trainable: bool = False) -> None:
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or k % 2 == 0 or conv.stride != (1, 1) or conv.padding_mode != "reflect":
            raise ValueError("PhaseConv2d replaces square, odd, stride-1, reflection-padded convolutions")
        super().__init__(conv, trainable, phase_kernel, lambda b: b.repeat_interleave(4))
        self.pad = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weights()
        xp = _pad(x, (self.pad,) * 4, "reflect")
        h, w = xp.shape[-2:]
        # Odd padded sizes need one more row/column for the stride; it never reaches a kept output.
        if h % 2 or w % 2:
            xp = F.pad(xp, (0, w % 2, 0, h % 2))
        y = F.conv2d(xp, weight, bias, stride=2)  # (n, 4 * out, h / 2, w / 2): the four phases
        return F.pixel_shuffle(y, 2)[..., : x.shape[-2], : x.shape[-1]]


class PadInDtypeConv2d(nn.Module):
    """A padded ``conv`` (sharing its weights) whose padding runs in the input's dtype (see :func:`_pad`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        ph, pw = c.padding  # type: ignore[misc]
        x = _pad(x, (pw, pw, ph, ph), c.padding_mode)
        return F.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def fast_decoder(decoder: nn.Sequential, trainable: bool = False) -> nn.Sequential:
    """``decoder`` with its upsample+conv pairs and its final conv in the rewritten forms.

    ``trainable=True`` shares every module and parameter with ``decoder`` (for training steps:
    same function, same gradients, less time); otherwise the rewrites hold frozen weight copies.
    """
    blocks: list[nn.Module] = []
    for block in decoder:
        if isinstance(block, ConvBlock) and isinstance(block[0], nn.Upsample):
            blocks.append(nn.Sequential(SubpixelUpsampleConv(block[1], trainable), *list(block)[2:]))
        elif isinstance(block, nn.Conv2d) and block.out_channels < 8:
            blocks.append(PhaseConv2d(block, trainable))
        else:
            blocks.append(block)
    return nn.Sequential(*blocks)


def _shared_copy(module: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """A copy of ``module``'s tree of modules, with ``replace(m)`` wherever it is not None; parameters shared."""
    substitute = replace(module)
    if substitute is not None:
        return substitute
    if not module._modules:
        return module
    clone = copy.copy(module)
    clone._modules = {name: _shared_copy(child, replace) for name, child in module._modules.items() if child is not None}
    return clone


def training_view(net: TransformerNet, channels_last: bool = False) -> TransformerNet:
    """``net`` for training steps on CPUs: the same parameters (gradients reach them), the decoder in its
    rewritten form (:func:`fast_decoder` with ``trainable=True``) and every padded conv padding in the
    input's dtype under autocast. ``channels_last=True``: for channels_last inputs, instance norm as
    :class:`SingleImageInstanceNorm` (no copy to NCHW and back). Same function, same gradients, less time
    (docs/benchmarks.md)."""

    def replace(m: nn.Module) -> nn.Module | None:
        if isinstance(m, _Rewrite):
            return m  # holds the original conv, which it needs as it is
        if m is net.decoder:
            return _shared_copy(fast_decoder(m, trainable=True), replace)
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return PadInDtypeConv2d(m)
        if channels_last and isinstance(m, nn.InstanceNorm2d):
            return SingleImageInstanceNorm(m)
        return None

    return _shared_copy(net, replace)  # type: ignore[return-value]


def fast_copy(net: TransformerNet, channels_last: bool = False) -> TransformerNet:
    """A copy of ``net`` for inference with the decoder's upsample+conv pairs and final conv rewritten.

    ``channels_last=True`` also stores its weights channels_last and normalises with
    :class:`SingleImageInstanceNorm`, for channels_last inputs (2.5x in bf16 on an AMX Xeon, docs/benchmarks.md).
    """
    fast = copy.deepcopy(net)
    fast.decoder = fast_decoder(fast.decoder)
    if channels_last:
        fast = _shared_copy(fast, lambda m: SingleImageInstanceNorm(m) if isinstance(m, nn.InstanceNorm2d) else None)  # type: ignore[assignment]
        fast = fast.to(memory_format=torch.channels_last)
    return fast
