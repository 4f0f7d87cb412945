"""The packed inference loop: BERT layers on real tokens, in one call of ``torch.ops.fastbert.encoder_layers``.

``encoder.run`` takes this loop when nothing needs a gradient, the model is in eval mode and every op has a
compiled kernel for the device and dtype; otherwise it runs ``encoder._packed_layer`` per layer. Both do the
same arithmetic in the same order (one QKV GEMM, attention with the bias added on load, the output GEMM and
bias+residual+LayerNorm, the MLP's GEMM, bias+activation, GEMM, bias+residual+LayerNorm). With the same GEMM library
(``FASTBERT_CPU_GEMM=mm``, and always on CUDA) the outputs are bit-identical; with oneDNN, the float32 CPU
default (fastbert/ops/gemm.py), they differ by float32 rounding. tests/model/test_parity.py checks both. In bfloat16
on weights packed for oneDNN the loop runs the MLP's bias and activation in the GEMM's epilogue (one bf16 rounding
where the per-layer path has two): tests/runtime/test_bf16.py checks it against the reference.

Why it exists: at batch sizes that keep a GPU busy for only a millisecond or two per forward, the host is the
bottleneck: a layer is 8 op calls, each 10-35 us from Python. The loop is C++ (csrc/inference.cpp), each call a
typed dispatcher call below autograd. This module reads each layer's weights once per forward through the modules'
own dicts (no nn.Module.__getattr__ chains, no config reads per layer), afresh every forward: nothing goes stale
when a module, a parameter or a dtype changes. GEMM weights come packed for the GEMM library where that pays
(fastbert/ops/gemm.py ``weight_packer``; cached by fastbert/runtime/weights.py and rebuilt when a weight changes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import gemm, reference
from . import cuda_graphs
from .weights import fused_qkv, layer_parts, packed_weight

__all__ = ["LayerWeights", "layer_weights", "run_layers"]


class LayerWeights(NamedTuple):
    """Every layer's tensors, flat in encoder_layers' order (12 per layer, see csrc/fastbert.cpp), and the two
    LayerNorm eps of each layer."""

    tensors: list[Tensor | None]
    eps: list[float]


def _one_layer(
    layer: nn.Module,
    weights: LayerWeights,
    pack: Callable[[Tensor], Tensor] | None,
    cast: Callable[[nn.Module, str, Tensor | None], Tensor | None],
) -> None:
    sa, o_dense, ln1, inter, o2_dense, ln2 = layer_parts(layer)  # any family's names (runtime/layout.py)
    wqkv, bqkv = fused_qkv(sa, False, pack)
    if inter._parameters["bias"] is None:
        raise KeyError("intermediate bias")  # the kernels need it; the general path supplies zeros
    weights.tensors.append(wqkv)
    weights.tensors.append(cast(sa, "bias", bqkv))
    for m in (o_dense, ln1, inter, o2_dense, ln2):
        w = m._parameters["weight"]
        weights.tensors.append(packed_weight(m, w, pack) if m is not ln1 and m is not ln2 else cast(m, "weight", w))
        weights.tensors.append(cast(m, "bias", m._parameters["bias"]))
    weights.eps.extend((float(ln1.eps), float(ln2.eps)))


def _to(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """A cache key for tensors converted to dtype (one function object per dtype)."""
    fn = _CASTS.get(dtype)
    if fn is None:

        def fn(w: Tensor) -> Tensor:
            return w.to(dtype)

        _CASTS[dtype] = fn
    return fn


_CASTS: dict = {}


def _then(first: Callable, second: Callable | None) -> Callable:
    """first, then second: one function object per pair, so the weight caches recognise it."""
    if second is None:
        return first
    fn = _CHAINS.get((first, second))
    if fn is None:

        def fn(w: Tensor) -> Tensor:
            return second(first(w))

        _CHAINS[(first, second)] = fn
    return fn


_CHAINS: dict = {}


def autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype torch.autocast asks of the layers on x's device when it is on and lower than x's (CPU bfloat16
    or float16, CUDA float16 or bfloat16), else None."""
    dev = x.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return None
    dtype = torch.get_autocast_dtype(dev)
    return dtype if dtype != x.dtype and x.dtype == torch.float32 else None


