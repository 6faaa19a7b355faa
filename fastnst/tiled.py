"""Stylising very large photos in bounded memory, with the *whole-image* instance-norm statistics.

Instance norm divides by statistics of the whole image, so cutting a photo into tiles and running
the network on each gives every tile its own colours: the seams show. This module instead runs
the same :class:`~fastnst.net.TransformerNet` layer group by layer group, over horizontal bands:

1. **Encoder** (full, 1/2, 1/4 resolution) is streamed over bands of the input three times: pass 1
   gathers the statistics of the first norm, pass 2 those of the second (using the first's), pass 3
   writes the 1/4-resolution activation (4C channels, 1/16 of the pixels) into one stored tensor
   and gathers the third norm's statistics.
2. **Residual blocks** run on that stored tensor, each convolution band by band (bounded workspace),
   each norm with statistics over the whole tensor.
3. **Decoder** (1/2, full resolution) is streamed over bands of the stored tensor three times: two
   passes for the statistics of its two norms, the last one writes the output rows.

Bands overlap by more than the receptive field of what is streamed, and only each band's own
(core) rows are kept or counted, so the result equals the untiled network up to float rounding
(and bf16 storage, when used). Reflection padding at the true image borders is preserved because
bands that touch a border are not padded there by us, but by the layers, exactly as untiled.

Peak memory is the stored 1/4-resolution activations (three buffers of 4C x H/4 x W/4) plus one
band's workspace, instead of the many full-resolution activations of a plain forward pass.

With ``channels_last=True`` (what :class:`~fastnst.stylize.Stylizer` picks on x86 CPUs, see
:mod:`fastnst.hardware`) every stored tensor and band is channels_last; a band of rows of a channels_last
tensor is one contiguous block, so no layer converts layouts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fastnst.fast_layers import PhaseConv2d, SubpixelUpsampleConv, is_channels_last
from fastnst.images import to_uint8
from fastnst.net import ConvBlock, ResidualBlock, TransformerNet, pad_for_network, photo_logit

# Overlaps, chosen above the receptive-field growth of each streamed part and multiples of 4.
_ENCODER_HALO = 16  # full-resolution rows (9x9 conv: 4, stride-2 3x3: 1, stride-2 3x3 at 1/2: 2)
_DECODER_HALO = 4  # quarter-resolution rows (up+3x3 at 1/2, up+3x3 at 1/1, 9x9 at 1/1: about 3)
_RESIDUAL_HALO = 1  # a 3x3 convolution


class _Stats:
    """Per-channel sum and sum of squares in float64 over the core rows of every band."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sq = torch.zeros(channels, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n == 0:
            return
        if is_channels_last(x):
            # Sums over dims (0, 2, 3) of a channels_last band are slow (they were a third of the banded runtime
            # on an AMX Xeon); batch norm's statistics kernel is 3-9x faster there: the band's mean and variance in
            # float32 straight from x's dtype (float32 weight and bias make it the mixed-type kernel).
            ones = torch.ones(x.shape[1], dtype=torch.float32, device=x.device)
            _, mean, invstd = torch.native_batch_norm(x, ones, torch.zeros_like(ones), None, None, True, 0.0, 0.0)
            invstd = invstd.double()
            var = torch.where(invstd > 0, invstd.pow(-2), 0.0)  # with eps 0 the kernel gives a constant channel invstd 0
            mean = mean.double()
            self.sum += n * mean
            self.sq += n * (var + mean * mean)
        else:
            # NCHW: a few rows at a time, reduced in float32 straight from x's dtype (no float copy: 3.9x faster in
            # bf16; faster here than the batch-norm kernel, which also writes an output).
            for r in range(0, x.shape[2], 16):
                chunk = x[:, :, r : r + 16]
                self.sum += chunk.sum(dim=(0, 2, 3), dtype=torch.float32)
                self.sq += torch.linalg.vector_norm(chunk, 2, dim=(0, 2, 3), dtype=torch.float32).double().square()
        self.count += n

    def affine(self, norm: nn.InstanceNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) so that ``x * scale + shift`` is the instance norm with these statistics."""
        mean = self.sum / self.count
        var = (self.sq / self.count - mean * mean).clamp_min(0)
        scale = torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        return scale.float().view(1, -1, 1, 1), shift.float().view(1, -1, 1, 1)


def _bands(rows: int, band: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop) of each core band and (lo, hi) of the rows to read with overlap, clipped to the image."""
    for start in range(0, rows, band):
        stop = min(rows, start + band)
        yield start, stop, max(0, start - halo), min(rows, stop + halo)


