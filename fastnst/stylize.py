"""Python API: stylise images with a trained model in one forward pass.

    >>> from fastnst import stylize
    >>> out = stylize("photo.jpg", "starry")          # PIL image in, PIL image out
    >>> batch = stylize(torch.rand(2, 3, 256, 256), net)  # tensors in [0, 1] in, tensors out
"""

from __future__ import annotations

import copy
import os
from typing import Any, overload

import torch
from PIL import Image

from fastnst.color import blend, preserve_color
from fastnst.fast_layers import fast_copy
from fastnst.hardware import plan_for, reuse_freed_memory
from fastnst.images import photo_from_pil, read_image, to_pil, to_uint8
from fastnst.model_file import load_model
from fastnst.net import TransformerNet
from fastnst.tiled import TiledRunner


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None picks CUDA when available, else CPU; anything else is passed to torch."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


#: Images with more pixels than this go through the banded runner (bounded memory; the same result, to the
#: precision of its stored activations, below).
TILE_PIXELS = 2048 * 2048

#: fp32 runs store the banded runner's quarter-resolution activations in bf16 (half the memory, about 50 dB
#: against fp32) once one of them would take more than this in fp32. At 3840x2160 (three such tensors of
#: 265 MB in fp32) that took the fp32 path's peak RSS from 1510-1764 MiB to 1143-1257 MiB, at the same speed.
FP32_STORAGE_BYTES = 128 << 20


def uses_tiles(height: int, width: int, tile: bool | None = None) -> bool:
    """Whether a photo runs in row bands: as ``tile`` says, or (None) when it has more than :data:`TILE_PIXELS`."""
    return tile if tile is not None else height * width > TILE_PIXELS


