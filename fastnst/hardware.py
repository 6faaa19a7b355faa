"""Which arithmetic is fast on this machine: the choice of precision and memory layout.

The rule, measured rather than assumed (see ``scripts/bench.py`` and ``docs/benchmarks.md``):

* CUDA, Ampere and newer: float32, NCHW. cuDNN runs its convolutions in TF32 there by default, and at
  1920x1080 on an H200 the network is memory-bound (instance norm, padding, upsampling between the
  convolutions), so bf16 was no faster (0.98x at batch 8, 0.80x at batch 1) and channels_last was
  slower in every precision (0.64-0.89x).
* CUDA before Ampere (no TF32): float16 (tensor cores; not measured here).
* CPU with native bf16 instructions (``avx512_bf16`` or AMX on x86, ``bf16`` on Arm): bfloat16,
  about 2x the float32 speed of the same machine.
* Any other CPU (e.g. AVX2-only): float32. bf16 there is emulated and several times *slower*,
  so it is never chosen automatically.
* x86 CPUs with AVX2 or newer: channels_last activations, in any precision, for inference. oneDNN's
  convolutions read and write channels-last blocks, so an NCHW network converts every activation to that
  layout and back. On an AMX Xeon that was over half of the time: channels_last ran 2.5x faster in bf16
  (512x512 and 1080p) and 1.15x in fp32. With oneDNN, MKL and ATen capped at AVX2 (an AVX2-only laptop CPU) or
  at AVX512_CORE_BF16 (a Zen 4) on that Xeon it ran 1.07-1.20x faster in fp32 and 1.06x in bf16
  (docs/benchmarks.md). NCHW was measured faster on a real Zen 4 before instance norm and the upsampling rewrite
  stopped converting channels_last activations to NCHW; since then, on a real Zen 4, channels_last ran 1.05x (512x512)
  and 1.14x (1080p) faster in bf16. On a real AVX2-only CPU (Zen 2) inference ran 1.08-1.11x faster
  channels_last. Other CPUs (Arm, or no flags to read) keep NCHW: unmeasured.
* Training steps (the network's forward and backward): channels_last only on x86 CPUs with native bf16 (1.13-1.31x
  per step on an AMX Xeon; 1.02-1.07x capped at AVX512_CORE_BF16; on a real Zen 4 level at 128x128 and 1.04-1.07x at
  256x256). On the real Zen 2 the NCHW network was faster: 2-6% per step at 128x128, 6-12% at 256x256
  (docs/benchmarks.md), so AVX2-only CPUs train it in NCHW.

Every choice can be overridden (``precision=`` in the API, ``--precision`` on the CLI).

One more process-wide setting matters on Linux CPUs: glibc serves every allocation above 32 MiB
(a 1920x1080 activation of 32 channels is 133 MB in bf16) with a fresh ``mmap`` and unmaps it when
freed, so each layer's output costs the kernel a page fault and a page of zeros per 4 KiB. At
1920x1080 that was a third of the forward pass. :func:`reuse_freed_memory` keeps freed memory in the
process for the next tensor instead (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (Linux; x86 ``flags`` or Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: x86 instruction sets that ``ONEDNN_MAX_CPU_ISA`` may cap oneDNN at and that have no bf16 dot product:
#: under such a cap oneDNN's bf16 convolutions are emulated even on a CPU that has the instructions.
_ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})


def onednn_isa_cap() -> str | None:
    """The instruction-set cap the environment puts on oneDNN (``ONEDNN_MAX_CPU_ISA``), upper case, or None."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip()
        if value:
            return value.upper()
    return None


def native_bf16_cpu(flags: frozenset[str] | None = None) -> bool:
    """True where the CPU executes bf16 matrix math natively (not emulated through fp32).

    The CPU must have the instructions and oneDNN must be allowed to use them: ``ONEDNN_MAX_CPU_ISA=AVX2``
    (how ``scripts/bench.py`` stands in for an AVX2-only machine) makes bf16 emulated again.
    """
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}) and onednn_isa_cap() not in _ONEDNN_ISAS_WITHOUT_BF16


