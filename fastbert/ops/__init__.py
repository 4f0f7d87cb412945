"""The Python face of ``torch.ops.fastbert``: loading the extension, fake (meta) implementations for
torch.compile, and one function per op that runs the compiled kernel when it can and the reference
(fastbert/ops/reference.py) when it cannot (except encoder_layers, which only composes the other ops: its one caller,
fastbert/runtime/layers.py, falls back to the per-layer path instead).

The reference runs instead of the kernel when the extension is not built, when it has no kernel for the
tensors' device, or when autograd must record the op and no backward kernel is registered for it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference

OPS = (
    "pack",
    "unpack",
    "embeddings",
    "attention",
    "attention_masked",
    "bias_act",
    "bias_residual_layernorm",
    "encoder_layers",
    "quantize_rows",
    "dequantize_rows",
    "dequant_bias_act_quant",
    "dequant_bias_residual_layernorm",
    "attention_quant",
)
# Ops with a CPU kernel only, by design (int8 inference around torch._int_mm); on CUDA they run the reference.
CPU_ONLY_OPS = (
    "quantize_rows",
    "dequantize_rows",
    "dequant_bias_act_quant",
    "dequant_bias_residual_layernorm",
    "attention_quant",
)

_C = None
LOAD_ERROR: str | None = None
try:
    from .. import _C  # noqa: F811  (registers torch.ops.fastbert.*)
except (ImportError, OSError) as exc:  # not built, or built against another torch
    LOAD_ERROR = str(exc)
    if os.environ.get("FASTBERT_QUIET") != "1":
        warnings.warn(
            f"fastbert: compiled kernels unavailable ({exc.__class__.__name__}: {str(exc).splitlines()[0]}); "
            "running the reference ops. Rebuild with: pip install --no-build-isolation -e .",
            RuntimeWarning,
            stacklevel=2,
        )

HAS_EXTENSION = _C is not None

# After the extension: autograd.py registers the fakes of the backward ops when they exist.
from .autograd import DIFFERENTIABLE_OPS  # noqa: E402

if HAS_EXTENSION and os.environ.get("FASTBERT_CPU_ISA"):
    try:
        _C.set_cpu_isa(os.environ["FASTBERT_CPU_ISA"])
    except ValueError as exc:
        raise ValueError(f"FASTBERT_CPU_ISA={os.environ['FASTBERT_CPU_ISA']!r}: {exc}") from None

if HAS_EXTENSION and os.environ.get("FASTBERT_CPU_BF16_DOT", "").strip() == "0":
    _C.set_cpu_bf16_dot(False)


def compiling() -> bool:
    """Whether torch.compile is tracing the caller: eager-only work (input checks, caches, packed weights) is
    skipped then."""
    return torch.compiler.is_compiling()


def _kernel_table() -> dict[tuple[str, str], bool]:
    table = {}
    if HAS_EXTENSION:
        for name in OPS:
            for key in ("CPU", "CUDA"):
                table[(name, key.lower())] = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}", key)
    return table


# (op name, device type) -> whether a compiled kernel exists; a plain dict so torch.compile can read it.
KERNELS = _kernel_table()
# Ops whose backward is registered (csrc/autograd.cpp); the others fall back to the reference while training.
DIFFERENTIABLE = frozenset(DIFFERENTIABLE_OPS)


def has_kernel(name: str, device: torch.device | str) -> bool:
    return KERNELS.get((name, torch.device(device).type), False)


def _use_kernel(name: str, device: torch.device, *tensors: Tensor | None) -> bool:
    if not KERNELS.get((name, device.type), False):
        return False
    if device.type == "cuda" and any(t is not None and t.dtype == torch.float64 for t in tensors):
        return False  # the CUDA kernels store fp32/fp16/bf16; float64 (gradcheck) takes the reference
    if name not in DIFFERENTIABLE and torch.is_grad_enabled():
        if any(t is not None and t.requires_grad for t in tensors):
            return False
    return True


# ---------------------------------------------------------------- fake implementations


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if HAS_EXTENSION:

    @torch.library.register_fake("fastbert::pack")
    def _pack_fake(attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B = attention_mask.shape[0]
        T = torch.library.get_ctx().new_dynamic_size()
        indices = attention_mask.new_empty(T, dtype=torch.int64)
        return (
            indices,
            attention_mask.new_empty(B + 1, dtype=torch.int32),
            attention_mask.new_empty(T, dtype=torch.int64),
        )

    @torch.library.register_fake("fastbert::unpack")
    def _unpack_fake(x: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
        return x.new_empty(batch, seqlen, *x.shape[1:])

    @torch.library.register_fake("fastbert::embeddings")
    def _embeddings_fake(
        input_ids: Tensor,
        position_ids: Tensor,
        token_type_ids: Tensor | None,
        word_weight: Tensor,
        position_weight: Tensor,
        token_type_weight: Tensor | None,
        ln_weight: Tensor,
        ln_bias: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        H = word_weight.shape[1]
        stats = input_ids.new_empty(input_ids.shape, dtype=_acc_dtype(word_weight.dtype))
        return word_weight.new_empty(*input_ids.shape, H), stats, torch.empty_like(stats)

    @torch.library.register_fake("fastbert::attention")
    def _attention_fake(
        qkv: Tensor,
        qkv_bias: Tensor | None,
        cu_seqlens: Tensor,
        max_seqlen: int,
        num_heads: int,
        scale: float,
        dropout_p: float = 0.0,
        seed: int = 0,
        offset: int = 0,
    ) -> tuple[Tensor, Tensor]:
        T = qkv.shape[0]
        H = qkv.shape[1] // 3
        return qkv.new_empty(T, H), qkv.new_empty(num_heads, T, dtype=torch.float32)

    @torch.library.register_fake("fastbert::attention_masked")
    def _attention_masked_fake(
        qkv: Tensor,
        qkv_bias: Tensor | None,
        mask: Tensor,
        num_heads: int,
        scale: float,
        dropout_p: float = 0.0,
        seed: int = 0,
        offset: int = 0,
    ) -> tuple[Tensor, Tensor]:
        B, L, H3 = qkv.shape
        return qkv.new_empty(B, L, H3 // 3), qkv.new_empty(B, num_heads, L, dtype=torch.float32)

    @torch.library.register_fake("fastbert::bias_act")
    def _bias_act_fake(x: Tensor, bias: Tensor, activation: str) -> Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("fastbert::bias_residual_layernorm")
    def _bias_residual_layernorm_fake(
        x: Tensor, bias: Tensor | None, residual: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        stats = x.new_empty(x.shape[:-1], dtype=_acc_dtype(x.dtype))
        return torch.empty_like(x), stats, torch.empty_like(stats)

    @torch.library.register_fake("fastbert::encoder_layers")
    def _encoder_layers_fake(
        x: Tensor,
        cu_seqlens: Tensor,
        max_seqlen: int,
        num_heads: int,
        scale: float,
        activation: str,
        weights: Sequence[Tensor | None],
        eps: Sequence[float],
        all_layers: bool = False,
        onednn: bool = False,
    ) -> list[Tensor]:
        return [torch.empty_like(x) for _ in range(len(weights) // 12 if all_layers else 1)]

    def _rows_fake(like: Tensor, rows: int, on: bool) -> Tensor:  # a (T,) float32 scale or shift, or (0,)
        return like.new_empty(rows if on else 0, dtype=torch.float32)

    @torch.library.register_fake("fastbert::quantize_rows")
    def _quantize_rows_fake(
        x: Tensor, smooth: Tensor | None, asymmetric: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        T = x.shape[0]
        return x.new_empty(x.shape, dtype=torch.int8), _rows_fake(x, T, True), _rows_fake(x, T, asymmetric)

    @torch.library.register_fake("fastbert::attention_quant")
    def _attention_quant_fake(
        qkv: Tensor,
        qkv_bias: Tensor | None,
        cu_seqlens: Tensor,
        max_seqlen: int,
        num_heads: int,
        scale: float,
        smooth: Tensor | None,
        asymmetric: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T, H = qkv.shape[0], qkv.shape[1] // 3
        return qkv.new_empty((T, H), dtype=torch.int8), _rows_fake(qkv, T, True), _rows_fake(qkv, T, asymmetric)

    @torch.library.register_fake("fastbert::dequantize_rows")
    def _dequantize_rows_fake(
        acc: Tensor,
        x_scale: Tensor,
        w_scale: Tensor,
        dtype: torch.dtype,
        x_shift: Tensor | None = None,
        w_sum: Tensor | None = None,
    ) -> Tensor:
        return acc.new_empty(acc.shape, dtype=dtype)

    @torch.library.register_fake("fastbert::dequant_bias_act_quant")
    def _dequant_bias_act_quant_fake(
        acc: Tensor,
        x_scale: Tensor,
        w_scale: Tensor,
        bias: Tensor,
        activation: str,
        smooth: Tensor | None,
        x_shift: Tensor | None = None,
        w_sum: Tensor | None = None,
        asymmetric: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        T = acc.shape[0]
        return acc.new_empty(acc.shape, dtype=torch.int8), _rows_fake(acc, T, True), _rows_fake(acc, T, asymmetric)

    @torch.library.register_fake("fastbert::dequant_bias_residual_layernorm")
    def _dequant_bias_residual_layernorm_fake(
        acc: Tensor,
        x_scale: Tensor,
        w_scale: Tensor,
        bias: Tensor | None,
        residual: Tensor,
        weight: Tensor,
        beta: Tensor,
        eps: float,
        quantize: bool,
        smooth: Tensor | None,
        x_shift: Tensor | None = None,
        w_sum: Tensor | None = None,
        asymmetric: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        T = acc.shape[0]
        q = acc.new_empty(acc.shape if quantize else (0,), dtype=torch.int8)
        return (
            residual.new_empty(acc.shape),
            q,
            _rows_fake(acc, T, quantize),
            _rows_fake(acc, T, quantize and asymmetric),
        )


# ---------------------------------------------------------------- the ops


def pack(attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(indices, cu_seqlens, positions) of the real tokens of a (B, L) mask; see reference.pack."""
    if _use_kernel("pack", attention_mask.device):
        return torch.ops.fastbert.pack(attention_mask)
    return reference.pack(attention_mask)


