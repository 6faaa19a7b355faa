"""scripts/grow_model.py: a grown network computes what the narrow one did, and the CLI writes a loadable model."""

from pathlib import Path

import pytest
import torch

from fastnst.model_file import load_model, save_model
from fastnst.net import PRESETS, TransformerNet
from scripts.grow_model import grow, main


def _trained_like(seed: int = 0, **kwargs) -> TransformerNet:
    """A slim net whose norms have non-default scale and shift, as a trained one does."""
    torch.manual_seed(seed)
    net = TransformerNet(**{**PRESETS["slim"], **kwargs})
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


@pytest.mark.parametrize("global_skip", [False, True])
def test_growing_keeps_the_function(global_skip: bool) -> None:
    net = _trained_like(global_skip=global_skip)
    if global_skip:  # a fresh skip net is the identity; give its last conv weights so the check means something
        torch.nn.init.normal_(net.decoder[-1].weight, std=0.01)
    wide = grow(net, **PRESETS["johnson"])
    assert wide.config() == TransformerNet(**PRESETS["johnson"], global_skip=global_skip).config()
    x = torch.rand(2, 3, 40, 52)
    with torch.inference_mode():
        ref, out = net(x), wide(x)
    assert (ref - 0.5).abs().mean() > 0.01  # a non-trivial function
    assert (out - ref).abs().max() < 1e-5
    noisy = grow(net, **PRESETS["johnson"], noise=0.01)
    with torch.inference_mode():
        change = (noisy(x) - ref).abs().max().item()
    assert 0 < change < 0.05


def test_grow_refuses_to_shrink() -> None:
    with pytest.raises(ValueError, match="can only grow"):
        grow(_trained_like(), base_channels=24, num_residual_blocks=5)
    with pytest.raises(ValueError, match="can only grow"):
        grow(_trained_like(), base_channels=32, num_residual_blocks=2)


def test_cli_writes_a_loadable_model_and_keeps_existing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "slim.pt", tmp_path / "grown.pt"
    save_model(_trained_like(), src, metadata={"style": "starry", "model": "slim", "steps": 7})
    assert main(["-m", str(src), "-o", str(out), "--noise", "0"]) == 0
    net, meta = load_model(out)
    assert net.config() == TransformerNet(**PRESETS["johnson"]).config()
    assert meta["model"] == "johnson" and meta["style"] == "starry" and meta["grown_from"]["steps"] == 7
    assert "max output change" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(["-m", str(src), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["-m", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.pt")]) == 2
