"""Python API: stylise images with a trained model in one forward pass.

    >>> from fastnst import stylize
    >>> out = stylize("photo.jpg", "starry")          # PIL image in, PIL image out
    >>> batch = stylize(torch.rand(2, 3, 256, 256), net)  # tensors in [0, 1] in, tensors out
"""

from __future__ import annotations

import os
from typing import Any, overload

import torch
from PIL import Image

from fastnst.hardware import plan_for
from fastnst.images import photo_from_pil, read_image, to_pil
from fastnst.model_file import load_model
from fastnst.net import TransformerNet


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


class Stylizer:
    """A loaded model bound to a device and an execution plan; call it on (N, 3, H, W) batches in [0, 1].

    ``precision="auto"`` picks the fastest sound arithmetic for the device (see
    :mod:`fastnst.hardware`): bf16 autocast on GPUs and on CPUs with native bf16, fp32 elsewhere.
    ``"fp32"``, ``"bf16"`` or ``"fp16"`` force one.
    """

    def __init__(
        self,
        model: TransformerNet | str | os.PathLike[str],
        device: str | torch.device | None = "auto",
        precision: str = "auto",
    ) -> None:
        self.device = select_device(device)
        self.plan = plan_for(self.device, precision)
        if isinstance(model, TransformerNet):
            self.net, self.metadata = model, {}
        else:
            self.net, self.metadata = load_model(model)
        self.net = self.net.to(self.device).eval()
        if self.plan.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Stylise a float batch in [0, 1]; the result is on the input's device, float32, in (0, 1)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) batch, got shape {tuple(batch.shape)}")
        x = batch.to(self.device, torch.float32)
        if self.plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.plan.autocast():
            out = self.net(x)
        return out.float().contiguous().to(batch.device)


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

