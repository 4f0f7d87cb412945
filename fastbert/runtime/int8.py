"""int8 inference on CPU, the run-time half: the int8 weights a quantized model carries, and the layer loop that
runs its four GEMMs per layer with ``torch._int_mm``. fastbert.model.quantize builds the state (the scheme is
described there); this module holds it, rebuilds it when a parameter changes, and runs it.

The state is cached on the model (never in ``state_dict``, not copied by ``deepcopy``). Attention, LayerNorm and
GELU run in the model's dtype (float32 or bfloat16), accumulating in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..ops import gemm
from .weights import fused_qkv, key_matches, layer_parts, packed_weight, tensors_key

__all__ = [
    "Int8Gemm",
    "Int8Layer",
    "Int8State",
    "GEMMS",
    "QMAX",
    "quantize_weight",
    "weight_scale",
    "int8_gemm",
    "int8_layers",
    "run_layers_int8",
    "STATE_ATTR",
]

QMAX = 127
STATE_ATTR = "_fastbert_int8"  # the model attribute that holds an Int8State


class Int8Gemm(NamedTuple):
    weight: Tensor  # (K, N) int8, columns smoothed
    scale: Tensor  # (N,) float32
    smooth: Tensor | None  # (K,) float32: the kernels quantize x * smooth (1 / s)
    w_sum: Tensor  # (N,) float32: scale[n] * sum_k weight[k, n], what a shifted input's shift multiplies


class Int8Layer(NamedTuple):
    qkv: Int8Gemm
    out: Int8Gemm
    inter: Int8Gemm
    output: Int8Gemm | None  # None: the FFN's second GEMM runs in the model's float dtype


GEMMS = ("qkv", "attention_output", "ffn_in", "ffn_out")  # the four GEMMs of a layer, for keep_float


def weight_scale(wf: Tensor) -> Tensor:
    """The per-output-channel scale of a float32 weight (N, K): max |row| / 127 (1 for a zero row)."""
    amax = wf.abs().amax(dim=1)
    return torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))


def int8_gemm(q: Tensor, scale: Tensor, s: Tensor | None) -> Int8Gemm:
    """The Int8Gemm of codes q (N, K) int8 with per-output-channel scale (N,), for the columns smoothed by s."""
    w_sum = (q.sum(dim=1, dtype=torch.int64).double() * scale.double()).float()
    return Int8Gemm(
        q.t().contiguous(), scale.contiguous(), None if s is None else (1.0 / s).contiguous(), w_sum.contiguous()
    )


def quantize_weight(w: Tensor, s: Tensor | None = None) -> Int8Gemm:
    """w (N, K) float -> Int8Gemm: per-output-channel symmetric int8 of w * s (columns), rounded to nearest,
    transposed to (K, N)."""
    wf = w.detach().float()
    if s is not None:
        wf = wf * s
    scale = weight_scale(wf)
    return int8_gemm(torch.round(wf / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8), scale, s)


def encoder_parameters(model: nn.Module) -> tuple:
    """The parameters the int8 state is derived from (its cache key): the model's own (any family's layout)."""
    return tuple(model.parameters())


class Int8State:
    """What ``quantize`` attached to a model: the int8 layers and the key of the parameters they came from.
    Not copied by deepcopy or pickle (a copy is a float model until quantized again).
    ``build(model, state)`` makes the layers from the float parameters (fastbert.model.quantize's builder)."""

    __slots__ = ("layers", "key", "build", "smooth", "calibration", "keep_float", "gptq", "__weakref__")

    def __init__(
        self,
        build: Callable[[nn.Module, Int8State], list[Int8Layer]],
        smooth: bool = True,
        calibration: tuple[Tensor, Tensor | None] | None = None,
        keep_float: Sequence[str] = (),
        gptq: bool = True,
    ):
        self.layers, self.key, self.build = None, None, build
        self.smooth, self.calibration, self.keep_float = smooth, calibration, tuple(keep_float)
        self.gptq = gptq

    def refresh(self, model: nn.Module) -> list[Int8Layer]:
        """The layers, rebuilt first when a parameter changed since they were built."""
        sources = encoder_parameters(model)
        if self.layers is None or not key_matches(self.key, sources):
            self.layers = self.build(model, self)
            self.key = tensors_key(sources)
        return self.layers

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self):
        return (type(None), ())


