"""The fused BERT forward, ``run(model, config, ...)``, over any module tree named like transformers'
BertModel (``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ..., ``pooler.dense``) or
like another model of the BERT family (RoBERTa, DistilBERT, ELECTRA: fastbert/model/family.py says where each
keeps its parts and how it makes positions and token types). It serves fastbert.model's ``Encoder`` and, through
fastbert.hf, transformers' own model objects. Data path (padding-free, see docs/design.md):

    pack the real tokens by the mask -> (T,) ids, positions, cu_seqlens
    x = embeddings(ids, positions, types)                                   (T, H)
    per layer: qkv = x @ Wqkv^T (one GEMM, bias left to attention)          (T, 3H)
               ctx = attention(qkv, bqkv, cu_seqlens)                       (T, H)
               x   = LN(ctx @ Wo^T + bo + x)                                (T, H)
               x   = LN(act(x @ W1^T + b1) @ W2^T + b2 + x)                 (T, H)
    unpack to (B, L, H), pad positions zero

In eval mode without gradients the layers run in fastbert.runtime's loop (same arithmetic, less Python; int8
GEMMs after ``fastbert.quantize``). A padded path (B, L, H) with ops.attention_masked serves pad_outputs="hf"
(pad positions computed as HF does), 3-D/4-D masks and output_attentions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..ops import gemm, reference
from ..ops.autograd import zero_row_grad
from ..ops.linear import linear
from ..runtime import host_pool
from ..runtime import int8 as int8_path
from ..runtime import layers as layer_loop
from ..runtime.layout import layout_of, part
from ..runtime.weights import fused_qkv, layer_parts
from .checks import check_inputs
from .config import check_pad_outputs
from .family import bert_names, family_of, roberta_positions

__all__ = ["run", "pool", "EncoderOutput", "set_fast_inference"]

_FAST_INFERENCE = True


def set_fast_inference(enabled: bool) -> None:
    """Whether eval-mode forwards that need no gradient take fastbert.runtime's layer loop (default) or the
    per-layer path; the two compute the same, tests compare them."""
    global _FAST_INFERENCE
    _FAST_INFERENCE = bool(enabled)


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, L, H)
    hidden_states: tuple[Tensor, ...] | None  # num_layers + 1 of (B, L, H), when asked
    attentions: tuple[Tensor, ...] | None  # num_layers of (B, nh, L, L), when asked


def pool(pooler: nn.Module, last_hidden_state: Tensor) -> Tensor:
    return torch.tanh(F.linear(last_hidden_state[:, 0], pooler.dense.weight, pooler.dense.bias))


def _params_need_grad(model: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(p.requires_grad for p in model.parameters())


def _dropout_seed() -> int:
    return int(torch.randint(0, 2**62, (1,)).item())


def _like(t: Tensor | None, x: Tensor) -> Tensor | None:
    """t in x's dtype (a differentiable cast). Under torch.autocast the GEMMs return bf16/fp16 while the biases
    and LayerNorm parameters stay float32; the fused ops take one dtype."""
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)


def _act(config: Any, layer: nn.Module, h: Tensor, bias: Tensor | None) -> Tensor:
    act = config.hidden_act
    if isinstance(act, str) and act in reference.ACTIVATIONS:
        if bias is None:
            bias = h.new_zeros(h.shape[-1])
        return ops.bias_act(h, _like(bias, h), act)
    fn = layer
    for name in layout_of(layer).activation.split("."):  # transformers' own activation module, if any
        fn = getattr(fn, name, None)
    if fn is None:
        fn = act if callable(act) else None
    if fn is None:
        raise ValueError(f"hidden_act: unsupported activation {act!r}")
    return fn(h if bias is None else h + bias)


def embed(
    emb: nn.Module,
    ids: Tensor | None,
    positions: Tensor,
    types: Tensor | None,
    inputs_embeds: Tensor | None,
    need_grad: bool,
) -> Tensor:
    """LayerNorm(word + position + type) for ids/positions/types of any shape -> shape + (H,). No token type
    table (DistilBERT): word + position. A table's padding_idx (RoBERTa's position table has one) gets no
    gradient, as in nn.Embedding."""
    ln = emb.LayerNorm
    tt_w = emb.token_type_embeddings.weight if getattr(emb, "token_type_embeddings", None) is not None else None
    pos = emb.position_embeddings
    if inputs_embeds is None and (not need_grad or "embeddings" in ops.DIFFERENTIABLE):
        word = zero_row_grad(emb.word_embeddings.weight, emb.word_embeddings.padding_idx)  # padding_idx, as HF
        pos_w = zero_row_grad(pos.weight, pos.padding_idx)
        out, _, _ = ops.embeddings(ids, positions, types, word, pos_w, tt_w, ln.weight, ln.bias, ln.eps)
        return out
    # Differentiable path, as HF sums (padding_idx keeps the pad id's gradient zero).
    x = inputs_embeds if inputs_embeds is not None else emb.word_embeddings(ids)
    if tt_w is not None:
        if types is None:
            types = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        x = x + F.embedding(types, tt_w)
    x = x + F.embedding(positions, pos.weight, pos.padding_idx)
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _residual_ln(y: Tensor, dense: nn.Module, ln: nn.Module, residual: Tensor, p_drop: float, training: bool) -> Tensor:
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
    return _residual_ln(linear(ctx, dense.weight), dense, ln, x, p_drop, training)


def _mlp(config: Any, layer: nn.Module, x: Tensor, training: bool, p_hidden: float) -> Tensor:
    _, _, _, inter, out_dense, out_ln = layer_parts(layer)
    h = _act(config, layer, linear(x, inter.weight), inter.bias)  # (T, I)
    y = linear(h, out_dense.weight)  # (T, H)
    del h  # free (T, I) before the LayerNorm
    return _residual_ln(y, out_dense, out_ln, x, p_hidden, training)


def _attention_probs(
    qkv: Tensor, bias: Tensor | None, mask: Tensor, nh: int, scale: float, p_drop: float, training: bool
) -> tuple[Tensor, Tensor]:
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


def packed_sequence_starts(position_ids: Tensor) -> Tensor | None:
    """position_ids (B, L) without an attention mask, read as transformers (5.25 and later) reads them: several
    sequences packed in a row, a new one starting wherever a position is not its predecessor's plus one; tokens
    attend within their own sequence only. (B, L) bool, True at each sequence's first token; None when every row
    is one sequence."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts if bool(starts[:, 1:].any()) else None


