from pathlib import Path

import pytest
import torch

from fastnst.training.data import DataError, PhotoDataModule, PhotoDataset, ResumableSampler, resize_crop


def test_resize_crop_square() -> None:
    out = resize_crop(torch.rand(3, 40, 90), 32)
    assert out.shape == (3, 32, 32)
    assert resize_crop(torch.rand(3, 10, 12), 32).shape == (3, 32, 32)  # small photos are upscaled
    # short_side: resize larger first, so the crop shows part of the photo at a larger scale.
    bars = torch.zeros(3, 40, 90)
    bars[:, :, ::2] = 1.0  # 1-pixel stripes: 0.5 mean at any scale, blurred to grey by a small resize
    full, zoomed = resize_crop(bars, 20), resize_crop(bars, 20, short_side=80)
    assert zoomed.shape == full.shape == (3, 20, 20)
    assert zoomed.std() > 2 * full.std()  # at 2x the scale the stripes survive the resize


def test_sampler_is_seeded_sharded_and_resumable() -> None:
    full = list(ResumableSampler(10, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full == list(ResumableSampler(10, seed=3)) and full != list(ResumableSampler(10, seed=4))
    ranks = [list(ResumableSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks)  # equal shares, padded by repeating
    assert {i for r in ranks for i, _ in r} == set(range(10))
    resumed = ResumableSampler(10, seed=3)
    resumed.start = 6
    assert list(resumed) == full[6:]
    assert list(resumed) == full  # the skip applies to one pass only
    other_epoch = ResumableSampler(10, seed=3)
    other_epoch.set_epoch(1)
    assert list(other_epoch) != full


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, photo_dir: Path) -> None:
    files = sorted(photo_dir.rglob("*.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    ds = PhotoDataset([bad, *files], image_size=16)
    img, skipped = ds[(0, 123)]
    assert img.shape == (3, 16, 16) and skipped == 1
    img2, skipped2 = ds[1]
    assert skipped2 == 0
    with pytest.raises(DataError, match="none of the 1 training images could be read"):
        PhotoDataset([bad], 16)[0]


def test_datamodule_fails_early_on_empty_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        PhotoDataModule(str(tmp_path / "missing")).check()
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        PhotoDataModule(str(tmp_path)).check()
    with pytest.raises(DataError, match="data.image_size must be a positive integer"):
        PhotoDataModule(str(tmp_path), image_size=0)
    with pytest.raises(DataError, match=r"data.short_side \(128\) must be at least data.image_size \(256\)"):
        PhotoDataModule(str(tmp_path), image_size=256, short_side=128)


def test_train_loader_batches(photo_dir: Path) -> None:
    dm = PhotoDataModule(str(photo_dir), image_size=16, batch_size=4, num_workers=0, num_val_images=2)
    assert dm.check() == 6
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape == (4, 3, 16, 16)  # drop_last: full batches only
    assert loader.state_dict() == {"epoch": 0, "samples": 4}
    val = next(iter(dm.val_dataloader()))[0]
    assert val.shape == (2, 3, 16, 16)


def test_probe_crops_are_fixed_centre_crops_spread_over_the_photos(photo_dir: Path) -> None:
    dm = PhotoDataModule(str(photo_dir), image_size=16, num_workers=0)
    crops = dm.probe_crops(3)
    assert crops.shape == (3, 3, 16, 16) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    assert torch.equal(crops, dm.probe_crops(3))  # no randomness: every run rates its starts on the same pixels
    # Spread evenly (photos 0, 2 and 4 of 6), each the centre crop of its photo.
    picks = [dm.files[i] for i in (0, 2, 4)]
    assert torch.equal(crops[1], PhotoDataset(picks, 16)[1][0])
    assert dm.probe_crops(10).shape == (6, 3, 16, 16)  # never more than there are photos
