from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo
from fastnst.images import ImageError, list_images, probe_image, read_image, write_image


def test_modes_become_rgb_and_alpha_is_kept(tmp_path: Path) -> None:
    base = make_photo(tmp_path / "base.png", (20, 10))
    img = Image.open(base)
    cases = {
        "L": img.convert("L"),
        "LA": img.convert("LA"),
        "RGBA": img.convert("RGBA"),
        "P": img.convert("P"),
        "CMYK": img.convert("CMYK"),
        "1": img.convert("1"),
    }
    for mode, im in cases.items():
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path)
        photo = read_image(path)
        assert photo.rgb.shape == (3, 10, 20), mode
        assert photo.rgb.dtype == torch.float32 and 0 <= photo.rgb.min() and photo.rgb.max() <= 1
        assert (photo.alpha is not None) == (mode in ("LA", "RGBA")), mode


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.linspace(0, 65535, 12 * 8).reshape(8, 12).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    photo = read_image(path)
    assert photo.rgb.shape == (3, 8, 12)
    assert photo.rgb.max().item() == pytest.approx(1.0) and photo.rgb.min().item() == 0.0
    assert 0.4 < photo.rgb.mean().item() < 0.6


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (30, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 5, 10))  # blue strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes(), quality=100)
    assert probe_image(path) == (10, 30)
    photo = read_image(path)
    assert photo.rgb.shape == (3, 30, 10)
    assert photo.rgb[2, 1, 5] > 0.8  # the blue strip is now at the top


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "dir.png").mkdir()
    expected = {"empty.jpg": "empty file", "text.jpg": "not a readable image", "truncated.jpg": "cannot decode", "dir.png": "is a directory", "none.jpg": "no such file"}
    for name, reason in expected.items():
        with pytest.raises(ImageError) as info:
            read_image(tmp_path / name)
        assert name in str(info.value) and reason in str(info.value) and "\n" not in str(info.value)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 Mpx, a few tens of KB on disk
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match=r"20000x20000 is 400 megapixels, over the limit of 200 megapixels .*--max-pixels"):
        read_image(path)
    with pytest.raises(ImageError, match="over the limit"):
        probe_image(path)
    assert probe_image(path, max_pixels=None) == (20000, 20000)


def test_write_formats_alpha_and_no_overwrite(tmp_path: Path) -> None:
    rgb, alpha = torch.rand(3, 6, 9), torch.rand(1, 6, 9)
    png = write_image(rgb, tmp_path / "a.png", alpha)
    assert Image.open(png).mode == "RGBA" and Image.open(png).size == (9, 6)
    jpg = write_image(rgb, tmp_path / "a.jpg", alpha)
    assert Image.open(jpg).mode == "RGB"
    back = read_image(png)
    assert (back.rgb - rgb).abs().max() <= 1 / 255 + 1e-6 and back.alpha is not None
    before = png.read_bytes()
    with pytest.raises(ImageError, match="exists; not overwriting it"):
        write_image(torch.zeros(3, 6, 9), png)
    assert png.read_bytes() == before
    write_image(torch.zeros(3, 6, 9), png, overwrite=True)
    assert png.read_bytes() != before
    with pytest.raises(ImageError, match="cannot write .gif"):
        write_image(rgb, tmp_path / "a.gif")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_list_images_recursive_and_filtered(photo_dir: Path, tmp_path: Path) -> None:
    files = list_images(photo_dir)
    assert len(files) == 6 and any(f.parent.name == "sub" for f in files)
    (tmp_path / "notes.txt").write_text("x")
    assert list_images(tmp_path) == []
    # Symlinked folders are followed (datasets are often linked in), cycles are not looped over.
    (tmp_path / "linked").symlink_to(photo_dir, target_is_directory=True)
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert len(list_images(tmp_path)) == 6
