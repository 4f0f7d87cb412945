"""The core BERT encoder on fastbert's ops: torch only (no transformers import), so batch jobs start fast.

Two things live here:

* ``run(model, config, ...)``: the fused forward over any module tree named like transformers' BertModel
  (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ..., ``pooler.dense``). It serves
  this module's ``Encoder`` and, through fastbert.modeling / fastbert.convert, transformers' own BertModel
  objects. Data path (padding-free, see DESIGN.md):

      pack the real tokens by the mask -> (T,) ids, positions, cu_seqlens
      x = embeddings(ids, positions, types)                                   (T, H)
      per layer: qkv = x @ Wqkv^T (one GEMM, bias left to attention)          (T, 3H)
                 ctx = attention(qkv, bqkv, cu_seqlens)                       (T, H)
                 x   = LN(ctx @ Wo^T + bo + x)                                (T, H)
                 x   = LN(act(x @ W1^T + b1) @ W2^T + b2 + x)                 (T, H)
      unpack to (B, L, H), pad positions zero

  A padded path (B, L, H) with ops.attention_masked serves pad_outputs="hf" (pad positions computed as HF
  does), 3-D/4-D masks and output_attentions.

* ``Encoder`` / ``load_encoder``: a lean module with HF BertModel's state_dict keys, loaded straight from an
  HF folder (config.json + safetensors or .bin, sharded too).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops, reference
from .autograd import zero_row_grad
from . import inference, int8 as int8_path
from .fused_qkv import clear_fused_cache, fused_qkv  # noqa: F401 (clear_fused_cache: re-exported)

__all__ = ["EncoderConfig", "Encoder", "EncoderOutput", "load_encoder", "run", "PAD_OUTPUTS"]

PAD_OUTPUTS = ("zero", "hf")
# Whether eval-mode forwards that need no gradient take fastbert.inference's loop (same arithmetic, less
# Python); tests switch it off to compare the two paths.
FAST_INFERENCE = True


def _compiling() -> bool:
    return torch.compiler.is_compiling()


# ---------------------------------------------------------------- config

@dataclass
class EncoderConfig:
    """The BertConfig fields the encoder reads (defaults are BertConfig's)."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: Optional[int] = 0
    is_decoder: bool = False
    add_cross_attention: bool = False
    position_embedding_type: str = "absolute"
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        validate_config(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderConfig":
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def from_json(cls, path: str) -> "EncoderConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json in the model folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid JSON config ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d)


def validate_config(config: Any) -> None:
    """ValueError/NotImplementedError for configs the fused encoder cannot run (names the field)."""
    H, nh = config.hidden_size, config.num_attention_heads
    if not isinstance(nh, int) or nh <= 0:
        raise ValueError(f"num_attention_heads: expected a positive integer, got {nh!r}")
    if not isinstance(H, int) or H <= 0 or H % nh != 0:
        raise ValueError(f"hidden_size: expected a positive multiple of num_attention_heads={nh}, got {H!r}")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise NotImplementedError("fastbert runs BERT as an encoder only: is_decoder/add_cross_attention are not "
                                  "supported (use transformers' BertModel for decoder use)")
    pet = getattr(config, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        raise NotImplementedError(f"position_embedding_type: only 'absolute' is supported, got {pet!r}")
    act = config.hidden_act
    if isinstance(config, EncoderConfig) and act not in reference.ACTIVATIONS:
        raise ValueError(f"hidden_act: expected one of {sorted(reference.ACTIVATIONS)}, got {act!r}")


# ---------------------------------------------------------------- the lean module tree (HF names)

def _embedding(num: int, dim: int, padding_idx: Optional[int] = None) -> nn.Embedding:
    """nn.Embedding(num, dim, padding_idx) with its usual N(0, 1) init, except on the meta device (load_encoder
    builds there and assigns the checkpoint's tables), where normal_ would import PyTorch's Python meta kernels:
    1.2 s of `fastbert encode`'s start-up."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        with torch.no_grad():
            nn.init.normal_(weight)
            if padding_idx is not None:
                weight[padding_idx].zero_()
    return nn.Embedding(num, dim, padding_idx=padding_idx, _weight=weight)


class _Embeddings(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.word_embeddings = _embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = _embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _DenseLN(nn.Module):
    def __init__(self, c: EncoderConfig, n_in: int):
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseLN(c, c.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseLN(c, c.intermediate_size)


class _Stack(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList([_Layer(c) for _ in range(c.num_hidden_layers)])


class _Pooler(nn.Module):
    def __init__(self, c: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor                  # (B, L, H)
    hidden_states: Optional[Tuple[Tensor, ...]]  # num_layers + 1 of (B, L, H), when asked
    attentions: Optional[Tuple[Tensor, ...]]     # num_layers of (B, nh, L, L), when asked


class Encoder(nn.Module):
    """BERT encoder on fastbert's ops with transformers' BertModel state_dict keys (loads HF weights strictly).

    ``forward`` returns last_hidden_state (B, L, H); ``pool`` the pooler output (B, H). In eval mode without
    gradients it runs the fused inference loop (int8 GEMMs after ``fastbert.quantize``); with gradients, the
    same fused kernels through their registered backward kernels.
    """

    def __init__(self, config: EncoderConfig, add_pooling_layer: bool = True, pad_outputs: str = "zero"):
        super().__init__()
        if pad_outputs not in PAD_OUTPUTS:
            raise ValueError(f"pad_outputs: expected one of {PAD_OUTPUTS}, got {pad_outputs!r}")
        validate_config(config)
        self.config = config
        self.pad_outputs = pad_outputs
        self.embeddings = _Embeddings(config)
        self.encoder = _Stack(config)
        self.pooler = _Pooler(config) if add_pooling_layer else None
        self.eval()

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None) -> Tensor:
        return run(self, self.config, input_ids, attention_mask, token_type_ids, position_ids,
                   pad_outputs=self.pad_outputs).last_hidden_state

    def pool(self, last_hidden_state: Tensor) -> Tensor:
        """tanh(dense(last_hidden_state[:, 0])), HF's pooler output (B, H)."""
        if self.pooler is None:
            raise ValueError("pool: this encoder was loaded without pooler weights (add_pooling_layer=False)")
        return pool(self.pooler, last_hidden_state)

    def fuse_qkv_storage_(self) -> "Encoder":
        """Make each layer's query/key/value weights (and biases) views of one (3H, H) tensor, so the fused QKV
        GEMM needs no cached copy. Parameters keep their names; load_state_dict copies into the views."""
        with torch.no_grad():
            for layer in self.encoder.layer:
                sa = layer.attention.self
                lins = (sa.query, sa.key, sa.value)
                for name in ("weight", "bias"):
                    ts = [getattr(m, name) for m in lins]
                    if any(t is None for t in ts):
                        continue
                    fused = torch.cat([t.detach() for t in ts])
                    n = ts[0].shape[0]
                    for i, m in enumerate(lins):
                        setattr(m, name, nn.Parameter(fused[i * n:(i + 1) * n], requires_grad=ts[i].requires_grad))
        return self


def pool(pooler: nn.Module, last_hidden_state: Tensor) -> Tensor:
    return torch.tanh(F.linear(last_hidden_state[:, 0], pooler.dense.weight, pooler.dense.bias))


# ---------------------------------------------------------------- input checks

def _is_int(t: Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _min_max(t: Tensor) -> Tuple[int, int]:
    """(min, max) of an integer tensor with one device-to-host read (one sync on CUDA, not two)."""
    return tuple(torch.stack(torch.aminmax(t)).tolist())


def check_inputs(config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds) -> None:
    """TypeError/ValueError/IndexError naming the argument; run eagerly only (skipped while compiling)."""
    if input_ids is not None:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids: expected a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if not _is_int(input_ids):
            raise TypeError(f"input_ids: expected an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq_len), got {tuple(input_ids.shape)}")
        shape = tuple(input_ids.shape)
        name = "input_ids"
    else:
        if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3:
            raise ValueError("inputs_embeds: expected a tensor of shape (batch, seq_len, hidden_size)")
        if inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds: expected last dim hidden_size={config.hidden_size}, "
                             f"got shape {tuple(inputs_embeds.shape)}")
        if not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds: expected a floating tensor, got {inputs_embeds.dtype}")
        shape = tuple(inputs_embeds.shape[:2])
        name = "inputs_embeds"
    B, L = shape
    if L == 0:
        raise ValueError(f"{name}: sequence length is 0; expected at least one position per row")
    n_pos = config.max_position_embeddings
    if position_ids is None and L > n_pos:
        raise ValueError(f"{name}: sequence length {L} exceeds max_position_embeddings={n_pos}")
    if input_ids is not None and input_ids.numel() > 0:
        lo, hi = _min_max(input_ids)
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise IndexError(f"input_ids: token id {bad} outside the vocabulary [0, {config.vocab_size})")
    if token_type_ids is not None:
        if not isinstance(token_type_ids, Tensor) or not _is_int(token_type_ids):
            raise TypeError("token_type_ids: expected an integer tensor")
        if tuple(token_type_ids.shape) != shape:
            raise ValueError(f"token_type_ids: expected shape {shape} (as {name}), got {tuple(token_type_ids.shape)}")
        if token_type_ids.numel() > 0:
            lo, hi = _min_max(token_type_ids)
            if lo < 0 or hi >= config.type_vocab_size:
                bad = lo if lo < 0 else hi
                raise IndexError(f"token_type_ids: type id {bad} outside [0, type_vocab_size={config.type_vocab_size})")
    if position_ids is not None:
        if not isinstance(position_ids, Tensor) or not _is_int(position_ids):
            raise TypeError("position_ids: expected an integer tensor")
        ps = tuple(position_ids.shape)
        if ps not in ((B, L), (1, L), (L,)):
            raise ValueError(f"position_ids: expected shape {(B, L)}, (1, {L}) or ({L},), got {ps}")
        if position_ids.numel() > 0:
            lo, hi = _min_max(position_ids)
            if lo < 0 or hi >= n_pos:
                bad = lo if lo < 0 else hi
                raise IndexError(f"position_ids: position {bad} outside [0, max_position_embeddings={n_pos})")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask: expected a torch.Tensor, got {type(attention_mask).__name__}")
        if attention_mask.is_complex():
            raise TypeError(f"attention_mask: expected a bool, integer or float tensor, got {attention_mask.dtype}")
        ms = tuple(attention_mask.shape)
        if attention_mask.dim() == 2:
            if ms != shape:
                raise ValueError(f"attention_mask: expected shape {shape} (as {name}), got {ms}")
        elif attention_mask.dim() == 3:
            if ms != (B, L, L):
                raise ValueError(f"attention_mask: a 3-D mask must have shape {(B, L, L)}, got {ms}")
        elif attention_mask.dim() == 4:
            nh = config.num_attention_heads
            if not (ms[0] in (1, B) and ms[1] in (1, nh) and ms[2] in (1, L) and ms[3] == L):
                raise ValueError(f"attention_mask: a 4-D mask must broadcast to {(B, nh, L, L)}, got {ms}")
        else:
            raise ValueError(f"attention_mask: expected 2-D {shape}, 3-D {(B, L, L)} or 4-D (B, 1|heads, L, L), "
                             f"got shape {ms}")


# ---------------------------------------------------------------- the forward

def _layer_parts(layer):
    sa = layer.attention.self
    return (sa, layer.attention.output.dense, layer.attention.output.LayerNorm, layer.intermediate.dense,
            layer.output.dense, layer.output.LayerNorm)


def _params_need_grad(model: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in model.parameters())


def _dropout_seed() -> int:
    return int(torch.randint(0, 2 ** 62, (1,)).item())


def _like(t: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """t in x's dtype (a differentiable cast). Under torch.autocast the GEMMs return bf16/fp16 while the biases
    and LayerNorm parameters stay float32; the fused ops take one dtype."""
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)


def _act(config, layer, h: Tensor, bias: Optional[Tensor]) -> Tensor:
    act = config.hidden_act
    if isinstance(act, str) and act in reference.ACTIVATIONS:
        if bias is None:
            bias = h.new_zeros(h.shape[-1])
        return ops.bias_act(h, _like(bias, h), act)
    fn = getattr(layer.intermediate, "intermediate_act_fn", None)
    if fn is None:
        fn = act if callable(act) else None
    if fn is None:
        raise ValueError(f"hidden_act: unsupported activation {act!r}")
    return fn(h if bias is None else h + bias)


def _embed(emb, ids, positions, types, inputs_embeds, need_grad: bool) -> Tensor:
    """LayerNorm(word + position + type) for ids/positions/types of any shape -> shape + (H,)."""
    ln = emb.LayerNorm
    tt_w = emb.token_type_embeddings.weight if getattr(emb, "token_type_embeddings", None) is not None else None
    if inputs_embeds is None and (not need_grad or "embeddings" in ops.DIFFERENTIABLE):
        word = zero_row_grad(emb.word_embeddings.weight, emb.word_embeddings.padding_idx)  # padding_idx, as HF
        out, _, _ = ops.embeddings(ids, positions, types, word,
                                   emb.position_embeddings.weight, tt_w, ln.weight, ln.bias, ln.eps)
        return out
    # Differentiable path, as HF sums (padding_idx keeps the pad id's gradient zero).
    x = inputs_embeds if inputs_embeds is not None else emb.word_embeddings(ids)
    if tt_w is not None:
        if types is None:
            types = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        x = x + F.embedding(types, tt_w)
    x = x + F.embedding(positions, emb.position_embeddings.weight)
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _residual_ln(y: Tensor, dense: nn.Module, ln: nn.Module, residual: Tensor, p_drop: float,
                 training: bool) -> Tensor:
    """LayerNorm(y + dense.bias + residual), y = input @ dense.weight^T (dropout on y + bias when training).
    Under torch.autocast y comes in the autocast dtype; the sum and the LayerNorm run in the residual's dtype, as
    autocast runs layer_norm in float32."""
    y = _like(y, residual)
    bias = _like(dense.bias, residual)
    if training and p_drop > 0:
        y = F.dropout(y if bias is None else y + bias, p_drop, True)
        bias = None
    out, _, _ = ops.bias_residual_layernorm(y, bias, residual, ln.weight, ln.bias, ln.eps)
    return out


def _attn_out(ctx: Tensor, dense: nn.Module, ln: nn.Module, x: Tensor, p_drop: float, training: bool) -> Tensor:
    return _residual_ln(F.linear(ctx, dense.weight), dense, ln, x, p_drop, training)


def _mlp(config, layer, x: Tensor, training: bool, p_hidden: float) -> Tensor:
    _, _, _, inter, out_dense, out_ln = _layer_parts(layer)
    h = _act(config, layer, F.linear(x, inter.weight), inter.bias)          # (T, I)
    y = F.linear(h, out_dense.weight)                                        # (T, H)
    del h                                                                    # free (T, I) before the LayerNorm
    return _residual_ln(y, out_dense, out_ln, x, p_hidden, training)


def _attention_probs(qkv: Tensor, bias: Optional[Tensor], mask: Tensor, nh: int, scale: float,
                     p_drop: float, training: bool) -> Tuple[Tensor, Tensor]:
    """Plain-torch attention on (B, L, 3H) that also returns the probabilities (B, nh, L, L), as HF eager."""
    B, L, H3 = qkv.shape
    H = H3 // 3
    x = qkv if bias is None else qkv + bias
    q, k, v = (t.unflatten(-1, (nh, H // nh)).transpose(1, 2) for t in x.split(H, dim=-1))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    dropped = F.dropout(probs, p_drop, training) if training and p_drop > 0 else probs
    ctx = torch.matmul(dropped, v).transpose(1, 2).reshape(B, L, H)
    return ctx, probs


def _geometry(config):
    nh = config.num_attention_heads
    return nh, 1.0 / math.sqrt(config.hidden_size // nh)


def _packed_layer(config, layer, x: Tensor, cu_seqlens: Tensor, max_seqlen: int, need_grad: bool,
                  training: bool) -> Tensor:
    """One BERT layer on packed tokens x (T, H)."""
    sa, o_dense, o_ln, _, _, _ = _layer_parts(layer)
    nh, scale = _geometry(config)
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    p_attn = float(config.attention_probs_dropout_prob) if training else 0.0
    w, b = fused_qkv(sa, need_grad)
    qkv = F.linear(x, w)                                                       # (T, 3H), bias left to attention
    seed = _dropout_seed() if p_attn > 0 else 0
    ctx, _ = ops.attention(qkv, _like(b, qkv), cu_seqlens, max_seqlen, nh, scale, p_attn, seed, 0)   # (T, H)
    del qkv                                                   # free (T, 3H) before the MLP: lower peak memory
    x = _attn_out(ctx, o_dense, o_ln, x, p_hidden, training)
    del ctx
    return _mlp(config, layer, x, training, p_hidden)


def _padded_layer(config, layer, x: Tensor, mask: Tensor, need_grad: bool, training: bool, with_probs: bool):
    """One BERT layer on padded x (B, L, H) under a mask broadcastable to (B, nh, L, L)."""
    sa, o_dense, o_ln, _, _, _ = _layer_parts(layer)
    nh, scale = _geometry(config)
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    p_attn = float(config.attention_probs_dropout_prob) if training else 0.0
    w, b = fused_qkv(sa, need_grad)
    qkv = F.linear(x, w)                                                       # (B, L, 3H)
    probs = None
    if with_probs:
        ctx, probs = _attention_probs(qkv, _like(b, qkv), mask, nh, scale, p_attn, training)
    else:
        seed = _dropout_seed() if p_attn > 0 else 0
        mask = mask if mask.dtype == torch.bool else _like(mask, qkv)
        ctx, _ = ops.attention_masked(qkv, _like(b, qkv), mask, nh, scale, p_attn, seed, 0)    # (B, L, H)
    del qkv
    x = _attn_out(ctx, o_dense, o_ln, x, p_hidden, training)
    del ctx
    x = _mlp(config, layer, x, training, p_hidden)
    return (x, probs) if with_probs else x


def _checkpointed(layer, need_grad: bool, fn, *args):
    """fn(*args), under activation checkpointing when HF's gradient_checkpointing_enable() marked the layer."""
    if need_grad and layer.training and getattr(layer, "gradient_checkpointing", False):
        from torch.utils.checkpoint import checkpoint
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _select(hidden_sel, n: int):
    if hidden_sel is None or isinstance(hidden_sel, bool):
        return None
    sel = [hidden_sel] if isinstance(hidden_sel, int) else list(hidden_sel)
    return {i % n for i in sel if -n <= i < n}


def run(model: nn.Module, config: Any, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
        inputs_embeds: Optional[Tensor] = None, pad_outputs: str = "zero", output_hidden_states=False,
        output_attentions: bool = False) -> EncoderOutput:
    """The fused BERT forward over ``model``'s HF-named submodules; see the module docstring."""
    if not _compiling():
        if pad_outputs not in PAD_OUTPUTS:
            raise ValueError(f"pad_outputs: expected one of {PAD_OUTPUTS}, got {pad_outputs!r}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids: specify exactly one of input_ids or inputs_embeds")
        check_inputs(config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)

    emb = model.embeddings
    layers = model.encoder.layer
    training = model.training
    need_grad = _params_need_grad(model) or (inputs_embeds is not None and inputs_embeds.requires_grad
                                             and torch.is_grad_enabled())
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    nh = config.num_attention_heads
    H = config.hidden_size
    dtype = emb.word_embeddings.weight.dtype if inputs_embeds is None else inputs_embeds.dtype
    src = input_ids if input_ids is not None else inputs_embeds
    device = src.device
    B, L = src.shape[0], src.shape[1]

    if B == 0:
        empty = torch.zeros(0, L, H, dtype=dtype, device=device)
        hs = tuple(empty for _ in range(len(layers) + 1)) if output_hidden_states else None
        at = tuple(torch.zeros(0, nh, L, L, dtype=dtype, device=device) for _ in layers) if output_attentions else None
        return EncoderOutput(empty, hs, at)

    if attention_mask is not None and attention_mask.dtype != torch.bool and attention_mask.dim() == 2:
        mask2d = attention_mask != 0
    else:
        mask2d = attention_mask if (attention_mask is None or attention_mask.dim() == 2) else None

    if position_ids is not None:
        position_ids = position_ids.reshape(-1, L).expand(B, L)
    if token_type_ids is not None and not token_type_ids.is_contiguous():
        token_type_ids = token_type_ids.contiguous()

    padded = (pad_outputs == "hf" or output_attentions or mask2d is None and attention_mask is not None)
    hidden = [] if output_hidden_states else None
    attentions = [] if output_attentions else None
    n_states = len(layers) + 1
    sel = _select(output_hidden_states, n_states)

    def keep_state(i, t_fn):
        if hidden is not None:
            hidden.append(t_fn() if sel is None or i in sel else None)

    if not padded:
        # ---- padding-free: real tokens only
        if mask2d is None:
            T = B * L
            indices = torch.arange(T, device=device)
            cu_seqlens = torch.arange(0, T + 1, L, dtype=torch.int32, device=device)
            positions = indices % L
        else:
            indices, cu_seqlens, positions = ops.pack(mask2d)
        if position_ids is not None:
            positions = position_ids.reshape(-1)[indices]
        types = token_type_ids.reshape(-1)[indices] if token_type_ids is not None else None
        if inputs_embeds is not None:
            x = _embed(emb, None, positions, types, inputs_embeds.reshape(B * L, H)[indices], need_grad)
        else:
            ids = input_ids.reshape(-1)[indices]
            x = _embed(emb, ids, positions, types, None, need_grad)
        if training and p_hidden > 0:
            x = F.dropout(x, p_hidden, True)
        keep_state(0, lambda: ops.unpack(x, indices, B, L))
        weights = int8 = None
        if not need_grad and not training and FAST_INFERENCE and not _compiling():
            int8 = int8_path.int8_layers(model) if x.device.type == "cpu" else None
            amp = inference.autocast_dtype(x)  # torch.autocast: the loop runs in its dtype, outputs stay x's
            if int8 is None:
                weights = inference.layer_weights(layers, config.hidden_act, x, amp)
        if int8 is not None:
            x = int8_path.run_layers_int8(model, int8, x, cu_seqlens, L,
                                         None if hidden is None else
                                         lambda i, y: keep_state(i + 1, lambda: ops.unpack(y, indices, B, L)))
        elif weights is not None:
            nh_, scale = _geometry(config)
            out_dtype = x.dtype
            x = inference.run_layers(weights, x if amp is None else x.to(amp), cu_seqlens, L, nh_, scale,
                                     config.hidden_act,
                                     None if hidden is None else
                                     lambda i, y: keep_state(i + 1, lambda: ops.unpack(y.to(out_dtype), indices,
                                                                                       B, L)),
                                     layers).to(out_dtype)
        else:
            for i, layer in enumerate(layers):
                x = _checkpointed(layer, need_grad, _packed_layer, config, layer, x, cu_seqlens, L, need_grad,
                                  training)
                keep_state(i + 1, lambda: ops.unpack(x, indices, B, L))
        out = ops.unpack(x, indices, B, L)
        if hidden is not None and hidden[-1] is not None:
            hidden[-1] = out
        return EncoderOutput(out, tuple(hidden) if hidden is not None else None, None)

    # ---- padded path: pad_outputs="hf", 3-D/4-D masks, output_attentions
    if position_ids is None:
        position_ids = torch.arange(L, device=device).expand(B, L)
    if inputs_embeds is not None:
        x = _embed(emb, None, position_ids, token_type_ids, inputs_embeds, need_grad)
    else:
        x = _embed(emb, input_ids, position_ids, token_type_ids, None, need_grad)   # (B, L, H)
    if training and p_hidden > 0:
        x = F.dropout(x, p_hidden, True)
    minval = torch.finfo(x.dtype).min
    if attention_mask is None:
        mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=device)
    elif mask2d is not None:
        mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=device).masked_fill(~mask2d.view(B, 1, 1, L), minval)
    elif attention_mask.dim() == 3:
        mask = (attention_mask != 0).unsqueeze(1)                              # (B, 1, L, L) keep
    else:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.to(x.dtype)
    zero_pads = pad_outputs == "zero" and mask2d is not None
    keep_tok = mask2d.unsqueeze(-1) if zero_pads else None

    def state(t):
        return t.masked_fill(~keep_tok, 0) if keep_tok is not None else t

    keep_state(0, lambda: state(x))
    for i, layer in enumerate(layers):
        if output_attentions:
            x, probs = _padded_layer(config, layer, x, mask, need_grad, training, True)
            attentions.append(probs)
        else:
            x = _checkpointed(layer, need_grad, _padded_layer, config, layer, x, mask, need_grad, training, False)
        keep_state(i + 1, lambda: state(x))
    out = state(x)
    if hidden is not None and hidden[-1] is not None:
        hidden[-1] = out
    return EncoderOutput(out, tuple(hidden) if hidden is not None else None,
                         tuple(attentions) if attentions is not None else None)


# ---------------------------------------------------------------- loading an HF folder without transformers

_HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.", "dropout.")


def _load_file(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint file not found") from None
    except Exception as exc:  # safetensors / pickle / zip errors: truncated or corrupt file
        raise ValueError(f"{path}: truncated or corrupt checkpoint ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _read_state_dict(model_dir: str) -> Tuple[dict, str]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        p = os.path.join(model_dir, single)
        if os.path.isfile(p):
            return _load_file(p), p
        ip = os.path.join(model_dir, index)
        if os.path.isfile(ip):
            try:
                with open(ip, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{ip}: not a valid checkpoint index ({exc})") from None
            sd = {}
            for shard in sorted(set(weight_map.values())):
                sd.update(_load_file(os.path.join(model_dir, shard)))
            return sd, ip
    raise FileNotFoundError(f"{model_dir}: no model.safetensors, pytorch_model.bin or sharded index found")


def _hf_key(k: str) -> str:
    if k.startswith("bert."):
        k = k[len("bert."):]
    return k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def load_encoder(model_dir: str, dtype: torch.dtype = torch.float32, device="cpu",
                 pad_outputs: str = "zero") -> Encoder:
    """An eval-mode ``Encoder`` from an HF BERT folder (config.json + weights), without importing transformers.

    Keys may carry a ``bert.`` prefix; head keys (``cls.*``, ``classifier.*``, ...) are ignored; a missing
    encoder weight, a shape that disagrees with config.json or a corrupt file raises an error naming the file."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: model folder not found")
    config = EncoderConfig.from_json(os.path.join(model_dir, "config.json"))
    raw, path = _read_state_dict(model_dir)
    sd = {}
    for k, v in raw.items():
        sd[_hf_key(k)] = v
    has_pooler = "pooler.dense.weight" in sd
    with torch.device("meta"):
        enc = Encoder(config, add_pooling_layer=has_pooler, pad_outputs=pad_outputs)
    wanted = enc.state_dict()
    missing = [k for k in wanted if k not in sd]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks encoder weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ready = {}
    for k, ref in wanted.items():
        t = sd[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{path}: {k} has shape {tuple(t.shape)}, config.json implies {tuple(ref.shape)}")
        ready[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
    enc.load_state_dict(ready, strict=True, assign=True)
    enc.fuse_qkv_storage_()
    return enc.eval().requires_grad_(False)
