from pathlib import Path

import pytest
import torch
from torchvision import models

from conftest import VGG16_FILE
from fastnst.net import TransformerNet
from fastnst.training.loss import PerceptualLoss, build_loss, content_mse, gram_matrix, total_variation
from fastnst.training.vgg import MaxPool2x2, VGGFeatures, VGGWeightsError, _make_features, layer_names


def test_gram_matrix_by_hand() -> None:
    # One image, C=2 channels, 1x2 pixels: f = [[1, 2], [3, 4]] -> f f^T = [[5, 11], [11, 25]], / (C*H*W = 4)
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    g = gram_matrix(f)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))


def test_gram_is_float32_under_autocast() -> None:
    f = torch.rand(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram_matrix(f.bfloat16())
    assert g.dtype == torch.float32 and g.shape == (2, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_gradient_matches_autograd_of_the_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    f = torch.randn(2, 6, 5, 7).to(dtype)
    mine, ref = f.clone().requires_grad_(), f.clone().requires_grad_()
    weight = torch.randn(2, 6, 6)
    (gram_matrix(mine) * weight).sum().backward()
    flat = ref.float().reshape(2, 6, 35)
    ((flat @ flat.transpose(1, 2) / (6 * 35)) * weight).sum().backward()
    assert mine.grad.dtype == dtype
    # fp32: the same numbers; bf16: the backward product runs in bf16 (as the convolutions' do).
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert (mine.grad.float() - ref.grad.float()).abs().max() <= tol * ref.grad.float().abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gram_of_channels_last_features_equals_nchw(dtype: torch.dtype) -> None:
    # The VGG hands channels_last activations to the Gram on CPUs; the Gram and its gradient must not care.
    torch.manual_seed(0)
    f = torch.randn(2, 6, 5, 7).to(dtype)
    nchw, cl = f.clone().requires_grad_(), f.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(2, 6, 6)
    g_nchw, g_cl = gram_matrix(nchw), gram_matrix(cl)
    torch.testing.assert_close(g_cl, g_nchw)
    (g_nchw * weight).sum().backward()
    (g_cl * weight).sum().backward()
    assert cl.grad.dtype == dtype and cl.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.grad.float(), nchw.grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6)


def test_content_mse_bf16_matches_float32() -> None:
    torch.manual_seed(0)
    a, b = torch.relu(torch.randn(2, 8, 9, 11)) * 30, torch.relu(torch.randn(2, 8, 9, 11)) * 30
    ref_a = a.clone().requires_grad_()
    ref = torch.nn.functional.mse_loss(ref_a, b)
    ref.backward()
    fp32_a = a.clone().requires_grad_()
    assert torch.equal(content_mse(fp32_a, b), ref)  # float32 inputs: exactly mse_loss
    # bf16 features (autocast): the same quantity from the rounded inputs, a float32 scalar.
    a16 = a.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = content_mse(a16, b.bfloat16())
    assert value.dtype == torch.float32
    expected = torch.nn.functional.mse_loss(a.bfloat16().float(), b.bfloat16().float())
    torch.testing.assert_close(value, expected, rtol=2e-3, atol=0)
    value.backward()
    assert a16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a16.grad.float(), ref_a.grad, rtol=2e-2, atol=2e-3 * ref_a.grad.abs().max().item())


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 9), (1, 2, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vgg_max_pool_equals_max_pool2d_with_ties(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = (torch.relu(torch.randn(shape)) * 4).round().div(4).to(dtype)  # many equal values inside windows
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MaxPool2x2()(mine)
    expected = torch.nn.functional.max_pool2d(ref, 2, 2)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(mine.grad, ref.grad)  # each gradient goes to the same (first) maximum
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), expected)


def test_total_variation_by_hand() -> None:
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # horizontal steps of 1, no vertical change
    assert total_variation(x).item() == pytest.approx(1.0)  # mean(dx^2) = 1, mean(dy^2) = 0
    assert total_variation(torch.full((1, 3, 4, 4), 0.3)).item() == 0.0


