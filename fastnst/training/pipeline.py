"""Assemble and run one training run from a plain config (no Hydra in here; see ``fastnst.train``).

Validates the config before anything heavy is built, wires the data, the LightningModule,
TensorBoard, checkpoints (atomic writes) and the Trainer, fits, and exports the slim model.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from fastnst import __version__
from fastnst._io import atomic_write
from fastnst.hardware import native_bf16_cpu, reuse_freed_memory
from fastnst.model_file import ModelFileError, available_models, load_model, save_model
from fastnst.net import TransformerNet
from fastnst.training.data import PhotoDataModule
from fastnst.training.distributed import close_process_group
from fastnst.training.module import StyleTransferModule
from fastnst.training.optim import OPTIMIZERS
from fastnst.training.progress import StepProgressBar
from fastnst.training.quiet import quiet_lightning
from fastnst.training.vgg import layer_names

log = logging.getLogger("fastnst.train")

quiet_lightning()

VGG_ARCHS = ("vgg16", "vgg19")
DECAYS = ("constant", "cosine")
# `init_from=auto` starts from the model (of those `-m NAME` finds) with the run's network and another style whose
# outputs on a few training crops score lowest under the run's own loss: against the fixed order used before, 0.8-8%
# lower in the first 12 CPU minutes and 1-2.4% after 30 (docs/training.md, "The nearest start"). Without a score, the
# first of AUTO_INIT found wins (the fixed order used before; docs/training.md, "Starting from a shipped model").
AUTO_INIT = ("starry", "wave", "starry_johnson", "wave_johnson")
AUTO_PROBE_PHOTOS = 4
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what is allowed."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a kill mid-save never corrupts ``last.ckpt``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write(path, lambda f: f.write(buf.getbuffer()))


class FinalCheckpoint(Callback):
    """Make ``last.ckpt`` the state at the end of training even when max_steps is not a multiple of the interval."""

    def __init__(self, checkpoint: ModelCheckpoint) -> None:
        self.checkpoint = checkpoint

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or self.checkpoint.dirpath is None:
            return
        last = Path(self.checkpoint.dirpath) / f"{self.checkpoint.CHECKPOINT_NAME_LAST}{self.checkpoint.FILE_EXTENSION}"
        if getattr(self.checkpoint, "_last_global_step_saved", -1) != trainer.global_step or not last.exists():
            # collective under DDP: every rank calls it, rank 0 writes. The full state (optimizer, loops) is
            # the point of last.ckpt; saying so also keeps Lightning's 'weights_only was not set' line out of the log.
            trainer.save_checkpoint(last, weights_only=False)


class TimeSnapshots(Callback):
    """Every ``minutes`` of training wall-clock time, save the slim model as ``snapshots/NNNN.Ns.pt``.

    Saving is a copy of a few MB, so the clock barely notices; scoring the snapshots on held-out
    photos happens afterwards (``scripts/time_to_style.py``), never inside the timed run.
    """

    def __init__(self, minutes: float, directory: Path, metadata: Any) -> None:
        self.every = float(minutes) * 60.0
        self.directory = Path(directory)
        self.metadata = metadata  # (steps, seconds) -> metadata dict
        self.start = 0.0
        self.next_mark = self.every

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed < self.next_mark or not trainer.is_global_zero:
            return
        while self.next_mark <= elapsed:
            self.next_mark += self.every
        meta = self.metadata(trainer.global_step, elapsed)
        save_model(pl_module.net, self.directory / f"{elapsed:07.1f}s.pt", meta, half=False, overwrite=True)


def _positive(value: Any, key: str, kind: type = float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
    if not ok or (kind is int and int(value) != value):
        raise ConfigError(f"{key} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check the values a run depends on; raise :class:`ConfigError` naming the key and the allowed values."""
    loss, data, model, trainer = cfg["loss"], cfg["data"], cfg["model"], cfg["trainer"]
    if loss["arch"] not in VGG_ARCHS:
        raise ConfigError(f"loss.arch={loss['arch']!r} is not supported; allowed: {', '.join(VGG_ARCHS)}")
    names = [n for n in layer_names(loss["arch"]) if not n.startswith("pool")]
    content = [loss["content_layers"]] if isinstance(loss["content_layers"], str) else list(loss["content_layers"] or [])
    if not content:
        raise ConfigError("loss.content_layers is empty; name at least one VGG layer, e.g. [relu2_2]")
    if not loss["style_layers"]:
        raise ConfigError("loss.style_layers is empty; give at least one layer: weight, e.g. {relu3_3: 1.0}")
    for key, layers in (("loss.content_layers", content), ("loss.style_layers", list(loss["style_layers"]))):
        for layer in layers:
            if layer not in names:
                raise ConfigError(f"{key}: unknown {loss['arch']} layer {layer!r}; allowed: {', '.join(names)}")
    for key in ("alpha", "beta", "tv_weight"):
        value = loss[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0 or not math.isfinite(value):
            raise ConfigError(f"loss.{key} must be a number >= 0, got {value!r}")
    for layer, weight in loss["style_layers"].items():
        if not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"loss.style_layers.{layer} must be a weight >= 0, got {weight!r}")
    _positive(data["image_size"], "data.image_size", int)
    _positive(data["batch_size"], "data.batch_size", int)
    if data.get("short_side") is not None:
        _positive(data["short_side"], "data.short_side", int)
        if data["short_side"] < data["image_size"]:
            raise ConfigError(f"data.short_side ({data['short_side']}) must be at least data.image_size ({data['image_size']}), or null")
    _positive(model["base_channels"], "model.base_channels", int)
    if not isinstance(model["num_residual_blocks"], int) or model["num_residual_blocks"] < 0:
        raise ConfigError(f"model.num_residual_blocks must be an integer >= 0, got {model['num_residual_blocks']!r}")
    optim, curriculum = cfg["optim"], cfg.get("curriculum") or {}
    _positive(optim["lr"], "optim.lr")
    warmup = optim.get("warmup_steps") or 0
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"optim.warmup_steps must be an integer >= 0, got {warmup!r}")
    if (optim.get("name") or "adam") not in OPTIMIZERS:
        raise ConfigError(f"optim.name={optim.get('name')!r}; allowed: {', '.join(OPTIMIZERS)}")
    if (optim.get("decay") or "constant") not in DECAYS:
        raise ConfigError(f"optim.decay={optim.get('decay')!r}; allowed: {', '.join(DECAYS)}")
    betas = optim.get("betas")
    if betas is not None and (
        not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)
    ):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {betas!r}")
    if optim.get("norm_lr_scale") is not None:
        _positive(optim["norm_lr_scale"], "optim.norm_lr_scale")
    if not 0 <= float(optim.get("min_lr_fraction") or 0) <= 1:
        raise ConfigError(f"optim.min_lr_fraction must be in [0, 1], got {optim.get('min_lr_fraction')!r}")
    for key in ("small_crop", "small_crop_from_random"):
        if curriculum.get(key) is not None:
            _positive(curriculum[key], f"curriculum.{key}", int)
            if curriculum[key] < 16:
                raise ConfigError(f"curriculum.{key} must be >= 16 px, got {curriculum[key]}")
    until = curriculum.get("small_crop_until") or 0
    if not isinstance(until, (int, float)) or not 0 <= until <= 1:
        raise ConfigError(f"curriculum.small_crop_until must be a fraction in [0, 1], got {until!r}")
    if cfg.get("snapshot_minutes") is not None:
        _positive(cfg["snapshot_minutes"], "snapshot_minutes")
    if cfg["style"].get("image_size") is not None:
        _positive(cfg["style"]["image_size"], "style.image_size", int)
    if str(trainer.get("precision", "auto")) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer['precision']!r}; allowed: {', '.join(PRECISIONS)}")
    steps = trainer.get("max_steps", -1)
    if steps is not None and steps != -1:
        _positive(steps, "trainer.max_steps", int)
    _positive(cfg["checkpoint_every_n_steps"], "checkpoint_every_n_steps", int)


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str, flags: frozenset[str] | None = None) -> str:
    """``auto``: bf16-mixed on CUDA GPUs with bf16 (Ampere+), 16-mixed on older ones; on CPU bf16-mixed
    where the CPU has native bf16 (about 2x faster), else 32-true (emulated bf16 is slower than fp32)."""
    if str(precision) != "auto":
        return str(precision)
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native_bf16_cpu(flags) else "32-true"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last: no {last}; pass run_dir=<folder of the run to resume> (or ckpt_path=/path/to/file.ckpt)")
        return str(last)
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    return str(path)


