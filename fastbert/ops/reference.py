"""Plain-PyTorch versions of every fastbert op: the specification the C++/CUDA kernels are tested against.

Each function here has the same arguments and results as the op of the same name in ``torch.ops.fastbert``
(see csrc/fastbert.cpp). They are written for clarity, not speed, compute in fp32 (float64 for float64
inputs) and cast back, and are differentiable, so the model falls back to them when gradients are needed
and no backward kernel exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "pack",
    "unpack",
    "embeddings",
    "attention",
    "attention_masked",
    "bias_act",
    "bias_residual_layernorm",
    "dropout_keep_mask",
    "activation",
    "quantize_rows",
    "dequantize_rows",
    "dequant_bias_act_quant",
    "dequant_bias_residual_layernorm",
    "attention_quant",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- activations


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


# The activations BERT-family configs name (transformers' ACT2FN keys), each as HF computes it.
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # exact erf GELU
    "gelu_new": _gelu_tanh,  # tanh approximation (GPT-2)
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": _gelu_fast,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable for an activation name, or a ValueError naming the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation: unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


# ---------------------------------------------------------------- pack / unpack


def pack(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real tokens of a (B, L) batch: flat indices b*L+l (int64), cu_seqlens (B+1, int32), positions l (int64)."""
    keep = attention_mask != 0
    B, L = keep.shape
    indices = keep.reshape(-1).nonzero().reshape(-1)
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = torch.zeros(B + 1, dtype=torch.int32, device=attention_mask.device)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return indices, cu_seqlens, indices % L


