"""x @ W^T for the packed inference loop: oneDNN on CPU (float32 on plain weights, bfloat16 on weights packed once
into oneDNN's blocked layout), torch.mm everywhere else.

``uses_onednn(x)`` is the choice, ``weight_packer(x)`` the packing; the loop (csrc/inference.cpp) makes the calls,
and ``linear_fn`` makes the same choice in Python (the roofline probes of fastbert/bench/harness.py time it).

Why not torch.mm on CPU: torch.mm sends float32 to MKL, and on the project's AMD EPYC (AVX-512) MKL runs BERT's
GEMM shapes at 140-190 GFLOP/s on 2 threads, where oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``,
the kernel torch.compile's CPU backend calls for Linear layers, in every x86 build of PyTorch) runs the same
shapes at 175-215 (benchmarks/bench_gemm.py). Both are libraries PyTorch already links; the fused ops between
the GEMMs are unchanged. A float32 weight goes in as it is: packed float32 weights measured no faster on BERT's
shapes (within 3% at 128-2000 tokens on the AMD EPYC), so they would cost a copy of every weight for nothing. A
bfloat16 weight is packed once per model (``weight_packer``, cached by fastbert/runtime/weights.py and rebuilt when the
weight changes): 5-12% faster than handing oneDNN the plain weight, which it reorders on every call.

Memory: oneDNN (and ideep, PyTorch's wrapper) cache a primitive per GEMM shape, and BERT's token count changes with
every batch; with their default capacities (1024 each) a job of varied shapes grew by more than 1 GB over a few
hundred forwards, and building a primitive costs more than a small GEMM. The inference loop runs its rows padded
to ``bucket_rows(T)`` (fastbert/runtime/layers.py), so a job sees a few dozen shapes, not thousands; fastbert caps
both caches at ``ONEDNN_CACHE_CAPACITY`` entries (``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` and
``LRU_CACHE_CAPACITY``, process-wide, read by oneDNN when it first runs) unless the environment sets them: import
fastbert before the first oneDNN call of the process for the cap to take effect. A miss rebuilds the primitive
(4-6 ms): the row buckets keep misses to the first batch of each bucket.

The results differ from torch.mm's by float32 rounding only (another summation order); the tests check the loop
against the general path within float32 tolerance with oneDNN, and bit for bit with torch.mm. On packed bfloat16
weights the loop also hands oneDNN the MLP's bias and activation, applied in the GEMM's epilogue
(csrc/inference.cpp ``linear_act``).

``FASTBERT_CPU_GEMM=mm`` (or ``set_cpu_gemm("mm")``) keeps torch.mm; so does ``torch.backends.mkldnn.flags
(enabled=False)`` or a build of PyTorch without oneDNN. float16/float64 have no faster oneDNN path, so they use
torch.mm; on a processor without float16 GEMM instructions PyTorch's float16 matmul is a reference loop, and the
first CPU forward in float16 (weights or autocast) warns once (``note_cpu_dtype``). bfloat16 needs oneDNN's bf16
kernels, which need AVX512BW/VL/DQ or AVX-NE-CONVERT: on an AVX2-only processor (Zen 2/3, Intel before
Skylake-SP/Ice Lake client) bfloat16 GEMMs go to torch.mm, with a one-time RuntimeWarning (``HAS_ONEDNN_BF16``;
`fastbert info` says which).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CPU_GEMMS",
    "HAS_ONEDNN",
    "HAS_ONEDNN_BF16",
    "HAS_ONEDNN_FP16",
    "NATIVE_BF16",
    "ONEDNN_CACHE_CAPACITY",
    "bucket_rows",
    "cpu_gemm",
    "set_cpu_gemm",
    "uses_onednn",
    "weight_packer",
    "pack_onednn",
    "describe",
    "linear_fn",
    "linear_mm",
    "linear_onednn",
]

CPU_GEMMS = ("onednn", "mm")
ONEDNN_CACHE_CAPACITY = 128  # primitives per cache: 4 GEMM shapes x the ~30 row buckets up to 2048 rows


def bucket_rows(t: int) -> int:
    """The row count the inference loop runs a CPU oneDNN GEMM of t rows at: a multiple of 16 up to 128, of 64 up
    to 512, then 8 steps per power of two (at most 12.5% extra rows, about 6% on average). oneDNN builds a primitive
    per shape, 4-6 ms each on the machine we measured (a GEMM of 2000 x 384 x 1536 takes 3 ms in bf16), and a
    padding-free batch has a new row count almost every time: bucketing makes those builds cache hits."""
    if t <= 128:
        return max(16, -(-t // 16) * 16)
    if t <= 512:
        return -(-t // 64) * 64
    step = 1 << (t.bit_length() - 4)
    return -(-t // step) * step


for _var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_var, str(ONEDNN_CACHE_CAPACITY))


def _onednn_linear() -> Callable | None:
    """torch.ops.mkldnn._linear_pointwise when this PyTorch has it and it runs, else None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(op(x, w, None, "none", [], ""), torch.full((2, 4), 3.0)):
            return None
    except (AttributeError, RuntimeError):
        return None
    return op


