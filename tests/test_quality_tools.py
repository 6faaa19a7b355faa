"""fastnst.optimize and fastnst.evaluate end to end on tiny images with random VGG; one loss module (issue 5)."""

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import make_photo
from fastnst.evaluate import evaluate, main as evaluate_main, sample_grid
from fastnst.model_file import save_model
from fastnst.net import TransformerNet
from fastnst.optimize import main as optimize_main
from fastnst.training.module import StyleTransferModule
from fastnst.training.reference import build_reference_loss, loss_settings, optimise_image, score

LAYERS = {"relu1_2": 1.0, "relu2_2": 1.0}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    meta = {"style": "starry", "alpha": 1.0, "beta": 1e3, "tv_weight": 1.0, "content_layers": ["relu2_2"], "style_layers": LAYERS, "style_image_size": 48, "vgg": "vgg16"}
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("m") / "tiny.pt", meta)


def test_optimize_cli_lowers_the_loss_and_writes_image_and_curve(tmp_path: Path, style_file: Path) -> None:
    torch.manual_seed(0)  # the random VGG
    photo = make_photo(tmp_path / "p.png", (40, 32))
    out, curve = tmp_path / "g.png", tmp_path / "curve.csv"
    code = optimize_main([str(photo), "-o", str(out), "--style", "starry", "--style-image", str(style_file), "--weights", "random", "--size", "32", "--iterations", "15", "--curve", str(curve)])
    assert code == 0 and out.is_file()
    rows = list(csv.DictReader(open(curve)))
    totals = [float(r["total"]) for r in rows]
    assert len(totals) >= 15 and totals[-1] < 0.75 * totals[0] and totals[-1] == pytest.approx(min(totals), rel=0.05)
    assert optimize_main([str(photo), "-o", str(out), "--style", "starry", "--style-image", str(style_file), "--weights", "random"]) == 2  # exists


def test_adam_option_and_checkpoints(style_file: Path) -> None:
    settings = loss_settings(None, "starry", style_image=str(style_file), beta=1e3, style_layers=LAYERS, style_image_size=32)
    torch.manual_seed(0)
    loss = build_reference_loss(settings, "random")
    photo = torch.rand(1, 3, 24, 24)
    images, curve, seconds = optimise_image(loss, photo, [5, 10], optimizer="adam")
    assert set(images) == {5, 10} and len(curve) == 10 and seconds[10] >= seconds[5]
    assert score(loss, images[10], photo)["total"] < score(loss, photo, photo)["total"]


def test_noise_init_starts_from_seeded_noise_and_lowers_the_loss(style_file: Path) -> None:
    settings = loss_settings(None, "starry", style_image=str(style_file), beta=1e3, style_layers=LAYERS, style_image_size=32)
    torch.manual_seed(0)
    loss = build_reference_loss(settings, "random")
    photo = torch.linspace(0.2, 0.8, 24).expand(1, 3, 24, 24).contiguous()  # smooth, so noise is far from it
    from_photo = optimise_image(loss, photo, 8)[1]
    a = optimise_image(loss, photo, 8, init="noise", seed=1)[1]
    b = optimise_image(loss, photo, 8, init="noise", seed=1)[1]
    c = optimise_image(loss, photo, 8, init="noise", seed=2)[1]
    # the photo's own loss has no content term and little TV; noise starts far from it, the same noise for the same seed
    assert a[0] > from_photo[0] and a == b and c[0] != a[0]
    assert a[-1] < 0.75 * a[0]
    with pytest.raises(ValueError, match="init must be photo or noise"):
        optimise_image(loss, photo, 2, init="zeros")


