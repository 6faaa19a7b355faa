"""The inference rewrites of the decoder compute exactly what the layers they replace compute."""

import pytest
import torch
from torch import nn

from fastnst.fast_layers import PhaseConv2d, SubpixelUpsampleConv, fast_copy
from fastnst.net import TransformerNet


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (13, 4)])
def test_subpixel_upsample_conv_equals_upsample_then_conv(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect")
    x = torch.randn(2, 6, *size)
    ref = conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(SubpixelUpsampleConv(conv)(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [3, 9])
@pytest.mark.parametrize("size", [(16, 16), (17, 10), (9, 23)])
def test_phase_conv_equals_conv(kernel: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 3, kernel, padding=kernel // 2, padding_mode="reflect")
    x = torch.randn(2, 8, *size)
    torch.testing.assert_close(PhaseConv2d(conv)(x), conv(x), atol=1e-5, rtol=1e-5)


def test_fast_copy_equals_the_network_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 2).eval()
    fast = fast_copy(net).eval()
    assert isinstance(fast.decoder[-1], PhaseConv2d) and not isinstance(net.decoder[-1], PhaseConv2d)
    for shape in ((1, 3, 32, 48), (2, 3, 21, 9)):
        x = torch.rand(shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-4)