_ONEDNN = _onednn_linear()
HAS_ONEDNN = _ONEDNN is not None


def _onednn_bf16() -> bool:
    """Whether oneDNN runs bfloat16 GEMMs on this processor: it needs AVX512BW/VL/DQ or AVX-NE-CONVERT (an AVX2-only
    processor, or ONEDNN_MAX_CPU_ISA=AVX2, has none: oneDNN then refuses a bf16 inner product)."""
    try:
        return HAS_ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _native_bf16() -> bool:
    """Whether the processor computes bf16 products itself (AVX512-BF16 or AMX): without them oneDNN widens bf16 to
    fp32 for its GEMMs. Unknown (an older PyTorch): assumed so."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return True


def _onednn_fp16() -> bool:
    """Whether PyTorch runs float16 GEMMs on oneDNN here (AVX512-FP16, AMX-FP16 or AVX-NE-CONVERT). Elsewhere its
    CPU float16 matmul is a reference loop: bert-base's GEMMs ran 7x slower than float32 on the AMD EPYC Zen 5."""
    try:
        return HAS_ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


HAS_ONEDNN_BF16 = _onednn_bf16()
NATIVE_BF16 = _native_bf16()
HAS_ONEDNN_FP16 = _onednn_fp16()
_NO_ONEDNN_BF16 = (
    "fastbert: this processor has no oneDNN bfloat16 GEMM (it needs AVX512BW/VL/DQ or AVX-NE-CONVERT); bfloat16 "
    "GEMMs run through torch.mm, which may be slower than float32 here"
)
_NO_NATIVE_BF16 = (
    "fastbert: this processor has no bf16 dot-product instructions (avx512_bf16, AMX); oneDNN widens bfloat16 to "
    "float32 for its GEMMs, which may be slower than float32 here"
)
_SLOW_FP16 = (
    "fastbert: float16 on this CPU runs its GEMMs on PyTorch's reference loop (oneDNN's float16 GEMM needs "
    "AVX512-FP16, AMX-FP16 or AVX-NE-CONVERT), several times slower than float32; use torch.bfloat16 or float32"
)
_warned: set = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def note_cpu_dtype(dtype: torch.dtype) -> None:
    """Warn once per process where a CPU forward computes in float16 and this processor has no fast float16 GEMM."""
    if dtype == torch.float16 and not HAS_ONEDNN_FP16:
        _warn_once(_SLOW_FP16)


def _parse(name: str, source: str) -> str:
    if name not in CPU_GEMMS:
        raise ValueError(f"{source}={name!r}: expected {' or '.join(CPU_GEMMS)}")
    return name


_choice = _parse(os.environ.get("FASTBERT_CPU_GEMM") or "onednn", "FASTBERT_CPU_GEMM")