def test_vgg_layer_names_match_torchvision() -> None:
    for arch in ("vgg16", "vgg19"):
        names = layer_names(arch)
        assert len(names) == len(models.__dict__[arch]().features)
    names = layer_names("vgg16")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("relu2_2") == 8 and names.index("relu4_3") == 22 and names[-1] == "pool5"


def test_vgg_truncated_frozen_and_normalising() -> None:
    vgg = VGGFeatures("vgg16", ["relu1_2", "relu2_2"], weights="random")
    assert len(vgg.layers) == 9  # nothing past relu2_2 is kept
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(1, 3, 16, 16)
    out = vgg(x, ["relu1_2"])
    assert list(out) == ["relu1_2"] and out["relu1_2"].shape == (1, 64, 16, 16)
    # ImageNet normalisation happens inside: the layers see (x - mean) / std.
    normalised = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(out["relu1_2"], vgg.layers[:4](normalised))
    # The same values as torchvision's own layer stack, whatever memory layout runs inside (channels_last on CPUs).
    reference = _make_features("vgg16")[:9]
    reference.load_state_dict(vgg.layers.state_dict())
    torch.testing.assert_close(vgg(x, ["relu2_2"])["relu2_2"], reference(normalised), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown vgg16 layer"):
        VGGFeatures("vgg16", ["relu9_9"], weights="random")


def test_vgg_conv_layer_outputs_are_not_clobbered_by_inplace_relu() -> None:
    vgg = VGGFeatures("vgg16", ["conv1_1", "relu1_1"], weights="random")
    out = vgg(torch.rand(1, 3, 8, 8) - 0.5, ["conv1_1", "relu1_1"])
    assert (out["conv1_1"] < 0).any() and not (out["relu1_1"] < 0).any()


def test_vgg_weights_from_a_torchvision_style_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # features.N.* and classifier.* keys, as in torchvision's file (a small stand-in classifier)
    full = {f"features.{k}": v for k, v in _make_features("vgg16").state_dict().items()} | {"classifier.0.weight": torch.zeros(4, 4)}
    path = tmp_path / "vgg16.pth"
    torch.save(full, path)
    vgg = VGGFeatures("vgg16", ["relu2_2"], weights=str(path))
    torch.testing.assert_close(vgg.layers[0].weight, full["features.0.weight"])
    features_only = {k: v.half() for k, v in full.items() if k.startswith("features.")}  # fp16 copy, features only
    torch.save(features_only, tmp_path / "f16.pth")
    vgg16 = VGGFeatures("vgg16", ["relu2_2"], weights=str(tmp_path / "f16.pth"))
    assert vgg16.layers[2].weight.dtype == torch.float32


def test_vgg_weight_errors(tmp_path: Path) -> None:
    with pytest.raises(VGGWeightsError, match=r"not found; loss.weights takes 'imagenet'"):
        VGGFeatures("vgg16", ["relu2_2"], weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VGGWeightsError, match="cannot read VGG weights"):
        VGGFeatures("vgg16", ["relu2_2"], weights=str(tmp_path / "junk.pth"))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(VGGWeightsError, match="do not fit torchvision's vgg16"):
        VGGFeatures("vgg16", ["relu2_2"], weights=str(tmp_path / "wrong.pth"))


def test_imagenet_weights_offline_error_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import urllib.error

    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsError, match=r"vgg16-397923af\.pth is missing .* loss.weights=/path/to/vgg16-397923af\.pth"):
        VGGFeatures("vgg16", ["relu2_2"], weights="imagenet")


def _loss(**kw: float) -> PerceptualLoss:
    torch.manual_seed(0)
    loss = build_loss("vgg16", "random", ["relu2_2"], {"relu1_2": 1.0, "relu2_2": 0.5}, **kw)
    loss.set_style(torch.rand(3, 24, 24))
    return loss


