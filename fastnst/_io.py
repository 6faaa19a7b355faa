"""Small file helpers shared by the light and the training side."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], overwrite: bool = True) -> Path:
    """Write a file through ``write(fileobj)`` so that ``path`` is either the old file or the whole new one.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed over
    ``path`` (atomic on POSIX and Windows). A crash or kill mid-write leaves at most a stray
    ``.tmp`` file, never a truncated ``path``. With ``overwrite=False`` an existing ``path`` raises
    :class:`FileExistsError` (checked again right before the rename).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a normal file respects the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the target exists, so a file that appeared meanwhile is never clobbered.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists (pass overwrite to replace it)") from None
            except OSError:  # file system without hard links
                if path.exists():
                    raise FileExistsError(f"{path} exists (pass overwrite to replace it)") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type name), for one-line error reports."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]
