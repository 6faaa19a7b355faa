"""The decoder rewrites compute exactly what the layers they replace compute (values, and gradients when training)."""

import copy

import pytest
import torch
from torch import nn

from fastnst.fast_layers import (
    PadInDtypeConv2d,
    PhaseConv2d,
    SingleImageInstanceNorm,
    SubpixelUpsampleConv,
    fast_copy,
    fast_decoder,
    is_channels_last,
    training_view,
)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_fast_copy_equals_the_network(dtype: torch.dtype) -> None:
    # The layout CPUs with AMX run (fastnst.hardware): same values, and activations stay channels_last to the end.
    torch.manual_seed(0)
    net = TransformerNet(8, 2).eval()
    with torch.no_grad():  # trained-looking norms, so that a wrong scale or shift would show
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.3, 0.3)
    fast = fast_copy(net, channels_last=True).eval()
    assert any(isinstance(m, SingleImageInstanceNorm) for m in fast.modules())
    assert not any(isinstance(m, SingleImageInstanceNorm) for m in net.modules())  # the source is left alone
    layouts: list[bool] = []
    fast.decoder[0][0].register_forward_hook(lambda m, i, o: layouts.append(is_channels_last(o)))
    for shape in ((1, 3, 32, 48), (2, 3, 21, 9)):
        x = torch.rand(shape)
        with torch.no_grad():
            ref = net(x)
            out = fast.to(dtype)(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()
        tol = 1e-5 if dtype == torch.float32 else 0.03
        torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    assert layouts == [True, True]  # the upsampling rewrite kept the layout (no copy back to NCHW)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_single_image_instance_norm_equals_instance_norm(layout: torch.memory_format) -> None:
    # Values and gradients (input, weight, bias) in float64; the result and the input's gradient keep the layout.
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(5, affine=True).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64) * 4 + 2
    g = torch.randn_like(x)
    x_ref, x_new = x.clone().requires_grad_(True), x.clone(memory_format=layout).requires_grad_(True)
    y_ref = norm(x_ref)
    y_ref.backward(g)
    ref = [t.clone() for t in (x_ref.grad, norm.weight.grad, norm.bias.grad)]
    norm.zero_grad()
    y = SingleImageInstanceNorm(norm)(x_new)
    y.backward(g)
    torch.testing.assert_close(y, y_ref)
    for got, want in zip((x_new.grad, norm.weight.grad, norm.bias.grad), ref):
        torch.testing.assert_close(got, want)
    assert y.is_contiguous(memory_format=layout) and x_new.grad.is_contiguous(memory_format=layout)
    with torch.inference_mode():  # the inference path (fast_copy), in bf16 with bf16 weights
        bf = copy.deepcopy(norm).bfloat16()
        out = SingleImageInstanceNorm(bf)(x.bfloat16().contiguous(memory_format=layout))
        torch.testing.assert_close(out.float(), y_ref.detach().float(), atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="affine"):
        SingleImageInstanceNorm(nn.InstanceNorm2d(5))


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_view_shares_weights_and_gives_the_same_gradients(channels_last: bool) -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 2).train()
    params_before = {name: p for name, p in net.named_parameters()}
    x = torch.rand(2, 3, 24, 36)
    y_ref = net(x)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    ref_grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)

    view = training_view(net, channels_last)
    assert isinstance(view.decoder[-1], PhaseConv2d) and not isinstance(net.decoder[-1], PhaseConv2d)
    assert any(isinstance(m, SingleImageInstanceNorm) for m in view.modules()) == channels_last
    assert {id(p) for p in view.parameters()} == {id(p) for p in net.parameters()}  # no copies
    conv, h = net.encoder[1][0], torch.rand(1, 8, 6, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pads in bf16 instead of fp32: the same numbers
        assert isinstance(view.encoder[1][0], PadInDtypeConv2d) and torch.equal(view.encoder[1][0](h), conv(h))
    y = view(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    assert is_channels_last(y) == channels_last
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


def test_cpu_training_steps_run_the_network_in_the_layout_hardware_chooses() -> None:
    # What the LightningModule calls: channels_last where fastnst.hardware says so (x86 with native bf16: 1.13x per
    # step at 128x128, 1.31x at 256x256 in bf16 on an AMX Xeon; docs/benchmarks.md); the same values either way.
    from fastnst.hardware import channels_last_training_cpu
    from fastnst.training.module import train_forward

    torch.manual_seed(0)
    net = TransformerNet(8, 2).train()
    x = torch.rand(2, 3, 24, 36)
    y_cl, y_nchw = train_forward(net, x, channels_last=True), train_forward(net, x, channels_last=False)
    assert is_channels_last(y_cl) and y_nchw.is_contiguous()
    torch.testing.assert_close(y_cl, y_nchw, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y_cl, net(x), atol=1e-5, rtol=1e-4)
    assert is_channels_last(train_forward(net, x)) == channels_last_training_cpu()