def channels_last_cpu(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU runs the network on channels_last activations: x86 with AVX2 or newer (oneDNN's kernels
    measured there, see above); NCHW elsewhere."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags


def channels_last_training_cpu(flags: frozenset[str] | None = None) -> bool:
    """Whether CPU training steps run the network on channels_last activations: x86 with native bf16 (AMX, AVX-512
    BF16), where it was faster; NCHW on AVX2-only CPUs, where it was faster (see above), and elsewhere."""
    flags = cpu_flags() if flags is None else flags
    return channels_last_cpu(flags) and native_bf16_cpu(flags)


@dataclass(frozen=True)
class ExecutionPlan:
    """How to run the network: on ``device`` with weights and activations in ``dtype``.

    Inference casts the whole network (weights once, activations throughout): on a Zen 4 CPU pure
    bf16 ran the classic network at 512x512 in 0.37 s against 0.49 s for bf16 autocast and 0.82 s
    for fp32, at 51 dB PSNR against fp32. Training uses autocast instead (Lightning's bf16-mixed).
    """

    device: torch.device
    dtype: torch.dtype
    reason: str
    channels_last: bool = False  # run the network on channels_last activations (x86 CPUs with AVX2 or newer)

    @property
    def precision(self) -> str:
        return {v: k for k, v in _DTYPES.items()}[self.dtype]


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The (major, minor) compute capability of a CUDA device."""
    return torch.cuda.get_device_capability(device)


def plan_for(device: torch.device, precision: str = "auto", flags: frozenset[str] | None = None, compiled: bool = False) -> ExecutionPlan:
    """The fastest sound way to run on ``device``; ``precision`` other than ``auto`` forces the dtype.

    ``compiled``: the network will run under ``torch.compile``, which changes the answer on recent GPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision != "auto":
            return ExecutionPlan(device, _DTYPES[precision], f"CUDA: {precision} (forced)")
        if cuda_capability(device) >= (8, 0) and compiled:
            # Compiled, bf16 + channels_last was the fastest path measured: 2.34-2.42x plain against 1.55-1.77x
            # compiled fp32 (H100, 1080p, 51.6 dB against fp32). Eager bf16 was slower than fp32, hence below.
            return ExecutionPlan(device, torch.bfloat16, "CUDA (Ampere or newer), compiled: bf16 + channels_last")
        if cuda_capability(device) >= (8, 0):
            return ExecutionPlan(device, torch.float32, "CUDA (Ampere or newer): fp32 with TF32 convolutions")
        return ExecutionPlan(device, torch.float16, "CUDA before Ampere: fp16")
    flags = cpu_flags() if flags is None else flags
    cl = channels_last_cpu(flags)
    layout = ", channels_last" if cl else ""
    if precision != "auto":
        return ExecutionPlan(device, _DTYPES[precision], f"CPU: {precision} (forced){layout}", cl)
    if native_bf16_cpu(flags):
        return ExecutionPlan(device, torch.bfloat16, f"CPU with native bf16: bf16{layout}", cl)
    return ExecutionPlan(device, torch.float32, f"CPU without native bf16: fp32 (emulated bf16 would be slower){layout}", cl)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
# glibc's defaults as a long-running process reaches them: its dynamic mmap threshold rises to the largest
# freed block up to 32 MiB, the trim threshold to twice that (any mallopt call freezes them, so set them).
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_MMAP_THRESHOLD: 32 << 20, _M_TRIM_THRESHOLD: 64 << 20}


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def reuse_freed_memory(enable: bool = True) -> bool:
    """Keep freed memory in the process for reuse (glibc only; elsewhere a no-op returning False).

    glibc hands out large blocks with ``mmap`` and returns them on ``free``; the next tensor of that
    size then pays a page fault per 4 KiB. With ``mmap`` off for large blocks and no trimming, they
    come from the heap and are reused: 1920x1080 inference 2.85 -> 1.76 s and a CPU training step
    1.82 -> 1.69 s on a Zen 4 (docs/benchmarks.md). The price: the process keeps its peak memory
    until it exits. fastnst's CPU inference and training call this; ``FASTNST_SYSTEM_MALLOC=1`` in
    the environment leaves malloc alone. ``enable=False`` restores glibc's defaults.
    """
    libc = _glibc()
    if libc is None or (enable and os.environ.get("FASTNST_SYSTEM_MALLOC", "") not in ("", "0")):
        return False
    if enable:
        settings = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}
    else:
        settings = _GLIBC_DEFAULTS
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())