def _conv_of(block: ConvBlock) -> tuple[nn.Upsample | None, nn.Conv2d, nn.InstanceNorm2d]:
    mods = list(block)
    up = mods[0] if isinstance(mods[0], nn.Upsample) else None
    conv = mods[1] if up is not None else mods[0]
    norm = mods[2] if up is not None else mods[1]
    return up, conv, norm  # type: ignore[return-value]


class TiledRunner:
    """Run ``net`` on one (3, H, W) image in row bands with whole-image instance norm statistics.

    Args:
        net: the network (eval mode); its weights are used as they are (dtype and device).
        band_rows: full-resolution rows per band (a multiple of 16); bigger is faster, smaller uses less
            memory. Default: about half a megapixel per band (128 rows at 3840 wide, 64 at 7680).
        storage_dtype: dtype of the stored quarter-resolution activations (bf16 halves the memory).
        compute_dtype: dtype the layers run in (must match the weights' dtype).
        low_memory_bytes: above this size of one stored tensor, each residual block keeps two stored
            tensors instead of three and computes its second convolution twice (stats, then output).
        compact_storage_bytes: above this size of one stored tensor in ``storage_dtype``, store in bf16
            instead (half the memory of fp32, about 50 dB against it); ``None``: never.
        channels_last: run on channels_last activations (``net``'s conv weights should be channels_last too).
    """

    def __init__(
        self,
        net: TransformerNet,
        band_rows: int | None = None,
        storage_dtype: torch.dtype | None = None,
        compute_dtype: torch.dtype | None = None,
        low_memory_bytes: int = 256 << 20,
        compact_storage_bytes: int | None = None,
        channels_last: bool = False,
    ) -> None:
        if band_rows is not None and (band_rows < 16 or band_rows % 16):
            raise ValueError("band_rows must be a positive multiple of 16")
        self.net = net
        self.fixed_band_rows = band_rows
        self.band_rows = band_rows or 256
        self.low_memory_bytes = low_memory_bytes
        self.compact_storage_bytes = compact_storage_bytes
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        param = next(net.parameters())
        self.device = param.device
        self.compute_dtype = compute_dtype or param.dtype
        self.default_storage_dtype = storage_dtype or self.compute_dtype
        self.storage_dtype = self.default_storage_dtype  # this call's: see _storage_dtype_for
        self.stored_channels = _conv_of(net.encoder[2])[1].out_channels  # type: ignore[arg-type]
        # Exact faster forms of "upsample then conv" and of the final conv (fastnst.fast_layers), built once.
        up1, up2 = (_conv_of(b) for b in net.decoder[:2])  # type: ignore[arg-type]
        self.fast_up1, self.fast_up2 = SubpixelUpsampleConv(up1[1]), SubpixelUpsampleConv(up2[1])
        self.fast_final = PhaseConv2d(net.decoder[2])  # type: ignore[arg-type]

    # -- building blocks ------------------------------------------------------------------

    def _norm_relu(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor], relu: bool = True) -> torch.Tensor:
        scale, shift = affine
        # x * scale + shift per channel through batch_norm's kernel (mean 0, variance 1, eps 0): the same
        # numbers with float32 scale and shift, 5.7x faster than addcmul on bf16 bands on CPUs.
        scale, shift = scale.view(-1), shift.view(-1)
        x = F.batch_norm(x, torch.zeros_like(scale), torch.ones_like(scale), scale, shift, False, 0.0, 0.0)
        return F.relu_(x) if relu else x

    def _banded_conv(self, src: torch.Tensor, conv: nn.Conv2d, stats: _Stats) -> torch.Tensor:
        """conv over a stored (1, C, h, w) tensor band by band into a new stored tensor; gathers stats."""
        rows = src.shape[2]
        out = torch.empty((1, conv.out_channels, rows, src.shape[3]), dtype=self.storage_dtype, device=self.device, memory_format=self.layout)
        band = max(1, self.band_rows // 4)
        for start, stop, lo, hi in _bands(rows, band, _RESIDUAL_HALO):
            y = conv(src[:, :, lo:hi].to(self.compute_dtype))[:, :, start - lo : stop - lo]
            stats.add(y)
            out[:, :, start:stop] = y.to(self.storage_dtype)
        return out

    def _apply_in_place(self, t: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor], relu: bool, add_to: torch.Tensor | None = None) -> None:
        band = max(1, self.band_rows // 4)
        for start in range(0, t.shape[2], band):
            piece = self._norm_relu(t[:, :, start : start + band].to(self.compute_dtype), affine, relu)
            if add_to is not None:
                add_to[:, :, start : start + band] += piece.to(add_to.dtype)
            else:
                t[:, :, start : start + band] = piece.to(t.dtype)

    # -- the three stages -----------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [_conv_of(b) for b in self.net.encoder]  # type: ignore[arg-type]
        affines: list[tuple[torch.Tensor, torch.Tensor]] = []
        rows = x.shape[2]
        stored: torch.Tensor | None = None
        for target in range(3):
            stats = _Stats(blocks[target][1].out_channels, self.device)
            if target == 2:
                stored = torch.empty((1, blocks[2][1].out_channels, rows // 4, x.shape[3] // 4), dtype=self.storage_dtype, device=self.device, memory_format=self.layout)
            for start, stop, lo, hi in _bands(rows, self.band_rows, _ENCODER_HALO):
                h = x[:, :, lo:hi].to(self.device, self.compute_dtype).contiguous(memory_format=self.layout)
                if x.dtype == torch.uint8:
                    h = h / 255
                for i, (_, conv, _norm) in enumerate(blocks[: target + 1]):
                    h = conv(h)
                    if i < target:
                        h = self._norm_relu(h, affines[i])
                scale = 2**target  # rows of this layer's output per full-resolution row: 1, 1/2, 1/4
                core = h[:, :, (start - lo) // scale : (stop - lo) // scale]
                stats.add(core)
                if stored is not None:
                    stored[:, :, start // 4 : stop // 4] = core.to(self.storage_dtype)
            affines.append(stats.affine(blocks[target][2]))
        assert stored is not None
        self._apply_in_place(stored, affines[2], relu=True)
        return stored

    def _conv_add_norm(self, src: torch.Tensor, conv: nn.Conv2d, norm: nn.InstanceNorm2d, dst: torch.Tensor) -> None:
        """dst += norm(conv(src)) without storing conv(src): one pass for the statistics, one to add."""
        stats = _Stats(conv.out_channels, self.device)
        band = max(1, self.band_rows // 4)
        rows = src.shape[2]
        for start, stop, lo, hi in _bands(rows, band, _RESIDUAL_HALO):
            stats.add(conv(src[:, :, lo:hi].to(self.compute_dtype))[:, :, start - lo : stop - lo])
        affine = stats.affine(norm)
        for start, stop, lo, hi in _bands(rows, band, _RESIDUAL_HALO):
            y = conv(src[:, :, lo:hi].to(self.compute_dtype))[:, :, start - lo : stop - lo]
            dst[:, :, start:stop] += self._norm_relu(y, affine, relu=False).to(dst.dtype)

    def _residuals(self, h: torch.Tensor) -> torch.Tensor:
        low_memory = h.numel() * h.element_size() > self.low_memory_bytes
        for block in self.net.residuals:
            assert isinstance(block, ResidualBlock)
            conv_a, norm_a, _, conv_b, norm_b = list(block.body)
            stats_a = _Stats(conv_a.out_channels, self.device)
            t = self._banded_conv(h, conv_a, stats_a)  # type: ignore[arg-type]
            self._apply_in_place(t, stats_a.affine(norm_a), relu=True)  # type: ignore[arg-type]
            if low_memory:
                self._conv_add_norm(t, conv_b, norm_b, h)  # type: ignore[arg-type]
            else:
                stats_b = _Stats(conv_b.out_channels, self.device)
                u = self._banded_conv(t, conv_b, stats_b)  # type: ignore[arg-type]
                self._apply_in_place(u, stats_b.affine(norm_b), relu=False, add_to=h)  # type: ignore[arg-type]
                del u
            del t
        return h

    def _decode(self, h: torch.Tensor, write: Callable[[int, int, torch.Tensor], None], photo: torch.Tensor | None = None) -> None:
        up1, up2 = (_conv_of(b) for b in self.net.decoder[:2])  # type: ignore[arg-type]
        fast_up1, fast_up2, fast_final = self.fast_up1, self.fast_up2, self.fast_final
        affines: list[tuple[torch.Tensor, torch.Tensor]] = []
        rows4 = h.shape[2]
        band4 = max(1, self.band_rows // 4)
        for target in range(3):  # 0, 1: statistics of the two norms; 2: the output
            stats = _Stats((up1 if target == 0 else up2)[1].out_channels, self.device) if target < 2 else None
            for start, stop, lo, hi in _bands(rows4, band4, _DECODER_HALO):
                y = fast_up1(h[:, :, lo:hi].to(self.compute_dtype))
                if target == 0:
                    stats.add(y[:, :, 2 * (start - lo) : 2 * (stop - lo)])  # type: ignore[union-attr]
                    continue
                y = fast_up2(self._norm_relu(y, affines[0]))
                if target == 1:
                    stats.add(y[:, :, 4 * (start - lo) : 4 * (stop - lo)])  # type: ignore[union-attr]
                    continue
                y = self._norm_relu(y, affines[1])
                y = fast_final(y)[:, :, 4 * (start - lo) : 4 * (stop - lo)]
                if photo is not None:  # global_skip: the network predicts a change to the photo's logits
                    band = photo[:, :, 4 * start : 4 * stop].to(self.device, torch.float32)
                    y = y.float() + photo_logit(band / 255 if photo.dtype == torch.uint8 else band)
                write(4 * start, 4 * stop, torch.sigmoid(y))
            if stats is not None:
                affines.append(stats.affine((up1 if target == 0 else up2)[2]))

    def _storage_dtype_for(self, rows: int, cols: int) -> torch.dtype:
        """The stored tensors' dtype for a padded (rows, cols) image: bf16 above ``compact_storage_bytes``."""
        dtype = self.default_storage_dtype
        stored_bytes = self.stored_channels * (rows // 4) * (cols // 4) * dtype.itemsize
        too_big = self.compact_storage_bytes is not None and stored_bytes > self.compact_storage_bytes
        return torch.bfloat16 if too_big and dtype.itemsize > 2 else dtype

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Stylise one (3, H, W) image, float in [0, 1] or uint8 (kept as uint8: a quarter of the memory).

        The result goes into ``out`` if given (a (3, H, W) float or uint8 tensor; uint8 is scaled to
        0..255 and rounded), else into a new float32 tensor.
        """
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
        height, width = image.shape[1:]
        if self.fixed_band_rows is None:
            self.band_rows = max(64, min(512, (500_000 // max(width, 1)) // 16 * 16))
        padded, (top, left) = pad_for_network(image.unsqueeze(0))
        self.storage_dtype = self._storage_dtype_for(*padded.shape[-2:])
        if out is None:
            out = torch.empty((3, height, width), dtype=torch.float32)

        def write(r0: int, r1: int, y: torch.Tensor) -> None:
            # Rows r0:r1 of the padded output; keep what falls inside the original image.
            a, b = max(r0, top), min(r1, top + height)
            if a >= b:
                return
            piece = y[0, :, a - r0 : b - r0, left : left + width].float().cpu()
            out[:, a - top : b - top] = to_uint8(piece) if out.dtype == torch.uint8 else piece.to(out.dtype)

        h = self._encode(padded)
        photo = padded if self.net.global_skip else None
        del padded  # kept (as photo) only when the output needs it
        h = self._residuals(h)
        self._decode(h, write, photo)
        return out