def set_cpu_gemm(name: str) -> None:
    """Choose the library for the inference loop's float32 CPU GEMMs: "onednn" (default) or "mm"."""
    global _choice
    _choice = _parse(name, "set_cpu_gemm")


def cpu_gemm() -> str:
    """The library the inference loop's float32 CPU GEMMs use now: "onednn" or "mm"."""
    if _choice == "onednn" and _ONEDNN is not None and torch.backends.mkldnn.enabled:
        return "onednn"
    return "mm"


def linear_mm(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T through torch.mm."""
    return torch.mm(x, w.t())


def linear_onednn(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T through oneDNN's inner product (needs HAS_ONEDNN); w plain (out, in) or packed by pack_onednn."""
    if w.is_mkldnn or (w.dtype == x.dtype and w.device == x.device and w.dim() == 2 and w.shape[1] == x.shape[-1]):
        return _ONEDNN(x, w, None, "none", [], "")
    return torch.mm(x, w.t())  # a mismatched weight gets torch.mm's error, not oneDNN's cryptic one


def pack_onednn(w: Tensor) -> Tensor:
    """w (out, in) in oneDNN's blocked layout for its inner product (an opaque mkldnn tensor of w's shape)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.contiguous())


def uses_onednn(x: Tensor) -> bool:
    """Whether the inference loop's GEMMs on tensors like x go to oneDNN (bfloat16: where oneDNN runs it on this
    processor; elsewhere torch.mm, with a one-time warning, and one too where the processor has no bf16 products)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or cpu_gemm() != "onednn":
        return False
    if x.dtype == torch.bfloat16:
        if not HAS_ONEDNN_BF16:
            _warn_once(_NO_ONEDNN_BF16)
            return False
        if not NATIVE_BF16:
            _warn_once(_NO_NATIVE_BF16)
    return True


def weight_packer(x: Tensor) -> Callable[[Tensor], Tensor] | None:
    """The function that packs a GEMM weight for the inference loop on activations like x, or None where the
    loop takes plain weights (float32, torch.mm, CUDA)."""
    return pack_onednn if uses_onednn(x) and x.dtype == torch.bfloat16 else None


def describe() -> list:
    """Lines for `fastbert info`: which library each dtype's inference-loop GEMMs use on CPU, and how."""
    lib = cpu_gemm()
    fp32 = "oneDNN inner product, plain weights" if lib == "onednn" else "torch.mm (MKL)"
    if lib != "onednn":
        bf16 = "torch.mm"
    elif HAS_ONEDNN_BF16:
        bf16 = "oneDNN inner product, weights packed once, the MLP's bias and activation in its epilogue"
        if not NATIVE_BF16:
            bf16 += " (widened to fp32 inside: this processor has no bf16 products, avx512_bf16 or AMX)"
    else:
        bf16 = "torch.mm (oneDNN has no bf16 GEMM on this processor: it needs AVX512BW/VL/DQ or AVX-NE-CONVERT)"
    fp16 = "oneDNN inside" if HAS_ONEDNN_FP16 else "a reference loop: this processor has no fp16 GEMM instructions"
    caps = ", ".join(
        f"{v}={os.environ.get(v, 'default')}" for v in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    )
    return [
        f"CPU GEMMs of the inference loop (FASTBERT_CPU_GEMM=onednn|mm, now {lib}): float32 {fp32}; "
        f"bfloat16 {bf16}; float16 torch.mm ({fp16}); float64 torch.mm; "
        f"float32 training GEMMs (forward and gradients): "
        f"{'oneDNN' if lib == 'onednn' else 'torch.mm (MKL)'}",
        f"oneDNN primitive caches: {caps}",
    ]


def linear_fn(x: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """f(x, w) = x @ w^T (w as nn.Linear stores it, (out, in), or packed by weight_packer) for tensors like x."""
    return linear_onednn if uses_onednn(x) else linear_mm
