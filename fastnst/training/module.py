"""The LightningModule: a TransformerNet trained against the perceptual loss of one style."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from fastnst.fast_layers import training_view
from fastnst.hardware import channels_last_training_cpu
from fastnst.net import TransformerNet
from fastnst.training.loss import TERMS, PerceptualLoss, build_loss
from fastnst.training.optim import build_optimizer
from fastnst.training.progress import time_budget
from fastnst.training.style import load_style_image, resolve_style_image


@functools.lru_cache(maxsize=1)
def _cpu_channels_last() -> bool:
    return channels_last_training_cpu()


def train_forward(net: TransformerNet, photos: torch.Tensor, channels_last: bool | None = None) -> torch.Tensor:
    """``net(photos)`` for a training step. On CPUs through :func:`fastnst.fast_layers.training_view`, on
    channels_last activations where :func:`fastnst.hardware.channels_last_training_cpu` says so (``channels_last``
    forces it either way): the same weights and gradients, a faster forward and backward for the network
    (docs/benchmarks.md). GPUs run the plain layers (the rewrite is unmeasured there)."""
    if photos.device.type != "cpu":
        return net(photos)
    if channels_last is None:
        channels_last = _cpu_channels_last()
    if channels_last:
        photos = photos.contiguous(memory_format=torch.channels_last)
    return training_view(net, channels_last)(photos)


# A crop whose every channel varies less than this (a quarter of a grey level) is flat: one colour.
FLAT_STD = 1e-3


def dither_flat(photos: torch.Tensor, seed: int) -> torch.Tensor:
    """``photos`` with one grey level (1/255) of seeded noise added to each flat crop (one colour, e.g. a square cut
    from a white studio background); other crops unchanged.

    Instance norm divides by sqrt(var + eps); on a constant map var is 0, so its backward multiplies the gradient
    by 1/sqrt(eps) = 316 at every norm layer: 1e27-1e29 at the encoder of the shipped networks. Adam's second
    moment of such a gradient overflows to inf, which freezes those weights for the rest of the run (their update
    is m/sqrt(inf) = 0), or makes them NaN. With a grey level of noise the gradients are ordinary (docs/training.md).
    """
    flat = photos.detach().flatten(2).std(-1).amax(1) < FLAT_STD
    if not bool(flat.any()):
        return photos
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(photos.shape, generator=g).to(photos.device, photos.dtype) / 255
    return torch.where(flat[:, None, None, None], photos + noise, photos)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops before such weights are saved."""