def test_evaluate_api_and_cli(model_file: Path, tmp_path: Path, style_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = [make_photo(tmp_path / "val" / f"v{i}.jpg", (48, 36), seed=i) for i in range(2)]
    result = evaluate(str(model_file), photos, size=32, gatys=[5, 10], weights="random", style_image=str(style_file), precision="fp32", progress=False)
    assert result["photos"] == 2 and set(result["model_mean"]) == {"content", "style", "tv", "total"}
    assert result["gatys10_mean"]["total"] <= result["gatys5_mean"]["total"] * 1.001
    assert result["ratio_total_model_over_gatys10"] == pytest.approx(result["model_mean"]["total"] / result["gatys10_mean"]["total"])
    assert result["speedup_over_gatys10"] > 1
    for key in ("model", "gatys10"):  # the style term, split by layer
        assert set(result[f"{key}_style_by_layer"]) == set(LAYERS)
        assert sum(result[f"{key}_style_by_layer"].values()) == pytest.approx(result[f"{key}_mean"]["style"], rel=1e-5)
    grid = sample_grid(result["_samples"], height=32)
    assert grid.shape[0] == 3 and grid.shape[1] == 2 * 32 + 4  # two rows of photo | model | Gatys
    out_json, out_grid = tmp_path / "e.json", tmp_path / "grid.png"
    code = evaluate_main(["-m", str(model_file), "--photos", str(tmp_path / "val"), "--size", "32", "--gatys", "5", "--weights", "random", "--style-image", str(style_file), "--json", str(out_json), "--grid", str(out_grid)])
    assert code == 0 and out_grid.is_file()
    printed = capsys.readouterr().out
    assert "| beta x style, by layer | " + " | ".join(LAYERS) + " |" in printed and "| Gatys L-BFGS 5 |" in printed
    data = json.loads(out_json.read_text())
    assert data["photos"] == 2 and "gatys5_mean" in data and data["loss_settings"]["beta"] == 1e3
    worst = data["artefacts_worst"]
    assert 0 <= worst["min"] <= worst["max"] <= 1 and worst["checkerboard"] >= 0 and worst["border_step"] >= 0


def test_training_and_evaluation_compute_the_same_loss(style_file: Path) -> None:
    torch.manual_seed(0)
    loss_cfg = {"arch": "vgg16", "weights": "random", "content_layers": ["relu2_2"], "style_layers": LAYERS, "alpha": 2.0, "beta": 1e3, "tv_weight": 3.0}
    module = StyleTransferModule({"base_channels": 8, "num_residual_blocks": 1}, loss_cfg, {"name": "starry", "image": str(style_file), "image_size": 40}, {"lr": 1e-3})
    settings = loss_settings(None, "starry", style_image=str(style_file), style_image_size=40, alpha=2.0, beta=1e3, tv_weight=3.0, style_layers=LAYERS)
    reference = build_reference_loss(settings, "random")
    reference.vgg.load_state_dict(module.loss.vgg.state_dict())  # same random VGG in both
    reference.set_style(__import__("fastnst.training.style", fromlist=["x"]).load_style_image(style_file, 40))
    photos = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = module.net(photos)
        train_terms = {k: float(v) for k, v in module.loss(out, photos).items()}
    assert score(reference, out, photos) == pytest.approx(train_terms, rel=1e-6)


def test_artefact_measures_flag_checkerboards_and_border_steps() -> None:
    from fastnst.evaluate import artefacts, border_step, spectral_peak

    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 32, 40), size=(256, 320), mode="bicubic")[0].clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(320), indexing="ij")
    period2 = (smooth + 0.03 * ((xx + yy) % 2 * 2 - 1)).clamp(0, 1)
    period4 = (smooth + 0.03 * torch.sin(xx * torch.pi / 2)).clamp(0, 1)
    assert spectral_peak(smooth) < 2 and spectral_peak(torch.rand(3, 256, 320)) < 2
    assert spectral_peak(period2) > 50 and spectral_peak(period4) > 50
    darker_edge = smooth.clone()
    darker_edge[:, :8] *= 0.5
    assert border_step(darker_edge) > border_step(smooth) + 5
    a = artefacts(period2, smooth)
    assert a["checkerboard"] > 50 > a["checkerboard_photo"] and 0 <= a["min"] <= a["max"] <= 1


def test_evaluate_finds_a_custom_styles_image_by_its_recorded_name(tmp_path: Path, style_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # trained with style=custom style.image=/somewhere/mine.png: no config, no URL; the metadata keeps the file name
    meta = {"style": "mine", "style_image": "mine.png", "alpha": 1.0, "beta": 1e3, "tv_weight": 1.0, "content_layers": ["relu2_2"], "style_layers": LAYERS, "style_image_size": 48, "vgg": "vgg16"}
    model = save_model(TransformerNet(8, 1), tmp_path / "mine.pt", meta)
    make_photo(tmp_path / "val" / "v.jpg", (40, 32))
    args = ["-m", str(model), "--photos", str(tmp_path / "val"), "--size", "32", "--weights", "random"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTNST_STYLE_DIR", str(tmp_path / "styles"))
    assert evaluate_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the image of style 'mine' (mine.png) is not in FASTNST_STYLE_DIR") and err.endswith("pass --style-image /path/to/mine.png")
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "mine.png").write_bytes(style_file.read_bytes())
    assert evaluate_main(args) == 0
    assert "| model |" in capsys.readouterr().out
    assert evaluate_main([*args, "--style-image", str(style_file)]) == 0  # an explicit file wins
