"""int8 inference on CPU: ``fastbert.quantize(model)`` runs the encoder's four GEMMs per layer in int8
(fastbert.runtime.int8 holds the state and runs the layers).

Scheme (accurate without a calibration set, no extra pass over memory):

* Weights: symmetric int8 per output channel, ``w ~ w_scale[n] * wq[n, k]``, stored transposed (K, N) for
  ``torch._int_mm`` (oneDNN's s8s8 GEMM with int32 accumulation, VNNI/AMX-INT8 where the processor has them).
  The codes are rounded by GPTQ (fastbert/model/gptq.py): column by column, each column's rounding error
  compensated on the later ones through the calibration inputs' Gram matrix, so the GEMM's output stays close.
* Activations: int8 per token with a shift, ``x[t, c] ~ q[t, c] * scale[t] + shift[t]``: shift the centre of the
  row's range, scale its half-width / 127, so every row uses all 255 levels (the GELU's output is one-sided: a
  symmetric scale would leave it 128). Computed by the kernel that writes the activation: the LayerNorms
  (``dequant_bias_residual_layernorm``), the GELU (``dequant_bias_act_quant``), attention (``attention_quant``,
  whose float output is never written); only the embeddings' output goes through ``quantize_rows``. The int32
  GEMM output is dequantized inside the op that reads it:
  ``acc * scale[t] * w_scale[n] + shift[t] * w_sum[n]``, ``w_sum`` the dequantized weight's column sums.
* Outlier channels: BERT's LayerNorm outputs carry a few channels tens of times larger than the rest, which would
  take a per-token scale and leave the other channels a few levels. Each GEMM input is smoothed (SmoothQuant,
  alpha 0.5): ``x[:, c] / s[c]`` is quantized and ``w[:, c] * s[c]`` stored, ``s[c] = sqrt(amax_x[c] /
  amax_w[c])``, with ``amax_x`` measured once by running the float model on calibration ids (by default a
  seeded batch of random token ids: BERT's outlier channels are set by its LayerNorm weights, not by the text).
  The kernels multiply by ``1 / s`` while quantizing, so smoothing costs no pass either.
* What int8 still loses: on all-MiniLM-L6-v2 the FFN's second GEMM (its input, the GELU's output, is one-sided
  and long-tailed) accounts for most of the error. ``keep_float=("ffn_out",)`` runs that GEMM in the model's
  float dtype, at a fraction of the int8 speed-up (docs/performance.md has the cosines of both).

The int8 state is derived from the float parameters, cached on the model (never in ``state_dict``, not copied by
``deepcopy``), and rebuilt when a parameter changes. Saving a quantized model saves the float weights (the
checkpoint stays HF's); after loading, call ``quantize`` again (bert-base: about 8 s with GPTQ, 1 s
without). Memory: int8 weights are a quarter of the float32 ones, held beside them (+25% of the encoder's
float32 weights, +50% of bfloat16's). Attention, LayerNorm and GELU run in the model's dtype (float32 or
bfloat16), accumulating in fp32.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .. import ops
from ..ops import gemm
from ..runtime.int8 import (
    GEMMS,
    STATE_ATTR,
    Int8Gemm,
    Int8Layer,
    Int8State,
    int8_gemm,
    quantize_weight,
    weight_scale,
)
from ..runtime.layout import part
from ..runtime.weights import fused_qkv, layer_parts
from .family import bert_names, family_of, roberta_positions
from .forward import attention_geometry, embed
from .gptq import gptq_codes
from .modules import FastBertModule

__all__ = ["quantize", "dequantize", "is_quantized", "base_dtype", "SMOOTH_ALPHA"]

SMOOTH_ALPHA = 0.5  # on all-MiniLM-L6-v2, 0.3-0.85 (also per GEMM) all gave a lower text cosine than 0.5


def _smoothing(x_amax: Tensor, w: Tensor, alpha: float) -> Tensor:
    w_amax = w.detach().float().abs().amax(dim=0).clamp_min(1e-8)
    s = (x_amax.clamp_min(1e-5) ** alpha) / (w_amax ** (1 - alpha))
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s / s.median()  # centred, so neither side's range drifts far from 1


def _calibration_ids(config: Any, seed: int = 0, batch: int = 16, length: int = 128) -> Tensor:
    """Random token ids, never the pad id (which also decides RoBERTa's positions, counted from pad + 1)."""
    g = torch.Generator().manual_seed(seed)
    pad, vocab = getattr(config, "pad_token_id", None), int(config.vocab_size)
    first = 0 if pad is None or family_of(config).positions == "absolute" else pad + 1
    length = min(length, int(config.max_position_embeddings) - first)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    if pad is not None:
        ids[ids == pad] = (pad + 1) % vocab
    return ids


class _Inputs(NamedTuple):
    """What a float32 calibration forward saw at one GEMM's input X (T, K): per-channel max |x| and X^T X."""

    amax: Tensor
    gram: Tensor | None  # only for GPTQ


def _seen(x: Tensor, gram: bool) -> _Inputs:
    if not gram:
        return _Inputs(x.abs().amax(dim=0), None)
    xt = x.t().contiguous()
    return _Inputs(x.abs().amax(dim=0), gemm.linear_fn(xt)(xt, xt))  # X^T X on the inference loop's GEMM library


@torch.no_grad()
def _gemm_inputs(
    model: nn.Module, config: Any, ids: Tensor, mask: Tensor | None, gram: bool
) -> Iterator[list[_Inputs]]:
    """Per layer, in order, what the four GEMMs (QKV, attention output, FFN in, FFN out) see in a float32 forward
    of the model on ids (the Gram matrices when ``gram``): one layer at a time, so only one layer's are held."""
    fam = family_of(config)
    config = bert_names(config)
    emb = model.embeddings
    if mask is None:
        mask = torch.ones_like(ids)
    indices, cu_seqlens, positions = ops.pack(mask != 0)
    if fam.positions == "after_padding":  # RoBERTa's, from the ids
        positions = roberta_positions(ids, config.pad_token_id, ids.shape, ids.device).reshape(-1)[indices]
    x = embed(emb, ids.reshape(-1)[indices], positions, None, None, False).float()
    if fam.projection is not None and model._modules.get(fam.projection) is not None:  # ELECTRA's
        project = model._modules[fam.projection]
        x = torch.nn.functional.linear(x, project.weight.float(), _f(project.bias))
    nh, scale = attention_geometry(config)
    L = ids.shape[1]
    act = config.hidden_act
    mm = gemm.linear_fn(x)  # x @ w^T on the inference loop's float32 GEMM library
    for layer in part(model, fam.layers):
        sa, o_dense, ln1, inter, out_dense, ln2 = layer_parts(layer)
        w, b = fused_qkv(sa, True)
        w, b = w.float(), None if b is None else b.float()
        seen = [_seen(x, gram)]
        ctx, _ = ops.attention(mm(x, w), b, cu_seqlens, L, nh, scale, 0.0, 0, 0)
        seen.append(_seen(ctx, gram))
        y = mm(ctx, o_dense.weight.float())
        x, _, _ = ops.bias_residual_layernorm(y, _f(o_dense.bias), x, ln1.weight.float(), ln1.bias.float(), ln1.eps)
        seen.append(_seen(x, gram))
        h = ops.bias_act(mm(x, inter.weight.float()), inter.bias.float(), act)
        seen.append(_seen(h, gram))
        y = mm(h, out_dense.weight.float())
        x, _, _ = ops.bias_residual_layernorm(y, _f(out_dense.bias), x, ln2.weight.float(), ln2.bias.float(), ln2.eps)
        yield seen


def _f(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.float()


def _quantize_gemm(w: Tensor, seen: _Inputs | None, state: Int8State) -> Int8Gemm:
    """One GEMM's Int8Gemm: smoothed by what its input saw (state.smooth), its codes by GPTQ (state.gptq); seen is
    None when neither is on."""
    s = _smoothing(seen.amax, w, SMOOTH_ALPHA) if state.smooth else None
    if not state.gptq:
        return quantize_weight(w, s)
    wf = w.detach().float() if s is None else w.detach().float() * s
    gram = seen.gram if s is None else seen.gram / (s[:, None] * s[None, :])  # of the smoothed inputs x / s
    scale = weight_scale(wf)
    return int8_gemm(gptq_codes(wf, scale, gram), scale, s)


def _build(model: nn.Module, state: Int8State) -> list[Int8Layer]:
    config = model.config
    ids, mask = state.calibration if state.calibration is not None else (_calibration_ids(config), None)
    device = model.embeddings.word_embeddings.weight.device
    layers = []
    blocks = part(model, family_of(config).layers)
    if state.smooth or state.gptq:  # a calibration forward: what each GEMM's input saw
        inputs = _gemm_inputs(model, config, ids.to(device), mask, state.gptq)
    else:
        inputs = itertools.repeat([None] * len(GEMMS))
    for layer, seen in zip(blocks, inputs):
        sa, o_dense, _, inter, out_dense, _ = layer_parts(layer)
        wqkv, _ = fused_qkv(sa, True)
        ws = (wqkv, o_dense.weight, inter.weight, out_dense.weight)
        layers.append(
            Int8Layer(
                *(None if GEMMS[j] in state.keep_float else _quantize_gemm(w, seen[j], state) for j, w in enumerate(ws))
            )
        )
    return layers


def quantize(
    model: nn.Module,
    smooth: bool = True,
    calibration_ids: Tensor | None = None,
    calibration_mask: Tensor | None = None,
    keep_float: Sequence[str] = (),
    gptq: bool = True,
) -> nn.Module:
    """Run the encoder GEMMs of every fastbert model inside ``model`` in int8 (CPU, eval mode, no gradient), in
    place; returns model. ``model``: ``fastbert.BertModel``, a ``fastbert.BertFor*`` head, a model made by
    ``fastbert.optimize``, or ``fastbert.load_encoder``'s Encoder. ``smooth``: migrate activation outliers into
    the weights (see the module docstring); ``calibration_ids`` (B, L) (and mask): the text whose activations set
    the smoothing (default: random token ids). ``keep_float``: GEMMs left in the model's float dtype, of
    ``"ffn_out"`` (the one whose input, the GELU's output, int8 represents worst) so far. ``gptq``: round the
    weights so each GEMM's output, not each weight, stays close (fastbert/model/gptq.py), from the calibration
    forward's inputs; False rounds each weight to nearest. ``fastbert.dequantize(model)`` goes back to float."""
    bad = set(keep_float) - {"ffn_out"}
    if isinstance(keep_float, str) or bad:
        raise ValueError(f"keep_float: expected a sequence of GEMM names from ('ffn_out',), got {keep_float!r}")
    targets = [m for m in model.modules() if isinstance(m, FastBertModule)]
    if not targets:
        raise ValueError(
            f"model: no fastbert model inside {type(model).__name__}; call fastbert.optimize(model) "
            "first, or load with fastbert.BertModel / fastbert.load_encoder"
        )
    if calibration_ids is not None and (not isinstance(calibration_ids, Tensor) or calibration_ids.dim() != 2):
        raise ValueError("calibration_ids: expected a (batch, length) tensor of token ids")
    if not ops.has_kernel("quantize_rows", "cpu"):
        raise RuntimeError(f"quantize: the int8 kernels are not built (fastbert._C did not load: {ops.LOAD_ERROR})")
    for m in targets:
        w = m.embeddings.word_embeddings.weight
        if w.device.type != "cpu":
            raise ValueError("model: int8 runs on CPU only; move the model to the CPU first")
        if w.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(
                f"model: int8 keeps attention, LayerNorm and GELU in the model's dtype, which must be "
                f"float32 or bfloat16; got {w.dtype} (convert with model.float() or "
                f"model.to(torch.bfloat16) first)"
            )
        state = Int8State(
            _build,
            smooth=smooth,
            calibration=None if calibration_ids is None else (calibration_ids, calibration_mask),
            keep_float=keep_float,
            gptq=gptq,
        )
        state.refresh(m)
        m.__dict__[STATE_ATTR] = state
    return model


def base_dtype() -> torch.dtype:
    """The float dtype for the parts of an int8 model that stay float, as ``--dtype int8`` picks it: bfloat16 where
    the processor has AVX512-BF16 (attention on its dot products; measured 1.2x faster than float32 there at the
    same text cosine on all-MiniLM-L6-v2) and oneDNN runs bf16 GEMMs, else float32."""
    return torch.bfloat16 if ops.HAS_EXTENSION and ops.cpu_bf16_dot() and gemm.HAS_ONEDNN_BF16 else torch.float32


def dequantize(model: nn.Module) -> nn.Module:
    """Undo ``quantize``: the model runs in its float dtype again."""
    for m in model.modules():
        m.__dict__.pop(STATE_ATTR, None)
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether ``quantize`` made any fastbert model inside ``model`` run in int8."""
    return any(m.__dict__.get(STATE_ATTR) is not None for m in model.modules())
