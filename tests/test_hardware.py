"""The fast path: chosen per machine, never emulated bf16, and numerically close to fp32."""

import subprocess
import sys

import pytest
import torch

from fastnst.hardware import ExecutionPlan, channels_last_cpu, channels_last_training_cpu, native_bf16_cpu, plan_for, reuse_freed_memory
from fastnst.net import TransformerNet
from fastnst.stylize import Stylizer

CPU = torch.device("cpu")
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl"}  # Skylake-X: bf16 would be emulated
ZEN4 = AVX512_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"amx_bf16", "amx_tile"}
ARM_BF16 = frozenset({"fp", "asimd", "sve", "bf16"})  # /proc/cpuinfo "Features" of an Arm CPU with bf16


def test_chooser_uses_bf16_only_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert not native_bf16_cpu(AVX2_ONLY) and not native_bf16_cpu(AVX512_NO_BF16)
    assert native_bf16_cpu(ZEN4) and native_bf16_cpu(SAPPHIRE_RAPIDS)
    assert plan_for(CPU, "auto", AVX2_ONLY).dtype == torch.float32
    assert plan_for(CPU, "auto", AVX512_NO_BF16).dtype == torch.float32
    assert plan_for(CPU, "auto", ZEN4).dtype == torch.bfloat16
    assert plan_for(CPU, "fp32", ZEN4).dtype == torch.float32  # the override wins
    assert plan_for(CPU, "bf16", AVX2_ONLY).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        plan_for(CPU, "int4")


def test_x86_cpu_plans_run_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    # AMX Xeon: 2.5x in bf16, 1.15x in fp32; capped at AVX2 or AVX512_CORE_BF16: 1.06-1.20x (docs/benchmarks.md).
    # Arm, or a machine whose flags cannot be read: NCHW (unmeasured).
    for cap in (None, "avx2", "AVX512_CORE_BF16"):
        if cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        for flags, expected in ((SAPPHIRE_RAPIDS, True), (ZEN4, True), (AVX2_ONLY, True), (AVX512_NO_BF16, True), (ARM_BF16, False), (frozenset(), False)):
            assert channels_last_cpu(flags) == expected
            for precision in ("auto", "fp32", "bf16"):
                plan = plan_for(CPU, precision, flags)
                assert plan.channels_last == expected and ("channels_last" in plan.reason) == expected, (cap, flags, precision)


def test_cpu_training_runs_the_network_channels_last_only_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    # AMX Xeon: 1.13-1.31x per step; capped at AVX512_CORE_BF16: 1.02-1.07x. A real AVX2-only Zen 2: NCHW 2-12%
    # faster, and an AVX2 cap on the Xeon agreed (docs/benchmarks.md). Arm: NCHW (unmeasured).
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for flags, expected in ((SAPPHIRE_RAPIDS, True), (ZEN4, True), (AVX2_ONLY, False), (AVX512_NO_BF16, False), (ARM_BF16, False), (frozenset(), False)):
        assert channels_last_training_cpu(flags) == expected, flags
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # how bench.py stands in for an AVX2-only CPU
    assert not channels_last_training_cpu(SAPPHIRE_RAPIDS) and not channels_last_training_cpu(ZEN4)


def test_chooser_follows_a_onednn_isa_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 makes oneDNN emulate bf16 even on a Zen 4.
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for cap in ("avx2", "AVX512_CORE", " avx512_core_vnni "):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert not native_bf16_cpu(ZEN4) and not native_bf16_cpu(SAPPHIRE_RAPIDS), cap
        assert plan_for(CPU, "auto", ZEN4).dtype == torch.float32, cap
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", ""):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert native_bf16_cpu(ZEN4), cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # oneDNN's older name for the same setting
    assert not native_bf16_cpu(ZEN4)
    assert not native_bf16_cpu(AVX2_ONLY)


