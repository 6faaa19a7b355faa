"""Finding the style image: a local path, a folder of style images, or a verified download.

Lookup order for a style config (``image``, ``url``, ``sha256``):

1. ``image`` set: that file, as given (relative paths from where you launched training).
2. ``$FASTNST_STYLE_DIR`` (os.pathsep-separated folders), then the download cache
   ``$XDG_CACHE_HOME/fastnst/styles`` (default ``~/.cache/fastnst/styles``), by the URL's file name.
3. ``url``: downloaded once into that cache. The file is written to a temporary name, its
   SHA-256 checked, and only then renamed into place, so a partial or tampered download never
   lands in the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from fastnst.images import ImageError, read_image, resize_long_side


class StyleImageError(RuntimeError):
    """The style image could not be found, fetched or verified; the message says what to do."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastnst" / "styles"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` via a temporary file; verify ``sha256`` before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - https URLs from configs
            shutil.copyfileobj(r, f)
        if sha256 is not None:
            got = sha256_of(Path(tmp))
            if got != sha256.lower():
                raise StyleImageError(f"download of {url} has SHA-256 {got}, expected {sha256}; not using it")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def find_local(filename: str) -> Path | None:
    """``filename`` in the first of ``$FASTNST_STYLE_DIR``'s folders, then the download cache, that has it."""
    folders = [Path(p) for p in os.environ.get("FASTNST_STYLE_DIR", "").split(os.pathsep) if p] + [cache_dir()]
    return next((folder / filename for folder in folders if (folder / filename).is_file()), None)


def resolve_style_image(image: str | None = None, url: str | None = None, sha256: str | None = None) -> Path:
    """Path of the style image for a style config; raises :class:`StyleImageError` with what to do."""
    if image:
        path = Path(image).expanduser()
        if not path.is_file():
            raise StyleImageError(f"style image {path} not found (style.image=...)")
        return path
    if not url:
        raise StyleImageError("the style config sets neither style.image nor style.url; pass style.image=/path/to/painting.jpg")
    filename = os.path.basename(urlparse(url).path)
    candidate = find_local(filename)
    if candidate is not None:
        if sha256 is not None and sha256_of(candidate) != sha256.lower():
            raise StyleImageError(
                f"{candidate} does not match the expected SHA-256 {sha256}; remove it, or pass style.image={candidate} to use it anyway"
            )
        return candidate
    try:
        return download(url, cache_dir() / filename, sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise StyleImageError(
            f"style image {filename} is not available offline and downloading {url} failed ({e}); "
            f"put {filename} into {cache_dir()} (or a folder named by FASTNST_STYLE_DIR), or pass style.image=/path/to/{filename}"
        ) from None


def load_style_image(path: str | os.PathLike[str], image_size: int | None) -> torch.Tensor:
    """(3, H, W) float in [0, 1], resized (antialiased) so its longer side is ``image_size`` (None: as is)."""
    try:
        return resize_long_side(read_image(path).rgb, image_size)
    except ImageError as e:
        raise StyleImageError(str(e)) from None
