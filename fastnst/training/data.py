"""Training photos: a folder of images, cropped squares, a resumable order, bad files skipped.

* Every image below ``root`` (recursive; jpg, jpeg, png, webp, bmp, tif) is a training photo.
* Each sample is resized (short side = ``short_side``, default ``image_size``; antialiased) and cropped to an
  ``image_size`` square at a
  position drawn from ``(seed, epoch, position in epoch)``, so a run is reproducible and a resumed
  run sees exactly the samples an uninterrupted one would.
* An unreadable file is skipped (the next file is used instead), warned about once, and counted:
  every batch carries the number of files skipped to make it, which the LightningModule logs as
  ``data/skipped``. A bad file never ends a run.
* The order is a seeded permutation per epoch, sharded by rank for DDP; the loader remembers how
  many batches it handed out, so ``ckpt_path=last`` continues mid-epoch where the run stopped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from fastnst.images import IMAGE_EXTENSIONS, ImageError, list_images, read_image

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The training data cannot be used at all (missing folder, no images)."""


def resize_crop(rgb: torch.Tensor, size: int, top_frac: float = 0.5, left_frac: float = 0.5, short_side: int | None = None) -> torch.Tensor:
    """Resize so the short side is ``short_side`` (default ``size``; antialiased), then crop a ``size`` square
    at the given fractions."""
    h, w = rgb.shape[-2:]
    short = max(size, short_side or size)
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    out = F.interpolate(rgb.unsqueeze(0), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = int(top_frac * (nh - size)), int(left_frac * (nw - size))
    return out[:, top : top + size, left : left + size].clamp_(0, 1)


class PhotoDataset(Dataset):
    """Square crops of the photos in ``files``. Items are ``(index, crop_seed)`` pairs (see :class:`ResumableSampler`)
    or plain indices (centre crop); each returns ``(image, number of unreadable files skipped)``."""

    def __init__(self, files: list[Path], image_size: int, short_side: int | None = None) -> None:
        self.files = files
        self.image_size, self.short_side = image_size, short_side
        self._warned: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        skipped = 0
        for attempt in range(len(self.files)):
            path = self.files[(index + attempt) % len(self.files)]
            try:
                rgb = read_image(path).rgb
            except ImageError as e:
                skipped += 1
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("skipping unreadable training image: %s", e)
                continue
            if seed is None:
                return resize_crop(rgb, self.image_size, short_side=self.short_side), skipped
            g = torch.Generator().manual_seed(seed)
            top, left = torch.rand(2, generator=g).tolist()
            return resize_crop(rgb, self.image_size, top, left, self.short_side), skipped
        raise DataError(f"none of the {len(self.files)} training images could be read")


class ResumableSampler(Sampler):
    """Seeded per-epoch permutation, sharded by rank, yielding ``(index, crop_seed)``.

    ``start`` skips the first samples of this rank's share (set when resuming mid-epoch).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def __len__(self) -> int:
        # The full share, also when resuming: Lightning counts the batches already done in this epoch itself.
        return math.ceil(self.size / self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        per_rank = math.ceil(self.size / self.world_size)
        order += order[: per_rank * self.world_size - self.size]  # equal shares: DDP ranks must step together
        mine = order[self.rank :: self.world_size]
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_003
        for pos in range(self.start, len(mine)):
            yield mine[pos], (base + pos * self.world_size + self.rank) % (2**63)
        self.start = 0


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning can checkpoint: its state is (epoch, samples consumed this epoch).

    Lightning saves the state of loaders that have ``state_dict``/``load_state_dict``; on resume the
    sampler skips what was already trained on, so the run continues with the next unseen batch.
    """

    def __init__(self, dataset: PhotoDataset, sampler: ResumableSampler, **kwargs: Any) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._yielded = sampler.start
        for batch in super().__iter__():
            self._yielded += len(batch[0])
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "samples": self._yielded}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = state["epoch"]  # type: ignore[attr-defined]
        self.sampler.start = state["samples"]  # type: ignore[attr-defined]


class PhotoDataModule(pl.LightningDataModule):
    """Training crops from ``root`` and a few fixed validation photos for sample images.

    Args:
        root: folder of training photos (searched recursively).
        image_size: side of the square training crops.
        short_side: photos are resized to this short side before cropping (default ``image_size``: the
            crop spans the short side). Larger shows the network its photos at a larger pixel scale.
        batch_size: crops per step (per process under DDP).
        num_workers: DataLoader worker processes.
        val_root: folder of validation photos; default: the first ``num_val_images`` photos of ``root``.
        num_val_images: how many validation photos (centre crops) to stylise for sample grids.
        seed: seeds the sample order and crop positions.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 4,
        num_workers: int = 2,
        val_root: str | None = None,
        num_val_images: int = 4,
        seed: int = 0,
        short_side: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("image_size", image_size), ("batch_size", batch_size), ("short_side", short_side or image_size)):
            if not isinstance(value, int) or value < 1:
                raise DataError(f"data.{key} must be a positive integer, got {value!r}")
        if short_side is not None and short_side < image_size:
            raise DataError(f"data.short_side ({short_side}) must be at least data.image_size ({image_size}), or null")
        if num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {num_workers}")
        self.root = Path(root).expanduser()
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.short_side = short_side
        self.val_root = Path(val_root).expanduser() if val_root else None
        self.num_val_images, self.seed = num_val_images, seed
        self._files: list[Path] | None = None

    @property
    def files(self) -> list[Path]:
        if self._files is None:
            self._files = self.scan(self.root, "data.root")
        return self._files

    @staticmethod
    def scan(root: Path, key: str) -> list[Path]:
        if not root.is_dir():
            raise DataError(f"{key}={root}: no such folder (point {key} at a folder of training photos, e.g. COCO train2014)")
        files = list_images(root)
        if not files:
            raise DataError(f"{key}={root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
        return files

    def check(self) -> int:
        """Fail early (before any model is built) if there is nothing to train on; returns the photo count."""
        return len(self.files)

    def probe_crops(self, count: int) -> torch.Tensor:
        """Centre crops of ``count`` training photos spread evenly over the sorted list, (count, 3, S, S): a fixed
        sample to rate starting models on (``init_from=auto``)."""
        files = self.files
        picks = [files[i * len(files) // count] for i in range(min(count, len(files)))]
        dataset = PhotoDataset(picks, self.image_size, self.short_side)
        return torch.stack([dataset[i][0] for i in range(len(picks))])

    def val_files(self) -> list[Path]:
        files = self.scan(self.val_root, "data.val_root") if self.val_root else self.files
        return files[: self.num_val_images]

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }

    def train_dataloader(self) -> ResumableLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = ResumableSampler(len(self.files), self.seed, rank, world)
        # drop_last keeps every batch full (and equal across ranks); a short epoch still yields at least one batch.
        drop_last = math.ceil(len(self.files) / world) >= self.batch_size
        return ResumableLoader(PhotoDataset(self.files, self.image_size, self.short_side), sampler, drop_last=drop_last, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        kwargs = self._loader_kwargs() | {"num_workers": 0, "persistent_workers": False}
        return DataLoader(PhotoDataset(self.val_files(), self.image_size), shuffle=False, **kwargs)

