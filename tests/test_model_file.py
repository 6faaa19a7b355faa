import pickle
from pathlib import Path

import pytest
import torch

from fastnst.model_file import ModelFileError, available_models, load_model, resolve_model, save_model
from fastnst.net import TransformerNet


def test_round_trip_fp32_and_fp16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TransformerNet(8, 2).eval()
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        ref = net(x)
    meta = {"style": "stripes", "alpha": 1.0, "style_layers": {"relu1_2": 1.0}, "steps": 12}
    for half in (False, True):
        path = save_model(net, tmp_path / f"m{int(half)}.pt", meta, half=half)
        loaded, got = load_model(path)
        assert got["style"] == "stripes" and got["steps"] == 12 and got["name"] == path.stem
        assert loaded.config() == {"base_channels": 8, "num_residual_blocks": 2} and not loaded.training
        with torch.no_grad():
            out = loaded(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=2e-3 if half else 1e-6, rtol=0)
    assert (tmp_path / "m1.pt").stat().st_size < 0.6 * (tmp_path / "m0.pt").stat().st_size


def test_save_never_overwrites_unasked(tmp_path: Path) -> None:
    path = save_model(TransformerNet(4, 0), tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_model(TransformerNet(4, 1), path)
    assert path.read_bytes() == before


def test_names_resolve_from_model_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(TransformerNet(4, 0), tmp_path / "mine.pt")
    monkeypatch.setenv("FASTNST_MODELS", str(tmp_path))
    assert available_models()["mine"] == tmp_path / "mine.pt"
    assert resolve_model("mine") == tmp_path / "mine.pt"
    with pytest.raises(ModelFileError, match=r"no model file or known model named 'nope' \(available: .*mine"):
        resolve_model("nope")


class Exploit:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))  # type: ignore[attr-defined]


def test_crafted_pickle_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = Exploit()
    evil.marker = str(marker)  # type: ignore[attr-defined]
    path = tmp_path / "evil.pt"
    torch.save({"format": "fastnst.model", "payload": evil}, path)
    with pytest.raises(ModelFileError, match="refused to unpickle"):
        load_model(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(evil))
    with pytest.raises(ModelFileError):
        load_model(raw)
    assert not marker.exists()
    # The exploit is real: a plain unpickler runs it.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"\x00\x01garbage" * 50, "not a readable fastnst model"),
        (b"", "not a readable fastnst model"),
    ],
)
def test_junk_files_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=reason):
        load_model(path)


def test_wrong_contents_are_refused(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(2)}, tmp_path / "dict.pt")
    with pytest.raises(ModelFileError, match="not a fastnst model file"):
        load_model(tmp_path / "dict.pt")
    torch.save(
        {"format": "fastnst.model", "format_version": 1, "arch": {"base_channels": 8, "num_residual_blocks": 1}, "state_dict": TransformerNet(4, 1).state_dict()},
        tmp_path / "mismatch.pt",
    )
    with pytest.raises(ModelFileError, match="weights do not fit"):
        load_model(tmp_path / "mismatch.pt")
