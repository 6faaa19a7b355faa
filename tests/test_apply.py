"""The apply CLI and the Python API: files, folders, odd inputs, exit codes, never clobbering."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, make_photo, run_module
from fastnst import Stylizer, stylize
from fastnst.apply import main, output_problem, plan_jobs
from fastnst.model_file import save_model
from fastnst.net import TransformerNet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("model") / "tiny.pt", {"style": "tiny"})


def test_single_file_round_trip(model_file: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.png"
    assert main(["-m", str(model_file), "-o", str(out), str(photo_dir / "p2.png")]) == 0
    assert Image.open(out).size == Image.open(photo_dir / "p2.png").size
    assert "wrote" in capsys.readouterr().err


def test_folder_and_files_into_output_folder(model_file: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "styled"
    assert main(["-q", "-m", str(model_file), "-o", str(out), str(photo_dir), str(photo_dir / "p1.jpg")]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["p1.jpg", *sorted(f"{photo_dir.name}/{p}" for p in ["p0.png", "p1.jpg", "p2.png", "p3.jpg", "p4.png", "sub/deep.jpg"])]
    for p in out.rglob("*.*"):
        assert Image.open(p).mode == "RGB"


def test_default_output_is_next_to_the_input(model_file: Path, tmp_path: Path) -> None:
    src = make_photo(tmp_path / "cat.jpg")
    assert main(["-q", "-m", str(model_file), str(src)]) == 0
    assert (tmp_path / "cat_tiny.jpg").is_file()


def test_unwritable_input_format_becomes_png(model_file: Path, tmp_path: Path) -> None:
    src = tmp_path / "clip.gif"
    Image.open(make_photo(tmp_path / "cat.png")).convert("P").save(src)
    assert main(["-q", "-m", str(model_file), str(src)]) == 0
    assert Image.open(tmp_path / "clip_tiny.png").size == Image.open(src).size
    assert main(["-q", "-m", str(model_file), "-o", str(tmp_path / "out"), str(src)]) == 0
    assert (tmp_path / "out" / "clip.png").is_file()


def test_never_overwrites_without_flag(model_file: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    assert main(["-q", "-m", str(model_file), "-o", str(out), str(photo_dir / "p0.png")]) == 1
    assert out.read_bytes() == b"precious"
    assert "exists; not overwriting it (pass --overwrite" in capsys.readouterr().err
    assert main(["-q", "--overwrite", "-m", str(model_file), "-o", str(out), str(photo_dir / "p0.png")]) == 0
    assert Image.open(out).size == (48, 40)


def test_bad_inputs_fail_alone_and_summarise(model_file: Path, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hi")
    code = main(["-q", "-m", str(model_file), "-o", str(tmp_path / "out"), str(tmp_path / "empty.jpg"), str(tmp_path / "text.jpg"), str(photo_dir / "p0.png"), "missing.png"])
    err = capsys.readouterr().err
    assert code == 1
    assert "1 ok, 3 failed" in err and "empty.jpg: empty file" in err and "text.jpg: not a readable image" in err
    assert (tmp_path / "out" / "p0.png").is_file()


@pytest.mark.parametrize("tile", ["off", "on"])
def test_threaded_io_writes_the_same_files_as_serial(model_file: Path, tmp_path: Path, tile: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Decoding ahead and encoding in threads changes no byte; an image that fails to decode mid-folder is
    reported once and the rest are written (batches of 2 over 7 photos of two sizes)."""
    src = tmp_path / "in"
    for i in range(6):
        make_photo(src / f"a{i}.png", (40, 32) if i % 3 else (24, 36), seed=i)
    whole = (src / "a1.png").read_bytes()
    (src / "a4.png").write_bytes(whole[: len(whole) // 2])  # the header still reads: it fails while decoding
    make_photo(src / "b.jpg", (40, 32), seed=7)
    outputs = {}
    for threads in ["0", "3"]:
        out = tmp_path / f"out{threads}"
        code = main(["-q", "-m", str(model_file), "--batch-size", "2", "--tile", tile, "--io-threads", threads, "-o", str(out), str(src)])
        err = capsys.readouterr().err
        assert code == 1 and err.count("a4.png") == 1 and "6 ok, 1 failed" in err
        outputs[threads] = {p.name: p.read_bytes() for p in (out / "in").iterdir()}
    assert sorted(outputs["0"]) == ["a0.png", "a1.png", "a2.png", "a3.png", "a5.png", "b.jpg"]
    assert outputs["0"] == outputs["3"]


def test_alpha_and_odd_sizes(model_file: Path, tmp_path: Path) -> None:
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (3, 5), (200, 10, 10, 128)).save(rgba)
    grey = make_photo(tmp_path / "grey.png", (1, 1), mode="L")
    assert main(["-q", "-m", str(model_file), "-o", str(tmp_path / "o"), str(rgba), str(grey)]) == 0
    out = Image.open(tmp_path / "o" / "rgba.png")
    assert out.mode == "RGBA" and out.size == (3, 5) and out.getpixel((0, 0))[3] == 128
    assert Image.open(tmp_path / "o" / "grey.png").size == (1, 1)


def test_model_errors_exit_2(photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    assert main(["-m", str(junk), str(photo_dir / "p0.png")]) == 2
    assert "not a readable fastnst model" in capsys.readouterr().err
    assert main(["-m", "no_such_model", str(photo_dir / "p0.png")]) == 2
    assert "no model file or known model named 'no_such_model'" in capsys.readouterr().err


def test_usage_errors_and_help() -> None:
    result = run_module("fastnst.apply", "--help")
    assert result.returncode == 0 and "--overwrite" in result.stdout and "examples:" in result.stdout
    result = run_module("fastnst.apply", "photo.jpg")
    assert result.returncode == 2 and "-m/--model is required" in result.stderr
    result = run_module("fastnst.apply", "-m", "starry", "--io-threads", "-1", "photo.jpg")
    assert result.returncode == 2 and "--io-threads must be 0 or more" in result.stderr


def test_output_that_cannot_hold_the_inputs_is_a_usage_error(photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before the model loads: no folder named like a file is created, nothing is written."""
    photo = str(photo_dir / "p0.png")
    cases = [
        ([photo, "-o", str(tmp_path / "out.xyz")], "unknown output format '.xyz'"),
        ([photo, photo, "-o", str(tmp_path / "out.jpg")], "names one file, but 2 inputs were given"),
        ([str(photo_dir), "-o", str(tmp_path / "out.png")], "names one file, but the folder"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["-m", "no_model_needed", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # An existing folder is a folder, whatever its name.
    (tmp_path / "v1.2").mkdir()
    assert output_problem([photo_dir / "p0.png", photo_dir / "p1.png"], tmp_path / "v1.2") is None
    (tmp_path / "shots.jpg").mkdir()
    jobs, errors = plan_jobs([photo_dir / "p0.png"], tmp_path / "shots.jpg", "m")
    assert not errors and [job.dst for job in jobs] == [tmp_path / "shots.jpg" / "p0.png"]


def test_python_api(model_file: Path, photo_dir: Path) -> None:
    runner = Stylizer(model_file, device="cpu")
    batch = torch.rand(2, 3, 20, 30)
    out = stylize(batch, runner)
    assert out.shape == batch.shape and 0 < out.min() and out.max() < 1
    single = stylize(batch[0], runner)
    torch.testing.assert_close(single, out[0], atol=1e-5, rtol=0)
    img = stylize(photo_dir / "p3.jpg", model_file)
    assert isinstance(img, Image.Image) and img.size == Image.open(photo_dir / "p3.jpg").size
    assert stylize(Image.open(photo_dir / "p0.png"), runner).size == (48, 40)


def test_inference_side_imports_no_training_stack() -> None:
    code = (
        "import sys, fastnst, fastnst.apply, fastnst.stylize, fastnst.model_file, fastnst.images;"
        "heavy = [m for m in ('pytorch_lightning', 'lightning', 'hydra', 'omegaconf', 'tensorboard', 'fastnst.training') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compiled_stylizer_matches_and_pads_a_short_last_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.manual_seed(0)
    net = TransformerNet(8, 1)
    x = torch.rand(3, 3, 32, 40)
    ref = Stylizer(net, "cpu", "fp32")(x)
    runner = Stylizer(net, "cpu", "fp32", compile=True)
    seen: list[tuple[int, ...]] = []
    compiled = runner.compiled
    runner.compiled = lambda batch: seen.append(tuple(batch.shape)) or compiled(batch)
    out = runner(x)
    assert out.shape == ref.shape and (out - ref).abs().max() < 1e-4
    tail = runner(x[:2])  # e.g. a video's last frames: padded to the compiled batch, not compiled again
    assert tail.shape == (2, 3, 32, 40) and (tail - ref[:2]).abs().max() < 1e-4
    assert seen == [(3, 3, 32, 40), (3, 3, 32, 40)]
    other = torch.rand(1, 3, 24, 40)  # another size: its own first batch, not padded to 3
    assert runner(other).shape == (1, 3, 24, 40) and seen[-1] == (1, 3, 24, 40)


def test_compile_flag(model_file: Path, photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    out = tmp_path / "out.png"
    assert main(["-q", "--compile", "--precision", "fp32", "-m", str(model_file), "-o", str(out), str(photo_dir / "p2.png")]) == 0
    plain = tmp_path / "plain.png"
    assert main(["-q", "--precision", "fp32", "-m", str(model_file), "-o", str(plain), str(photo_dir / "p2.png")]) == 0
    a, b = (np.asarray(Image.open(p), dtype=np.float32) for p in (out, plain))
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # the same picture, to rounding