def _steps_in_all(record: Mapping[str, Any]) -> int | None:
    """Steps of every phase behind a model's metadata or a start's record; one without ``total_steps`` had one phase."""
    return record.get("total_steps", record.get("steps"))


def _copy_weights(net: TransformerNet, source: TransformerNet, meta: dict[str, Any], name: str) -> dict[str, Any]:
    """Load ``source``'s weights into ``net``; returns what the slim model records about that start."""
    net.load_state_dict(source.state_dict())
    return {"model": name, "style": meta.get("style"), "steps": meta.get("steps"), "total_steps": _steps_in_all(meta)}


def init_weights(net: TransformerNet, spec: str) -> dict[str, Any]:
    """Copy the weights of model ``spec`` (a file or a shipped name) into ``net``; returns what the slim model
    records about that start. The architectures must match (same ``model`` preset)."""
    try:
        source, meta = load_model(spec)
    except ModelFileError as e:
        raise ConfigError(f"init_from={spec}: {e}") from None
    if source.config() != net.config():
        raise ConfigError(
            f"init_from={spec}: its network {source.config()} differs from model={net.config()}; "
            f"pick the model preset it was trained with (metadata: model={meta.get('model')!r})"
        )
    return _copy_weights(net, source, meta, str(spec))


def auto_init(net: TransformerNet, style: str, score: Callable[[TransformerNet], float] | None = None) -> dict[str, Any] | None:
    """``init_from=auto``: copy into ``net`` the model (of :func:`available_models`) with ``net``'s network and a
    style other than ``style`` that ``score`` rates lowest (ties: :data:`AUTO_INIT` order, then by name); without
    ``score``, the first in that order. None (random weights stay) when there is none, e.g. for another preset."""
    rank = {name: i for i, name in enumerate(AUTO_INIT)}
    candidates: list[tuple[str, TransformerNet, dict[str, Any]]] = []
    for name, path in sorted(available_models().items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])):
        try:
            source, meta = load_model(path)
        except ModelFileError:
            continue
        if meta.get("style", name) != style and source.config() == net.config():
            candidates.append((name, source, meta))
    if not candidates:
        return None
    if score is None or len(candidates) == 1:
        name, source, meta = candidates[0]
        return _copy_weights(net, source, meta, name)
    scores = {name: float(score(source)) for name, source, _ in candidates}
    name, source, meta = min(candidates, key=lambda c: scores[c[0]])  # min keeps the first of equal scores
    log.info("init_from=auto: this style's loss of each start: %s", ", ".join(f"{n} {v:.4g}" for n, v in sorted(scores.items(), key=lambda kv: kv[1])))
    return _copy_weights(net, source, meta, name) | {"probe_totals": {n: round(v, 4) for n, v in scores.items()}}


