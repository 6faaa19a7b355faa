"""End-to-end: the training CLI writes checkpoints, TensorBoard events and the slim model; resume; DDP."""

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_module, tiny_train_args
from fastnst.model_file import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path, style_file: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    result = run_module("fastnst.train", *tiny_train_args(run_dir, photo_dir, style_file, steps=4))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"model written to {run_dir / 'starry.pt'}" in result.stdout
    return run_dir


def test_run_writes_checkpoints_events_and_model(trained_run: Path) -> None:
    ckpts = sorted(p.name for p in (trained_run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step0000002.ckpt", "step0000004.ckpt"]
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert not any(k.startswith("loss.") for k in ckpt["state_dict"])  # VGG is not stored
    assert ckpt["hyper_parameters"]["style"]["name"] == "starry"

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for term in ("content", "style", "tv", "total", "style/relu1_2"):
        assert f"train/{term}" in tags["scalars"]
        assert len(events.Scalars(f"train/{term}")) == 4
    assert "val/total" in tags["scalars"]
    assert "samples" in tags["images"] and len(events.Images("samples")) == 2  # steps 2 and 4

    net, meta = load_model(trained_run / "starry.pt")
    assert meta["steps"] == 4 and meta["style"] == "starry" and meta["content_layers"] == ["relu2_2"]
    assert set(meta) >= {"alpha", "beta", "tv_weight", "style_layers", "vgg", "image_size", "train_seconds"}
    assert net.config() == {"base_channels": 8, "num_residual_blocks": 1}
    assert (trained_run / ".hydra" / "config.yaml").is_file()


def test_resume_continues_the_step_count(trained_run: Path, photo_dir: Path, style_file: Path) -> None:
    args = tiny_train_args(trained_run, photo_dir, style_file, steps=6)
    result = run_module("fastnst.train", *args, "ckpt_path=last")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
    assert load_model(trained_run / "starry.pt")[1]["steps"] == 6


def test_lightning_checkpoint_applies_directly(trained_run: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "from_ckpt.png"
    result = run_module("fastnst.apply", "-m", str(trained_run / "checkpoints" / "last.ckpt"), "-o", str(out), str(photo_dir / "p0.png"))
    assert result.returncode == 0, result.stderr
    assert out.is_file()


def test_resume_last_without_a_run_dir_is_a_clear_error(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    result = run_module("fastnst.train", *tiny_train_args(tmp_path / "fresh", photo_dir, style_file), "ckpt_path=last")
    assert result.returncode == 2
    assert "ckpt_path=last: no " in result.stderr and "Traceback" not in result.stderr


def test_ddp_two_cpu_processes(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    args = tiny_train_args(tmp_path / "ddp", photo_dir, style_file, steps=3)
    result = run_module("fastnst.train", *args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert "distributed_backend=gloo" in result.stderr or "world_size=2" in result.stderr or "2 processes" in result.stderr
    assert (tmp_path / "ddp" / "starry.pt").is_file()


def test_max_time_stops_the_run_and_still_writes_the_model(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    args = tiny_train_args(tmp_path / "timed", photo_dir, style_file, steps=1_000_000)
    result = run_module("fastnst.train", *args, "trainer.max_time=00:00:00:04", "trainer.precision=bf16-mixed", "curriculum.small_crop_until=0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "px squares first" not in result.stderr  # full crops from the first step: no squares to announce
    _, meta = load_model(tmp_path / "timed" / "starry.pt")
    assert 0 < meta["steps"] < 1_000_000
    assert torch.load(tmp_path / "timed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == meta["steps"]
    assert "weights_only" not in result.stderr  # the final save says what it stores; no alarming Lightning default line
    assert "not supported by the model summary" not in result.stderr  # bf16's size-estimate notice is silenced


def test_init_from_starts_from_a_trained_model_and_records_it(trained_run: Path, photo_dir: Path, style_file: Path, tmp_path: Path) -> None:
    source = trained_run / "starry.pt"
    args = tiny_train_args(tmp_path / "warm", photo_dir, style_file, steps=1)
    # A learning rate of 1e-12: after its one step the network must still be the source model.
    result = run_module("fastnst.train", *args, f"init_from={source}", "optim.lr=1e-12")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"starting from the weights of {source}" in result.stderr
    warm, meta = load_model(tmp_path / "warm" / "starry.pt")
    source_meta = load_model(source)[1]
    assert meta["init_from"] == {"model": str(source), "style": "starry", "steps": source_meta["steps"], "total_steps": source_meta["total_steps"]}
    assert meta["steps"] == 1 and meta["total_steps"] == source_meta["total_steps"] + 1
    # A resumed run keeps the record of where it started.
    resumed = run_module("fastnst.train", *tiny_train_args(tmp_path / "warm", photo_dir, style_file, steps=2), f"init_from={source}", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_model(tmp_path / "warm" / "starry.pt")[1]["init_from"] == meta["init_from"]
    for (name, a), b in zip(load_model(source)[0].state_dict().items(), warm.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name

    mismatch = run_module("fastnst.train", *tiny_train_args(tmp_path / "bad", photo_dir, style_file), f"init_from={source}", "model.base_channels=16")
    assert mismatch.returncode == 2
    assert "differs from model=" in mismatch.stderr and "Traceback" not in mismatch.stderr
