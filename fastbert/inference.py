"""The packed inference loop: BERT layers on real tokens, straight onto the compiled kernels.

``encoder.run`` takes this loop when nothing needs a gradient, the model is in eval mode and every op has a
compiled kernel for the device and dtype; otherwise it runs ``encoder._packed_layer`` per layer. Both do the
same arithmetic in the same order (one QKV GEMM, attention with the bias added on load, the output GEMM and
bias+residual+LayerNorm, the MLP's GEMM, bias+activation, GEMM, bias+residual+LayerNorm). With the same GEMM library
(``FASTBERT_CPU_GEMM=mm``, and always on CUDA) the outputs are bit-identical; with oneDNN, the float32 CPU
default (fastbert/gemm.py), they differ by float32 rounding. tests/test_model_parity.py checks both.

Why it exists: at batch sizes that keep a GPU busy for only a millisecond or two per forward, Python is the
bottleneck. This loop reads each layer's weights once per forward through the modules' own dicts (no
nn.Module.__getattr__ chains, no config reads per layer), and calls the ops' OpOverloads below autograd
(torch._C._AutoDispatchBelowAutograd), straight to their kernels. Weights are read afresh every forward:
nothing goes stale when a module, a parameter or a dtype changes.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import gemm, ops, reference
from .fused_qkv import fused_qkv

__all__ = ["LayerWeights", "layer_weights", "run_layers"]

_OPS = ("attention", "bias_act", "bias_residual_layernorm")


class LayerWeights(NamedTuple):
    wqkv: Tensor
    bqkv: Optional[Tensor]
    attn_out_w: Tensor
    attn_out_b: Optional[Tensor]
    ln1_w: Tensor
    ln1_b: Tensor
    ln1_eps: float
    inter_w: Tensor
    inter_b: Tensor
    out_w: Tensor
    out_b: Optional[Tensor]
    ln2_w: Tensor
    ln2_b: Tensor
    ln2_eps: float


def _one_layer(layer: nn.Module) -> LayerWeights:
    attention = layer._modules["attention"]
    attn_out = attention._modules["output"]
    inter = layer._modules["intermediate"]._modules["dense"]
    out = layer._modules["output"]
    wqkv, bqkv = fused_qkv(attention._modules["self"], False)
    o_dense, ln1 = attn_out._modules["dense"], attn_out._modules["LayerNorm"]
    o2_dense, ln2 = out._modules["dense"], out._modules["LayerNorm"]
    params = [m._parameters for m in (o_dense, ln1, inter, o2_dense, ln2)]
    return LayerWeights(wqkv, bqkv, params[0]["weight"], params[0]["bias"], params[1]["weight"], params[1]["bias"],
                        float(ln1.eps), params[2]["weight"], params[2]["bias"], params[3]["weight"],
                        params[3]["bias"], params[4]["weight"], params[4]["bias"], float(ln2.eps))


def layer_weights(layers: nn.ModuleList, activation, x: Tensor) -> Optional[List[LayerWeights]]:
    """Every layer's weights for run_layers, or None where the loop does not apply: an activation without a
    fused kernel, an op without a kernel for x's device (float64 on CUDA), a module of another layout (a
    missing intermediate bias, a parametrized weight). The caller then runs the general per-layer path."""
    if not (isinstance(activation, str) and activation in reference.ACTIVATIONS):
        return None
    dev = x.device.type
    if not all(ops.KERNELS.get((n, dev), False) for n in _OPS):
        return None
    if dev == "cuda" and x.dtype == torch.float64:
        return None
    try:
        weights = [_one_layer(layer) for layer in layers]
    except (KeyError, AttributeError):
        return None
    # A missing bias the kernels can't take: the general path supplies it. (A dtype or device mismatch needs no
    # check here: both paths hand the same tensors to the same kernels, which raise the same error.)
    if any(w.inter_b is None for w in weights):
        return None
    return weights


def run_layers(weights: List[LayerWeights], x: Tensor, cu_seqlens: Tensor, max_seqlen: int, num_heads: int,
               scale: float, activation: str, on_layer: Optional[Callable[[int, Tensor], None]] = None) -> Tensor:
    """x (T, H) through every layer; on_layer(i, x) after layer i (for output_hidden_states)."""
    mm = gemm.linear_fn(x)  # x @ W^T: oneDNN for float32 on CPU, else torch.mm (see fastbert/gemm.py)
    attention = torch.ops.fastbert.attention.default
    bias_act = torch.ops.fastbert.bias_act.default
    brln = torch.ops.fastbert.bias_residual_layernorm.default
    with torch._C._AutoDispatchBelowAutograd():
        for i, w in enumerate(weights):
            ctx = attention(mm(x, w.wqkv), w.bqkv, cu_seqlens, max_seqlen, num_heads, scale, 0.0, 0, 0)[0]
            y = mm(ctx, w.attn_out_w)
            del ctx
            x = brln(y, w.attn_out_b, x, w.ln1_w, w.ln1_b, w.ln1_eps)[0]
            h = bias_act(mm(x, w.inter_w), w.inter_b, activation)
            y = mm(h, w.out_w)
            del h  # free (T, I) before the LayerNorm
            x = brln(y, w.out_b, x, w.ln2_w, w.ln2_b, w.ln2_eps)[0]
            del y
            if on_layer is not None:
                on_layer(i, x)
    return x
