"""The decoder rewrites compute exactly what the layers they replace compute (values, and gradients when training)."""

import pytest
import torch
from torch import nn

from fastnst.fast_layers import PadInDtypeConv2d, PhaseConv2d, SubpixelUpsampleConv, fast_copy, fast_decoder, training_view
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


def test_training_view_shares_weights_and_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 2).train()
    params_before = {name: p for name, p in net.named_parameters()}
    x = torch.rand(2, 3, 24, 36)
    y_ref = net(x)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    ref_grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)

    view = training_view(net)
    assert isinstance(view.decoder[-1], PhaseConv2d) and not isinstance(net.decoder[-1], PhaseConv2d)
    assert {id(p) for p in view.parameters()} == {id(p) for p in net.parameters()}  # no copies
    conv, h = net.encoder[1][0], torch.rand(1, 8, 6, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pads in bf16 instead of fp32: the same numbers
        assert isinstance(view.encoder[1][0], PadInDtypeConv2d) and torch.equal(view.encoder[1][0](h), conv(h))
    y = view(x)
    y.backward(g)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    scale = max(t.abs().max().item() for t in ref_grads.values())
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        # Biases before an instance norm have zero gradient up to rounding, so compare on one scale.
        assert (p.grad - ref_grads[name]).abs().max().item() <= 1e-5 * scale, name
    assert dict(net.named_parameters()) == params_before and set(net.state_dict()) == set(TransformerNet(8, 2).state_dict())
    # The frozen (inference) form holds re-arranged copies of the conv weights, outside any graph.
    rewrites = [m for m in fast_decoder(net.decoder).modules() if isinstance(m, (SubpixelUpsampleConv, PhaseConv2d))]
    assert len(rewrites) == 3 and not any(p.requires_grad for m in rewrites for p in m.parameters())
