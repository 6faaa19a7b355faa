"""Training-recipe levers (issue 9): learning-rate warm-up and decay over the budget, the small-crop
curriculum, time snapshots, and the config checks that guard them."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fastnst.model_file import load_model
from fastnst.training.module import StyleTransferModule, dither_flat
from fastnst.training.pipeline import ConfigError, validate
from conftest import make_photo, run_module, tiny_train_args
from test_configs import compose_plain


def make_module(style_file: Path, optim: dict | None = None, curriculum: dict | None = None) -> StyleTransferModule:
    loss = {"arch": "vgg16", "weights": "random", "content_layers": ["relu2_2"], "style_layers": {"relu1_2": 1.0, "relu2_2": 1.0}, "alpha": 1.0, "beta": 1e5, "tv_weight": 10.0}
    return StyleTransferModule(
        {"base_channels": 8, "num_residual_blocks": 1}, loss, {"name": "t", "image": str(style_file), "image_size": 48}, optim or {"lr": 1e-3}, curriculum
    )


def attach(module: StyleTransferModule, step: int, max_steps: int) -> None:
    # The module reads only these trainer fields for its schedules.
    trainer = SimpleNamespace(global_step=step, max_steps=max_steps, callbacks=[])
    object.__setattr__(module, "_trainer", trainer)


def test_lr_warms_up_linearly_then_follows_the_cosine_to_its_floor(style_file: Path) -> None:
    m = make_module(style_file, {"lr": 4e-3, "warmup_steps": 10, "decay": "cosine", "min_lr_fraction": 0.1})
    assert m.lr_at(0, 0.0) == pytest.approx(4e-4)
    assert m.lr_at(4, 0.0) == pytest.approx(2e-3)
    assert m.lr_at(9, 0.0) == pytest.approx(4e-3)
    assert m.lr_at(500, 0.5) == pytest.approx(4e-3 * (0.1 + 0.9 * 0.5))
    assert m.lr_at(1000, 1.0) == pytest.approx(4e-4)
    lrs = [m.lr_at(s, s / 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # never rises after the warm-up
    const = make_module(style_file, {"lr": 1e-3})
    assert const.lr_at(0, 0.0) == const.lr_at(999, 0.99) == 1e-3


def test_adam_uses_the_configured_betas(style_file: Path) -> None:
    adam = make_module(style_file, {"lr": 2e-3, "betas": [0.8, 0.99]}).configure_optimizers()
    assert adam.param_groups[0]["betas"] == (0.8, 0.99) and adam.param_groups[0]["lr"] == 2e-3
    assert make_module(style_file, {"lr": 1e-3}).configure_optimizers().param_groups[0]["betas"] == (0.9, 0.999)


def test_norm_lr_scale_puts_the_instance_norms_in_a_faster_group(style_file: Path) -> None:
    m = make_module(style_file, {"lr": 2e-3, "warmup_steps": 4, "norm_lr_scale": 5})
    adam = m.configure_optimizers()
    rest, norms = adam.param_groups
    norm_params = [p for mod in m.net.modules() if isinstance(mod, torch.nn.InstanceNorm2d) for p in mod.parameters()]
    assert {id(p) for p in norms["params"]} == {id(p) for p in norm_params} and norm_params
    assert len(rest["params"]) + len(norms["params"]) == len(list(m.net.parameters()))
    assert (rest["lr"], norms["lr"]) == pytest.approx((2e-3, 1e-2))
    attach(m, 1, 100)
    m.trainer.optimizers = [adam]
    m.on_train_batch_start(None, 0)  # warm-up step 1 of 4: half the rate, the norms still 5x the rest
    assert (rest["lr"], norms["lr"]) == pytest.approx((1e-3, 5e-3))
    assert len(make_module(style_file, {"lr": 1e-3, "norm_lr_scale": 1.0}).configure_optimizers().param_groups) == 1


def test_budget_fraction_follows_max_steps(style_file: Path) -> None:
    m = make_module(style_file)
    attach(m, 25, 100)
    assert m.budget_fraction() == pytest.approx(0.25)
    attach(m, 250, 100)
    assert m.budget_fraction() == 1.0


def test_curriculum_cuts_small_squares_first_then_full_crops(style_file: Path) -> None:
    m = make_module(style_file, curriculum={"small_crop": 16, "small_crop_until": 0.5})
    photos = torch.rand(3, 3, 32, 32)
    attach(m, 10, 100)
    small = m._curriculum_crop(photos)
    assert small.shape == (3, 3, 16, 16)
    # Each square is a window of its own photo (same pixel scale, no resampling).
    for p, s in zip(photos, small):
        windows = p.unfold(1, 16, 1).unfold(2, 16, 1)  # 3, 17, 17, 16, 16
        assert ((windows - s[:, None, None]).abs().amax(dim=(0, 3, 4)) == 0).any()
    assert torch.equal(m._curriculum_crop(photos), small)  # same step, same squares (exact resume)
    attach(m, 60, 100)
    assert m._curriculum_crop(photos) is photos


def test_a_resumed_run_cuts_the_squares_its_checkpoint_records(style_file: Path) -> None:
    # fit() picks the side once (small_crop_from_random for random weights); a resume must not pick again.
    m = make_module(style_file, curriculum={"small_crop": 24, "small_crop_from_random": 16, "small_crop_until": 0.5})
    m.small_crop = 16
    checkpoint = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(checkpoint)
    resumed = make_module(style_file, curriculum={"small_crop": 24, "small_crop_from_random": 16, "small_crop_until": 0.5})
    assert resumed.small_crop == 24
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.small_crop == 16 and resumed.init_from is None


@pytest.mark.parametrize(
    "override, message",
    [
        ({"optim": {"lr": 1e-3, "decay": "step"}}, "optim.decay"),
        ({"optim": {"lr": 1e-3, "warmup_steps": -1}}, "optim.warmup_steps"),
        ({"optim": {"lr": 1e-3, "betas": [0.9, 1.0]}}, r"optim.betas must be two numbers in \[0, 1\)"),
        ({"optim": {"lr": 1e-3, "betas": [0.9]}}, "optim.betas"),
        ({"optim": {"lr": 1e-3, "betas": "0.9"}}, "optim.betas"),
        ({"optim": {"lr": 1e-3, "betas": 0.9}}, "optim.betas"),
        ({"optim": {"lr": 1e-3, "norm_lr_scale": 0}}, "optim.norm_lr_scale must be a positive number"),
        ({"curriculum": {"small_crop": 8, "small_crop_until": 0.5}}, "curriculum.small_crop"),
        ({"curriculum": {"small_crop": 64, "small_crop_until": 1.5}}, "curriculum.small_crop_until"),
        ({"curriculum": {"small_crop": 64, "small_crop_from_random": 8}}, "curriculum.small_crop_from_random"),
        ({"snapshot_minutes": 0}, "snapshot_minutes"),
    ],
)
def test_recipe_config_errors_name_the_key(override: dict, message: str) -> None:
    cfg = compose_plain("run_dir=x")
    cfg.update(override)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_training_with_the_recipe_levers_writes_time_snapshots(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    run = tmp_path / "run"
    args = tiny_train_args(run, photo_dir, style_file, steps=8)
    result = run_module(
        "fastnst.train", *args, "snapshot_minutes=0.0001", "optim.warmup_steps=3", "optim.decay=cosine", "optim.lr=3e-3",
        "curriculum.small_crop=24", "curriculum.small_crop_from_random=16", "curriculum.small_crop_until=0.5",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    snaps = sorted((run / "snapshots").glob("*.pt"))
    assert len(snaps) >= 2
    seconds = [float(p.name[:-4].rstrip("s")) for p in snaps]
    assert seconds == sorted(seconds) and seconds[0] > 0
    net, meta = load_model(snaps[-1])
    assert meta["train_seconds"] == pytest.approx(seconds[-1], abs=0.11)
    assert 0 < meta["steps"] <= 8
    # A tiny network has no shipped start: random weights, so the squares are small_crop_from_random's.
    assert meta["optim"]["decay"] == "cosine" and meta["curriculum"]["small_crop"] == 16
    assert "16 px squares first (curriculum.small_crop_from_random; null: curriculum.small_crop)" in result.stderr
    final_net, final_meta = load_model(run / "starry.pt")
    assert final_meta["steps"] == 8 and math.isfinite(final_meta["train_seconds"])


def test_progress_total_follows_the_time_budget() -> None:
    from fastnst.training.progress import expected_total

    assert expected_total(10, 40000, None, None) == 40000
    assert expected_total(10, -1, None, None) is None
    assert expected_total(100, 40000, remaining_s=60.0, steps_per_s=2.0) == 220  # time ends the run first
    assert expected_total(100, 150, remaining_s=60.0, steps_per_s=2.0) == 150  # steps end it first


def test_time_to_style_scores_snapshots_and_draws_the_curve(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    import json

    from PIL import Image

    held_out = tmp_path / "held_out"

    names = [make_photo(held_out / f"h{i}.png", (40, 32), seed=20 + i).name for i in range(2)]
    gatys = {"size": 40, "per_photo": [{"photo": n, "gatys100": {"content": 1.0, "style": 1e-6, "tv": 0.01, "total": 1.2}} for n in names]}
    (tmp_path / "gatys.json").write_text(json.dumps(gatys))
    common = [a for a in tiny_train_args(tmp_path / "unused", photo_dir, style_file) if not a.startswith(("run_dir=", "trainer.max_steps=", "style=starry"))]
    common.append("style.name=mine")  # a style of one's own: the run's model is mine.pt
    out = tmp_path / "tts"
    result = run_module(
        "scripts.time_to_style", "--style", "custom", "--minutes", "0.12", "--every", "0.04", "--recipe", "base=", "--recipe", "fast=optim.lr=3e-3 optim.decay=cosine",
        "--photos", str(held_out), "--size", "40", "--gatys-json", str(tmp_path / "gatys.json"), "--weights", "random",
        "--style-image", str(style_file), "--out", str(out), "--", *common,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert set(data["curves"]) == {"base", "fast"}
    for points in data["curves"].values():
        assert len(points) >= 2  # snapshots and the final model
        assert all(p["total"] > 0 and p["steps"] > 0 for p in points)
        assert [p["seconds"] for p in points] == sorted(p["seconds"] for p in points)
    assert data["gatys100"]["total"] == pytest.approx(1.2)
    assert data["style"] == "mine" and all(pts[-1]["file"].endswith("mine.pt") for pts in data["curves"].values())
    assert "| base |" in result.stdout and "total / Gatys" in result.stdout
    assert Image.open(out / "curve.png").size[0] > 500
    events = list((out / "base" / "tensorboard").glob("events.*"))
    assert any(b"heldout/total" in e.read_bytes() for e in events)
    # A second run into the same folder refuses instead of mixing runs.
    again = run_module("scripts.time_to_style", "--style", "starry", "--minutes", "0.1", "--recipe", "base=", "--photos", str(held_out), "--no-gatys", "--out", str(out))
    assert again.returncode != 0 and "exists" in again.stderr


def test_init_from_copies_a_model_and_refuses_another_preset(tmp_path: Path) -> None:
    from fastnst.model_file import save_model
    from fastnst.net import TransformerNet
    from fastnst.training.pipeline import init_weights

    torch.manual_seed(0)
    source = TransformerNet(8, 1)
    path = save_model(source, tmp_path / "wave.pt", {"style": "wave", "steps": 7})
    torch.manual_seed(1)
    net = TransformerNet(8, 1)
    assert init_weights(net, str(path)) == {"model": str(path), "style": "wave", "steps": 7, "total_steps": 7}
    # A model continued from another records all its phases; the next run carries that count on.
    phased = save_model(source, tmp_path / "wave_phased.pt", {"style": "wave", "steps": 7, "total_steps": 30})
    start = init_weights(TransformerNet(8, 1), str(phased))
    assert start["steps"] == 7 and start["total_steps"] == 30
    for (name, a), b in zip(source.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match=r"init_from=.*differs from model="):
        init_weights(TransformerNet(16, 1), str(path))
    with pytest.raises(ConfigError, match="init_from=no_such_model: no model file or known model"):
        init_weights(net, "no_such_model")


def test_init_from_auto_takes_a_shipped_model_of_another_style_with_this_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastnst.model_file import save_model
    from fastnst.net import TransformerNet
    from fastnst.training.pipeline import auto_init

    models = tmp_path / "models"
    sources = {}
    for seed, (name, style, width) in enumerate((("starry", "starry", 8), ("wave", "wave", 8), ("starry_johnson", "starry", 12), ("wave_johnson", "wave", 12))):
        torch.manual_seed(seed)
        sources[name] = TransformerNet(width, 1)
        save_model(sources[name], models / f"{name}.pt", {"style": style, "steps": 10 + seed})
    monkeypatch.setenv("FASTNST_MODELS", str(models))  # searched before the shipped models

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

    net = TransformerNet(8, 1)
    assert auto_init(net, "udnie") == {"model": "starry", "style": "starry", "steps": 10, "total_steps": 10}
    assert same(net, sources["starry"])
    # Training starry itself starts from another style.
    assert auto_init(net, "starry") == {"model": "wave", "style": "wave", "steps": 11, "total_steps": 11}
    assert same(net, sources["wave"])
    # A wider network starts from a model with that network: starry_johnson, or wave_johnson for starry itself.
    wide = TransformerNet(12, 1)
    assert auto_init(wide, "udnie") == {"model": "starry_johnson", "style": "starry", "steps": 12, "total_steps": 12}
    assert same(wide, sources["starry_johnson"])
    assert auto_init(wide, "starry") == {"model": "wave_johnson", "style": "wave", "steps": 13, "total_steps": 13}
    assert same(wide, sources["wave_johnson"])
    # With a score (in training: the run's loss on a few training crops), the lowest-scoring start wins, whatever
    # the fixed order says, and the metadata records every candidate's score.
    seen: list[int] = []

    def score(model: torch.nn.Module) -> float:
        seen.append(model.config()["base_channels"])
        first = next(iter(model.state_dict().values()))
        return {name: i for i, name in enumerate(("wave_johnson", "starry_johnson"))}[_which(first, sources)]

    start = auto_init(wide, "udnie", score)
    assert start == {"model": "wave_johnson", "style": "wave", "steps": 13, "total_steps": 13, "probe_totals": {"starry_johnson": 1.0, "wave_johnson": 0.0}}
    assert same(wide, sources["wave_johnson"]) and seen == [12, 12]  # only models with the run's network are scored
    # Equal scores keep the fixed order; a single candidate is not scored.
    assert auto_init(wide, "udnie", lambda m: 1.0)["model"] == "starry_johnson"
    seen.clear()
    assert auto_init(wide, "starry", score) == {"model": "wave_johnson", "style": "wave", "steps": 13, "total_steps": 13} and seen == []
    # No model with this network: the random weights stay.
    other = TransformerNet(4, 1)
    before = TransformerNet(4, 1)
    before.load_state_dict(other.state_dict())
    assert auto_init(other, "udnie") is None
    assert same(other, before)


def _which(tensor: torch.Tensor, sources: dict[str, torch.nn.Module]) -> str:
    """The name of the source model whose first weight tensor equals ``tensor``."""
    return next(name for name, m in sources.items() if torch.equal(next(iter(m.state_dict().values())), tensor))


def test_probe_scorer_rates_a_start_by_the_runs_loss() -> None:
    from fastnst.net import TransformerNet
    from fastnst.training.loss import PerceptualLoss
    from fastnst.training.pipeline import probe_scorer
    from fastnst.training.vgg import VGGFeatures

    torch.manual_seed(0)
    loss = PerceptualLoss(VGGFeatures("vgg16", ["relu2_2", "relu3_3"], weights="random"), ["relu2_2"], {"relu3_3": 1.0})
    style = torch.rand(1, 3, 32, 32)
    loss.set_style(style)
    crops = torch.rand(2, 3, 32, 32)
    score = probe_scorer(loss, crops)
    net = TransformerNet(8, 1)
    expected = float(loss(net(crops), crops)["total"])
    assert score(net) == pytest.approx(expected, rel=1e-5)
    assert score(net.half()) == pytest.approx(expected, rel=1e-2)  # models load in fp16 storage: scored in fp32


def test_dither_flat_touches_only_one_colour_crops() -> None:
    photos = torch.rand(3, 3, 32, 32)
    photos[1] = torch.tensor([1.0, 0.5, 0.0])[:, None, None]  # one colour (a white-background square, say)
    out = dither_flat(photos, seed=7)
    assert torch.equal(out[0], photos[0]) and torch.equal(out[2], photos[2])
    assert 0.5 / 255 < float((out[1] - photos[1]).std()) < 2 / 255  # about one grey level
    assert torch.equal(dither_flat(photos, seed=7), out)  # seeded: a resumed run sees the same pixels
    assert dither_flat(torch.rand(2, 3, 8, 8), seed=0).shape == (2, 3, 8, 8)


def _fit_on_one_colour_crops(style_file: Path) -> torch.optim.Optimizer:
    import pytorch_lightning as pl

    torch.manual_seed(0)
    m = make_module(style_file, {"lr": 1e-3})
    photos = torch.rand(2, 3, 32, 32)
    photos[1] = 1.0  # a white square: instance norm's variance is exactly 0 at every layer
    loader = torch.utils.data.DataLoader([(photos, torch.tensor(0))], batch_size=None)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(m, train_dataloaders=loader)
    return trainer.optimizers[0]


def test_one_colour_crops_do_not_freeze_or_break_training(style_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the dither a white square's gradients blow up at every instance norm (1e27+ in the shipped networks,
    # whose Adam moments then overflow to inf) and even this 7-norm toy's second moments jump by 10^14: the weights
    # they belong to hardly move again (m / sqrt(v)). With it every moment stays ordinary.
    state = _fit_on_one_colour_crops(style_file).state.values()
    assert all(torch.isfinite(s["exp_avg_sq"]).all() and float(s["exp_avg_sq"].max()) < 1.0 for s in state)
    monkeypatch.setattr("fastnst.training.module.dither_flat", lambda photos, seed: photos)
    state = _fit_on_one_colour_crops(style_file).state.values()
    assert max(float(s["exp_avg_sq"].max()) for s in state) > 1e6
