"""fastnst.batch_apply: Lightning's predict over DDP writes exactly the files fastnst.apply writes."""

from pathlib import Path

import pytest
import torch

from conftest import make_photo, run_module
from fastnst import apply, batch_apply
from fastnst.model_file import save_model
from fastnst.net import TransformerNet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("model") / "tiny.pt", {"style": "tiny"})


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five photos of three sizes, one in a subfolder, and a file that is not an image."""
    src = tmp_path / "in"
    for i in range(4):
        make_photo(src / f"p{i}.{'jpg' if i % 2 else 'png'}", (40 + 8 * (i % 3), 32), seed=i)
    make_photo(src / "sub" / "deep.png", (24, 36), seed=9)
    (src / "broken.jpg").write_text("not a picture")
    return src


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_process_matches_apply(model_file: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert apply.main(["-q", "-m", str(model_file), "-o", str(tmp_path / "apply"), str(photos)]) == 1
    capsys.readouterr()
    code = batch_apply.main(["-m", str(model_file), "-o", str(tmp_path / "batch"), str(photos), "--accelerator", "cpu", "--devices", "1", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.jpg: not a readable image" in err and "5 ok, 1 failed" in err
    written = _files(tmp_path / "batch")
    assert sorted(written) == ["in/p0.png", "in/p1.jpg", "in/p2.png", "in/p3.jpg", "in/sub/deep.png"]
    assert written == _files(tmp_path / "apply")
    # A second run refuses to overwrite, names each file, and changes nothing.
    assert batch_apply.main(["-m", str(model_file), "-o", str(tmp_path / "batch"), str(photos), "--accelerator", "cpu", "--devices", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("exists; not overwriting it") == 5 and "0 ok, 6 failed" in err and _files(tmp_path / "batch") == written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "out.jpg"], "give a folder"),
        (["-o", "out", "--devices", "0"], "--devices must be at least 1"),
        (["-o", "out", "--devices", "many"], "--devices must be a number or auto"),
        (["-o", "out", "--strength", "2"], "--strength must be between 0 and 1"),
    ],
)
def test_usage_errors_exit_2(model_file: Path, photos: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        batch_apply.main(["-m", str(model_file), str(photos), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_missing_accelerator_is_one_line(model_file: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert batch_apply.main(["-m", str(model_file), "-o", str(tmp_path / "o"), str(photos), "--accelerator", "gpu", "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --accelerator gpu --devices 2: ") and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_videos_are_left_to_apply(model_file: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    code = batch_apply.main(["-m", str(model_file), "-o", str(tmp_path / "o"), str(tmp_path / "clip.mp4"), str(photos / "p0.png"), "--accelerator", "cpu", "--devices", "1", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "clip.mp4: videos are stylised by fastnst.apply" in err and "1 ok, 1 failed" in err
    assert (tmp_path / "o" / "p0.png").is_file() and not (tmp_path / "o" / "clip.mp4").exists()


def test_help() -> None:
    result = run_module("fastnst.batch_apply", "--help")
    assert result.returncode == 0 and "--devices" in result.stdout and "--num-nodes" in result.stdout and "examples:" in result.stdout


def test_unusable_model_is_one_line(photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert batch_apply.main(["-m", "no_such_model", "-o", str(tmp_path / "o"), str(photos)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_ddp_processes_write_every_file_once(model_file: Path, photos: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): each file is stylised by one of them, none twice, none left out."""
    (photos / "broken.jpg").unlink()
    assert apply.main(["-q", "-m", str(model_file), "-o", str(tmp_path / "apply"), str(photos)]) == 0
    result = run_module("fastnst.batch_apply", "-m", str(model_file), "-o", str(tmp_path / "batch"), str(photos), "--accelerator", "cpu", "--devices", "2", "--workers", "0", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("5 ok, 0 failed") == 1  # the sum over both processes, printed once
    assert _files(tmp_path / "batch") == _files(tmp_path / "apply")
