"""The slim model file: transformer weights + architecture + training metadata, nothing else.

A model file is a ``torch.save`` of a plain dict::

    {"format": "fastnst.model", "format_version": 1,
     "arch": {"base_channels": 32, "num_residual_blocks": 5},
     "state_dict": {...},            # float16 or float32 tensors
     "metadata": {"style": "starry", "alpha": ..., "beta": ..., "steps": ..., ...}}

It is read with ``torch.load(weights_only=True)``: only tensors and plain containers are
accepted, so a crafted file cannot run code when it is opened. Lightning ``.ckpt`` files
written by ``fastnst.train`` load the same way (their ``net.*`` weights and hyperparameters).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from fastnst._io import atomic_write, first_line
from fastnst.net import TransformerNet
from fastnst.resources import CHECKPOINT_DIR

FORMAT = "fastnst.model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".pt"


class ModelFileError(ValueError):
    """A model name or file that cannot be used; the message says why in one line."""


def model_dirs() -> list[Path]:
    """Folders searched for a model given by name: ``$FASTNST_MODELS`` (os.pathsep-separated), then the
    shipped ``checkpoints/`` (see :mod:`fastnst.resources`)."""
    dirs = [Path(p) for p in os.environ.get("FASTNST_MODELS", "").split(os.pathsep) if p]
    return [*dirs, CHECKPOINT_DIR]


def available_models() -> dict[str, Path]:
    """Model names that ``-m NAME`` accepts, with their files (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        if d.is_dir():
            for f in sorted(d.glob(f"*{MODEL_SUFFIX}")):
                found.setdefault(f.stem, f)
    return found


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """A model file path from a path or a name of a model in :func:`model_dirs`."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelFileError(f"model {str(spec)!r} is not a file")
    known = available_models()
    if str(spec) in known:
        return known[str(spec)]
    names = ", ".join(sorted(known)) or "none found"
    raise ModelFileError(
        f"no model file or known model named {str(spec)!r} (available: {names}; "
        f"folders searched: {', '.join(str(d) for d in model_dirs())})"
    )


def save_model(
    net: TransformerNet,
    path: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    half: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``net`` as a slim model file, atomically. ``half`` stores float16 weights (half the size).

    ``metadata`` must hold only plain values (str, int, float, bool, None, lists, dicts) so that the
    file loads with ``weights_only=True``.
    """
    dtype = torch.float16 if half else torch.float32
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).clone() for k, v in net.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": net.config(),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()), overwrite=overwrite)


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "not a model file"
        first = first_line(e, 200)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "it holds Python objects other than tensors and plain containers; refused to unpickle them"
        raise ModelFileError(f"{path}: not a readable fastnst model or checkpoint ({first})") from None


def _from_lightning(path: Path, ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    hparams = ckpt.get("hyper_parameters") or {}
    arch = hparams.get("model")
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not isinstance(arch, dict) or not state:
        raise ModelFileError(f"{path}: a Lightning checkpoint, but not one written by fastnst.train (no transformer weights)")
    arch = {k: arch[k] for k in ("base_channels", "num_residual_blocks", "global_skip") if k in arch}
    meta = {
        "style": (hparams.get("style") or {}).get("name"),
        "steps": ckpt.get("global_step"),
        "source": "lightning checkpoint",
    }
    return arch, state, meta


def load_model(
    spec: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[TransformerNet, dict[str, Any]]:
    """Load a model file, a name of a shipped/known model, or a ``fastnst.train`` ``.ckpt``.

    Returns the network in eval mode on ``device`` (float32) and its metadata dict.
    Raises :class:`ModelFileError` with a one-line reason for anything unusable.
    """
    path = resolve_model(spec)
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(f"{path}: model format version {obj['format_version']} is newer than this fastnst supports")
        arch, state, meta = obj.get("arch"), obj.get("state_dict"), dict(obj.get("metadata") or {})
    elif isinstance(obj, dict) and "state_dict" in obj and "pytorch-lightning_version" in obj:
        arch, state, meta = _from_lightning(path, obj)
    else:
        raise ModelFileError(f"{path}: not a fastnst model file (no {FORMAT!r} header) nor a fastnst.train checkpoint")
    try:
        net = TransformerNet(**arch)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ModelFileError(f"{path}: weights do not fit the fastnst network they describe ({first_line(e, 200)})") from None
    meta.setdefault("name", path.stem)
    return net.to(device).eval(), meta
