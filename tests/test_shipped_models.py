"""Every model shipped in checkpoints/ loads (weights_only), records its recipe, is small, and runs by name."""

from pathlib import Path

import pytest
import torch

from conftest import REPO
from fastnst.model_file import available_models, load_model
from fastnst.stylize import stylize

SHIPPED = sorted((REPO / "checkpoints").glob("*.pt"))


def test_the_public_domain_styles_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"starry", "wave", "composition_vii"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_model(path: Path) -> None:
    assert path.stat().st_size <= 8 * 1024 * 1024
    net, meta = load_model(path.stem)  # by name, as `fastnst.apply -m starry` does
    assert available_models()[path.stem].resolve() == path.resolve()
    for key in ("style", "style_image", "alpha", "beta", "tv_weight", "content_layers", "style_layers", "steps", "image_size", "batch_size", "lr"):
        assert key in meta, key
    assert meta["steps"] > 0
    # A file is named after its style, or STYLE_PRESET for a second network of the same style (starry_johnson).
    assert path.stem in (meta["style"], f"{meta['style']}_{meta.get('model')}")
    out = stylize(torch.rand(1, 3, 40, 56), net)
    assert out.shape == (1, 3, 40, 56) and torch.isfinite(out).all()
    assert (out - 0.5).abs().mean() > 0.01  # not a blank image
