"""scripts/bench.py's GPU section, run on the CPU at toy sizes: it must not rot between GPU sessions."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import bench


@pytest.fixture
def tiny_gpu_section(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(bench, "GPU_MATMUL_N", 64)
    monkeypatch.setattr(bench, "GPU_INFER_HW", (32, 48))
    monkeypatch.setattr(bench, "GPU_INFER_BATCHES", (1, 2))
    monkeypatch.setattr(bench, "GPU_TRAIN_SIDE", 32)
    monkeypatch.setattr(bench, "GPU_TRAIN_BATCHES", (2,))
    return bench.section_gpu(1, None, "cpu")


def test_gpu_section_rows(tiny_gpu_section: dict) -> None:
    r = tiny_gpu_section
    assert r["peaks"]["best_tflops"] == max(r["peaks"]["fp32_tflops"], r["peaks"]["tf32_tflops"], r["peaks"]["bf16_tflops"]) > 0
    inference = r["inference"]
    assert [row["batch"] for row in inference] == [1, 1, 2, 2]
    for row in inference:
        assert row["images_per_s"] > 0 and 0 < row["peak_fraction"]
        if row["path"].startswith("plain"):
            assert row["speedup"] == 1.0 and math.isinf(row["psnr_db"])
        else:
            assert row["psnr_db"] >= 40  # the fast path stays close to the fp32 reference
    training = r["training"]
    assert [row["path"] for row in training] == ["plain fp32 eager (reference)", "fastnst bf16-mixed", "fastnst bf16-mixed + channels_last"]
    losses = [row["loss_same_batch"] for row in training]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    # The same loss on the same batch: channels_last changes the layout, not the numbers.
    assert losses[2] == pytest.approx(losses[1], rel=1e-2)
    assert all(row["images_per_s"] == pytest.approx(2 / row["median_s"]) for row in training)


def test_training_steps_compare_the_same_loss(tmp_path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "vgg16.pth"
    torch.save(bench.vgg16_features(None).state_dict(), weights)  # one set of random weights for both losses
    features = bench.vgg16_features(str(weights))
    batch = torch.rand(2, 3, 32, 32)
    rows = bench.training_steps(features, str(weights), torch.rand(1, 3, 32, 32), batch, 1, [("fp32", False, False)])
    assert rows[0]["speedup"] == 1.0 and rows[1]["path"] == "fp32"
    # fastnst's loss in fp32 equals the plain pytorch/examples loss on the same batch (same definition).
    assert rows[1]["loss_same_batch"] == pytest.approx(rows[0]["loss_same_batch"], rel=1e-4)


def test_memory_section_reports_the_worst_of_several_processes(tmp_path) -> None:
    from fastnst.model_file import save_model
    from fastnst.net import TransformerNet

    model = save_model(TransformerNet(4, 1), tmp_path / "tiny.pt")
    rows = bench.section_memory([(48, 64)], model, plain_too=False, runs=2)
    assert [r["path"] for r in rows] == ["fastnst (banded, whole-image stats)", "baseline: python + import torch"]
    fast, base = rows
    assert fast["runs"] == 2 and base["runs"] == 1
    assert fast["peak_rss_mib"] >= fast["peak_rss_min_mib"] > 100  # a real process with torch in it
    assert base["peak_rss_mib"] == base["peak_rss_min_mib"] and fast["wall_s"] > 0
    table = bench.fmt_table(rows, [("size", "size", ""), ("runs", "runs", ""), ("peak_rss_mib", "max", "{:.0f}")])
    assert "| 64x48 " in table and table.count("\n") == 3


def test_folder_section_writes_every_photo_three_ways(tmp_path) -> None:
    from fastnst.model_file import save_model

    model = save_model(bench.trained_like_net(), tmp_path / "bench.pt")  # the classic network the plain loop copies
    photo = tmp_path / "photo.jpg"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(photo)
    rows = bench.section_folder(photo, model, 3, threads=2)
    assert [r["command"] for r in rows] == ["plain loop (fp32 eager, cpu)", "fastnst.apply --io-threads 0", "fastnst.apply (--io-threads 2)"]
    assert all(r["written"] == r["images"] == 3 and r["seconds"] > 0 for r in rows)
    assert rows[0]["speedup_vs_plain"] == 1.0 and rows[2]["speedup_vs_plain"] == pytest.approx(rows[0]["seconds"] / rows[2]["seconds"])


def test_compiled_inference_row_matches_eager(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The --compile inference rows that GPU sessions read give the eager output (CPU, toy size)."""
    from fastnst.stylize import Stylizer

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold compile, as on a fresh GPU machine
    net = bench.trained_like_net(8, 1)
    x = torch.rand(1, 3, 32, 48)
    fast = Stylizer(net, "cpu", "fp32", tile=False)
    name, t, y = bench._compiled_timing(fast, x, 1, bench.timed)
    assert name.startswith("torch.compile (fp32), first call") and t["median_s"] > 0
    assert bench.psnr(y, fast(x)) >= 60


@pytest.mark.slow
def test_compiled_training_row_matches_eager(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled training step (a --compile GPU row) computes the eager loss on the same batch. About a
    minute of Inductor compiling on 2 cores; the GPU path runs the plain network, as here."""
    import fastnst.training.module as module

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(module, "train_forward", lambda net, photos, channels_last=True: net(photos))
    batch = torch.rand(2, 3, 32, 32)
    variants = [("eager", False, False), ("compiled", False, False, True)]
    rows = bench.training_steps(bench.vgg16_features(None), "random", torch.rand(1, 3, 32, 32), batch, 1, variants)
    eager, compiled = rows[1], rows[2]
    assert compiled["path"].startswith("compiled, first call") and compiled["median_s"] > 0
    assert compiled["loss_same_batch"] == pytest.approx(eager["loss_same_batch"], rel=1e-4)
