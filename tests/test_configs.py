"""Every shipped config composes, and bad values fail at start with the key named."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import REPO, run_module, tiny_train_args
from fastnst.training.pipeline import ConfigError, model_metadata, resolve_precision, squares_side, validate

CONFIGS = REPO / "configs"
STYLES = sorted(p.stem for p in (CONFIGS / "style").glob("*.yaml"))


def compose_plain(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def test_required_styles_exist() -> None:
    assert {"starry", "wave", "composition_vii", "mosaic", "candy", "udnie"} <= set(STYLES)


@pytest.mark.parametrize("style", [s for s in STYLES if s != "custom"])
def test_every_style_composes_and_validates(style: str) -> None:
    cfg = compose_plain(f"style={style}")
    validate(cfg)
    assert cfg["style"]["name"] == style
    assert cfg["style"]["url"].startswith("https://") and len(cfg["style"]["sha256"]) == 64
    # The loss takes the style's recommended weights unless overridden.
    assert (cfg["loss"]["alpha"], cfg["loss"]["beta"], cfg["loss"]["tv_weight"]) == (
        cfg["style"]["alpha"],
        cfg["style"]["beta"],
        cfg["style"]["tv_weight"],
    )


def test_custom_style_and_interface_keys() -> None:
    cfg = compose_plain(
        "style=custom",
        "style.image=/x/painting.jpg",
        "loss=vgg19",
        "model=slim",
        "loss.alpha=2",
        "loss.beta=3e4",
        "loss.tv_weight=0",
        "loss.content_layers=[relu3_1]",
        "loss.weights=/w.pth",
        "data.root=/photos",
        "data.image_size=128",
        "data.batch_size=8",
        "trainer.max_steps=10",
        "trainer.precision=bf16-mixed",
    )
    validate(cfg)
    assert cfg["loss"]["arch"] == "vgg19" and cfg["loss"]["beta"] == 3e4 and cfg["loss"]["content_layers"] == ["relu3_1"]
    assert cfg["model"] == {"name": "slim", "base_channels": 16, "num_residual_blocks": 3, "global_skip": False}
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["data"]["batch_size"] == 8


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "default"])
def test_trainer_groups_compose(trainer: str) -> None:
    cfg = compose_plain(f"trainer={trainer}")
    assert {"accelerator", "devices", "precision", "max_steps"} <= set(cfg["trainer"])
    if trainer == "ddp":
        assert cfg["trainer"]["strategy"] == "ddp" and cfg["trainer"]["devices"] == 2


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.beta=-1", "loss.beta must be a number >= 0"),
        ("+loss.style_layers.relu9_9=1", "loss.style_layers: unknown vgg16 layer 'relu9_9'; allowed: conv1_1, relu1_1"),
        ("loss.content_layers=[conv9_1]", "loss.content_layers: unknown vgg16 layer 'conv9_1'"),
        ("data.image_size=0", "data.image_size must be a positive integer"),
        ("data.batch_size=-2", "data.batch_size must be a positive integer"),
        ("trainer.precision=fp8", "trainer.precision='fp8'; allowed: auto, 32-true"),
        ("loss.arch=resnet", "loss.arch='resnet' is not supported; allowed: vgg16, vgg19"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(compose_plain(override))


def test_precision_auto_never_picks_emulated_bf16_on_cpu() -> None:
    avx2_only = frozenset({"avx", "avx2", "fma"})
    zen4 = frozenset({"avx2", "avx512f", "avx512_bf16"})
    assert resolve_precision("auto", "cpu", avx2_only) == "32-true"
    assert resolve_precision("auto", "cpu", zen4) == "bf16-mixed"
    assert resolve_precision("32-true", "cpu", zen4) == "32-true"  # an explicit choice wins


@pytest.mark.slow
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    base = tiny_train_args(tmp_path / "r", photo_dir, style_file)
    cases = [
        (["loss.beta=-1"], "loss.beta must be a number >= 0"),
        ([f"data.root={tmp_path / 'nowhere'}"], "no such folder"),
        ([f"data.root={tmp_path}"], "no images found"),
        (["style.image=/nonexistent/painting.jpg"], "style image /nonexistent/painting.jpg not found"),
        (["loss.weights=/nonexistent/vgg.pth"], "VGG weights file /nonexistent/vgg.pth not found"),
    ]
    (tmp_path / "notes.txt").write_text("no photos here")
    for extra, message in cases:
        result = run_module("fastnst.train", *base, *extra)
        assert result.returncode == 2, (extra, result.stderr[-2000:])
        assert message in result.stderr and "Traceback" not in result.stderr, (extra, result.stderr[-2000:])
    result = run_module("fastnst.train", *base, "style=nosuchstyle")
    assert result.returncode != 0 and "Could not find 'style/nosuchstyle'" in result.stderr and "starry" in result.stderr


def test_recipes_compose_to_what_they_promise() -> None:
    default = compose_plain()
    assert default["model"]["name"] == "johnson" and default["model"]["base_channels"] == 32
    assert default["optim"] == {"name": "adam", "lr": 4e-3, "betas": [0.9, 0.999], "norm_lr_scale": 1.0, "warmup_steps": 50, "decay": "cosine", "min_lr_fraction": 0.1}
    assert default["curriculum"] == {"small_crop": 192, "small_crop_from_random": 128, "small_crop_until": 0.8}
    assert default["init_from"] == "auto"
    paper = compose_plain("recipe=johnson")
    assert paper["init_from"] is None
    assert paper["model"]["name"] == "johnson" and paper["model"]["base_channels"] == 32
    assert paper["optim"]["lr"] == 1e-3 and paper["optim"]["decay"] == "constant" and paper["curriculum"]["small_crop"] is None
    assert (paper["data"]["image_size"], paper["data"]["batch_size"]) == (256, 4)
    # Command-line choices still win over the recipe's.
    assert compose_plain("model=johnson")["model"]["name"] == "johnson"
    assert compose_plain("optim.lr=2e-3")["optim"]["lr"] == 2e-3
    assert compose_plain("init_from=null")["init_from"] is None
    for cfg in (default, paper):
        validate(cfg)


def test_model_metadata_counts_the_steps_of_every_phase() -> None:
    cfg = compose_plain()
    assert model_metadata(cfg, 5, 1.0, "32-true")["total_steps"] == 5  # from random weights: this run's steps
    continued = {"model": "wave", "style": "wave", "steps": 7, "total_steps": 30}
    assert model_metadata(cfg, 5, 1.0, "32-true", continued)["total_steps"] == 35
    older = {"model": "wave", "style": "wave", "steps": 7}  # a start recorded before total_steps existed
    assert model_metadata(cfg, 5, 1.0, "32-true", older)["total_steps"] == 12


def test_a_run_from_random_weights_cuts_smaller_squares() -> None:
    cfg = compose_plain()
    curriculum = cfg["curriculum"]
    assert squares_side(curriculum, from_random=False) == 192
    assert squares_side(curriculum, from_random=True) == 128
    assert squares_side({**curriculum, "small_crop_from_random": None}, from_random=True) == 192  # null: small_crop
    assert squares_side(compose_plain("recipe=johnson")["curriculum"], from_random=True) is None
    assert squares_side({**curriculum, "small_crop_until": 0}, from_random=True) is None  # full crops throughout
    # The model records the squares its run cut.
    start = {"model": "wave", "style": "wave", "steps": 7, "total_steps": 30}
    assert model_metadata(cfg, 5, 1.0, "32-true")["curriculum"]["small_crop"] == 128
    assert model_metadata(cfg, 5, 1.0, "32-true", start)["curriculum"]["small_crop"] == 192
    no_squares = {**cfg, "curriculum": {**curriculum, "small_crop_until": 0.0}}
    assert model_metadata(no_squares, 5, 1.0, "32-true")["curriculum"]["small_crop"] is None
    # fit passes the side its module cut (a resumed run's is restored from its checkpoint, whatever cfg says now).
    assert model_metadata(cfg, 5, 1.0, "32-true", start, small_crop=160)["curriculum"]["small_crop"] == 160
    assert model_metadata(cfg, 5, 1.0, "32-true", start, small_crop=0)["curriculum"]["small_crop"] is None