class Stylizer:
    """A loaded model bound to a device and an execution plan; call it on (N, 3, H, W) batches in [0, 1].

    ``precision="auto"`` picks the fastest sound arithmetic for the device (see
    :mod:`fastnst.hardware`): bf16 on CPUs with native bf16, fp32 with TF32 convolutions on recent GPUs,
    fp32 elsewhere;
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` force one. ``tile`` chooses the banded runner of
    :mod:`fastnst.tiled` (whole-image statistics, bounded memory): ``None`` (auto) for images
    over :data:`TILE_PIXELS`, ``True`` always, ``False`` never. ``preserve_color`` keeps the photo's
    colours (default: only for models trained with ``loss.luminance_only``); ``strength`` in [0, 1]
    blends from the photo (0) to the full stylisation (1), see :mod:`fastnst.color`.

    ``compile=True`` runs the (untiled) network under ``torch.compile``, channels_last, and on a CUDA GPU
    of compute capability 8.0 or newer in bf16 unless ``precision`` says otherwise. Inductor fuses the
    norms, pads and ReLUs between the convolutions: 2.34-2.42x the plain fp32 network on an H100 at 1080p,
    after 8-13 s of compiling for each new image size (docs/benchmarks.md). That pays for thousands of
    same-size images when decoding and encoding keep up (a PNG folder on an H100 did not), not for a
    photo. A smaller last batch of an image size is padded to that size's first batch, so it does not
    compile again. On CPUs it compiles the plain layers, which
    fastnst's own CPU layers usually beat; the option is meant for GPUs.
    """

    def __init__(
        self,
        model: TransformerNet | str | os.PathLike[str],
        device: str | torch.device | None = "auto",
        precision: str = "auto",
        tile: bool | None = None,
        band_rows: int | None = None,
        preserve_color: bool | None = None,
        strength: float = 1.0,
        compile: bool = False,
    ) -> None:
        self.device = select_device(device)
        self.plan = plan_for(self.device, precision, compiled=compile)
        self.tile = tile
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {strength}")
        self.strength = float(strength)
        self.onnx: Any = None
        if not isinstance(model, TransformerNet) and str(model).endswith(".onnx"):
            from fastnst.export import OnnxStylizer  # onnxruntime only when an .onnx model is used

            if compile:
                raise ValueError("compile applies to fastnst .pt models; an .onnx model runs in onnxruntime")
            self.onnx = OnnxStylizer(model, str(self.device))
            self.metadata = self.onnx.metadata
            self.preserve_color = bool(preserve_color)
            self.tile = False
            return
        if isinstance(model, TransformerNet):
            net, self.metadata = model, {}
        else:
            net, self.metadata = load_model(model)
        # A model trained on luminance only is meant to be applied with the photo's colours.
        self.preserve_color = bool(self.metadata.get("luminance_only", False)) if preserve_color is None else preserve_color
        # A private copy in the plan's dtype: weights cast once, not on every call (the caller's net is untouched).
        self.net = copy.deepcopy(net).to(self.device, self.plan.dtype).eval()
        # Exact rewrites of the decoder's slow layers for the one-pass path on CPUs (1.2-1.4x; fastnst.fast_layers),
        # in channels_last where the plan says so (x86 CPUs: 2.5x in bf16 on an AMX Xeon, 1.06-1.20x capped at AVX2 or AVX-512).
        self.fast_net = fast_copy(self.net, self.plan.channels_last) if self.device.type == "cpu" and not compile else self.net
        self._layout = torch.channels_last if self.plan.channels_last and not compile else torch.contiguous_format
        if self.device.type == "cpu":
            reuse_freed_memory()  # no page faults for each large activation (fastnst.hardware; 1.6x at 1080p)
        # The banded runner shares self.net's weights, channels_last too where the plan says so (x86 CPUs).
        if self.plan.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.tiled = TiledRunner(self.net, band_rows=band_rows, compact_storage_bytes=FP32_STORAGE_BYTES, channels_last=self.plan.channels_last)
        self.compiled: Any = None
        self._compiled_batch: dict[tuple[int, int], int] = {}  # per image size, the batch size compiled first
        if compile:
            # A separate channels_last copy: the banded runner keeps the weights it was built for.
            self.compiled = torch.compile(copy.deepcopy(self.net).to(memory_format=torch.channels_last), dynamic=False)

    def uses_tiles(self, height: int, width: int) -> bool:
        return uses_tiles(height, width, self.tile)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Stylise a float batch in [0, 1]; the result is on the input's device, float32, in (0, 1)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(batch.shape)}")
        if self.onnx is not None:
            out = self.onnx(batch.float().cpu()).to(batch.device)
        elif self.uses_tiles(*batch.shape[-2:]):
            out = torch.stack([self.tiled(img.to(self.device, self.plan.dtype)) for img in batch]).to(batch.device)
        elif self.compiled is not None:
            out = self._run_compiled(batch.to(self.device, self.plan.dtype)).float().contiguous().to(batch.device)
        else:
            x = batch.to(self.device, self.plan.dtype).contiguous(memory_format=self._layout)
            out = self.fast_net(x).float().contiguous().to(batch.device)
        return self.postprocess(out, batch)

    def _run_compiled(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        full = self._compiled_batch.setdefault((x.shape[-2], x.shape[-1]), n)
        if n < full:  # e.g. a video's last frames: repeat the last one instead of compiling again for this size
            x = torch.cat([x, x[-1:].expand(full - n, -1, -1, -1)])
        return self.compiled(x.contiguous(memory_format=torch.channels_last))[:n]

    def postprocess(self, out: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """Colour preservation, then strength (see :mod:`fastnst.color`); float in, float out."""
        if self.preserve_color:
            out = preserve_color(out, photo)
        return blend(out, photo, self.strength)

    def _postprocess_uint8(self, out: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
        """:meth:`postprocess` on uint8 images, a band of rows at a time (no full-size float copies)."""
        if not self.preserve_color and self.strength == 1.0:
            return out
        for r in range(0, out.shape[-2], 256):
            o = out[:, r : r + 256].float() / 255
            p = photo[:, r : r + 256]
            p = p.float() / 255 if p.dtype == torch.uint8 else p.float()
            out[:, r : r + 256] = to_uint8(self.postprocess(o, p))
        return out

    def stylize_to_uint8(self, image: torch.Tensor) -> torch.Tensor:
        """One (3, H, W) image (float in [0, 1] or uint8) to a (3, H, W) uint8 tensor.

        Large images go through the banded runner without any full-size float copy of input or output.
        """
        if self.uses_tiles(*image.shape[-2:]):
            out = torch.empty(image.shape, dtype=torch.uint8)
            src = image if image.dtype == torch.uint8 else image.to(self.device, self.plan.dtype)
            return self._postprocess_uint8(self.tiled(src, out=out), image)
        if image.dtype == torch.uint8:
            image = image.float() / 255
        return to_uint8(self(image.unsqueeze(0))[0])


@overload
def stylize(image: Image.Image | str | os.PathLike[str], model: Any, device: Any = ..., precision: str = ...) -> Image.Image: ...
@overload
def stylize(image: torch.Tensor, model: Any, device: Any = ..., precision: str = ...) -> torch.Tensor: ...


def stylize(image: Any, model: Any, device: str | torch.device | None = "auto", precision: str = "auto") -> Any:
    """Stylise one image with ``model`` (a :class:`TransformerNet`, a model file, a model name or a :class:`Stylizer`).

    ``image`` may be a path or a PIL image (a PIL image comes back, alpha carried over), or a
    float tensor in [0, 1] of shape (3, H, W) or (N, 3, H, W) (a tensor of the same shape comes back).
    """
    runner = model if isinstance(model, Stylizer) else Stylizer(model, device, precision)
    if isinstance(image, torch.Tensor):
        single = image.ndim == 3
        out = runner(image.unsqueeze(0) if single else image)
        return out[0] if single else out
    if isinstance(image, Image.Image):
        photo = photo_from_pil(image)
    else:
        photo = read_image(image)
    out = runner(photo.rgb.unsqueeze(0))[0]
    return to_pil(out, photo.alpha)