class StyleTransferModule(pl.LightningModule):
    """Trains ``net`` (a :class:`TransformerNet`) so that ``loss(net(photo), photo)`` is small.

    Args are plain dicts (the Hydra groups ``model``, ``loss``, ``style``, ``optim``), saved as
    hyperparameters so every checkpoint records its recipe:

    * model: ``base_channels``, ``num_residual_blocks`` (and an informative ``name``)
    * loss: arguments of :func:`fastnst.training.loss.build_loss`
    * style: ``name``, ``image``/``url``/``sha256`` (see :mod:`fastnst.training.style`), ``image_size``
    * optim: ``name`` (``adam``, the default, or ``muon``: see :mod:`fastnst.training.optim`); ``lr``;
      ``betas`` (Adam's, default 0.9, 0.999); ``norm_lr_scale`` (the instance norms' rate as a
      multiple of ``lr``, default 1); ``warmup_steps`` (linear ramp from 0);
      ``decay``: ``constant`` or ``cosine`` (to ``min_lr_fraction`` of ``lr`` at the end of the budget)
    * curriculum: ``small_crop`` (side in px) and ``small_crop_until`` (fraction of the budget): train on
      random ``small_crop`` squares cut from the crops until then (same pixel scale, a fraction of the cost);
      ``fit`` sets ``small_crop`` to ``small_crop_from_random`` for a run from random weights

    "The budget" is ``trainer.max_steps`` or ``trainer.max_time``, whichever ends the run first, so
    schedules follow a time budget too.
    """

    def __init__(
        self,
        model: dict[str, Any],
        loss: dict[str, Any],
        style: dict[str, Any],
        optim: dict[str, Any],
        curriculum: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TransformerNet(model["base_channels"], model["num_residual_blocks"], bool(model.get("global_skip", False)))
        loss_args = {k: loss[k] for k in ("arch", "weights", "content_layers", "style_layers", "alpha", "beta", "tv_weight", "luminance_only") if k in loss}
        self.loss: PerceptualLoss = build_loss(**loss_args)
        style_path = resolve_style_image(style.get("image"), style.get("url"), style.get("sha256"))
        self.loss.set_style(load_style_image(style_path, style.get("image_size")))
        self.lr = float(optim.get("lr", 1e-3))
        self.warmup_steps = int(optim.get("warmup_steps") or 0)
        self.decay = str(optim.get("decay") or "constant")
        self.min_lr_fraction = float(optim.get("min_lr_fraction", 0.0) or 0.0)
        self.betas = tuple(float(b) for b in (optim.get("betas") or (0.9, 0.999)))
        self.norm_lr_scale = float(optim.get("norm_lr_scale") or 1.0)
        self.optimizer_name = str(optim.get("name") or "adam")
        curriculum = curriculum or {}
        self.small_crop = int(curriculum.get("small_crop") or 0)
        self.small_crop_until = float(curriculum.get("small_crop_until") or 0.0)
        self.skipped_images = 0
        self.init_from: dict[str, Any] | None = None  # the trained model the run started from (pipeline.init_weights)

    def budget_fraction(self) -> float:
        """How much of the run's budget (max_steps or max_time, whichever is nearer its end) is used, 0..1."""
        trainer = self.trainer
        fraction = trainer.global_step / trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else 0.0
        timer = time_budget(trainer)
        if timer is not None:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            if elapsed + remaining > 0:
                fraction = max(fraction, elapsed / (elapsed + remaining))
        return min(max(fraction, 0.0), 1.0)

    def lr_at(self, step: int, fraction: float) -> float:
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.decay == "cosine":
            scale *= self.min_lr_fraction + (1 - self.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * fraction))
        return self.lr * scale

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.warmup_steps or self.decay != "constant":
            lr = self.lr_at(self.global_step, self.budget_fraction())
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    def _curriculum_crop(self, photos: torch.Tensor) -> torch.Tensor:
        """A random ``small_crop`` square of each crop while the curriculum's first phase lasts."""
        side = self.small_crop
        if not side or side >= min(photos.shape[-2:]) or self.budget_fraction() >= self.small_crop_until:
            return photos
        # Offsets seeded by the step number: a resumed run cuts the same squares.
        g = torch.Generator().manual_seed(self.global_step)
        h, w = photos.shape[-2:]
        tops = torch.randint(0, h - side + 1, (len(photos),), generator=g).tolist()
        lefts = torch.randint(0, w - side + 1, (len(photos),), generator=g).tolist()
        return torch.stack([p[:, t : t + side, l : l + side] for p, t, l in zip(photos, tops, lefts)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        if not torch.isfinite(terms["total"]):
            values = ", ".join(f"{k}={terms[k].item():.4g}" for k in TERMS)
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step} ({values}); stopping before such weights are saved. "
                "Lower optim.lr, or use trainer.precision=32-true / bf16-mixed instead of 16-mixed"
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        photos, skipped = batch
        photos = dither_flat(self._curriculum_crop(photos), self.global_step)
        terms = self.loss(train_forward(self.net, photos), photos)
        self._check_finite(terms)
        self.skipped_images += int(skipped.sum())
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, on_step=True, prog_bar=False)
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False)
        if self.skipped_images:
            self.log("data/skipped", float(self.skipped_images), on_step=True)
        return terms["total"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        photos, _ = batch
        out = self.net(photos)
        terms = self.loss(out, photos)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=len(photos))
        if batch_idx == 0:
            self._log_samples(photos, out)

    def _log_samples(self, photos: torch.Tensor, out: torch.Tensor) -> None:
        logger = self.logger
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        # Top row the photos, bottom row their stylisations.
        grid = make_grid(torch.cat([photos, out.to(photos.dtype)]).float().clamp(0, 1), nrow=len(photos), padding=2)
        experiment.add_image("samples", grid, self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.net, self.optimizer_name, self.lr, self.betas, self.norm_lr_scale)

    # The frozen VGG and the style targets are rebuilt from the config; keeping them out of
    # checkpoints makes each .ckpt ~60 MB smaller.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("loss.")}
        checkpoint["skipped_images"] = self.skipped_images
        checkpoint["init_from"] = self.init_from
        checkpoint["small_crop"] = self.small_crop

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for k, v in self.loss.state_dict(prefix="loss.").items():
            state.setdefault(k, v)
        self.skipped_images = int(checkpoint.get("skipped_images", 0))
        self.init_from = checkpoint.get("init_from")
        self.small_crop = int(checkpoint.get("small_crop", self.small_crop))
