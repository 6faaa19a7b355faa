"""Video in, video out: frame rate, frame count, audio kept, flicker reduced by smoothing (issue 6)."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from fastnst.apply import main as apply_main
from fastnst.model_file import save_model
from fastnst.net import TransformerNet
from fastnst.stylize import Stylizer

av = pytest.importorskip("av")


def make_clip(path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), fps: int = 12, audio: bool = True, noise: float = 0.04) -> Path:
    """A static-camera clip: one scene plus per-frame sensor noise, and a 440 Hz tone."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 5.0)], -1)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.options = {"crf": "10"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i in range(frames):
            img = np.clip(scene + rng.normal(0, noise, scene.shape), 0, 1)
            frame = av.VideoFrame.from_ndarray((img * 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        if a is not None:
            t = np.arange(16000 * frames // fps) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, samples.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
                af.sample_rate = 16000
                af.pts = start
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = TransformerNet(8, 1)
    for m in net.modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.weight.data.uniform_(1.0, 3.0)  # a contrasty "style": noise shows up as flicker
    return save_model(net, tmp_path_factory.mktemp("m") / "tiny.pt")


def probe(path: Path) -> tuple[int, float, bool, tuple[int, int]]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(video=0))
        return n, float(v.average_rate), bool(c.streams.audio), (v.codec_context.width, v.codec_context.height)


def test_cli_video_keeps_rate_frames_size_and_audio(model_file: Path, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "out.mp4"
    assert apply_main(["-q", "-m", str(model_file), "-o", str(out), str(clip)]) == 0
    assert probe(out) == (12, 12.0, True, (64, 48))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    before = out.read_bytes()
    assert apply_main(["-q", "-m", str(model_file), "-o", str(out), str(clip)]) == 1  # never overwritten unasked
    assert out.read_bytes() == before


def test_smoothing_reduces_flicker_on_a_static_clip(model_file: Path, tmp_path: Path) -> None:
    from fastnst.video import flicker, stylize_video

    clip = make_clip(tmp_path / "static.mp4", frames=10, audio=False)
    runner = Stylizer(model_file, "cpu", "fp32")
    raw = stylize_video(clip, tmp_path / "raw.mp4", runner, keep_frames=True)["frames_out"]
    smooth = stylize_video(clip, tmp_path / "smooth.mp4", runner, smoothing=0.8, keep_frames=True)["frames_out"]
    assert len(raw) == len(smooth) == 10
    assert flicker(smooth) < 0.6 * flicker(raw)


def test_bad_video_is_a_one_line_error(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    assert apply_main(["-q", "-m", str(model_file), "-o", str(tmp_path / "o.mp4"), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.mp4: not a readable video" in err and "Traceback" not in err
