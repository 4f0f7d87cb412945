"""int8 inference on CPU: ``fastbert.quantize(model)`` runs the encoder's four GEMMs per layer in int8.

Scheme (accurate without a calibration set, no extra pass over memory):

* Weights: symmetric int8 per output channel, ``w ~ w_scale[n] * wq[n, k]``, stored transposed (K, N) for
  ``torch._int_mm`` (oneDNN's s8s8 GEMM with int32 accumulation, VNNI/AMX-INT8 where the processor has them).
* Activations: symmetric int8 per token, scale ``max_c |x[t, c]| / 127`` computed by the kernel that writes the
  activation: the LayerNorms (``dequant_bias_residual_layernorm``), the GELU (``dequant_bias_act_quant``); the
  embeddings' and attention's outputs go through ``quantize_rows``. The int32 GEMM output is dequantized
  (``acc * x_scale[t] * w_scale[n]``) inside the op that reads it.
* Outlier channels: BERT's LayerNorm outputs carry a few channels tens of times larger than the rest, which would
  take a per-token scale and leave the other channels a few levels. Each GEMM input is smoothed (SmoothQuant,
  alpha 0.5): ``x[:, c] / s[c]`` is quantized and ``w[:, c] * s[c]`` stored, ``s[c] = sqrt(amax_x[c] /
  amax_w[c])``, with ``amax_x`` measured once by running the float model on calibration ids (by default a
  seeded batch of random token ids: BERT's outlier channels are set by its LayerNorm weights, not by the text).
  The kernels multiply by ``1 / s`` while quantizing, so smoothing costs no pass either.
* What int8 still loses: on all-MiniLM-L6-v2 the FFN's second GEMM (its input, the GELU's output, is one-sided
  and long-tailed) accounts for most of the error. ``keep_float=("ffn_out",)`` runs that GEMM in the model's
  float dtype: text cosine to fp32 0.9990 min / 0.9994 mean instead of 0.9982 / 0.9988, at a third of the
  int8 speed-up (docs/performance.md).

The int8 state is derived from the float parameters, cached on the model (never in ``state_dict``, not copied by
``deepcopy``), and rebuilt when a parameter changes. Saving a quantized model saves the float weights (the
checkpoint stays HF's); after loading, call ``quantize`` again (it takes about a second per layer of
bert-base). Memory: int8 weights are a quarter of the float32 ones, held beside them (+25% of the encoder's
float32 weights, +50% of bfloat16's). Attention, LayerNorm and GELU run in the model's dtype (float32 or
bfloat16), accumulating in fp32.
"""
from __future__ import annotations

import math
import sys
from typing import List, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from . import gemm, ops
from .fused_qkv import fused_qkv, key_matches, packed_weight, tensors_key

__all__ = ["quantize", "dequantize", "is_quantized", "quantize_weight", "base_dtype", "QMAX", "SMOOTH_ALPHA"]

QMAX = 127
SMOOTH_ALPHA = 0.5  # on all-MiniLM-L6-v2, 0.3-0.85 (also per GEMM) all gave a lower text cosine than 0.5
_ATTR = "_fastbert_int8"


class Int8Gemm(NamedTuple):
    weight: Tensor           # (K, N) int8, columns smoothed
    scale: Tensor            # (N,) float32
    smooth: Optional[Tensor]  # (K,) float32: the kernels quantize x * smooth (1 / s)


class Int8Layer(NamedTuple):
    qkv: Int8Gemm
    out: Int8Gemm
    inter: Int8Gemm
    output: Optional[Int8Gemm]  # None: the FFN's second GEMM runs in the model's float dtype


GEMMS = ("qkv", "attention_output", "ffn_in", "ffn_out")  # the four GEMMs of a layer, for keep_float


