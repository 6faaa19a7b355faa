"""Colour preservation and style strength (issue 6)."""

from pathlib import Path

import pytest
import torch

from conftest import make_photo
from fastnst.apply import main as apply_main
from fastnst.color import blend, luminance, preserve_color, rgb_to_ycbcr, ycbcr_to_rgb
from fastnst.images import read_image
from fastnst.model_file import save_model
from fastnst.net import TransformerNet
from fastnst.stylize import Stylizer


def test_ycbcr_round_trip() -> None:
    x = torch.rand(2, 3, 8, 9)
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-6, rtol=0)


def test_preserve_color_keeps_chroma_exactly_and_stays_in_gamut() -> None:
    torch.manual_seed(0)
    photo, stylised = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    out = preserve_color(stylised, photo)
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(rgb_to_ycbcr(out)[:, 1:], rgb_to_ycbcr(photo)[:, 1:], atol=1e-5, rtol=0)
    # Where the chroma allows it, the luminance is the stylised one.
    y_out, y_sty = rgb_to_ycbcr(out)[:, 0], rgb_to_ycbcr(stylised)[:, 0]
    assert ((y_out - y_sty).abs() < 1e-5).float().mean() > 0.5


def test_strength_is_monotone_from_photo_to_style() -> None:
    torch.manual_seed(0)
    photo, stylised = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    distances = [(blend(stylised, photo, s) - photo).abs().mean().item() for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:]))
    assert torch.equal(blend(stylised, photo, 1.0), stylised)
    with pytest.raises(ValueError, match="strength must be between 0 and 1"):
        blend(stylised, photo, 1.5)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("m") / "tiny.pt")


def test_cli_preserve_color_output_chroma_equals_input(model_file: Path, tmp_path: Path) -> None:
    src = make_photo(tmp_path / "in.png", (40, 30))
    assert apply_main(["-q", "--preserve-color", "-m", str(model_file), "-o", str(tmp_path / "out.png"), str(src)]) == 0
    assert apply_main(["-q", "-m", str(model_file), "-o", str(tmp_path / "plain.png"), str(src)]) == 0
    c_in = rgb_to_ycbcr(read_image(src).rgb)[1:]
    c_out = rgb_to_ycbcr(read_image(tmp_path / "out.png").rgb)[1:]
    c_plain = rgb_to_ycbcr(read_image(tmp_path / "plain.png").rgb)[1:]
    assert (c_out - c_in).abs().max() <= 2.5 / 255  # equal within 8-bit rounding
    assert (c_plain - c_in).abs().max() > 10 / 255  # the network alone does change colours


def test_cli_strength_zero_is_the_photo_and_range_checked(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_photo(tmp_path / "in.png", (40, 30))
    assert apply_main(["-q", "--strength", "0", "-m", str(model_file), "-o", str(tmp_path / "s0.png"), str(src)]) == 0
    a, b = read_image(src).rgb, read_image(tmp_path / "s0.png").rgb
    assert (a - b).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(SystemExit) as exit_info:
        apply_main(["--strength", "1.5", "-m", str(model_file), str(src)])
    assert exit_info.value.code == 2 and "--strength must be between 0 and 1" in capsys.readouterr().err


def test_strength_monotone_through_the_model_and_tiles(model_file: Path) -> None:
    photo = torch.rand(1, 3, 48, 40)
    dist = []
    for s in (0.0, 0.3, 0.6, 1.0):
        out = Stylizer(model_file, "cpu", "fp32", tile=True, strength=s)(photo)
        dist.append((out - photo).abs().mean().item())
    assert dist[0] < 1e-6 and all(a < b for a, b in zip(dist, dist[1:]))
    u8 = Stylizer(model_file, "cpu", "fp32", tile=True, preserve_color=True).stylize_to_uint8((photo[0] * 255).round().to(torch.uint8))
    assert (rgb_to_ycbcr(u8.float() / 255)[1:] - rgb_to_ycbcr(photo[0])[1:]).abs().max() <= 3 / 255


def test_luminance_only_loss_ignores_colour() -> None:
    from fastnst.training.loss import build_loss

    torch.manual_seed(0)
    loss = build_loss("vgg16", "random", ["relu2_2"], {"relu1_2": 1.0}, luminance_only=True)
    style = torch.rand(3, 24, 24)
    loss.set_style(style)
    target = loss.target_gram("relu1_2").clone()
    loss.set_style(luminance(style))  # a grey version of the same painting: same targets
    torch.testing.assert_close(loss.target_gram("relu1_2"), target)
    photo = torch.rand(1, 3, 16, 16)
    out = torch.rand(1, 3, 16, 16)
    recoloured = ycbcr_to_rgb(torch.cat([rgb_to_ycbcr(out)[:, :1], torch.zeros(1, 2, 16, 16)], 1))  # same luma, no chroma
    a, b = loss(out, photo), loss(recoloured, photo)
    torch.testing.assert_close(a["content"], b["content"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a["style"], b["style"], rtol=1e-4, atol=1e-9)
