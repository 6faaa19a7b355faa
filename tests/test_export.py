"""Export to TorchScript and ONNX with dynamic batch/height/width, verified against PyTorch (issue 6)."""

from pathlib import Path

import pytest
import torch

from fastnst.apply import main as apply_main
from fastnst.export import ExportableNet, main as export_main
from fastnst.model_file import load_model, save_model
from fastnst.net import TransformerNet


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_model(TransformerNet(8, 1), tmp_path_factory.mktemp("m") / "tiny.pt", {"style": "tiny"})


@pytest.mark.parametrize("global_skip", [False, True])
def test_exportable_net_equals_the_model(global_skip: bool) -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 1, global_skip=global_skip).eval()
    torch.nn.init.normal_(net.decoder[-1].weight, std=0.05)
    for shape in ((1, 3, 8, 8), (2, 3, 33, 50)):
        x = torch.rand(shape)
        with torch.inference_mode():
            torch.testing.assert_close(ExportableNet(net)(x), net(x))


def test_torchscript_round_trip_on_other_sizes(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.ts.pt"
    assert export_main(["-m", str(model_file), "--format", "torchscript", "-o", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    scripted = torch.jit.load(str(out))
    net, _ = load_model(model_file)
    x = torch.rand(3, 3, 45, 29)  # batch, height and width unlike anything seen at export
    with torch.inference_mode():
        assert (scripted(x) - net(x)).abs().max() <= 1e-3
    assert export_main(["-m", str(model_file), "--format", "torchscript", "-o", str(out)]) == 2  # exists
    assert "exists; not overwriting it" in capsys.readouterr().err


def test_onnx_round_trip_and_apply(model_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert export_main(["-m", str(model_file), "--format", "onnx", "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    net, _ = load_model(model_file)
    x = torch.rand(2, 3, 41, 30)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        assert (torch.from_numpy(y) - net(x)).abs().max() <= 1e-3
    assert session.get_modelmeta().custom_metadata_map["style"] == "tiny"
    from conftest import make_photo

    photo = make_photo(tmp_path / "p.png", (40, 30))
    assert apply_main(["-q", "-m", str(out), "-o", str(tmp_path / "o.png"), str(photo)]) == 0
    assert (tmp_path / "o.png").is_file()


def test_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["-m", str(tmp_path / "none.pt"), "--format", "torchscript", "-o", str(tmp_path / "x.pt")]) == 2
    assert "no model file or known model" in capsys.readouterr().err


def test_onnx_model_on_a_too_small_image_is_a_per_file_error(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from conftest import make_photo

    onnx_file = tmp_path / "m.onnx"
    assert export_main(["-m", str(model_file), "--format", "onnx", "-o", str(onnx_file)]) == 0
    tiny, fine = make_photo(tmp_path / "tiny.png", (4, 4)), make_photo(tmp_path / "fine.png", (20, 16))
    assert apply_main(["-q", "-m", str(onnx_file), "-o", str(tmp_path / "out"), str(tiny), str(fine)]) == 1
    err = capsys.readouterr().err
    assert "tiny.png: stylising failed (exported models need images of at least 8x8 pixels)" in err and "1 ok, 1 failed" in err
    assert (tmp_path / "out" / "fine.png").is_file()
