"""Banded inference with whole-image instance-norm statistics equals the plain forward pass."""

import copy
import importlib

import pytest
import torch

from fastnst.net import TransformerNet
from fastnst.stylize import Stylizer
from fastnst.tiled import TiledRunner, _Stats


def _net(global_skip: bool = False) -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet(8, 2, global_skip=global_skip).eval()
    for m in net.modules():  # norms that matter, as after training
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    if global_skip:  # a trained change, not the zero one of a new network
        torch.nn.init.normal_(net.decoder[-1].weight, std=0.02)
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_band_statistics_match_float64(dtype: torch.dtype, layout: torch.memory_format) -> None:
    # The whole-image statistics gathered band by band: a large mean over a small spread (cancellation in
    # E[x^2] - mean^2), a constant channel, and bands of different heights, in both layouts the runner uses.
    torch.manual_seed(0)
    x = (torch.randn(1, 6, 70, 33) * 0.5 + 3).to(dtype)
    x[:, 2] = 1.25
    stats = _Stats(6, x.device)
    for start, stop in ((0, 16), (16, 48), (48, 70), (70, 70)):
        stats.add(x[:, :, start:stop].contiguous(memory_format=layout))
    xd = x.double()
    mean = stats.sum / stats.count
    var = stats.sq / stats.count - mean * mean
    assert stats.count == 70 * 33
    torch.testing.assert_close(mean, xd.mean((0, 2, 3)), rtol=0, atol=1e-5)
    torch.testing.assert_close(var, xd.var((0, 2, 3), correction=0), rtol=2e-3, atol=1e-6)
    assert abs(float(var[2])) < 1e-6


@pytest.mark.parametrize("size", [(200, 150), (37, 61), (5, 3), (130, 131)])
@pytest.mark.parametrize("band_rows", [16, 48])
@pytest.mark.parametrize("global_skip", [False, True])
def test_tiled_equals_untiled_fp32(size: tuple[int, int], band_rows: int, global_skip: bool) -> None:
    net = _net(global_skip)
    x = torch.rand(3, *size)
    with torch.inference_mode():
        ref = net(x[None])[0]
    out = TiledRunner(net, band_rows=band_rows)(x)
    assert out.shape == x.shape
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("global_skip", [False, True])
def test_tiled_channels_last_equals_tiled_nchw(dtype: torch.dtype, global_skip: bool) -> None:
    # The layout CPUs with AMX run (fastnst.hardware): the same picture, uint8 output included.
    net = _net(global_skip).to(dtype)
    cl_net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.rand(3, 70, 90)
    ref = TiledRunner(net, band_rows=16)(x)
    runner = TiledRunner(cl_net, band_rows=16, channels_last=True)
    out = runner(x)
    tol = 1e-5 if dtype == torch.float32 else 0.02
    assert out.shape == x.shape and (out - ref).abs().max() < tol
    with torch.inference_mode():
        assert (runner(x) - net.float()(x[None])[0]).abs().max() < (1e-5 if dtype == torch.float32 else 0.05)
    u8 = runner(x, out=torch.empty(3, 70, 90, dtype=torch.uint8))
    assert (u8.float() - ref * 255).abs().max() <= (1.0 if dtype == torch.float32 else 6.0)


def test_naive_tiles_would_show_seams() -> None:
    """Why whole-image statistics matter: per-tile instance norm changes the picture visibly."""
    net = _net()
    x = torch.rand(3, 96, 96)
    x[:, 48:] *= 0.3  # a darker lower half: per-tile statistics differ
    with torch.inference_mode():
        ref = net(x[None])[0]
        naive = torch.cat([net(x[None, :, :48])[0], net(x[None, :, 48:])[0]], dim=1)
    tiled = TiledRunner(net, band_rows=16)(x)
    assert (naive - ref).abs().max() > 0.05
    assert (tiled - ref).abs().max() < 1e-5


def test_bf16_storage_and_uint8_output() -> None:
    net = _net()
    x = torch.rand(3, 120, 100)
    with torch.inference_mode():
        ref = net(x[None])[0]
    out = TiledRunner(net, band_rows=32, storage_dtype=torch.bfloat16)(x)
    psnr = 10 * torch.log10(1 / torch.mean((out - ref) ** 2))
    assert psnr > 40
    u8 = TiledRunner(net, band_rows=32)(x, out=torch.empty(3, 120, 100, dtype=torch.uint8))
    assert u8.dtype == torch.uint8 and (u8.float() - ref * 255).abs().max() <= 0.51


def test_stylizer_switches_to_tiles_above_the_threshold() -> None:
    net = _net()
    forced = Stylizer(net, "cpu", "fp32", tile=True)
    plain = Stylizer(net, "cpu", "fp32", tile=False)
    auto = Stylizer(net, "cpu", "fp32")
    assert forced.uses_tiles(10, 10) and not plain.uses_tiles(5000, 5000)
    assert not auto.uses_tiles(2048, 2048) and auto.uses_tiles(2049, 2048)
    x = torch.rand(2, 3, 40, 44)
    torch.testing.assert_close(forced(x), plain(x), atol=1e-5, rtol=0)
    assert forced.stylize_to_uint8(x[0]).dtype == torch.uint8


def test_global_skip_with_uint8_input_and_output() -> None:
    net = _net(global_skip=True)
    x = (torch.rand(3, 70, 90) * 255).round().to(torch.uint8)
    with torch.inference_mode():
        ref = net(x[None].float() / 255)[0]
    out = TiledRunner(net, band_rows=16)(x, out=torch.empty(3, 70, 90, dtype=torch.uint8))
    assert (out.float() - ref * 255).abs().max() <= 1.0


def test_fp32_stylizer_stores_big_images_in_bf16() -> None:
    """Above FP32_STORAGE_BYTES the fp32 path keeps its stored activations in bf16: close, not exact."""
    stylize_module = importlib.import_module("fastnst.stylize")  # the module (fastnst.stylize is also a function)

    net = _net()
    x = torch.rand(1, 3, 64, 72)
    forced = Stylizer(net, "cpu", "fp32", tile=True)
    assert forced.tiled.compact_storage_bytes == stylize_module.FP32_STORAGE_BYTES
    with torch.inference_mode():
        ref = net(x)
    stored_fp32 = 4 * (4 * net.base_channels) * (64 // 4) * (72 // 4)
    forced.tiled.compact_storage_bytes = stored_fp32  # not above it: fp32, exact
    assert (forced(x) - ref).abs().max() < 1e-5 and forced.tiled.storage_dtype == torch.float32
    forced.tiled.compact_storage_bytes = stored_fp32 - 1  # above it: bf16 storage
    out = forced(x)
    assert forced.tiled.storage_dtype == torch.bfloat16 and 0 < (out - ref).abs().max()
    assert 10 * torch.log10(1 / torch.mean((out - ref) ** 2)) > 40
    # Already 2-byte storage is never changed, whatever the size.
    fp16 = TiledRunner(copy.deepcopy(net).half(), band_rows=16, compact_storage_bytes=0)
    assert fp16._storage_dtype_for(64, 72) == torch.float16