def probe_scorer(loss: torch.nn.Module, crops: torch.Tensor) -> Callable[[TransformerNet], float]:
    """A ``score`` for :func:`auto_init`: the mean total ``loss`` of a model's outputs on ``crops`` (fp32, no grad)."""

    @torch.no_grad()
    def score(model: TransformerNet) -> float:
        return float(loss(model.to(crops.device).float().eval()(crops), crops)["total"])

    return score


def squares_side(curriculum: Mapping[str, Any], from_random: bool) -> int | None:
    """The side of the curriculum's squares for a run: ``small_crop_from_random`` if set and the network starts
    from random weights (it learns the style from nothing, and more, cheaper steps pay), else ``small_crop``;
    None where ``small_crop_until`` is 0 (full crops from the first step: no squares are cut)."""
    if not curriculum.get("small_crop_until"):
        return None
    side = curriculum.get("small_crop_from_random") if from_random else None
    side = side if side is not None else curriculum.get("small_crop")
    return int(side) if side else None


def model_metadata(
    cfg: Mapping[str, Any],
    steps: int,
    seconds: float,
    precision: str,
    start: dict[str, Any] | None = None,
    *,
    small_crop: int | None = None,
) -> dict[str, Any]:
    """What the slim model records about how it was made (plain values only); ``start``: what
    :func:`init_weights` returned, if the run started from a trained model; ``small_crop``: the side of the
    squares the run cut (0: none), as its module holds it (a resumed run restores it from its checkpoint);
    None derives it from ``cfg`` and ``start``."""
    style, loss, data = cfg["style"], cfg["loss"], cfg["data"]
    curriculum = dict(cfg.get("curriculum") or {})
    if curriculum:
        side = squares_side(curriculum, start is None) if small_crop is None else small_crop
        curriculum["small_crop"] = side or None  # the squares this run cut
    steps_before = (_steps_in_all(start) or 0) if start else 0  # a start recorded before total_steps existed: its steps
    return {
        "style": style["name"],
        "style_image": Path(style["image"]).name if style.get("image") else Path(str(style.get("url") or "")).name,
        "style_image_size": style.get("image_size"),
        "alpha": float(loss["alpha"]),
        "beta": float(loss["beta"]),
        "tv_weight": float(loss["tv_weight"]),
        "luminance_only": bool(loss.get("luminance_only", False)),
        "vgg": loss["arch"],
        "content_layers": list(loss["content_layers"]),
        "style_layers": {k: float(v) for k, v in loss["style_layers"].items()},
        "model": cfg["model"].get("name"),
        "image_size": int(data["image_size"]),
        "short_side": data.get("short_side"),
        "batch_size": int(data["batch_size"]),
        "lr": float(cfg["optim"]["lr"]),
        "optim": dict(cfg["optim"]),
        "curriculum": curriculum,
        "precision": precision,
        "steps": int(steps),
        "total_steps": int(steps) + int(steps_before),
        "train_seconds": round(seconds, 1),
        "seed": cfg.get("seed"),
        "init_from": start,
        "fastnst_version": __version__,
    }