def int8_layers(model: nn.Module) -> list[Int8Layer] | None:
    """The int8 layers of a quantized model, rebuilt first when a parameter changed since; None otherwise."""
    state = model.__dict__.get(STATE_ATTR)
    return None if state is None else state.refresh(model)


def run_layers_int8(
    config: Any,
    blocks: Sequence[nn.Module],
    layers: list[Int8Layer],
    x: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    on_layer: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """The encoder layers ``blocks`` on packed rows x (T, H) (float32 or bfloat16) with their int8 GEMMs
    ``layers``; config under BertConfig's field names; see the module docstring. on_layer(i, x) after layer i."""
    nh = config.num_attention_heads
    scale = 1.0 / math.sqrt(config.hidden_size // nh)
    act = config.hidden_act
    dtype = x.dtype
    F = torch.ops.fastbert
    pack = gemm.weight_packer(x)
    linear = gemm.linear_fn(x)
    # Every activation is quantized with a per-row shift (asymmetric): the GELU's output is one-sided, and the
    # LayerNorms' are off-centre in their smoothed channels; the shift gives each row all 255 levels.
    xq, xs, xh = F.quantize_rows(x, layers[0].qkv.smooth, True) if layers else (None, None, None)
    for i, (block, q) in enumerate(zip(blocks, layers)):
        sa, o_dense, ln1, inter, out_dense, ln2 = layer_parts(block)
        _, bqkv = fused_qkv(sa, False)
        qkv = F.dequantize_rows(torch._int_mm(xq, q.qkv.weight), xs, q.qkv.scale, dtype, xh, q.qkv.w_sum)
        cq, cs, ch = F.attention_quant(qkv, bqkv, cu_seqlens, max_seqlen, nh, scale, q.out.smooth, True)
        del qkv
        x, xq, xs, xh = F.dequant_bias_residual_layernorm(
            torch._int_mm(cq, q.out.weight),
            cs,
            q.out.scale,
            o_dense.bias,
            x,
            ln1.weight,
            ln1.bias,
            ln1.eps,
            True,
            q.inter.smooth,
            ch,
            q.out.w_sum,
            True,
        )
        last = i + 1 == len(layers)
        next_smooth = None if last else layers[i + 1].qkv.smooth
        if q.output is None:  # the FFN's second GEMM in float
            h = F.bias_act(
                F.dequantize_rows(torch._int_mm(xq, q.inter.weight), xs, q.inter.scale, dtype, xh, q.inter.w_sum),
                inter.bias,
                act,
            )
            y = linear(h, packed_weight(out_dense, out_dense.weight, pack))
            del h
            x, _, _ = F.bias_residual_layernorm(y, out_dense.bias, x, ln2.weight, ln2.bias, ln2.eps)
            if not last:
                xq, xs, xh = F.quantize_rows(x, next_smooth, True)
        else:
            hq, hs, hh = F.dequant_bias_act_quant(
                torch._int_mm(xq, q.inter.weight),
                xs,
                q.inter.scale,
                inter.bias,
                act,
                q.output.smooth,
                xh,
                q.inter.w_sum,
                True,
            )
            x, xq, xs, xh = F.dequant_bias_residual_layernorm(
                torch._int_mm(hq, q.output.weight),
                hs,
                q.output.scale,
                out_dense.bias,
                x,
                ln2.weight,
                ln2.bias,
                ln2.eps,
                not last,
                next_smooth,
                hh,
                q.output.w_sum,
                True,
            )
        if on_layer is not None:
            on_layer(i, x)
    return x