def unpack(x: Tensor, indices: Tensor, batch: int, seqlen: int) -> Tensor:
    if _use_kernel("unpack", x.device, x):
        return torch.ops.fastbert.unpack(x, indices, batch, seqlen)
    return reference.unpack(x, indices, batch, seqlen)


def embeddings(
    input_ids: Tensor,
    position_ids: Tensor,
    token_type_ids: Tensor | None,
    word_weight: Tensor,
    position_weight: Tensor,
    token_type_weight: Tensor | None,
    ln_weight: Tensor,
    ln_bias: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    args = (
        input_ids,
        position_ids,
        token_type_ids,
        word_weight,
        position_weight,
        token_type_weight,
        ln_weight,
        ln_bias,
        eps,
    )
    if _use_kernel(
        "embeddings", word_weight.device, word_weight, position_weight, token_type_weight, ln_weight, ln_bias
    ):
        return torch.ops.fastbert.embeddings(*args)
    return reference.embeddings(*args)


def attention(
    qkv: Tensor,
    qkv_bias: Tensor | None,
    cu_seqlens: Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    args = (qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, dropout_p, seed, offset)
    if _use_kernel("attention", qkv.device, qkv, qkv_bias):
        return torch.ops.fastbert.attention(*args)
    return reference.attention(*args)


def attention_masked(
    qkv: Tensor,
    qkv_bias: Tensor | None,
    mask: Tensor,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    args = (qkv, qkv_bias, mask, num_heads, scale, dropout_p, seed, offset)
    if _use_kernel("attention_masked", qkv.device, qkv, qkv_bias, mask):
        return torch.ops.fastbert.attention_masked(*args)
    return reference.attention_masked(*args)


def bias_act(x: Tensor, bias: Tensor, activation: str) -> Tensor:
    if activation in reference.ACTIVATIONS and _use_kernel("bias_act", x.device, x, bias):
        return torch.ops.fastbert.bias_act(x, bias, activation)
    return reference.bias_act(x, bias, activation)


def bias_residual_layernorm(
    x: Tensor, bias: Tensor | None, residual: Tensor, ln_weight: Tensor, ln_bias: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    args = (x, bias, residual, ln_weight, ln_bias, eps)
    if _use_kernel("bias_residual_layernorm", x.device, x, bias, residual, ln_weight, ln_bias):
        return torch.ops.fastbert.bias_residual_layernorm(*args)
    return reference.bias_residual_layernorm(*args)


# int8 inference (CPU kernels only; see csrc/fastbert.cpp for the quantization rule)


def quantize_rows(x: Tensor, smooth: Tensor | None = None, asymmetric: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    if _use_kernel("quantize_rows", x.device, x, smooth):
        return torch.ops.fastbert.quantize_rows(x, smooth, asymmetric)
    return reference.quantize_rows(x, smooth, asymmetric)


def attention_quant(
    qkv: Tensor,
    qkv_bias: Tensor | None,
    cu_seqlens: Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    smooth: Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    args = (qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, smooth, asymmetric)
    if _use_kernel("attention_quant", qkv.device, qkv, qkv_bias, smooth):
        return torch.ops.fastbert.attention_quant(*args)
    return reference.attention_quant(*args)


def dequantize_rows(
    acc: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    dtype: torch.dtype,
    x_shift: Tensor | None = None,
    w_sum: Tensor | None = None,
) -> Tensor:
    if _use_kernel("dequantize_rows", acc.device, x_scale, w_scale, x_shift, w_sum):
        return torch.ops.fastbert.dequantize_rows(acc, x_scale, w_scale, dtype, x_shift, w_sum)
    return reference.dequantize_rows(acc, x_scale, w_scale, dtype, x_shift, w_sum)


def dequant_bias_act_quant(
    acc: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Tensor,
    activation: str,
    smooth: Tensor | None = None,
    x_shift: Tensor | None = None,
    w_sum: Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    args = (acc, x_scale, w_scale, bias, activation, smooth, x_shift, w_sum, asymmetric)
    if activation in reference.ACTIVATIONS and _use_kernel(
        "dequant_bias_act_quant", acc.device, x_scale, w_scale, bias, smooth, x_shift, w_sum
    ):
        return torch.ops.fastbert.dequant_bias_act_quant(*args)
    return reference.dequant_bias_act_quant(*args)


def dequant_bias_residual_layernorm(
    acc: Tensor,
    x_scale: Tensor,
    w_scale: Tensor,
    bias: Tensor | None,
    residual: Tensor,
    weight: Tensor,
    beta: Tensor,
    eps: float,
    quantize: bool,
    smooth: Tensor | None = None,
    x_shift: Tensor | None = None,
    w_sum: Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    args = (acc, x_scale, w_scale, bias, residual, weight, beta, eps, quantize, smooth, x_shift, w_sum, asymmetric)
    if _use_kernel(
        "dequant_bias_residual_layernorm",
        acc.device,
        x_scale,
        w_scale,
        bias,
        residual,
        weight,
        beta,
        smooth,
        x_shift,
        w_sum,
    ):
        return torch.ops.fastbert.dequant_bias_residual_layernorm(*args)
    return reference.dequant_bias_residual_layernorm(*args)


# ---------------------------------------------------------------- build facts


def cpu_isa() -> str | None:
    """The instruction set the CPU kernels run now ("avx512", "avx2", "scalar"), None without the extension."""
    return _C.cpu_isa() if HAS_EXTENSION else None


def set_cpu_isa(isa: str) -> None:
    """Choose the CPU kernels' instruction set (as FASTBERT_CPU_ISA does at start-up)."""
    if not HAS_EXTENSION:
        raise RuntimeError("fastbert: the compiled extension is not loaded")
    _C.set_cpu_isa(isa)


def supported_cpu_isas() -> list[str]:
    return list(_C.supported_cpu_isas()) if HAS_EXTENSION else []


def cpu_bf16_dot() -> bool:
    """Whether bfloat16 attention on the avx512 path uses the AVX512-BF16 dot-product kernels now (default where
    the processor has avx512_bf16; FASTBERT_CPU_BF16_DOT=0 at import turns them off)."""
    return bool(_C.cpu_bf16_dot()) if HAS_EXTENSION else False


def set_cpu_bf16_dot(on: bool) -> None:
    """Turn the AVX512-BF16 dot-product attention kernels on or off; off keeps the fp32-staged path."""
    if not HAS_EXTENSION:
        raise RuntimeError("fastbert: the compiled extension is not loaded")
    _C.set_cpu_bf16_dot(bool(on))


def cpu_bf16_dot_supported() -> bool:
    """Whether this processor has avx512_bf16 (and the extension is loaded)."""
    return bool(_C.cpu_bf16_dot_supported()) if HAS_EXTENSION else False
