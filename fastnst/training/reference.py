"""The quality yardstick: Gatys et al. image optimisation with the training loss, and the loss of a model.

Both ``fastnst.optimize`` and ``fastnst.evaluate`` build their :class:`PerceptualLoss` here, from the
settings a model file records (style, alpha, beta, tv_weight, layers, VGG, style image size), so a
model and the optimisation it is compared with are scored by the very same function as training.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from fastnst.resources import CONFIG_DIR
from fastnst.training.loss import PerceptualLoss, build_loss
from fastnst.training.style import StyleImageError, cache_dir, find_local, load_style_image, resolve_style_image

DEFAULT_STYLE_LAYERS = {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for CUDA convolutions and matrix products while scoring: PyTorch lets cuDNN use TF32
    (10-bit mantissa) by default, which would make a GPU score differ from the same score on a CPU."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def style_config(name: str, missing_ok: bool = False) -> dict[str, Any]:
    """The ``style/<name>.yaml`` config as a dict (image, url, sha256, image_size, alpha, beta, tv_weight);
    an unknown name raises :class:`ValueError`, or gives ``{}`` with ``missing_ok``."""
    path = CONFIG_DIR / "style" / f"{name}.yaml"
    if not path.is_file():
        if missing_ok:
            return {}
        known = ", ".join(sorted(p.stem for p in (CONFIG_DIR / "style").glob("*.yaml")))
        raise ValueError(f"unknown style {name!r}; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def loss_settings(metadata: Mapping[str, Any] | None = None, style: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Loss settings from a model's metadata, else from a style config; explicit overrides win."""
    meta = dict(metadata or {})
    name = style or meta.get("style")
    if not name:
        raise ValueError("need a style: a model whose metadata names one, or --style NAME")
    cfg = style_config(name, missing_ok=True)  # a style without a config here: the metadata holds its settings
    settings = {
        "style": name,
        "style_image": None,
        "style_file": meta.get("style_image"),  # the file name training recorded, for styles without a config here
        "style_url": cfg.get("url"),
        "style_sha256": cfg.get("sha256"),
        "style_image_size": meta.get("style_image_size", cfg.get("image_size", 512)),
        "alpha": meta.get("alpha", cfg.get("alpha", 1.0)),
        "beta": meta.get("beta", cfg.get("beta", 1e5)),
        "tv_weight": meta.get("tv_weight", cfg.get("tv_weight", 10.0)),
        "vgg": meta.get("vgg", "vgg16"),
        "content_layers": list(meta.get("content_layers", ["relu2_2"])),
        "style_layers": dict(meta.get("style_layers", DEFAULT_STYLE_LAYERS)),
        "luminance_only": bool(meta.get("luminance_only", False)),
    }
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def build_reference_loss(settings: Mapping[str, Any], weights: str, device: str | torch.device = "cpu") -> PerceptualLoss:
    loss = build_loss(
        settings["vgg"],
        weights,
        settings["content_layers"],
        settings["style_layers"],
        settings["alpha"],
        settings["beta"],
        settings["tv_weight"],
        settings["luminance_only"],
    ).to(device)
    path = settings.get("style_image")
    if not path and not settings.get("style_url"):
        # a custom style (style.image=... at training): no URL to fetch, so look for the recorded file name
        name = settings.get("style_file")
        path = find_local(name) if name else None
        if path is None:
            shown = f" ({name})" if name else ""
            raise StyleImageError(
                f"the image of style {settings['style']!r}{shown} is not in FASTNST_STYLE_DIR or {cache_dir()}; "
                f"pass --style-image /path/to/{name or 'painting.jpg'}"
            )
    path = resolve_style_image(path, settings.get("style_url"), settings.get("style_sha256"))
    loss.set_style(load_style_image(path, settings["style_image_size"]))
    return loss


def optimise_image(
    loss: PerceptualLoss,
    content: torch.Tensor,
    iterations: list[int] | int = 100,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    init: str = "photo",
    seed: int = 0,
) -> tuple[dict[int, torch.Tensor], list[float], dict[int, float]]:
    """Gatys et al.: optimise the image itself against ``loss``, from the photo (``init="photo"``, the
    yardstick) or from uniform white noise (``init="noise"``, seeded by ``seed``; Gatys et al. 2016's start).

    The image is parametrised as ``sigmoid(z)`` so it stays in (0, 1), like a network's output.
    ``iterations`` may list checkpoints (e.g. ``[100, 300]``): one optimisation runs to the largest and
    the image is taken at each. Returns {iterations: image}, the total loss at every function
    evaluation, and {iterations: seconds spent so far}.
    """
    marks = sorted({iterations} if isinstance(iterations, int) else set(iterations))
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be lbfgs or adam, got {optimizer!r}")
    if init not in ("photo", "noise"):
        raise ValueError(f"init must be photo or noise, got {init!r}")
    content = content.detach()
    start_image = content
    if init == "noise":
        noise = torch.rand(content.shape, generator=torch.Generator().manual_seed(seed))
        start_image = noise.to(content.device, content.dtype)
    z = torch.logit(start_image.clamp(1e-3, 1 - 1e-3)).clone().requires_grad_(True)
    with torch.no_grad():
        targets = loss.content_features(content)
    curve: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = loss(torch.sigmoid(z), content, targets)["total"]
        total.backward()
        curve.append(float(total.detach()))
        return total

    images: dict[int, torch.Tensor] = {}
    seconds: dict[int, float] = {}
    start, done = time.perf_counter(), 0
    if optimizer == "lbfgs":
        opt: torch.optim.Optimizer = torch.optim.LBFGS([z], lr=lr or 1.0, history_size=50, line_search_fn="strong_wolfe", tolerance_grad=0, tolerance_change=0)
        for mark in marks:
            opt.param_groups[0]["max_iter"] = mark - done
            opt.param_groups[0]["max_eval"] = int((mark - done) * 1.25)
            opt.step(closure)
            done = mark
            images[mark], seconds[mark] = torch.sigmoid(z).detach().clone(), time.perf_counter() - start
    else:
        opt = torch.optim.Adam([z], lr=lr or 0.05)
        for mark in marks:
            while done < mark:
                closure()
                opt.step()
                done += 1
            images[mark], seconds[mark] = torch.sigmoid(z).detach().clone(), time.perf_counter() - start
    return images, curve, seconds


@torch.no_grad()
def score(loss: PerceptualLoss, output: torch.Tensor, content: torch.Tensor) -> dict[str, float]:
    """The loss terms (floats) of ``output`` for photo ``content``: the same numbers training logs."""
    return {k: float(v) for k, v in loss(output.float(), content.float()).items()}