def fit(cfg: Mapping[str, Any], run_dir: Path) -> Path | None:
    """Train as ``cfg`` says, writing everything under ``run_dir``; returns the slim model path (rank 0) or None."""
    validate(cfg)
    run_dir = Path(run_dir)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    tcfg = dict(cfg["trainer"])
    accelerator = str(tcfg.get("accelerator", "auto"))
    precision = resolve_precision(tcfg.pop("precision", "auto"), accelerator)
    if not uses_cuda(accelerator):
        reuse_freed_memory()  # each step's large activations without page faults (fastnst.hardware)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)

    data = PhotoDataModule(seed=cfg["seed"], **cfg["data"])
    n_photos = data.check()  # fails here, before VGG or the network are built, if there is nothing to train on
    log.info("training photos: %d in %s", n_photos, data.root)

    module = StyleTransferModule(dict(cfg["model"]), dict(cfg["loss"]), dict(cfg["style"]), dict(cfg["optim"]), dict(cfg.get("curriculum") or {}))
    init_from = cfg.get("init_from")
    if init_from and ckpt_path is None:  # a resumed run has its own weights (and its start, restored)
        if init_from == "auto":
            start = auto_init(module.net, cfg["style"]["name"], probe_scorer(module.loss, data.probe_crops(AUTO_PROBE_PHOTOS)))
        else:
            start = init_weights(module.net, str(init_from))
        module.init_from = start
        if start:
            log.info("starting from the weights of %s (style %s, %s steps in all)", start["model"], start["style"], start["total_steps"])
        else:
            log.info("init_from=auto: no shipped model (%s) with this network; starting from random weights", ", ".join(AUTO_INIT))
    curriculum = cfg.get("curriculum") or {}
    if ckpt_path is None:  # a resumed run cuts the squares it cut before (restored from its checkpoint)
        module.small_crop = squares_side(curriculum, module.init_from is None) or 0
        if module.init_from is None and curriculum.get("small_crop_from_random") is not None and module.small_crop:
            log.info("random initial weights: %d px squares first (curriculum.small_crop_from_random; null: curriculum.small_crop)", module.small_crop)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=int(cfg["checkpoint_every_n_steps"]),
        save_last=True,
        save_top_k=int(cfg.get("keep_checkpoints", 3)),
        monitor="step",
        mode="max",
    )
    callbacks = [checkpoints, FinalCheckpoint(checkpoints), LearningRateMonitor(logging_interval="step"), StepProgressBar()]
    if cfg.get("snapshot_minutes"):

        def snapshot_meta(steps: int, seconds: float) -> dict[str, Any]:
            return model_metadata(cfg, steps, seconds, precision, module.init_from, small_crop=module.small_crop)

        callbacks.append(TimeSnapshots(cfg["snapshot_minutes"], run_dir / "snapshots", snapshot_meta))
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        logger=TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        precision=precision,
        use_distributed_sampler=False,  # the sampler shards by rank itself, and can resume mid-epoch
        check_val_every_n_epoch=None,  # val_check_interval counts steps across epochs
        num_sanity_val_steps=0,
        **tcfg,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - start
    close_process_group()
    if not trainer.is_global_zero:
        return None
    if trainer.interrupted:
        log.warning("training was interrupted at step %d; writing the model as it is", trainer.global_step)
    meta = model_metadata(cfg, trainer.global_step, seconds, precision, module.init_from, small_crop=module.small_crop)
    meta["skipped_images"] = module.skipped_images
    out = save_model(module.net, run_dir / f"{cfg['style']['name']}.pt", meta, half=bool(cfg.get("half_model", True)), overwrite=True)
    log.info("final losses: %s", {k: float(f"{float(v):.5g}") for k, v in trainer.callback_metrics.items() if k.startswith("train/")})
    if cfg.get("export"):
        dest = Path(cfg["export"]).expanduser()
        if dest.exists() and not cfg.get("overwrite"):
            log.warning("export=%s exists; kept it (pass overwrite=true to replace it). The model is at %s", dest, out)
        else:
            save_model(module.net, dest, meta, half=bool(cfg.get("half_model", True)), overwrite=True)
            log.info("exported the model to %s", dest)
    return out
