"""Export a model to ONNX or TorchScript: ``python -m fastnst.export -m starry --format onnx -o starry.onnx``.

The exported graph takes any batch, height and width (>= 8 each side; smaller images are the
PyTorch model's business) and does the padding to a multiple of 4 and the crop back inside. Every
export is verified: the exported model runs on an image of a different size than the one used for
export, and must match PyTorch within 1e-3 (max abs difference), or the file is not kept.

ONNX needs the ``onnx`` and ``onnxscript`` packages (``pip install "fastnst[onnx]"``), and running it
``onnxruntime``; TorchScript needs nothing beyond torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastnst._io import first_line
from fastnst.model_file import ModelFileError, load_model
from fastnst.net import TransformerNet, photo_logit

FORMATS = ("onnx", "torchscript")
EXPORT_MIN_SIZE = 8
TOLERANCE = 1e-3


class ExportableNet(nn.Module):
    """The same computation as :class:`TransformerNet`, padding written with shape arithmetic only,
    so tracers keep height and width symbolic (reflection padding; sides of at least 8 pixels)."""

    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.encoder, self.residuals, self.decoder = net.encoder, net.residuals, net.decoder
        self.global_skip = net.global_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        ph, pw = (4 - h % 4) % 4, (4 - w % 4) % 4
        top, left = ph // 2, pw // 2
        x = F.pad(x, [left, pw - left, top, ph - top], mode="reflect")
        y = self.decoder(self.residuals(self.encoder(x)))
        if self.global_skip:
            y = y + photo_logit(x)
        y = torch.sigmoid(y)
        return y[:, :, top : top + h, left : left + w]


def export_torchscript(net: TransformerNet, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still what many C++/mobile runtimes load
        scripted = torch.jit.script(ExportableNet(net).eval())
    scripted.save(str(path))


def export_onnx(net: TransformerNet, path: Path, metadata: dict[str, Any]) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise RuntimeError('ONNX export needs the onnx and onnxscript packages: pip install "fastnst[onnx]"') from None
    from torch.export import Dim

    example = torch.rand(1, 3, 64, 72)
    shapes = {"x": {0: Dim("batch", min=1, max=1024), 2: Dim("height", min=EXPORT_MIN_SIZE, max=1 << 15), 3: Dim("width", min=EXPORT_MIN_SIZE, max=1 << 15)}}
    program = torch.onnx.export(ExportableNet(net).eval(), (example,), dynamo=True, dynamic_shapes=shapes, input_names=["image"], output_names=["stylised"], verbose=False)
    import onnx

    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.save(model, str(path))


class OnnxStylizer:
    """Runs an exported ``.onnx`` model with onnxruntime; called like :class:`fastnst.Stylizer` on (N, 3, H, W) in [0, 1]."""

    def __init__(self, path: str | os.PathLike[str], device: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelFileError(f"{path}: running .onnx models needs onnxruntime (pip install onnxruntime)") from None
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {"name": Path(path).stem, **meta}
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if min(batch.shape[-2:]) < EXPORT_MIN_SIZE:
            raise ValueError(f"exported models need images of at least {EXPORT_MIN_SIZE}x{EXPORT_MIN_SIZE} pixels")
        (out,) = self.session.run(None, {self.input_name: batch.float().contiguous().numpy()})
        return torch.from_numpy(out)


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torchscript":
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path))(x)
    return OnnxStylizer(path)(x)


def verify(net: TransformerNet, path: Path, fmt: str) -> float:
    """Max abs difference between the exported model and PyTorch on two sizes unlike the export example."""
    worst = 0.0
    for shape in ((2, 3, 37, 50), (1, 3, 96, 61)):
        x = torch.rand(shape)
        with torch.inference_mode():
            ref = net(x)
        worst = max(worst, (_run_exported(path, fmt, x) - ref).abs().max().item())
    return worst


def export(model: str, fmt: str, output: Path, overwrite: bool = False) -> float:
    """Export ``model`` to ``output`` in ``fmt``; returns the verified max abs difference."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; not overwriting it (pass --overwrite to replace it)")
    net, meta = load_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        tmp_path = Path(tmp) / output.name
        if fmt == "torchscript":
            export_torchscript(net, tmp_path)
        else:
            export_onnx(net, tmp_path, {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))})
        diff = verify(net, tmp_path, fmt)
        if diff > TOLERANCE:
            raise RuntimeError(f"exported model differs from PyTorch by {diff:.2e} (> {TOLERANCE}); not written")
        os.replace(tmp_path, output)
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fastnst.export",
        description="Export a fastnst model to ONNX or TorchScript (dynamic batch, height and width), verified against PyTorch.",
    )
    p.add_argument("-m", "--model", required=True, help="model file or name (as for fastnst.apply)")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx (needs onnx + onnxscript) or torchscript")
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write (.onnx or .pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    try:
        diff = export(args.model, args.format, args.output, args.overwrite)
    except (ModelFileError, FileExistsError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({args.format}); verified on unseen sizes: max abs difference {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