def layer_weights(
    layers: nn.ModuleList, activation: str | Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype | None = None
) -> LayerWeights | None:
    """Every layer's weights for run_layers, or None where the loop does not apply: an activation without a
    fused kernel, an op without a kernel for x's device (float64 on CUDA), a module of another layout (a
    missing intermediate bias, a parametrized weight). The caller then runs the general per-layer path.
    With ``dtype`` (autocast), the weights are converted copies in that dtype, cached beside the modules like
    the packed weights and rebuilt when a parameter changes."""
    if not (isinstance(activation, str) and activation in reference.ACTIVATIONS):
        return None
    dev = x.device.type
    if not ops.KERNELS.get(("encoder_layers", dev), False):
        return None
    if dev == "cuda" and x.dtype == torch.float64:
        return None
    weights = LayerWeights([], [])
    like = x if dtype is None else x.new_empty(0, dtype=dtype)
    pack = None if ops.compiling() else gemm.weight_packer(like)
    if dtype is not None:
        to = _to(dtype)
        pack = _then(to, pack)

        def cast(module: nn.Module, slot: str, t: Tensor | None) -> Tensor | None:
            return None if t is None else packed_weight(module, t, to, slot)
    else:

        def cast(module: nn.Module, slot: str, t: Tensor | None) -> Tensor | None:
            return t

    try:
        for layer in layers:
            _one_layer(layer, weights, pack, cast)
    except (KeyError, AttributeError):
        return None
    # (A dtype or device mismatch needs no check here: both paths hand the same tensors to the same kernels,
    # which raise the same error.)
    return weights


def _pad_rows(x: Tensor, cu_seqlens: Tensor, max_seqlen: int, rows: int) -> tuple[Tensor, Tensor, int]:
    """x (T, H) padded with zero rows to ``rows``, the extra rows one extra sequence of their own (attention never
    mixes them with the real ones; every other op works row by row), so the GEMMs see a bucketed row count."""
    t = x.shape[0]
    if rows == t:
        return x, cu_seqlens, max_seqlen
    padded = x.new_zeros(rows, x.shape[1])
    padded[:t] = x
    cu = torch.cat([cu_seqlens, cu_seqlens.new_full((1,), rows)])
    return padded, cu, max(max_seqlen, rows - t)


def run_layers(
    weights: LayerWeights,
    x: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    activation: str,
    on_layer: Callable[[int, Tensor], None] | None = None,
    layers: nn.Module | None = None,
) -> Tensor:
    """x (T, H) through every layer; on_layer(i, x) after layer i (for output_hidden_states). On CUDA, with the
    layer stack given, through a cached CUDA graph (fastbert/runtime/cuda_graphs.py); on CPU with oneDNN, on rows padded
    to ``gemm.bucket_rows(T)``."""
    all_layers = on_layer is not None
    outs = None
    if (
        layers is not None
        and x.is_cuda
        and x.shape[0] > 0
        and cuda_graphs.cuda_graphs_enabled()
        and not torch.cuda.is_current_stream_capturing()
    ):
        outs = cuda_graphs.run(
            layers, weights.tensors, weights.eps, x, cu_seqlens, max_seqlen, num_heads, scale, activation, all_layers
        )
    if outs is None:
        t = x.shape[0]
        onednn = gemm.uses_onednn(x)
        if onednn and t > 0:
            x, cu_seqlens, max_seqlen = _pad_rows(x, cu_seqlens, max_seqlen, gemm.bucket_rows(t))
        outs = torch.ops.fastbert.encoder_layers.default(
            x, cu_seqlens, max_seqlen, num_heads, scale, activation, weights.tensors, weights.eps, all_layers, onednn
        )
        if x.shape[0] != t:
            outs = [y[:t] for y in outs]
    if on_layer is not None:
        for i, y in enumerate(outs):
            on_layer(i, y)
    return outs[-1] if outs else x
