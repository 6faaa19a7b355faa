"""Issue 4: bad input never crashes or loses work; checkpoints cannot run code; training survives a kill."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, make_photo, run_module, tiny_train_args
from fastnst._io import atomic_write
from fastnst.apply import main as apply_main
from fastnst.model_file import save_model
from fastnst.net import TransformerNet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("m") / "tiny.pt")


def apply(*args: str) -> int:
    return apply_main(["-q", *args])


# ---------------------------------------------------------------- inference inputs


def test_corrupt_inputs_named_others_processed(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = make_photo(tmp_path / "in" / "good.png")
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "in" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png = (tmp_path / "in" / "good.png").read_bytes()
    (tmp_path / "in" / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "in" / "zero.jpg").write_bytes(b"")
    (tmp_path / "in" / "text.jpg").write_text("plain text")
    (tmp_path / "in" / "x.png").mkdir()
    out = tmp_path / "out"
    code = apply("-m", str(model_file), "-o", str(out), *(str(p) for p in sorted((tmp_path / "in").iterdir())))
    err = capsys.readouterr().err
    assert code == 1
    assert "1 ok, 5 failed" in err
    for name in ("truncated.jpg", "truncated.png", "zero.jpg", "text.jpg", "x.png"):
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
    assert (out / "good.png").is_file() and good.is_file()


def _exif_rotated(path: Path) -> Path:
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())
    return path


def test_every_image_mode_gives_rgb_at_the_oriented_size(model_file: Path, tmp_path: Path) -> None:
    base = Image.open(make_photo(tmp_path / "base.png", (30, 20)))
    src = tmp_path / "src"
    src.mkdir()
    base.convert("L").save(src / "grey.png")
    base.convert("LA").save(src / "grey_alpha.png")
    base.convert("RGBA").save(src / "rgba.png")
    base.convert("P").save(src / "palette.png")
    base.convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)).save(src / "deep16.png")
    _exif_rotated(src / "exif6.jpg")
    assert apply("-m", str(model_file), "-o", str(tmp_path / "out"), str(src)) == 0
    out = tmp_path / "out" / "src"
    expected_size = {"exif6.jpg": (20, 40)}
    for p in src.iterdir():
        res = Image.open(out / p.name)
        assert res.size == expected_size.get(p.name, (30, 20)), p.name
        assert res.mode == ("RGBA" if p.name in ("grey_alpha.png", "rgba.png") else "RGB"), p.name


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (2, 4000)])
def test_tiny_and_extreme_aspect_images(model_file: Path, tmp_path: Path, size: tuple[int, int]) -> None:
    src = make_photo(tmp_path / "odd.png", size)
    assert apply("-m", str(model_file), "-o", str(tmp_path / "o.png"), str(src)) == 0
    assert Image.open(tmp_path / "o.png").size == size


def test_decompression_bomb_refused_with_limit_and_overridable(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(bomb)
    assert bomb.stat().st_size < 500_000
    start = time.perf_counter()
    assert apply("-m", str(model_file), "-o", str(tmp_path / "b.png"), str(bomb)) == 1
    assert time.perf_counter() - start < 5  # refused from the header, not after decoding 900 Mpx
    err = capsys.readouterr().err
    assert "30000x30000 is 900 megapixels, over the limit of 200 megapixels" in err and "--max-pixels" in err
    small = make_photo(tmp_path / "s.png", (100, 100))
    assert apply("--max-pixels", "5000", "-m", str(model_file), "-o", str(tmp_path / "s_out.png"), str(small)) == 1
    assert apply("--max-pixels", "20000", "-m", str(model_file), "-o", str(tmp_path / "s_out.png"), str(small)) == 0


def test_output_equal_to_input_or_existing_is_kept(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_photo(tmp_path / "photo.png")
    original = src.read_bytes()
    assert apply("-m", str(model_file), "-o", str(src), str(src)) == 1
    assert src.read_bytes() == original
    assert "exists; not overwriting it" in capsys.readouterr().err
    assert apply("--overwrite", "-m", str(model_file), "-o", str(src), str(src)) == 0
    assert src.read_bytes() != original and Image.open(src).size == (48, 40)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"good old checkpoint")

    def dies_midway(f: object) -> None:
        f.write(b"half of a new checkp")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # a kill between the two halves

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_midway)
    assert target.read_bytes() == b"good old checkpoint"
    assert list(tmp_path.iterdir()) == [target]
    fresh = atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x"))
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~_current_umask()  # like any newly created file


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- unusable models


def test_model_problems_exit_2(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(make_photo(tmp_path / "p.png"))
    random_pt = tmp_path / "random.pt"
    random_pt.write_bytes(os.urandom(4096))
    other_arch = tmp_path / "other.ckpt"
    torch.save({"pytorch-lightning_version": "2.5", "state_dict": {"backbone.fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {}}, other_arch)
    lying = tmp_path / "lying.pt"
    torch.save({"format": "fastnst.model", "format_version": 1, "arch": {"base_channels": 32, "num_residual_blocks": 5}, "state_dict": TransformerNet(8, 1).state_dict()}, lying)
    cases = {
        "no_such_model": "no model file or known model named 'no_such_model' (available:",
        str(tmp_path / "missing.pt"): "no model file or known model named",
        str(random_pt): "not a readable fastnst model or checkpoint",
        str(other_arch): "not one written by fastnst.train",
        str(lying): "weights do not fit",
    }
    for model, message in cases.items():
        assert apply_main(["-m", model, photo]) == 2, model
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (model, err)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"pytorch-lightning_version": "2.5", "state_dict": {}, "hyper_parameters": _Payload(marker)}, evil)
    assert apply_main(["-m", str(evil), str(make_photo(tmp_path / "p.png"))]) == 2
    assert "refused to unpickle" in capsys.readouterr().err
    assert not marker.exists()
    with open(evil, "rb") as f:  # proof that the file is armed: torch's full unpickler runs it
        torch.load(f, weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_corrupt_training_files_are_skipped_and_counted(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        make_photo(data / f"ok{i}.png", seed=i)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (data / "empty.png").write_bytes(b"")
    (data / "notes.txt").write_text("ignored: not an image extension")
    args = [a if not a.startswith("data.root=") else f"data.root={data}" for a in tiny_train_args(tmp_path / "run", photo_dir, style_file, steps=4)]
    result = run_module("fastnst.train", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping unreadable training image" in result.stderr and "broken.jpg" in result.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert events.Scalars("data/skipped")[-1].value >= 1


@pytest.mark.slow
def test_non_finite_loss_stops_without_writing_a_model(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    result = run_module("fastnst.train", *tiny_train_args(tmp_path / "run", photo_dir, style_file, steps=6), "optim.lr=1e30")
    assert result.returncode == 3
    assert "non-finite loss at step" in result.stderr and "content=" in result.stderr
    assert not (tmp_path / "run" / "starry.pt").exists()


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, photo_dir: Path, style_file: Path) -> None:
    steps = 40
    common = [*tiny_train_args(tmp_path / "x", photo_dir, style_file, steps=steps), "checkpoint_every_n_steps=5", "trainer.val_check_interval=1000", "data.image_size=48"]

    def args(run: str) -> list[str]:
        return [a if not a.startswith("run_dir=") else f"run_dir={tmp_path / run}" for a in common]

    reference = run_module("fastnst.train", *args("straight"))
    assert reference.returncode == 0, reference.stderr[-2000:]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastnst.train", *args("killed")], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while not (ckpt_dir / "step0000010.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= killed_at < steps and not (tmp_path / "killed" / "starry.pt").exists()

    resumed = run_module("fastnst.train", *args("killed"), "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == steps
    assert a["loops"]["fit_loop"]["state_dict"] == b["loops"]["fit_loop"]["state_dict"]  # same data position
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, atol=1e-5, rtol=1e-4)
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    torch.testing.assert_close(adam_b[0]["exp_avg_sq"], adam_a[0]["exp_avg_sq"], atol=1e-8, rtol=1e-4)