def test_cuda_choice_follows_the_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    # H200 measurements (docs/benchmarks.md): bf16 and channels_last were no faster than fp32 with TF32.
    import fastnst.hardware as hw

    gpu = torch.device("cuda")
    monkeypatch.setattr(hw, "cuda_capability", lambda device: (9, 0))
    plan = plan_for(gpu)
    assert plan.dtype == torch.float32 and "TF32" in plan.reason
    assert plan_for(gpu, "bf16").dtype == torch.bfloat16  # the override wins
    # Compiled, bf16 + channels_last was the fastest (H100); a forced precision still wins.
    assert plan_for(gpu, compiled=True).dtype == torch.bfloat16 and plan_for(gpu, "fp32", compiled=True).dtype == torch.float32
    monkeypatch.setattr(hw, "cuda_capability", lambda device: (7, 5))  # Turing: no TF32, fp16 tensor cores
    assert plan_for(gpu).dtype == torch.float16 and plan_for(gpu, compiled=True).dtype == torch.float16
    assert plan_for(torch.device("cpu"), "auto", ZEN4, compiled=True).dtype == torch.bfloat16  # CPUs: unchanged


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a - b) ** 2)))


def _trained_looking_net() -> TransformerNet:
    torch.manual_seed(0)
    net = TransformerNet(16, 2)
    for m in net.modules():  # non-trivial norm parameters, as after training
        if isinstance(m, torch.nn.InstanceNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_fast_path_matches_fp32(precision: str) -> None:
    net = _trained_looking_net()
    x = torch.rand(1, 3, 64, 80)
    ref = Stylizer(net, "cpu", "fp32")(x)
    fast = Stylizer(net, "cpu", precision)(x)
    assert fast.dtype == torch.float32 and fast.shape == ref.shape
    assert _psnr(fast, ref) >= 40


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stylizer_gives_the_same_image_in_either_layout(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    # The layout is the machine's choice (channels_last on AMX); the picture must not depend on it.
    import importlib

    st = importlib.import_module("fastnst.stylize")  # the module (the package's `stylize` is the function)
    net = _trained_looking_net()
    x = torch.rand(2, 3, 40, 56)
    outs = {}
    for channels_last in (False, True):
        monkeypatch.setattr(st, "plan_for", lambda device, precision, compiled=False, cl=channels_last: ExecutionPlan(device, {"fp32": torch.float32, "bf16": torch.bfloat16}[precision], "test", cl))
        runner = Stylizer(net, "cpu", precision, tile=False)
        assert runner.plan.channels_last == channels_last
        outs[channels_last] = runner(x)
        assert outs[channels_last].is_contiguous() and outs[channels_last].shape == x.shape
    assert _psnr(outs[True], outs[False]) >= (80 if precision == "fp32" else 40)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_matches_fp32() -> None:
    net = _trained_looking_net()
    x = torch.rand(2, 3, 128, 96)
    ref = Stylizer(net, "cpu", "fp32")(x)
    fast = Stylizer(net, "cuda", "auto")
    assert isinstance(fast.plan, ExecutionPlan) and fast.plan.device.type == "cuda"
    assert _psnr(fast(x), ref) >= 40
    compiled = Stylizer(net, "cuda", "auto", compile=True)
    if torch.cuda.get_device_capability() >= (8, 0):
        assert compiled.plan.precision == "bf16"  # the fastest compiled path measured (docs/benchmarks.md)
    assert _psnr(compiled(x), ref) >= 40 and _psnr(compiled(x[:1]), ref[:1]) >= 40


_MALLOC_PROBE = """
import ctypes, torch
from fastnst.hardware import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
def new_mappings():  # mmapped blocks added by one 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB)
    before = libc.mallinfo2().hblks
    x = torch.empty(64 << 20, dtype=torch.uint8)
    return libc.mallinfo2().hblks - before
print(new_mappings(), reuse_freed_memory(), new_mappings())
"""


@pytest.mark.skipif(not reuse_freed_memory(), reason="needs glibc (Linux)")
def test_reuse_freed_memory_serves_large_tensors_from_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    # In a fresh interpreter: this process's heap already holds big freed blocks that would serve the tensor.
    probe = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, timeout=120)
    if "mallinfo2" in probe.stderr:
        pytest.skip("glibc without mallinfo2")
    assert probe.returncode == 0, probe.stderr[-500:]
    # glibc's default: a fresh mapping (page faults on first touch); reuse on: from the heap, no new mapping.
    assert probe.stdout.split() == ["1", "True", "0"]
    monkeypatch.setenv("FASTNST_SYSTEM_MALLOC", "1")
    assert not reuse_freed_memory()  # the user's opt-out
