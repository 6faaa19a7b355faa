#!/usr/bin/env python
"""fastnst benchmark: measured peaks, a plain reference, and fastnst's paths, in one run.

    python scripts/bench.py --quick              # a few minutes on 2 cores
    python scripts/bench.py --json bench.json    # everything, and a JSON copy

Every ratio compares against a *plain reference written in this file*: the classic Johnson network
(32-64-128, 5 residual blocks, instance norm, upsample+conv) in fp32, NCHW, eager, under
``torch.inference_mode``, with the same weights; and for training a plain VGG16 perceptual loss step
(relu2_2 content; relu1_2/2_2/3_3/4_3 style; Adam). Times are medians after warm-up (min/max shown);
peak RSS is measured in child processes. Run it alone: other jobs on the machine distort it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fastnst.apply import default_io_threads  # noqa: E402
from fastnst.fast_layers import fast_copy  # noqa: E402
from fastnst.hardware import channels_last_training_cpu, cpu_flags, cpu_name, native_bf16_cpu, plan_for, reuse_freed_memory  # noqa: E402
from fastnst.net import TransformerNet, count_flops  # noqa: E402
from fastnst.stylize import Stylizer  # noqa: E402

FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")

# ``--isa-cap avx2``: stand in for an AVX2-only CPU on a newer one. Each math library reads its own cap
# when it starts, so the run re-executes itself with all three set (its child processes inherit them).
ISA_CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


# --------------------------------------------------------------------------- the plain reference


class PlainJohnson(nn.Module):
    """Johnson et al. written the plain way: explicit ReflectionPad2d + Conv2d, IN, ReLU; fp32 eager."""

    def __init__(self) -> None:
        super().__init__()

        def conv(i: int, o: int, k: int, s: int = 1) -> list[nn.Module]:
            return [nn.ReflectionPad2d(k // 2), nn.Conv2d(i, o, k, s)]

        def block(i: int, o: int, k: int, s: int = 1, up: bool = False) -> list[nn.Module]:
            return ([nn.Upsample(scale_factor=2, mode="nearest")] if up else []) + conv(i, o, k, s) + [nn.InstanceNorm2d(o, affine=True), nn.ReLU()]

        self.head = nn.Sequential(*block(3, 32, 9), *block(32, 64, 3, 2), *block(64, 128, 3, 2))
        self.res = nn.ModuleList(
            nn.Sequential(*conv(128, 128, 3), nn.InstanceNorm2d(128, affine=True), nn.ReLU(), *conv(128, 128, 3), nn.InstanceNorm2d(128, affine=True))
            for _ in range(5)
        )
        self.tail = nn.Sequential(*block(128, 64, 3, up=True), *block(64, 32, 3, up=True), *conv(32, 3, 9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        for r in self.res:
            h = h + r(h)
        return torch.sigmoid(self.tail(h))

    def load_from(self, net: TransformerNet) -> PlainJohnson:
        """Copy weights from a fastnst TransformerNet (same tensors, in module order)."""
        src = [t for t in net.state_dict().values()]
        dst = self.state_dict()
        assert len(src) == len(dst)
        self.load_state_dict({k: v.clone() for k, v in zip(dst, src)})
        return self


def plain_gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    f = f.reshape(n, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


class PlainLoss(nn.Module):
    """pytorch/examples-style perceptual loss: torchvision VGG16 sliced at relu1_2/2_2/3_3/4_3."""

    def __init__(self, vgg_features: nn.Sequential, style: torch.Tensor, beta: float = 1e5, tv: float = 10.0) -> None:
        super().__init__()
        self.slices = nn.ModuleList([vgg_features[:4], vgg_features[4:9], vgg_features[9:16], vgg_features[16:23]])
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.beta, self.tv = beta, tv
        with torch.no_grad():
            self.targets = [plain_gram(f) for f in self.features(style)]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.mean) / self.std
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        fy, fx = self.features(y), self.features(x)
        content = F.mse_loss(fy[1], fx[1])
        style = sum(F.mse_loss(plain_gram(a), t.expand(len(y), -1, -1)) for a, t in zip(fy, self.targets))
        tv = (y[..., 1:, :] - y[..., :-1, :]).pow(2).mean() + (y[..., 1:] - y[..., :-1]).pow(2).mean()
        return content + self.beta * style + self.tv * tv


# --------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def matmul_peak(dtype: torch.dtype, device: str, repeats: int) -> float:
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()

    t = timed(run, repeats, warmup=2)["min_s"]
    return 2 * n**3 / t / 1e9


def trained_like_net(base_channels: int = 32, blocks: int = 5) -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet(base_channels, blocks).eval()
    for m in net.modules():  # norms as after training, so precision differences show up
        if isinstance(m, nn.InstanceNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net


def child_peak(code: str, timeout: float = 1800) -> dict[str, float]:
    """Run python code in a fresh process; its peak RSS (MiB) and wall time (s)."""
    # VmHWM, not ru_maxrss: a child forked from this (large) process inherits its ru_maxrss across exec.
    wrapper = code + "\nfor line in open('/proc/self/status'):\n    if line.startswith('VmHWM'):\n        print('PEAK_KB', line.split()[1])\n"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    kb = int(out.stdout.split("PEAK_KB")[-1].split()[0])
    return {"peak_rss_mib": kb / 1024, "wall_s": wall}


# --------------------------------------------------------------------------- sections


def section_machine() -> dict[str, Any]:
    flags = cpu_flags()
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
        "native_bf16": native_bf16_cpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_plan": plan_for(torch.device("cpu")).reason,
        "isa_cap": {k: os.environ[k] for k in ISA_CAPS["avx2"] if os.environ.get(k)} or None,
        # fastnst's CPU paths keep freed memory for reuse (glibc); the plain rows run with glibc's defaults.
        "reuse_freed_memory": reuse_freed_memory(),
    }
    return info


def section_peaks(repeats: int) -> dict[str, float]:
    peaks = {"fp32_gflops": matmul_peak(torch.float32, "cpu", repeats)}
    peaks["bf16_gflops"] = matmul_peak(torch.bfloat16, "cpu", repeats)
    # bf16 counts as the machine's peak only where it is native; emulated bf16 is not a peak anyone should chase.
    peaks["best_gflops"] = max(peaks["fp32_gflops"], peaks["bf16_gflops"] if native_bf16_cpu() else 0.0)
    return peaks


def section_inference(sizes: list[tuple[int, int]], repeats: int, peak: float, compile_too: bool, precision: str = "auto") -> list[dict[str, Any]]:
    net = trained_like_net()
    plain = PlainJohnson().load_from(net).eval()
    slim = trained_like_net(16, 3)
    rows = []
    for h, w in sizes:
        x = torch.rand(1, 3, h, w)
        flops = count_flops(net, h, w)
        reuse_freed_memory(False)  # the plain way runs with glibc's defaults; Stylizer turns reuse on again
        with torch.inference_mode():
            ref = plain(x)
            t_plain = timed(lambda: plain(x), repeats)
        fast = Stylizer(net, "cpu", precision, tile=False)
        t_fast = timed(lambda: fast(x), repeats)
        out = fast(x)
        base = {"size": f"{w}x{h}", "gflop": flops / 1e9}
        rows.append(base | {"path": "plain fp32 eager (reference)", **t_plain, "gflops": flops / t_plain["median_s"] / 1e9, "speedup": 1.0, "psnr_db": float("inf")})
        rows.append(
            base
            | {
                "path": f"fastnst {precision} ({fast.plan.precision})",
                **t_fast,
                "gflops": flops / t_fast["median_s"] / 1e9,
                "speedup": t_plain["median_s"] / t_fast["median_s"],
                "psnr_db": psnr(out, ref),
            }
        )
        if fast.plan.channels_last:  # the same network and dtype in NCHW, the layout used before on every CPU
            nchw = fast_copy(fast.net, channels_last=False).to(memory_format=torch.contiguous_format)  # fast.net is channels_last
            xd = x.to(fast.plan.dtype)
            with torch.inference_mode():
                t_nchw = timed(lambda: nchw(xd).float(), repeats)
                y_nchw = nchw(xd).float()
            rows.append(base | {"path": f"fastnst {precision} ({fast.plan.precision}), NCHW instead of channels_last", **t_nchw, "gflops": flops / t_nchw["median_s"] / 1e9, "speedup": t_plain["median_s"] / t_nchw["median_s"], "psnr_db": psnr(y_nchw, ref)})
        if h * w <= 2048 * 2048:
            tiled = Stylizer(net, "cpu", precision, tile=True)
            t_tiled = timed(lambda: tiled(x), max(1, repeats // 2))
            rows.append(base | {"path": f"fastnst tiled ({tiled.plan.precision})", **t_tiled, "gflops": flops / t_tiled["median_s"] / 1e9, "speedup": t_plain["median_s"] / t_tiled["median_s"], "psnr_db": psnr(tiled(x), ref)})
        s_fast = Stylizer(slim, "cpu", precision, tile=False)
        t_slim = timed(lambda: s_fast(x), repeats)
        sflops = count_flops(slim, h, w)
        rows.append(base | {"path": f"slim preset ({s_fast.plan.precision})", "gflop": sflops / 1e9, **t_slim, "gflops": sflops / t_slim["median_s"] / 1e9, "speedup": t_plain["median_s"] / t_slim["median_s"], "psnr_db": None})
        onnx_path = _onnx_model(net)
        if onnx_path is not None:
            import onnxruntime as ort

            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.numpy()}
            t_onnx = timed(lambda: session.run(None, feed), repeats)
            y_onnx = torch.from_numpy(session.run(None, feed)[0])
            rows.append(base | {"path": "onnxruntime (fp32, CPU)", **t_onnx, "gflops": flops / t_onnx["median_s"] / 1e9, "speedup": t_plain["median_s"] / t_onnx["median_s"], "psnr_db": psnr(y_onnx, ref)})
        if compile_too:
            cnet = torch.compile(fast.fast_net, dynamic=False)
            xx = x.to(fast.plan.dtype)
            t0 = time.perf_counter()
            with torch.inference_mode():
                cnet(xx)
            first = time.perf_counter() - t0
            with torch.inference_mode():
                t_c = timed(lambda: cnet(xx), repeats)
                c_out = cnet(xx).float()
            rows.append(base | {"path": f"torch.compile ({fast.plan.precision}), first call {first:.0f} s", **t_c, "gflops": flops / t_c["median_s"] / 1e9, "speedup": t_plain["median_s"] / t_c["median_s"], "psnr_db": psnr(c_out, ref)})
    for r in rows:
        r["peak_fraction"] = r["gflops"] / peak
    return rows


_ONNX_CACHE: dict[int, Path | None] = {}


def _onnx_model(net: TransformerNet) -> Path | None:
    """The network exported to ONNX once per run (None where onnx/onnxscript/onnxruntime are missing)."""
    if id(net) not in _ONNX_CACHE:
        try:
            import onnxruntime  # noqa: F401

            from fastnst.export import export_onnx

            path = Path(tempfile.mkdtemp()) / "bench.onnx"
            export_onnx(net, path, {})
            _ONNX_CACHE[id(net)] = path
        except Exception as e:  # noqa: BLE001 - optional row
            print(f"(onnxruntime row skipped: {type(e).__name__}: {str(e)[:100]})", file=sys.stderr)
            _ONNX_CACHE[id(net)] = None
    return _ONNX_CACHE[id(net)]


def section_cli(photo: Path, model: Path, repeats: int) -> list[dict[str, Any]]:
    """Whole process, one photo: the plain way (import, build, load, eager fp32, save) vs fastnst.apply."""
    plain_script = textwrap.dedent(
        f"""
        import sys, torch, numpy as np
        from PIL import Image
        sys.path.insert(0, {str(REPO / 'scripts')!r})
        from bench import PlainJohnson
        from fastnst.model_file import load_model
        net, _ = load_model({str(model)!r})
        plain = PlainJohnson().load_from(net).eval()
        img = np.asarray(Image.open({str(photo)!r}).convert("RGB"), dtype=np.float32) / 255
        with torch.inference_mode():
            y = plain(torch.from_numpy(img).permute(2, 0, 1)[None])[0]
        Image.fromarray((y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(sys.argv[1])
        """
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(plain_script)
        runs = {
            "plain script (fp32 eager)": [sys.executable, str(script), str(Path(tmp) / "plain.jpg")],
            "python -m fastnst.apply": [sys.executable, "-m", "fastnst.apply", "-q", "--overwrite", "-m", str(model), "-o", str(Path(tmp) / "fast.jpg"), str(photo)],
        }
        for name, cmd in runs.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
                times.append(time.perf_counter() - t0)
            rows.append({"command": name, "first_s": times[0], "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)})
    for r in rows:
        r["speedup_vs_plain"] = rows[0]["median_s"] / r["median_s"]
    return rows


def section_folder(photo: Path, model: Path, count: int, threads: int | None = None) -> list[dict[str, Any]]:
    """A folder of ``count`` PNG copies of ``photo`` to PNG: a plain serial loop vs fastnst.apply with
    decoding/encoding in threads (``--io-threads``, default one per core) and without (0). Whole processes."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = default_io_threads() if threads is None else threads
    plain_script = textwrap.dedent(
        f"""
        import sys, torch, numpy as np
        from pathlib import Path
        from PIL import Image
        sys.path.insert(0, {str(REPO / 'scripts')!r})
        from bench import PlainJohnson
        from fastnst.model_file import load_model
        net, _ = load_model({str(model)!r})
        plain = PlainJohnson().load_from(net).eval().to({device!r})
        out = Path(sys.argv[2])
        out.mkdir()
        for f in sorted(Path(sys.argv[1]).iterdir()):
            img = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
            with torch.inference_mode():
                y = plain(torch.from_numpy(img).permute(2, 0, 1)[None].to({device!r}))[0].cpu()
            Image.fromarray((y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out / f.name)
        """
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "photos"
        src.mkdir()
        with Image.open(photo) as img:
            rgb = img.convert("RGB")
        for i in range(count):
            rgb.save(src / f"{i:03d}.png")
        script = Path(tmp) / "plain.py"
        script.write_text(plain_script)
        apply = [sys.executable, "-m", "fastnst.apply", "-q", "-m", str(model), str(src), "-o"]
        out = {name: Path(tmp) / name for name in ("plain", "serial", "threads")}
        runs = {
            f"plain loop (fp32 eager, {device})": ([sys.executable, str(script), str(src), str(out["plain"])], out["plain"]),
            "fastnst.apply --io-threads 0": ([*apply, str(out["serial"]), "--io-threads", "0"], out["serial"]),
            f"fastnst.apply (--io-threads {threads})": ([*apply, str(out["threads"]), "--io-threads", str(threads)], out["threads"]),
        }
        for name, (cmd, dst) in runs.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO, capture_output=True)
            seconds = time.perf_counter() - t0
            written = sum(1 for _ in dst.rglob("*.png"))
            rows.append({"command": name, "images": count, "written": written, "seconds": seconds, "images_per_s": count / seconds})
            print(f"  {name}: {seconds:.1f} s", file=sys.stderr)
    for r in rows:
        r["speedup_vs_plain"] = rows[0]["seconds"] / r["seconds"]
    return rows


def section_memory(sizes: list[tuple[int, int]], model: Path, plain_too: bool, runs: int = 3) -> list[dict[str, Any]]:
    """Peak RSS of fastnst's banded path, ``runs`` fresh processes per size (the peak varies from process to
    process by up to a few hundred MiB: the worst run is the figure to hold against a memory budget)."""
    rows = []
    for h, w in sizes:
        prep = f"import torch\nfrom fastnst.model_file import load_model\nnet, _ = load_model({str(model)!r})\n"
        # The photo as the CLI holds it, uint8, made directly: no float copies in the process's peak.
        fast = prep + f"from fastnst.stylize import Stylizer\nr = Stylizer(net, 'cpu', 'auto')\nx = torch.randint(0, 256, (3, {h}, {w}), dtype=torch.uint8)\nr.stylize_to_uint8(x)\n"
        rows.append({"size": f"{w}x{h}", "path": "fastnst (banded, whole-image stats)", **child_peaks(fast, runs)})
        if plain_too:
            plain = prep + f"x = torch.rand(3, {h}, {w})\nimport sys\nsys.path.insert(0, {str(REPO / 'scripts')!r})\nfrom bench import PlainJohnson\np = PlainJohnson().load_from(net).eval()\nwith torch.inference_mode():\n    p(x[None])\n"
            rows.append({"size": f"{w}x{h}", "path": "plain fp32 eager", **child_peaks(plain, 1)})
    rows.append({"size": "-", "path": "baseline: python + import torch", **child_peaks("import torch, fastnst.stylize\ntorch.zeros(1)", 1)})
    return rows


def child_peaks(code: str, runs: int) -> dict[str, Any]:
    """:func:`child_peak` in ``runs`` fresh processes: the largest peak RSS, the smallest, the median wall time."""
    each = [child_peak(code) for _ in range(runs)]
    peaks = [r["peak_rss_mib"] for r in each]
    return {"peak_rss_mib": max(peaks), "peak_rss_min_mib": min(peaks), "runs": runs, "wall_s": statistics.median(r["wall_s"] for r in each)}


def vgg16_features(vgg_weights: str | None) -> nn.Sequential:
    """torchvision's VGG16 ``features`` with the given weights (random init without)."""
    from fastnst.training.vgg import _make_features, load_vgg_state

    features = _make_features("vgg16")
    state = load_vgg_state(vgg_weights or "random", "vgg16")
    if state is not None:
        features.load_state_dict(state)
    return features


def training_steps(
    features: nn.Sequential, weights: str, style: torch.Tensor, batch: torch.Tensor, repeats: int,
    variants: list[tuple[Any, ...]], timer: Callable[..., dict[str, float]] = timed,
    strict_fp32_too: bool = False,
) -> list[dict[str, Any]]:
    """Time the plain fp32 step, then fastnst's step for each ``(name, bf16 autocast, channels_last[, compiled[, network_channels_last]])``.

    Plain: fp32 eager, both images through VGG to relu4_3, as in pytorch/examples. fastnst: the training
    module's loss and forward (Grams once, the photo only to relu2_2 and without grad, no VGG grads; on CPUs
    the rewritten decoder, 2x2 max-pools from elementwise maxima, a one-product Gram backward, the VGG on
    channels_last activations, a bf16 content term, freed memory reused). ``compiled``: the forward and loss
    under ``torch.compile`` (backward through AOTAutograd), its first call's time in the row's name.
    ``strict_fp32_too`` (CUDA): also the plain step with TF32 off, i.e. true fp32 convolutions.
    """
    from fastnst.training.loss import build_loss
    from fastnst.training.module import train_forward

    dev = batch.device
    torch.manual_seed(0)
    net_p = trained_like_net().train().to(dev)
    loss_p = PlainLoss(copy.deepcopy(features[:23]), style.cpu()).to(dev)  # targets computed on the CPU copy
    loss_p.targets = [t.to(dev) for t in loss_p.targets]
    opt_p = torch.optim.Adam(net_p.parameters(), 1e-3)
    with torch.no_grad():
        loss0_p = loss_p(net_p(batch), batch).item()

    def plain_step() -> None:
        opt_p.zero_grad(set_to_none=True)
        loss_p(net_p(batch), batch).backward()
        opt_p.step()

    reuse_freed_memory(False)  # glibc's defaults for the plain step, fastnst's setting for its own (as fit() does)
    t_plain = timer(plain_step, repeats)
    reuse_freed_memory(dev.type == "cpu")
    rows = [{"batch": len(batch), "path": "plain fp32 eager (reference)", **t_plain, "speedup": 1.0, "loss_same_batch": loss0_p}]
    if strict_fp32_too and dev.type == "cuda":
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            t_strict = timer(plain_step, repeats)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        rows.append({"batch": len(batch), "path": "plain fp32 eager, TF32 off (true fp32 convolutions)", **t_strict,
                     "speedup": t_plain["median_s"] / t_strict["median_s"], "loss_same_batch": loss0_p})
    for name, bf16, channels_last, *rest in variants:
        compiled = rest[0] if rest else False  # True, or a torch.compile mode such as "reduce-overhead"
        net_layout_cl = rest[1] if len(rest) > 1 else None  # False: the CPU training step's network in NCHW (before); None: the module's choice
        net_f = trained_like_net().train().to(dev)
        loss_f = build_loss("vgg16", weights, ["relu2_2"], {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 1.0, "relu4_3": 1.0}, 1.0, 1e5, 10.0).to(dev)
        loss_f.set_style(style)
        xb = batch
        if channels_last:
            net_f, loss_f = net_f.to(memory_format=torch.channels_last), loss_f.to(memory_format=torch.channels_last)
            xb = batch.contiguous(memory_format=torch.channels_last)
        opt_f = torch.optim.Adam(net_f.parameters(), 1e-3)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss0_f = loss_f(train_forward(net_f, xb, net_layout_cl), xb)["total"].item()

        def forward_loss() -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                return loss_f(train_forward(net_f, xb, net_layout_cl), xb)["total"]

        mode = compiled if isinstance(compiled, str) else None
        step_loss = torch.compile(forward_loss, dynamic=False, mode=mode) if compiled else forward_loss

        def fast_step() -> None:
            opt_f.zero_grad(set_to_none=True)
            step_loss().backward()
            opt_f.step()

        if compiled:  # the first call compiles; its loss (weights not yet stepped) is the compiled graph's on the same batch
            t0 = time.perf_counter()
            try:
                opt_f.zero_grad(set_to_none=True)
                total = step_loss()
                total.backward()
                opt_f.step()
            except Exception as e:  # noqa: BLE001 - a compiler failure costs its row, not the others
                print(f"({name} skipped: {type(e).__name__}: {str(e)[:200]})", file=sys.stderr, flush=True)
                continue
            loss0_f = total.item()
            name = f"{name}, first call {time.perf_counter() - t0:.0f} s"
        t_fast = timer(fast_step, repeats)
        rows.append({"batch": len(batch), "path": name, **t_fast, "speedup": t_plain["median_s"] / t_fast["median_s"], "loss_same_batch": loss0_f})
    for r in rows:
        r["images_per_s"] = r["batch"] / r["median_s"]
    return rows


def section_training(repeats: int, vgg_weights: str | None, forced: str = "auto") -> list[dict[str, Any]]:
    from fastnst.training.pipeline import resolve_precision

    torch.manual_seed(0)
    style = torch.rand(1, 3, 256, 256)
    batch = torch.rand(4, 3, 256, 256)
    precision = resolve_precision("32-true" if forced == "fp32" else "auto", "cpu")
    bf16 = precision.startswith("bf16")
    # The second row: the transformer's activations in the other layout than fastnst's choice for this CPU
    # (channels_last with native bf16, NCHW on AVX2-only CPUs; docs/benchmarks.md).
    other = not channels_last_training_cpu()
    variants = [(f"fastnst ({precision})", bf16, False),
                (f"fastnst ({precision}), network in {'channels_last' if other else 'NCHW'}", bf16, False, False, other)]
    return training_steps(vgg16_features(vgg_weights), vgg_weights or "random", style, batch, repeats, variants)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _cuda_timed(fn: Callable[[], Any], repeats: int, warmup: int = 3, dev: torch.device = torch.device("cuda")) -> dict[str, float]:
    """Like :func:`timed`, with the GPU synchronised around each call (kernels are asynchronous)."""

    def synced() -> None:
        fn()
        _sync(dev)

    _sync(dev)
    return timed(synced, repeats, warmup)


# Sizes of the GPU section (module constants so a CPU dry run can shrink them).
GPU_MATMUL_N = 8192
GPU_INFER_HW = (1080, 1920)
GPU_INFER_BATCHES = (1, 8)
GPU_TRAIN_SIDE = 256
GPU_TRAIN_BATCHES = (4, 16)


def _cuda_graph_timing(fast: Stylizer, x: torch.Tensor, repeats: int, timer: Callable[..., dict[str, float]]) -> tuple[dict[str, float], torch.Tensor] | None:
    """Timing and output of ``fast``'s network captured as one CUDA graph (one launch per call), or None."""
    try:
        static = x.to(fast.plan.dtype)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode():
            stream = torch.cuda.Stream()  # warm-up on a side stream, as graph capture requires
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    fast.fast_net(static)
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                static_out = fast.fast_net(static)
        t = timer(graph.replay, repeats)
        graph.replay()
        torch.cuda.synchronize()
        return t, static_out.float()
    except RuntimeError as e:  # a driver or build without graph support: keep the other rows
        print(f"(CUDA graph row skipped: {str(e)[:120]})", file=sys.stderr)
        return None


def _compiled_timing(fast: Stylizer, x: torch.Tensor, repeats: int, timer: Callable[..., dict[str, float]]) -> tuple[str, dict[str, float], torch.Tensor]:
    """``fast``'s network alone under ``torch.compile`` (Inductor fuses the norms, pads and ReLUs into fewer passes)."""
    xx = x.to(fast.plan.dtype)
    cnet = torch.compile(fast.fast_net, dynamic=False)
    with torch.inference_mode():
        t0 = time.perf_counter()
        cnet(xx)
        _sync(x.device)
        first = time.perf_counter() - t0
        t = timer(lambda: cnet(xx), repeats)
        y = cnet(xx).float()
    return f"torch.compile ({fast.plan.precision}), first call {first:.0f} s", t, y


def section_gpu(repeats: int, vgg_weights: str | None, device: str = "cuda", compile_too: bool = False) -> dict[str, Any]:
    """Issue 8's GPU figures: matmul peaks, 1080p inference paths, AMP training steps at batch 4 and 16.

    ``compile_too``: also ``torch.compile`` rows (inference: the network compiled in fp32, and
    ``Stylizer(compile=True)``; the bf16 training step, plain and with CUDA graphs) and the plain step with
    TF32 off. Rows are echoed to stderr as they are measured."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    props = torch.cuda.get_device_properties(0) if cuda else None
    out: dict[str, Any] = {"gpu": props.name if props else str(dev), "multiprocessors": props.multi_processor_count if props else None,
                           "memory_gib": props.total_memory / 2**30 if props else None}
    timed_ = lambda fn, reps, warmup=3: _cuda_timed(fn, reps, warmup, dev)  # noqa: E731
    reset_mem = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    peak_mem = (lambda: torch.cuda.max_memory_allocated() / 2**20) if cuda else (lambda: None)

    # Peaks: n^3 products, 10 per timed call; fp32 with TF32 off (true fp32), TF32, and bf16 (tensor cores).
    n = GPU_MATMUL_N
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("tf32", torch.float32), ("bf16", torch.bfloat16)):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        t = timed_(lambda: [a @ b for _ in range(10)], 3, warmup=1)["min_s"]
        peaks[f"{name}_tflops"] = 10 * 2 * n**3 / t / 1e12
        del a, b
    torch.backends.cuda.matmul.allow_tf32 = False
    peaks["best_tflops"] = max(peaks.values())
    out["peaks"] = peaks

    # Training steps (first: compiling them is the slowest part of a --compile run): plain fp32 eager vs
    # the training module's loss under bf16 autocast (Lightning's bf16-mixed).
    features = vgg16_features(vgg_weights)
    side = GPU_TRAIN_SIDE
    style = torch.rand(1, 3, side, side, device=dev)
    variants: list[tuple[str, bool, bool] | tuple[str, bool, bool, bool | str]] = [("fastnst bf16-mixed", True, False), ("fastnst bf16-mixed + channels_last", True, True)]
    if compile_too:
        variants.append(("fastnst bf16-mixed, torch.compile", True, False, True))
        if cuda:  # CUDA graphs (cudagraph trees) replay the compiled forward and backward with one launch each
            variants.append(("fastnst bf16-mixed, torch.compile reduce-overhead", True, False, "reduce-overhead"))
    train_rows = []
    for batch_size in GPU_TRAIN_BATCHES:
        torch.manual_seed(0)
        batch = torch.rand(batch_size, 3, side, side, device=dev)
        n_before = len(train_rows)
        train_rows += training_steps(features, vgg_weights or "random", style, batch, repeats, variants, timed_, strict_fp32_too=compile_too)
        for r in train_rows[n_before:]:
            print(f"[gpu] train batch {batch_size} {r['path']}: {r['median_s'] * 1e3:.1f} ms ({r['speedup']:.2f}x)", file=sys.stderr, flush=True)
    out["training"] = train_rows

    # Inference, 1920x1080, classic network, input and output on the GPU.
    h, w = GPU_INFER_HW
    net = trained_like_net()
    plain = PlainJohnson().load_from(net).eval().to(dev)
    rows = []
    for batch in GPU_INFER_BATCHES:
        x = torch.rand(batch, 3, h, w, device=dev)
        flops = count_flops(net, h, w) * batch
        with torch.inference_mode():
            ref = plain(x)
            reset_mem()
            t_plain = timed_(lambda: plain(x), repeats)
            mem_plain = peak_mem()
        fast = Stylizer(net, dev, "auto", tile=False)
        reset_mem()
        t_fast = timed_(lambda: fast(x), repeats)
        mem_fast = peak_mem()
        y_fast = fast(x)
        base = {"size": f"{w}x{h}", "batch": batch, "gflop": flops / 1e9}
        paths = [
            ("plain fp32 eager (reference)", t_plain, ref, mem_plain),
            (f"fastnst auto ({fast.plan.precision})", t_fast, y_fast, mem_fast),
        ]
        if cuda:
            graphed = _cuda_graph_timing(fast, x, repeats, timed_)
            if graphed is not None:
                paths.append((f"fastnst + CUDA graph ({fast.plan.precision})", *graphed, None))
        if compile_too:
            # The network alone compiled in fp32, then what users get: Stylizer(compile=True) (on recent GPUs
            # bf16 + channels_last), timed like the eager Stylizer row (input and output casts included).
            c_fast = Stylizer(net, dev, "auto", tile=False)
            reset_mem()
            c_name, c_t, c_y = _compiled_timing(c_fast, x, repeats, timed_)
            paths.append((c_name, c_t, c_y, peak_mem()))
            c_user = Stylizer(net, dev, "auto", tile=False, compile=True)
            reset_mem()
            t0 = time.perf_counter()
            c_y = c_user(x)
            _sync(dev)
            first = time.perf_counter() - t0
            c_t = timed_(lambda: c_user(x), repeats)
            paths.append((f"fastnst compile=True ({c_user.plan.precision} + channels_last), first call {first:.0f} s", c_t, c_y, peak_mem()))
            for c_name, c_t, *_ in paths[-2:]:
                print(f"[gpu] batch {batch} {c_name}: {c_t['median_s'] * 1e3:.1f} ms vs plain {t_plain['median_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
            del c_fast, c_user
        for path, t, y, mem in paths:
            rows.append(base | {"path": path, **t, "images_per_s": batch / t["median_s"], "tflops": flops / t["median_s"] / 1e12,
                                "speedup": t_plain["median_s"] / t["median_s"], "psnr_db": psnr(y, ref), "peak_mem_mib": mem})
        del x, ref
        if cuda:
            torch.cuda.empty_cache()
    for r in rows:
        r["peak_fraction"] = r["tflops"] / peaks["bf16_tflops"]
    out["inference"] = rows
    return out


# --------------------------------------------------------------------------- report


def fmt_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    head = [c[1] for c in cols]
    body = []
    for r in rows:
        cells = []
        for key, _, f in cols:
            v = r.get(key)
            cells.append("-" if v is None else (f.format(v) if f else str(v)))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(b) for b in body)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, no 8K, no plain-memory runs (a few minutes on 2 cores)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (tens of seconds of compilation per size; on a GPU also the compiled training step)")
    p.add_argument("--photo", type=Path, help="a 1920x1080 photo for the CLI timing (default: one is generated)")
    p.add_argument("--vgg", default=os.environ.get("FASTNST_VGG_WEIGHTS"), help="VGG16 weights for the training step (default: random init)")
    p.add_argument("--precision", choices=["auto", "fp32"], default="auto", help="fp32: time fastnst's fp32 path (what a CPU without native bf16 gets) against the fp32 peak")
    p.add_argument("--skip", nargs="*", default=[], choices=["inference", "cli", "memory", "training", "gpu"], help="sections to leave out (gpu runs only where CUDA is available)")
    p.add_argument("--isa-cap", choices=sorted(ISA_CAPS), help="cap oneDNN, MKL and ATen at this instruction set (avx2: time an AVX2-only CPU's paths on a newer CPU)")
    args = p.parse_args()
    if args.isa_cap and any(os.environ.get(k) != v for k, v in ISA_CAPS[args.isa_cap].items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ISA_CAPS[args.isa_cap]})
    reps = 3 if args.quick else 5
    results: dict[str, Any] = {"machine": section_machine()}
    print("## Machine\n")
    for k, v in results["machine"].items():
        print(f"- {k}: {v}")
    results["peaks"] = section_peaks(reps)
    pk = results["peaks"]
    print(f"\n## Measured peaks\n\nfp32 matmul {pk['fp32_gflops']:.0f} GFLOP/s, bf16 matmul {pk['bf16_gflops']:.0f} GFLOP/s"
          f" ({'native' if results['machine']['native_bf16'] else 'emulated: not counted'}); best {pk['best_gflops']:.0f} GFLOP/s")

    if "inference" not in args.skip:
        peak = pk["fp32_gflops"] if args.precision == "fp32" else pk["best_gflops"]
        results["inference"] = section_inference([(512, 512), (1080, 1920)], reps, peak, args.compile, args.precision)
        print("\n## Inference, Python API, one image\n")
        print(fmt_table(results["inference"], [("size", "size", ""), ("path", "path", ""), ("median_s", "median s", "{:.3f}"), ("min_s", "min", "{:.3f}"), ("max_s", "max", "{:.3f}"), ("gflops", "GFLOP/s", "{:.0f}"), ("peak_fraction", "of peak", "{:.0%}"), ("speedup", "vs plain", "{:.2f}x"), ("psnr_db", "PSNR dB", "{:.1f}")]))

    with tempfile.TemporaryDirectory() as tmp:
        from fastnst.model_file import save_model

        model = save_model(trained_like_net(), Path(tmp) / "bench.pt")
        if "cli" not in args.skip:
            photo = args.photo
            if photo is None:
                from fastnst.images import write_image

                photo = write_image(torch.rand(3, 1080, 1920), Path(tmp) / "photo.jpg")
            results["cli"] = section_cli(photo, model, 2 if args.quick else 3)
            print("\n## One 1920x1080 photo from the command line (whole process)\n")
            print(fmt_table(results["cli"], [("command", "command", ""), ("first_s", "first run s", "{:.2f}"), ("median_s", "median s", "{:.2f}"), ("speedup_vs_plain", "vs plain", "{:.2f}x")]))
            n = 8 if args.quick else 16
            results["folder"] = section_folder(photo, model, n)
            print(f"\n## A folder of {n} 1920x1080 PNG photos to PNG (whole process)\n")
            print(fmt_table(results["folder"], [("command", "command", ""), ("seconds", "s", "{:.1f}"), ("images_per_s", "images/s", "{:.2f}"), ("speedup_vs_plain", "vs plain", "{:.2f}x")]))
        if "memory" not in args.skip:
            sizes = [(2160, 3840)] if args.quick else [(2160, 3840), (4320, 7680)]
            results["memory"] = section_memory(sizes, model, plain_too=not args.quick)
            print("\n## Large photos: peak RSS of child processes (largest and smallest of the runs)\n")
            print(fmt_table(results["memory"], [("size", "size", ""), ("path", "path", ""), ("runs", "runs", ""), ("peak_rss_mib", "peak RSS MiB, max", "{:.0f}"), ("peak_rss_min_mib", "min", "{:.0f}"), ("wall_s", "median wall s", "{:.1f}")]))

    if "training" not in args.skip:
        results["training"] = section_training(reps, args.vgg, args.precision)
        print("\n## Training step, batch 4 of 256x256, VGG16 loss\n")
        print(fmt_table(results["training"], [("path", "path", ""), ("median_s", "median s", "{:.2f}"), ("min_s", "min", "{:.2f}"), ("max_s", "max", "{:.2f}"), ("speedup", "vs plain", "{:.2f}x"), ("loss_same_batch", "loss, same batch", "{:.4g}")]))

    if "gpu" not in args.skip and torch.cuda.is_available():
        g = results["gpu"] = section_gpu(20 if not args.quick else 10, args.vgg, compile_too=args.compile)
        pk = g["peaks"]
        print(f"\n## GPU: {g['gpu']}\n\nmatmul peaks (8192^3): fp32 {pk['fp32_tflops']:.1f}, tf32 {pk['tf32_tflops']:.1f}, bf16 {pk['bf16_tflops']:.0f} TFLOP/s")
        print("\n### Inference, 1920x1080, classic network, on the GPU\n")
        print(fmt_table(g["inference"], [("batch", "batch", ""), ("path", "path", ""), ("median_s", "median s", "{:.4f}"), ("images_per_s", "images/s", "{:.1f}"), ("tflops", "TFLOP/s", "{:.1f}"), ("peak_fraction", "of bf16 peak", "{:.1%}"), ("speedup", "vs plain", "{:.2f}x"), ("psnr_db", "PSNR dB", "{:.1f}"), ("peak_mem_mib", "peak MiB", "{:.0f}")]))
        print("\n### Training step, 256x256 crops, VGG16 loss, on the GPU\n")
        print(fmt_table(g["training"], [("batch", "batch", ""), ("path", "path", ""), ("median_s", "median s", "{:.4f}"), ("min_s", "min", "{:.4f}"), ("images_per_s", "images/s", "{:.0f}"), ("speedup", "vs plain", "{:.2f}x"), ("loss_same_batch", "loss, same batch", "{:.4g}")]))
    elif "gpu" not in args.skip:
        print("\n## GPU\n\nno CUDA device: GPU section skipped")

    results["peak_rss_parent_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
