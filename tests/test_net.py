import pytest
import torch

from fastnst.net import PRESETS, TransformerNet, build_model, count_flops, pad_for_network, padded_size


@pytest.fixture(scope="module")
def net() -> TransformerNet:
    torch.manual_seed(0)
    return TransformerNet(base_channels=8, num_residual_blocks=2).eval()


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (2, 40), (31, 17), (64, 64), (65, 99)])
def test_any_size_in_same_size_out(net: TransformerNet, h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.min() > 0 and y.max() < 1  # sigmoid output: strictly inside (0, 1)


@pytest.mark.parametrize("batch", [1, 3])
def test_batch_items_are_independent(net: TransformerNet, batch: int) -> None:
    x = torch.rand(batch, 3, 24, 28)
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(batch)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_padding_is_cropped_back_exactly() -> None:
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, (top, left) = pad_for_network(x)
    assert padded.shape[-2:] == (padded_size(5), padded_size(7)) == (8, 8)
    assert torch.equal(padded[..., top : top + 5, left : left + 7], x)
    assert pad_for_network(torch.zeros(1, 3, 16, 32))[1] == (0, 0)


def test_presets_and_flops() -> None:
    johnson, slim = build_model("johnson"), build_model("slim")
    assert johnson.config() == PRESETS["johnson"] == {"base_channels": 32, "num_residual_blocks": 5}
    f_johnson = count_flops(johnson, 256, 256)
    assert 19e9 < f_johnson < 21e9  # the paper's network: about 20 GFLOP per 256x256 image
    assert count_flops(johnson, 512, 512) == pytest.approx(4 * f_johnson, rel=1e-6)
    assert f_johnson / count_flops(slim, 256, 256) >= 3
    assert build_model("johnson", base_channels=16).config()["base_channels"] == 16
    with pytest.raises(ValueError, match="unknown model preset 'huge'; available: johnson, slim"):
        build_model("huge")


def test_architecture_is_the_johnson_layout() -> None:
    net = TransformerNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs[:3]] == [
        (3, 32, 9, 1),
        (32, 64, 3, 2),
        (64, 128, 3, 2),
    ]
    assert (convs[-1].in_channels, convs[-1].out_channels, convs[-1].kernel_size[0]) == (32, 3, 9)
    assert all(c.padding_mode == "reflect" for c in convs)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.Upsample) for m in net.modules()) == 2
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(n.affine for n in norms)


def test_rejects_wrong_input() -> None:
    with pytest.raises(ValueError, match=r"expected an \(N, 3, H, W\) batch"):
        TransformerNet(8, 1)(torch.rand(1, 4, 8, 8))


def test_global_skip_starts_as_the_photo_and_round_trips(tmp_path) -> None:
    from fastnst.model_file import load_model, save_model
    from fastnst.net import count_flops

    torch.manual_seed(0)
    net = TransformerNet(8, 1, global_skip=True).eval()
    x = torch.rand(2, 3, 30, 41)
    x[0, :, :3] = 0.0  # black and white pixels stay finite
    x[1, :, :3] = 1.0
    with torch.inference_mode():
        y = net(x)
    assert torch.isfinite(y).all()
    assert (y - x).abs().max() <= 1.01e-3  # a new network returns the photo (logit clamp at 1e-3)
    torch.nn.init.normal_(net.decoder[-1].weight, std=0.05)  # as if trained
    path = save_model(net, tmp_path / "skip.pt", {"style": "t"})
    loaded, _ = load_model(path)
    assert loaded.global_skip and loaded.config()["global_skip"] is True
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x))
    assert count_flops(net, 64, 64) == count_flops(TransformerNet(8, 1), 64, 64)
    assert "global_skip" not in TransformerNet(8, 1).config()  # older files and plain nets keep their format