def attention_geometry(config: Any) -> tuple[int, float]:
    """(num_heads, softmax scale 1/sqrt(head_dim))."""
    nh = config.num_attention_heads
    return nh, 1.0 / math.sqrt(config.hidden_size // nh)


def _packed_layer(
    config: Any, layer: nn.Module, x: Tensor, cu_seqlens: Tensor, max_seqlen: int, need_grad: bool, training: bool
) -> Tensor:
    """One BERT layer on packed tokens x (T, H)."""
    sa, o_dense, o_ln, _, _, _ = layer_parts(layer)
    nh, scale = attention_geometry(config)
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    p_attn = float(config.attention_probs_dropout_prob) if training else 0.0
    w, b = fused_qkv(sa, need_grad)
    qkv = linear(x, w)  # (T, 3H), bias left to attention
    seed = _dropout_seed() if p_attn > 0 else 0
    ctx, _ = ops.attention(qkv, _like(b, qkv), cu_seqlens, max_seqlen, nh, scale, p_attn, seed, 0)  # (T, H)
    del qkv  # free (T, 3H) before the MLP: lower peak memory
    x = _attn_out(ctx, o_dense, o_ln, x, p_hidden if layout_of(layer).attention_dropout else 0.0, training)
    del ctx
    return _mlp(config, layer, x, training, p_hidden)


def _padded_layer(
    config: Any, layer: nn.Module, x: Tensor, mask: Tensor, need_grad: bool, training: bool, with_probs: bool
) -> Tensor | tuple[Tensor, Tensor]:
    """One BERT layer on padded x (B, L, H) under a mask broadcastable to (B, nh, L, L)."""
    sa, o_dense, o_ln, _, _, _ = layer_parts(layer)
    nh, scale = attention_geometry(config)
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    p_attn = float(config.attention_probs_dropout_prob) if training else 0.0
    w, b = fused_qkv(sa, need_grad)
    qkv = linear(x, w)  # (B, L, 3H)
    probs = None
    if with_probs:
        ctx, probs = _attention_probs(qkv, _like(b, qkv), mask, nh, scale, p_attn, training)
    else:
        seed = _dropout_seed() if p_attn > 0 else 0
        mask = mask if mask.dtype == torch.bool else _like(mask, qkv)
        ctx, _ = ops.attention_masked(qkv, _like(b, qkv), mask, nh, scale, p_attn, seed, 0)  # (B, L, H)
    del qkv
    x = _attn_out(ctx, o_dense, o_ln, x, p_hidden if layout_of(layer).attention_dropout else 0.0, training)
    del ctx
    x = _mlp(config, layer, x, training, p_hidden)
    return (x, probs) if with_probs else x


def _checkpointed(layer: nn.Module, need_grad: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), under activation checkpointing when transformers' gradient_checkpointing_enable() (or
    activation_checkpointing_enable()) marked the layer: through the checkpoint function it gave the layer, so its
    settings (use_reentrant, offloading, a function of the user's own) hold; torch's non-reentrant checkpoint when
    the flag was set by hand."""
    if need_grad and layer.training and getattr(layer, "gradient_checkpointing", False):
        checkpoint = getattr(layer, "_gradient_checkpointing_func", None)
        if checkpoint is None:
            from torch.utils.checkpoint import checkpoint as torch_checkpoint

            return torch_checkpoint(fn, *args, use_reentrant=False)
        return checkpoint(fn, *args)
    return fn(*args)


def _checkpoint_input(x: Tensor, layers: Sequence[nn.Module], need_grad: bool) -> Tensor:
    """The layers' input, made to require grad when a checkpointed layer follows frozen embeddings: torch's
    reentrant checkpoint passes gradients only to inputs that require them (transformers arranges this with a
    hook on word_embeddings, enable_input_require_grads, which fastbert's fused embedding never calls)."""
    if need_grad and not x.requires_grad and any(getattr(layer, "gradient_checkpointing", False) for layer in layers):
        return x.detach().requires_grad_()
    return x


def _select(hidden_sel: bool | int | Sequence[int] | None, n: int) -> set[int] | None:
    if hidden_sel is None or isinstance(hidden_sel, bool):
        return None
    sel = [hidden_sel] if isinstance(hidden_sel, int) else list(hidden_sel)
    return {i % n for i in sel if -n <= i < n}


def _refuse_sharded_parts(model: nn.Module, layers: Sequence[nn.Module]) -> None:
    """FSDP2 gathers a sharded module's parameters in hooks around its forward(); fastbert runs its layers'
    computation without calling their forward(), so a part sharded on its own would reach the kernels as shards."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return  # no process group, no sharding: the common forward pays two calls, not an import and a scan
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in (model.embeddings, *layers)):
        raise NotImplementedError(
            "fully_shard: a fastbert model's embeddings and layers cannot be sharded one by one (fastbert runs "
            "their computation without calling their forward(), where FSDP gathers the shards); shard the "
            "model as a whole: fully_shard(model)"
        )


def run(
    model: nn.Module,
    config: Any,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
    position_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    pad_outputs: str = "zero",
    output_hidden_states: bool | int | Sequence[int] = False,
    output_attentions: bool = False,
) -> EncoderOutput:
    """The fused forward over ``model``'s HF-named submodules (any family of fastbert/model/family.py, picked
    by config.model_type); see the module docstring. On CPU its buffers, and those of the backward pass through it,
    come from fastbert.runtime.host_pool."""
    with host_pool.scope(input_ids if input_ids is not None else inputs_embeds):
        out = _run(
            model, config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, pad_outputs,
            output_hidden_states, output_attentions,
        )  # fmt: skip
    host_pool.route_backward(out.last_hidden_state)
    return out


def _run(
    model: nn.Module,
    config: Any,
    input_ids: Tensor | None,
    attention_mask: Tensor | None,
    token_type_ids: Tensor | None,
    position_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    pad_outputs: str,
    output_hidden_states: bool | int | Sequence[int],
    output_attentions: bool,
) -> EncoderOutput:
    fam = family_of(config)
    config = bert_names(config)
    emb = model.embeddings
    layers = part(model, fam.layers)
    project = model._modules.get(fam.projection) if fam.projection is not None else None
    embed_dim = emb.LayerNorm.normalized_shape[0]
    first_position = 0 if fam.positions == "absolute" else config.pad_token_id + 1
    if not ops.compiling():
        check_pad_outputs(pad_outputs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids: specify exactly one of input_ids or inputs_embeds")
        if token_type_ids is not None and not fam.token_types:
            raise ValueError(f"token_type_ids: a {fam.name} model has no token type embeddings; pass None")
        check_inputs(
            config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, embed_dim, first_position
        )
        _refuse_sharded_parts(model, layers)
    training = model.training
    need_grad = _params_need_grad(model) or (
        inputs_embeds is not None and inputs_embeds.requires_grad and torch.is_grad_enabled()
    )
    p_hidden = float(config.hidden_dropout_prob) if training else 0.0
    nh = config.num_attention_heads
    H = config.hidden_size
    dtype = emb.word_embeddings.weight.dtype if inputs_embeds is None else inputs_embeds.dtype
    src = input_ids if input_ids is not None else inputs_embeds
    device = src.device
    B, L = src.shape[0], src.shape[1]
    if device.type == "cpu" and not ops.compiling():
        gemm.note_cpu_dtype(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else dtype)

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
    starts = None  # not under torch.compile: the check is data-dependent control flow
    if attention_mask is None and position_ids is not None and fam.packed_position_ids and not ops.compiling():
        starts = packed_sequence_starts(position_ids)
    if position_ids is None and first_position:  # RoBERTa's positions, from the ids (never packed sequences)
        position_ids = roberta_positions(input_ids, config.pad_token_id, (B, L), device)
    if token_type_ids is not None and not token_type_ids.is_contiguous():
        token_type_ids = token_type_ids.contiguous()

    padded = pad_outputs == "hf" or output_attentions or mask2d is None and attention_mask is not None
    hidden = [] if output_hidden_states else None
    attentions = [] if output_attentions else None
    n_states = len(layers) + 1
    sel = _select(output_hidden_states, n_states)

    def keep_state(i: int, t_fn: Callable[[], Tensor]) -> None:
        if hidden is not None:
            hidden.append(t_fn() if sel is None or i in sel else None)

    def continue_from_state(
        i: int, y: Tensor, to_state: Callable[[Tensor], Tensor], from_state: Callable[[Tensor, Tensor], Tensor]
    ) -> Tensor:
        """Keep hidden state i (to_state(y)) and, when gradients flow, go on from it (from_state(state, y)): the
        next layer then reads the returned state, which is on the gradient path as transformers' hidden states
        are (retain_grad, hooks and autograd.grad on it work). Without gradients, y goes on unchanged."""
        keep_state(i, lambda: to_state(y))
        kept = hidden[-1] if hidden is not None else None
        return from_state(kept, y) if need_grad and kept is not None else y

    last = len(layers)

    if not padded:
        # ---- padding-free: real tokens only
        if mask2d is None:
            T = B * L
            indices = torch.arange(T, device=device)
            if starts is None:
                cu_seqlens = torch.arange(0, T + 1, L, dtype=torch.int32, device=device)
            else:
                first = starts.reshape(-1).nonzero().reshape(-1)
                cu_seqlens = torch.cat([first, first.new_full((1,), T)]).to(torch.int32)
            positions = indices % L
        else:
            indices, cu_seqlens, positions = ops.pack(mask2d)
        if position_ids is not None:
            positions = position_ids.reshape(-1)[indices]
        types = token_type_ids.reshape(-1)[indices] if token_type_ids is not None else None
        if inputs_embeds is not None:
            x = embed(emb, None, positions, types, inputs_embeds.reshape(B * L, embed_dim)[indices], need_grad)
        else:
            ids = input_ids.reshape(-1)[indices]
            x = embed(emb, ids, positions, types, None, need_grad)
        if training and p_hidden > 0:
            x = F.dropout(x, p_hidden, True)
        if project is not None:  # ELECTRA: embedding_size -> hidden_size
            x = F.linear(x, project.weight, project.bias)
        x = _checkpoint_input(x, layers, need_grad)

        def unpacked(y: Tensor) -> Tensor:
            return ops.unpack(y, indices, B, L)

        def repacked(h: Tensor, _: Tensor) -> Tensor:
            return h.reshape(B * L, h.shape[-1]).index_select(0, indices)

        x = continue_from_state(0, x, unpacked, repacked)
        weights = int8 = None
        if not need_grad and not training and _FAST_INFERENCE and not ops.compiling():
            int8 = int8_path.int8_layers(model) if x.device.type == "cpu" else None
            amp = layer_loop.autocast_dtype(x)  # torch.autocast: the loop runs in its dtype, outputs stay x's
            if int8 is None:
                weights = layer_loop.layer_weights(layers, config.hidden_act, x, amp)
        if int8 is not None:
            x = int8_path.run_layers_int8(
                config,
                layers,
                int8,
                x,
                cu_seqlens,
                L,
                None if hidden is None else lambda i, y: keep_state(i + 1, lambda: ops.unpack(y, indices, B, L)),
            )
        elif weights is not None:
            nh_, scale = attention_geometry(config)
            out_dtype = x.dtype
            x = layer_loop.run_layers(
                weights,
                x if amp is None else x.to(amp),
                cu_seqlens,
                L,
                nh_,
                scale,
                config.hidden_act,
                None
                if hidden is None
                else lambda i, y: keep_state(i + 1, lambda: ops.unpack(y.to(out_dtype), indices, B, L)),
                layers,
            ).to(out_dtype)
        else:
            for i, layer in enumerate(layers):
                x = _checkpointed(layer, need_grad, _packed_layer, config, layer, x, cu_seqlens, L, need_grad, training)
                if i + 1 < last:
                    x = continue_from_state(i + 1, x, unpacked, repacked)
                else:
                    keep_state(last, lambda y=x: y)  # replaced by the output below
        out = ops.unpack(x, indices, B, L)
        if hidden is not None and hidden[-1] is not None:
            hidden[-1] = out
        return EncoderOutput(out, tuple(hidden) if hidden is not None else None, None)

    # ---- padded path: pad_outputs="hf", 3-D/4-D masks, output_attentions
    if position_ids is None:
        position_ids = torch.arange(L, device=device).expand(B, L)
    if inputs_embeds is not None:
        x = embed(emb, None, position_ids, token_type_ids, inputs_embeds, need_grad)
    else:
        x = embed(emb, input_ids, position_ids, token_type_ids, None, need_grad)  # (B, L, H)
    if training and p_hidden > 0:
        x = F.dropout(x, p_hidden, True)
    if project is not None:
        x = F.linear(x, project.weight, project.bias)
    x = _checkpoint_input(x, layers, need_grad)
    minval = torch.finfo(x.dtype).min
    if attention_mask is None and starts is not None:
        seq = starts.cumsum(-1)
        mask = (seq.unsqueeze(-1) == seq.unsqueeze(-2)).unsqueeze(1)  # (B, 1, L, L) keep: within a packed sequence
    elif attention_mask is None:
        mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=device)
    elif mask2d is not None:
        mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=device).masked_fill(~mask2d.view(B, 1, 1, L), minval)
    elif attention_mask.dim() == 3:
        mask = (attention_mask != 0).unsqueeze(1)  # (B, 1, L, L) keep
    else:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask.to(x.dtype)
    zero_pads = pad_outputs == "zero" and mask2d is not None
    keep_tok = mask2d.unsqueeze(-1) if zero_pads else None

    def state(t: Tensor) -> Tensor:
        return t.masked_fill(~keep_tok, 0) if keep_tok is not None else t

    def real_rows_from(h: Tensor, y: Tensor) -> Tensor:  # real rows from the state, pad rows (not zeroed) from y
        return torch.where(keep_tok, h, y) if keep_tok is not None else h

    x = continue_from_state(0, x, state, real_rows_from)
    for i, layer in enumerate(layers):
        if output_attentions:
            x, probs = _padded_layer(config, layer, x, mask, need_grad, training, True)
            attentions.append(probs)
        else:
            x = _checkpointed(layer, need_grad, _padded_layer, config, layer, x, mask, need_grad, training, False)
        if i + 1 < last:
            x = continue_from_state(i + 1, x, state, real_rows_from)
        else:
            keep_state(last, lambda y=x: y)  # replaced by the output below
    out = state(x)
    if hidden is not None and hidden[-1] is not None:
        hidden[-1] = out
    return EncoderOutput(
        out, tuple(hidden) if hidden is not None else None, tuple(attentions) if attentions is not None else None
    )