def unpack(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out[indices] = x
    return out.reshape(batch, seqlen, *x.shape[1:])


# ---------------------------------------------------------------- LayerNorm family


def _layernorm_stats(
    s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = s.mean(-1, keepdim=True)
    var = (s - mean).pow(2).mean(-1, keepdim=True)  # two-pass: stable for eps = 1e-12
    rstd = torch.rsqrt(var + eps)
    out = (s - mean) * rstd * weight.to(s.dtype) + bias.to(s.dtype)
    return out.to(out_dtype), mean.squeeze(-1), rstd.squeeze(-1)


def embeddings(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    token_type_weight: torch.Tensor | None,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(word_weight.dtype)
    s = word_weight[input_ids.long()].to(acc) + position_weight[position_ids.long()].to(acc)
    if token_type_weight is not None:
        types = token_type_ids.long() if token_type_ids is not None else torch.zeros_like(input_ids, dtype=torch.long)
        s = s + token_type_weight[types].to(acc)
    return _layernorm_stats(s, ln_weight, ln_bias, eps, word_weight.dtype)


def bias_residual_layernorm(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(x.dtype)
    s = x.to(acc) + residual.to(acc)
    if bias is not None:
        s = s + bias.to(acc)
    return _layernorm_stats(s, ln_weight, ln_bias, eps, x.dtype)


def bias_act(x: torch.Tensor, bias: torch.Tensor, activation_name: str) -> torch.Tensor:
    fn = activation(activation_name)
    acc = _acc_dtype(x.dtype)
    return fn(x.to(acc) + bias.to(acc)).to(x.dtype)


# ---------------------------------------------------------------- int8 inference

# The smallest normal float32: the floor of a row scale, so 1 / scale stays finite (see _row_scale).
_FLT_MIN = torch.finfo(torch.float32).tiny


def _row_scale(amax: torch.Tensor) -> torch.Tensor:
    """A row's int8 scale from its half-range amax (max |v|, or (max v - min v) / 2 when shifted): amax / 127,
    floored at FLT_MIN (a row of denormals would otherwise get a scale whose reciprocal overflows), and 1 for a
    zero-range row (its q is then all zero, dequantizing to exact zeros, or to its shift). Inputs are assumed
    finite; a row holding inf or NaN has unspecified q and scale."""
    return torch.where(amax > 0, torch.clamp(amax / 127.0, min=_FLT_MIN), torch.ones_like(amax))


def quantize_rows(
    x: torch.Tensor, smooth: torch.Tensor | None = None, asymmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic per-row int8 quantization of x (T, K) float32/bfloat16, with an optional per-channel multiplier
    smooth (K,) float32 applied first (SmoothQuant): v = x * smooth. Returns q int8 (T, K), scale float32 (T,) and
    shift float32 (T,) (asymmetric) or (0,), with q = round_half_even(clamp((v - shift) / scale, -127, 127)), so
    q * scale + shift ~ v. Symmetric: shift 0, scale from max |v|. Asymmetric: shift = (max v + min v) / 2, the
    scale from (max v - min v) / 2, so a one-sided row (a GELU's output) uses all 255 levels."""
    v = x.float()
    if smooth is not None:
        v = v * smooth.float()
    empty = v.shape[-1] == 0
    if asymmetric:
        hi = v.new_zeros(v.shape[:-1]) if empty else v.amax(dim=-1)
        lo = v.new_zeros(v.shape[:-1]) if empty else v.amin(dim=-1)
        shift = (hi + lo) * 0.5
        scale = _row_scale((hi - lo) * 0.5)
        v = v - shift.unsqueeze(-1)
    else:
        scale = _row_scale(v.new_zeros(v.shape[:-1]) if empty else v.abs().amax(dim=-1))
        shift = torch.empty(0, dtype=torch.float32, device=x.device)
    q = torch.round(torch.clamp(v / scale.unsqueeze(-1), -127.0, 127.0)).to(torch.int8)
    return q, scale, shift


def _dequantize(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    x_shift: torch.Tensor | None,
    w_sum: torch.Tensor | None,
) -> torch.Tensor:
    if (x_shift is None) != (w_sum is None):
        raise ValueError("x_shift and w_sum go together (a shifted input needs its weight's column sums)")
    out = acc.float() * x_scale.float().unsqueeze(-1) * w_scale.float()
    if x_shift is not None:
        out = out + x_shift.float().unsqueeze(-1) * w_sum.float()
    return out


def dequantize_rows(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    dtype: torch.dtype,
    x_shift: torch.Tensor | None = None,
    w_sum: torch.Tensor | None = None,
) -> torch.Tensor:
    """An int8 GEMM's int32 output acc (T, N) -> acc * x_scale[t] * w_scale[n] (+ x_shift[t] * w_sum[n] when the
    GEMM's input rows were quantized with a shift; w_sum: the dequantized weight's column sums), fp32 in that
    order, returned in dtype."""
    return _dequantize(acc, x_scale, w_scale, x_shift, w_sum).to(dtype)


def dequant_bias_act_quant(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor,
    activation_name: str,
    smooth: torch.Tensor | None = None,
    x_shift: torch.Tensor | None = None,
    w_sum: torch.Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = act(dequantize_rows(acc, ...) + bias[n]) in fp32, returned as quantize_rows(h, smooth, asymmetric)."""
    h = activation(activation_name)(_dequantize(acc, x_scale, w_scale, x_shift, w_sum) + bias.float())
    return quantize_rows(h, smooth, asymmetric)


def dequant_bias_residual_layernorm(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    weight: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
    quantize: bool,
    smooth: torch.Tensor | None = None,
    x_shift: torch.Tensor | None = None,
    w_sum: torch.Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """out = LayerNorm(dequantize_rows(acc, ...) + bias + residual) * weight + beta in residual's dtype (fp32
    math), and with quantize also (q, scale, shift) = quantize_rows(out, smooth, asymmetric) of the out returned
    (for bfloat16, of its rounded values); without, q, scale and shift are empty (0,) tensors."""
    s = _dequantize(acc, x_scale, w_scale, x_shift, w_sum)
    if bias is not None:
        s = s + bias.float()
    s = s + residual.float()
    out = _layernorm_stats(s, weight, beta, eps, residual.dtype)[0]
    if quantize:
        q, scale, shift = quantize_rows(out, smooth, asymmetric)
    else:
        q = torch.empty(0, dtype=torch.int8, device=acc.device)
        scale = torch.empty(0, dtype=torch.float32, device=acc.device)
        shift = torch.empty(0, dtype=torch.float32, device=acc.device)
    return out, q, scale, shift


def attention_quant(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    smooth: torch.Tensor | None = None,
    asymmetric: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_rows(attention(qkv, ...)'s out, smooth, asymmetric): attention's output (no dropout) as the int8
    input of the attention-output GEMM, of the out in qkv's dtype (for bfloat16, of its rounded values)."""
    out, _ = attention(qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale)
    return quantize_rows(out, smooth, asymmetric)


# ---------------------------------------------------------------- dropout mask (counter-based)

_M32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding uint32 values (products wrap mod 2^64;
    masking keeps the low 32 bits exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def dropout_keep_mask(seed: int, offset: int, row: torch.Tensor, col: torch.Tensor, p: float) -> torch.Tensor:
    """Which attention probabilities survive dropout: a pure function of (seed, offset, row, col).

    row: head * T + query token (packed attention) or (b * nh + h) * L + query (masked attention);
    col: the key's index within its sequence. Kernels compute exactly this, in uint32 arithmetic:
        x = fmix32((row + offset) * 0x9E3779B1 + seed_lo)
        x = fmix32(x ^ (col * 0x85EBCA77 + seed_hi))
        keep = (x >> 8) >= round(p * 2^24)
    """
    seed_lo, seed_hi = seed & _M32, (seed >> 32) & _M32
    a = (row.long() + offset) & _M32
    x = _fmix32((a * 0x9E3779B1 + seed_lo) & _M32)
    b = (col.long() * 0x85EBCA77 + seed_hi) & _M32
    x = _fmix32(x ^ b)
    return (x >> 8) >= dropout_threshold(p)


def dropout_threshold(p: float) -> int:
    return int(round(p * (1 << 24)))


# ---------------------------------------------------------------- attention


def _split_qkv(
    qkv: torch.Tensor, qkv_bias: torch.Tensor | None, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(qkv.dtype)
    x = qkv.to(acc)
    if qkv_bias is not None:
        x = x + qkv_bias.to(acc)
    H = x.shape[-1] // 3
    d = H // num_heads
    q, k, v = x.split(H, dim=-1)

    # (..., L, H) -> (..., nh, L, d)
    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (num_heads, d)).transpose(-3, -2)

    return heads(q), heads(k), heads(v)


def _softmax_dropout_pv(
    scores: torch.Tensor, v: torch.Tensor, dropout_p: float, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax over the last dim with an empty-row guard, optional dropout, then @ v; returns (out, lse)."""
    lse = torch.logsumexp(scores, dim=-1)
    finite = torch.isfinite(lse).unsqueeze(-1)
    # softmax, not exp(scores - lse): with a dtype-min mask lse = min + log(n) rounds to min, and a fully masked
    # row must come out uniform (HF's numbers), not n times uniform.
    probs = torch.softmax(scores.masked_fill(~finite, 0), dim=-1) * finite
    if dropout_p > 0:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v, lse


def attention(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    T = qkv.shape[0]
    H = qkv.shape[1] // 3
    acc = _acc_dtype(qkv.dtype)
    out = torch.zeros(T, H, dtype=acc, device=qkv.device)
    lse = torch.full((num_heads, T), float("-inf"), dtype=torch.float32, device=qkv.device)
    bounds = cu_seqlens.tolist()
    for b in range(len(bounds) - 1):
        s, e = bounds[b], bounds[b + 1]
        if e == s:
            continue
        q, k, v = _split_qkv(qkv[s:e], qkv_bias, num_heads)  # (nh, n, d)
        scores = (q @ k.transpose(-1, -2)) * scale  # (nh, n, n)
        keep = None
        if dropout_p > 0:
            heads = torch.arange(num_heads, device=qkv.device).view(-1, 1, 1)
            rows = heads * T + torch.arange(s, e, device=qkv.device).view(1, -1, 1)
            cols = torch.arange(e - s, device=qkv.device).view(1, 1, -1)
            keep = dropout_keep_mask(seed, offset, rows, cols, dropout_p)
        o, l = _softmax_dropout_pv(scores, v, dropout_p, keep)
        out[s:e] = o.transpose(0, 1).reshape(e - s, H)
        lse[:, s:e] = l.float()
    return out.to(qkv.dtype), lse


def attention_masked(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    mask: torch.Tensor,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, H3 = qkv.shape
    H = H3 // 3
    q, k, v = _split_qkv(qkv, qkv_bias, num_heads)  # (B, nh, L, d)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, nh, L, L)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    else:
        scores = scores + mask.to(scores.dtype)
    keep = None
    if dropout_p > 0:
        b = torch.arange(B, device=qkv.device).view(-1, 1, 1, 1)
        h = torch.arange(num_heads, device=qkv.device).view(1, -1, 1, 1)
        i = torch.arange(L, device=qkv.device).view(1, 1, -1, 1)
        rows = (b * num_heads + h) * L + i
        cols = torch.arange(L, device=qkv.device).view(1, 1, 1, -1)
        keep = dropout_keep_mask(seed, offset, rows, cols, dropout_p)
    o, lse = _softmax_dropout_pv(scores, v, dropout_p, keep)
    return o.transpose(1, 2).reshape(B, L, H).to(qkv.dtype), lse.float()


def encoder_layers(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    activation_name: str,
    weights: Sequence[torch.Tensor | None],
    eps: Sequence[float],
    all_layers: bool = False,
    onednn: bool = False,
) -> list[torch.Tensor]:
    """BERT's layer stack for inference on packed rows: per layer 12 tensors (qkv weight, qkv bias, attention
    output weight and bias, LayerNorm weight and bias, intermediate weight and bias, output weight and bias,
    LayerNorm weight and bias; the biases of the three projections may be None) and 2 LayerNorm eps. Returns
    [the last layer's output], or every layer's with all_layers. onednn picks the kernel's GEMM library; here
    every GEMM is x @ W^T."""
    if len(weights) % 12 or len(eps) != len(weights) // 6:
        raise ValueError(f"encoder_layers: expected 12 weights and 2 eps per layer, got {len(weights)} and {len(eps)}")
    outs = []
    for i in range(len(weights) // 12):
        w_qkv, b_qkv, w_ao, b_ao, g1, be1, w_in, b_in, w_out, b_out, g2, be2 = weights[12 * i : 12 * i + 12]
        ctx = attention(x @ w_qkv.t(), b_qkv, cu_seqlens, max_seqlen, num_heads, scale)[0]
        x = bias_residual_layernorm(ctx @ w_ao.t(), b_ao, x, g1, be1, eps[2 * i])[0]
        h = bias_act(x @ w_in.t(), b_in, activation_name)
        x = bias_residual_layernorm(h @ w_out.t(), b_out, x, g2, be2, eps[2 * i + 1])[0]
        if all_layers:
            outs.append(x)
    return outs if all_layers else [x]
