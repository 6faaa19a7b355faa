"""Reading photos as the network wants them and writing results any viewer opens.

Reading applies the EXIF orientation, turns every Pillow mode (greyscale, 16-bit, palette,
CMYK, with or without alpha) into RGB float32 in [0, 1], keeps the alpha channel aside, and
refuses images above a pixel limit *before* decoding them (a few-KB PNG can claim
30000 x 30000 pixels). Writing goes through a temporary file and a rename, so an interrupted
run never leaves half an image, and never replaces an existing file unless asked.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from fastnst._io import atomic_write, first_line

#: Extensions treated as images when a folder is given.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
#: Output formats by extension (Pillow format name, keeps alpha).
_OUTPUT_FORMATS = {
    ".jpg": ("JPEG", False),
    ".jpeg": ("JPEG", False),
    ".png": ("PNG", True),
    ".webp": ("WEBP", True),
    ".bmp": ("BMP", False),
    ".tif": ("TIFF", True),
    ".tiff": ("TIFF", True),
}
#: Default decoded-size limit: 200 megapixels (e.g. 16000 x 12500), about 2.4 GB as float32 RGB.
DEFAULT_MAX_PIXELS = 200_000_000


class ImageError(ValueError):
    """An input or output image that cannot be used; the message names the file and the reason."""


@dataclass
class Photo:
    """A decoded image: ``rgb`` is (3, H, W) float32 in [0, 1] (or uint8); ``alpha`` (1, H, W) or None."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None = None
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow says it."""
        return self.rgb.shape[-1], self.rgb.shape[-2]


def list_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files below ``root`` (recursive, following symlinked folders once, sorted, hidden files skipped)."""
    found: list[Path] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link cycle, or the same folder linked twice
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(p for p in found if p.is_file())


@contextmanager
def _our_pixel_limit() -> Iterator[None]:
    """Pillow's own bomb check off for a moment: :func:`check_pixels` applies the limit the user chose."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _open(path: Path) -> Image.Image:
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        with _our_pixel_limit():
            return Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001
        reason = "empty file" if path.exists() and path.stat().st_size == 0 else f"not a readable image ({first_line(e)})"
        raise ImageError(f"{path}: {reason}") from None


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF is not worth failing over
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_pixels(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageError(
            f"{path}: {size[0]}x{size[1]} is {size[0] * size[1] / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels (decompression-bomb guard; raise it with --max-pixels)"
        )


def probe_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only; raises :class:`ImageError`."""
    path = Path(path)
    with _open(path) as img:
        size = _oriented_size(img)
    check_pixels(path, size, max_pixels)
    return size


def _to_tensor(img: Image.Image, as_uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img).astype(np.float32)
        scale = 65535.0 if (mode != "I" or a.max(initial=0) > 255) else 255.0
        grey = torch.from_numpy(np.clip(a / scale, 0.0, 1.0))
        if as_uint8:
            grey = grey.mul(255).round_().to(torch.uint8)
        return grey.expand(3, *grey.shape).contiguous(), None
    if mode == "F":
        img = img.convert("L")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in img.info)
    img = img.convert("RGBA" if has_alpha else "RGB")
    a = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    if not as_uint8:
        a = a.float().div_(255.0)
    if has_alpha:
        return a[:3].contiguous(), a[3:].contiguous()
    return a.contiguous(), None


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS, as_uint8: bool = False) -> Photo:
    """Decode ``path`` to a :class:`Photo` (float32 in [0, 1], or uint8 0..255 with ``as_uint8``: a
    quarter of the memory, for very large photos); raises :class:`ImageError` with a one-line reason."""
    path = Path(path)
    with _open(path) as img:
        check_pixels(path, _oriented_size(img), max_pixels)
        try:
            with _our_pixel_limit():
                img.load()
                return photo_from_pil(img, as_uint8)
        except Exception as e:  # noqa: BLE001 - truncated data, bad chunks, unsupported modes
            raise ImageError(f"{path}: cannot decode image ({first_line(e)})") from None


def photo_from_pil(img: Image.Image, as_uint8: bool = False) -> Photo:
    """A :class:`Photo` from a Pillow image: EXIF orientation applied, any mode to RGB (+ alpha)."""
    icc = img.info.get("icc_profile")
    rgb, alpha = _to_tensor(ImageOps.exif_transpose(img), as_uint8)
    # Carry a colour profile only where it describes RGB data (a CMYK profile would be wrong on RGB).
    keep_icc = icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None
    return Photo(rgb=rgb, alpha=alpha, icc_profile=keep_icc)


def resize_long_side(rgb: torch.Tensor, size: int | None) -> torch.Tensor:
    """(..., 3, H, W) float resized (bilinear, antialiased) so the longer side is ``size``; None: unchanged."""
    h, w = rgb.shape[-2:]
    if not size or max(h, w) == size:
        return rgb
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    batch = rgb if rgb.ndim == 4 else rgb.unsqueeze(0)
    out = F.interpolate(batch.float(), size=new, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return out if rgb.ndim == 4 else out[0]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] (anything outside is clipped) to uint8 0..255, rounded; uint8 passes through."""
    if x.dtype == torch.uint8:
        return x
    return x.detach().float().clamp(0, 1).mul_(255).round_().to(torch.uint8)


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(3, H, W) float in [0, 1] or uint8 (and optional (1, H, W) alpha) to an 8-bit Pillow image."""
    rgb = to_uint8(rgb)
    planes = rgb if alpha is None else torch.cat([rgb, to_uint8(alpha)], 0)
    arr = planes.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB" if alpha is None else "RGBA")


def output_format(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """(Pillow format, keeps alpha) for an output path; raises :class:`ImageError` if unsupported."""
    suffix = Path(path).suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        raise ImageError(f"{path}: cannot write {suffix or 'files without an extension'}; use one of {', '.join(_OUTPUT_FORMATS)}")
    return _OUTPUT_FORMATS[suffix]


def write_image(
    rgb: torch.Tensor,
    path: str | os.PathLike[str],
    alpha: torch.Tensor | None = None,
    overwrite: bool = False,
    quality: int = 95,
    icc_profile: bytes | None = None,
) -> Path:
    """Encode and write atomically; the format follows the extension. Alpha is kept where it can be."""
    fmt, keeps_alpha = output_format(path)
    img = to_pil(rgb, alpha if keeps_alpha else None)
    options: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if icc_profile:
        options["icc_profile"] = icc_profile
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    try:
        return atomic_write(path, lambda f: f.write(buf.getbuffer()), overwrite=overwrite)
    except FileExistsError:
        raise ImageError(f"{path}: exists; not overwriting it (pass --overwrite to replace it)") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({first_line(e)})") from None