def test_loss_terms_and_weighting_by_hand() -> None:
    loss = _loss(alpha=2.0, beta=3.0, tv_weight=5.0)
    content, output = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    terms = loss(output, content)
    vgg = loss.vgg
    fo, fc = vgg(output, ["relu1_2", "relu2_2"]), vgg(content, ["relu2_2"])
    c = torch.mean((fo["relu2_2"] - fc["relu2_2"]) ** 2)
    s = sum(w * torch.mean((gram_matrix(fo[n]) - loss.target_gram(n)) ** 2) for n, w in (("relu1_2", 1.0), ("relu2_2", 0.5)))
    tv = total_variation(output)
    torch.testing.assert_close(terms["content"], c)
    torch.testing.assert_close(terms["style"], s)
    torch.testing.assert_close(terms["total"], 2 * c + 3 * s + 5 * tv)
    # Each style layer's weighted term is reported too (TensorBoard and fastnst.evaluate show where the style loss is).
    torch.testing.assert_close(terms["style/relu2_2"], 0.5 * torch.mean((gram_matrix(fo["relu2_2"]) - loss.target_gram("relu2_2")) ** 2))
    torch.testing.assert_close(terms["style/relu1_2"] + terms["style/relu2_2"], terms["style"])
    # The content photo reproduced exactly has zero content loss.
    assert loss(content, content)["content"].item() == 0.0


def test_style_targets_computed_once_and_content_without_grad() -> None:
    loss = _loss()
    target = loss.target_gram("relu1_2")
    calls = 0

    def count(_m: object, _i: object, _o: object) -> None:
        nonlocal calls
        calls += 1

    loss.vgg.layers[0].register_forward_hook(count)
    content = torch.rand(1, 3, 16, 16)
    out = torch.rand(1, 3, 16, 16, requires_grad=True)
    terms = loss(out, content)
    assert calls == 2  # one pass for the output, one for the photo; none for the style image
    assert loss.target_gram("relu1_2") is target
    assert not loss.content_features(content)["relu2_2"].requires_grad
    terms["total"].backward()
    assert out.grad is not None and all(p.grad is None for p in loss.vgg.parameters())


def test_loss_rejects_bad_weights_and_needs_a_style() -> None:
    vgg = VGGFeatures("vgg16", ["relu2_2"], weights="random")
    with pytest.raises(ValueError, match="loss.beta must be a number >= 0"):
        PerceptualLoss(vgg, ["relu2_2"], {"relu2_2": 1.0}, beta=-1)
    loss = PerceptualLoss(vgg, ["relu2_2"], {"relu2_2": 1.0})
    with pytest.raises(RuntimeError, match="set_style"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_training_lowers_the_loss() -> None:
    """A few dozen Adam steps of a tiny network on four fixed photos lower the total loss a lot."""
    torch.manual_seed(0)
    loss = _loss(alpha=1.0, beta=1e3, tv_weight=1.0)
    net = TransformerNet(8, 1)
    photos = torch.rand(4, 3, 24, 24)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    history = []
    for _ in range(60):
        total = loss(net(photos), photos)["total"]
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < 0.6 * history[0]
    assert min(history[-5:]) < min(history[:5])


@pytest.mark.skipif(not VGG16_FILE.is_file(), reason="real VGG16 weights not in ../shared/assets")
def test_real_vgg16_weights_load_and_discriminate() -> None:
    vgg = VGGFeatures("vgg16", ["relu4_3"], weights=str(VGG16_FILE))
    flat = torch.full((1, 3, 64, 64), 0.5)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    stripes = ((xx // 4 % 2) * torch.ones(3, 1, 1))[None]
    f_flat, f_stripes = vgg(flat, ["relu4_3"])["relu4_3"], vgg(stripes, ["relu4_3"])["relu4_3"]
    assert (f_stripes > 0).float().mean() < 0.5  # ImageNet features are sparse
    assert (f_stripes - f_flat).abs().mean() > 0.1