def quantize_weight(w: Tensor, s: Optional[Tensor] = None) -> Int8Gemm:
    """w (N, K) float -> Int8Gemm: per-output-channel symmetric int8 of w * s (columns), transposed to (K, N)."""
    wf = w.detach().float()
    if s is not None:
        wf = wf * s
    amax = wf.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.round(wf / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return Int8Gemm(q.t().contiguous(), scale.contiguous(), None if s is None else (1.0 / s).contiguous())


def _smoothing(x_amax: Tensor, w: Tensor, alpha: float) -> Tensor:
    w_amax = w.detach().float().abs().amax(dim=0).clamp_min(1e-8)
    s = (x_amax.clamp_min(1e-5) ** alpha) / (w_amax ** (1 - alpha))
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s / s.median()  # centred, so neither side's range drifts far from 1


def _calibration_ids(config, seed: int = 0, batch: int = 8, length: int = 64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    length = min(length, int(config.max_position_embeddings))
    return torch.randint(1, int(config.vocab_size), (batch, length), generator=g)


def _layer_parts(layer):
    att = layer.attention
    return att.self, att.output.dense, att.output.LayerNorm, layer.intermediate.dense, layer.output.dense, \
        layer.output.LayerNorm


@torch.no_grad()
def _gemm_input_amax(model: nn.Module, config, ids: Tensor, mask: Optional[Tensor]) -> List[List[Tensor]]:
    """Per layer, the per-channel max |x| of the four GEMM inputs (QKV, attention output, FFN in, FFN out), from
    a float32 forward of the model on ids."""
    from .encoder import _embed, _geometry
    emb = model.embeddings
    if mask is None:
        mask = torch.ones_like(ids)
    indices, cu_seqlens, positions = ops.pack(mask != 0)
    x = _embed(emb, ids.reshape(-1)[indices], positions, None, None, False).float()
    nh, scale = _geometry(config)
    L = ids.shape[1]
    act = config.hidden_act
    stats = []
    for layer in model.encoder.layer:
        sa, o_dense, ln1, inter, out_dense, ln2 = _layer_parts(layer)
        w, b = fused_qkv(sa, True)
        w, b = w.float(), None if b is None else b.float()
        amax = [x.abs().amax(dim=0)]
        ctx, _ = ops.attention(x @ w.t(), b, cu_seqlens, L, nh, scale, 0.0, 0, 0)
        amax.append(ctx.abs().amax(dim=0))
        y = ctx @ o_dense.weight.float().t()
        x, _, _ = ops.bias_residual_layernorm(y, _f(o_dense.bias), x, ln1.weight.float(), ln1.bias.float(),
                                              ln1.eps)
        amax.append(x.abs().amax(dim=0))
        h = ops.bias_act(x @ inter.weight.float().t(), inter.bias.float(), act)
        amax.append(h.abs().amax(dim=0))
        y = h @ out_dense.weight.float().t()
        x, _, _ = ops.bias_residual_layernorm(y, _f(out_dense.bias), x, ln2.weight.float(), ln2.bias.float(),
                                              ln2.eps)
        stats.append(amax)
    return stats


def _f(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.float()


def _sources(model: nn.Module) -> tuple:
    return tuple(p for _, p in model.encoder.named_parameters()) + tuple(p for _, p in
                                                                         model.embeddings.named_parameters())


class _Int8State:
    """What ``quantize`` attached to a model: the int8 layers and the key of the parameters they came from.
    Not copied by deepcopy or pickle (a copy is a float model until quantized again)."""
    __slots__ = ("layers", "key", "smooth", "calibration", "keep_float", "__weakref__")

    def __init__(self, layers=None, key=None, smooth=True, calibration=None, keep_float=()):
        self.layers, self.key, self.smooth, self.calibration = layers, key, smooth, calibration
        self.keep_float = tuple(keep_float)

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        return (type(None), ())


def _fastbert_models(model: nn.Module) -> list:
    from .encoder import Encoder
    found = [m for m in model.modules() if isinstance(m, Encoder)]
    modeling = sys.modules.get(__package__ + ".modeling")  # never imported: no transformers-based model exists,
    if modeling is not None:                                 # and the lean path stays free of transformers
        found += [m for m in model.modules() if isinstance(m, modeling.FastBertMixin)]
    return found


def _build(model: nn.Module, state: _Int8State) -> List[Int8Layer]:
    config = model.config
    ids, mask = state.calibration if state.calibration is not None else (_calibration_ids(config), None)
    amax = _gemm_input_amax(model, config, ids.to(model.embeddings.word_embeddings.weight.device), mask) \
        if state.smooth else None
    layers = []
    for i, layer in enumerate(model.encoder.layer):
        sa, o_dense, _, inter, out_dense, _ = _layer_parts(layer)
        wqkv, _ = fused_qkv(sa, True)
        ws = (wqkv, o_dense.weight, inter.weight, out_dense.weight)
        gemms = [quantize_weight(w, _smoothing(amax[i][j], w, SMOOTH_ALPHA) if amax is not None else None)
                 if GEMMS[j] not in state.keep_float else None for j, w in enumerate(ws)]
        layers.append(Int8Layer(*gemms))
    return layers


def quantize(model: nn.Module, smooth: bool = True, calibration_ids: Optional[Tensor] = None,
             calibration_mask: Optional[Tensor] = None, keep_float: Sequence[str] = ()) -> nn.Module:
    """Run the encoder GEMMs of every fastbert model inside ``model`` in int8 (CPU, eval mode, no gradient), in
    place; returns model. ``model``: ``fastbert.BertModel``, a ``fastbert.BertFor*`` head, a model made by
    ``fastbert.optimize``, or ``fastbert.load_encoder``'s Encoder. ``smooth``: migrate activation outliers into
    the weights (see the module docstring); ``calibration_ids`` (B, L) (and mask): the text whose activations set
    the smoothing (default: random token ids). ``keep_float``: GEMMs left in the model's float dtype, of
    ``"ffn_out"`` (the one whose input, the GELU's output, int8 represents worst) so far.
    ``fastbert.dequantize(model)`` goes back to float."""
    bad = set(keep_float) - {"ffn_out"}
    if isinstance(keep_float, str) or bad:
        raise ValueError(f"keep_float: expected a sequence of GEMM names from ('ffn_out',), got {keep_float!r}")
    targets = _fastbert_models(model)
    if not targets:
        raise ValueError(f"model: no fastbert model inside {type(model).__name__}; call fastbert.optimize(model) "
                         "first, or load with fastbert.BertModel / fastbert.load_encoder")
    if calibration_ids is not None and (not isinstance(calibration_ids, Tensor) or calibration_ids.dim() != 2):
        raise ValueError("calibration_ids: expected a (batch, length) tensor of token ids")
    if not ops.has_kernel("quantize_rows", "cpu"):
        raise RuntimeError("quantize: the int8 kernels are not built (fastbert._C did not load: "
                           f"{ops.LOAD_ERROR})")
    for m in targets:
        w = m.embeddings.word_embeddings.weight
        if w.device.type != "cpu":
            raise ValueError("model: int8 runs on CPU only; move the model to the CPU first")
        if w.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"model: int8 keeps attention, LayerNorm and GELU in the model's dtype, which must be "
                            f"float32 or bfloat16; got {w.dtype} (convert with model.float() or "
                            f"model.to(torch.bfloat16) first)")
        state = _Int8State(smooth=smooth, calibration=None if calibration_ids is None else
                           (calibration_ids, calibration_mask), keep_float=keep_float)
        state.layers = _build(m, state)
        state.key = tensors_key(_sources(m))
        m.__dict__[_ATTR] = state
    return model


def base_dtype() -> torch.dtype:
    """The float dtype for the parts of an int8 model that stay float, as ``--dtype int8`` picks it: bfloat16 where
    the processor has AVX512-BF16 (attention on its dot products; measured 1.2x faster than float32 there at the
    same text cosine on all-MiniLM-L6-v2), else float32."""
    return torch.bfloat16 if ops.HAS_EXTENSION and ops.cpu_bf16_dot() else torch.float32


def dequantize(model: nn.Module) -> nn.Module:
    """Undo ``quantize``: the model runs in its float dtype again."""
    for m in model.modules():
        m.__dict__.pop(_ATTR, None)
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether ``quantize`` made any fastbert model inside ``model`` run in int8."""
    return any(m.__dict__.get(_ATTR) is not None for m in model.modules())


def int8_layers(model: nn.Module) -> Optional[List[Int8Layer]]:
    """The int8 layers of a quantized model, rebuilt first when a parameter changed since; None otherwise."""
    state = model.__dict__.get(_ATTR)
    if state is None:
        return None
    sources = _sources(model)
    if not key_matches(state.key, sources):
        state.layers = _build(model, state)
        state.key = tensors_key(sources)
    return state.layers


def run_layers_int8(model: nn.Module, layers: List[Int8Layer], x: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                    on_layer=None) -> Tensor:
    """The encoder layers on packed rows x (T, H) (float32 or bfloat16) with int8 GEMMs; see the module
    docstring. on_layer(i, x) after layer i."""
    config = model.config
    nh = config.num_attention_heads
    scale = 1.0 / math.sqrt(config.hidden_size // nh)
    act = config.hidden_act
    dtype = x.dtype
    F = torch.ops.fastbert
    blocks = model.encoder.layer
    pack = gemm.weight_packer(x)
    linear = gemm.linear_fn(x)
    xq, xs = F.quantize_rows(x, layers[0].qkv.smooth) if layers else (None, None)
    for i, (block, q) in enumerate(zip(blocks, layers)):
        sa, o_dense, ln1, inter, out_dense, ln2 = _layer_parts(block)
        _, bqkv = fused_qkv(sa, False)
        qkv = F.dequantize_rows(torch._int_mm(xq, q.qkv.weight), xs, q.qkv.scale, dtype)
        ctx, _ = F.attention(qkv, bqkv, cu_seqlens, max_seqlen, nh, scale, 0.0, 0, 0)
        del qkv
        cq, cs = F.quantize_rows(ctx, q.out.smooth)
        del ctx
        x, xq, xs = F.dequant_bias_residual_layernorm(torch._int_mm(cq, q.out.weight), cs, q.out.scale,
                                                      o_dense.bias, x, ln1.weight, ln1.bias, ln1.eps, True,
                                                      q.inter.smooth)
        last = i + 1 == len(layers)
        next_smooth = None if last else layers[i + 1].qkv.smooth
        if q.output is None:  # the FFN's second GEMM in float
            h = F.bias_act(F.dequantize_rows(torch._int_mm(xq, q.inter.weight), xs, q.inter.scale, dtype),
                           inter.bias, act)
            y = linear(h, packed_weight(out_dense, out_dense.weight, pack))
            del h
            x, _, _ = F.bias_residual_layernorm(y, out_dense.bias, x, ln2.weight, ln2.bias, ln2.eps)
            if not last:
                xq, xs = F.quantize_rows(x, next_smooth)
        else:
            hq, hs = F.dequant_bias_act_quant(torch._int_mm(xq, q.inter.weight), xs, q.inter.scale, inter.bias,
                                              act, q.output.smooth)
            x, xq, xs = F.dequant_bias_residual_layernorm(torch._int_mm(hq, q.output.weight), hs, q.output.scale,
                                                          out_dense.bias, x, ln2.weight, ln2.bias, ln2.eps,
                                                          not last, next_smooth)
        if on_layer is not None:
            on_layer(i, x)
    return x
