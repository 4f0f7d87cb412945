"""Autograd formulas of the fused ops: ``torch.library.register_autograd`` for each forward op, and the fake
(meta) implementations of the backward ops, so that the model trains on the kernels and under torch.compile.

Each backward recomputes what the forward did not keep rather than saving it: bias_act recomputes x + bias;
the LayerNorm ops recompute the sum from their inputs and reuse the forward's fp32 (mean, rstd); attention
recomputes the probabilities from the saved log-sum-exp and regenerates the dropout mask from (seed, offset).
The row-statistics outputs (mean, rstd, lse) are marked non-differentiable: a loss that reads them gets no
gradient through them.

Where a backward op has no kernel for the tensors' device (e.g. CUDA before its backward kernels exist), the
backward runs the reference op (fastbert/reference.py) under autograd instead: slower, same numbers.

The word embedding's ``padding_idx`` is not part of the embeddings formula: the gradient of every word row,
the pad id's included, is the scatter-add of its tokens' gradients. nn.Embedding(padding_idx=p) zeroes row p
of the gradient that flows through the lookup; ``zero_row_grad(word_weight, p)`` does the same for the
weight as passed to ``fastbert.ops.embeddings`` (and leaves other uses of the same tensor, e.g. a tied MLM
decoder, untouched).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference

__all__ = ["DIFFERENTIABLE_OPS", "zero_row_grad", "has_backward_kernel"]

# The forward ops given an autograd formula here.
DIFFERENTIABLE_OPS = ("bias_act", "bias_residual_layernorm", "embeddings", "attention", "attention_masked")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def has_backward_kernel(name: str, device: torch.device) -> bool:
    """Whether ``fastbert::<name>_backward`` has a compiled kernel for this device type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}_backward", key)


def _row_sum(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum of grad over all but its last dimension, accumulated in fp32/fp64, in like's dtype."""
    return grad.reshape(-1, grad.shape[-1]).sum(0, dtype=_acc_dtype(grad.dtype)).to(like.dtype)


def _reference_grads(fn, args, needs, grad_outputs):
    """Gradients of reference fn(*args) for the tensor args flagged in needs (None elsewhere)."""
    with torch.enable_grad():
        args = [a.detach().requires_grad_(n) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a, n in zip(args, needs)]
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        inputs = [a for a, n in zip(args, needs) if n and isinstance(a, torch.Tensor)]
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None and o.requires_grad]
        if not inputs or not pairs:
            return [None] * len(args)
        grads = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True))
    return [next(grads) if n and isinstance(a, torch.Tensor) else None for a, n in zip(args, needs)]


# ---------------------------------------------------------------- bias_act

def _bias_act_setup(ctx, inputs, output):
    x, bias, activation = inputs
    ctx.save_for_backward(x, bias)
    ctx.activation = activation


def _bias_act_backward(ctx, grad):
    x, bias = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:2]):
        return None, None, None
    if has_backward_kernel("bias_act", x.device):
        grad_input = torch.ops.fastbert.bias_act_backward(grad, x, bias, ctx.activation)
    else:
        grad_input = _reference_grads(lambda u: reference.bias_act(u, torch.zeros_like(bias), ctx.activation),
                                      [x + bias], [True], [grad])[0]
    grad_x = grad_input if ctx.needs_input_grad[0] else None
    grad_bias = _row_sum(grad_input, bias) if ctx.needs_input_grad[1] else None
    return grad_x, grad_bias, None


# ---------------------------------------------------------------- bias_residual_layernorm

def _brln_setup(ctx, inputs, output):
    x, bias, residual, ln_weight, ln_bias, eps = inputs
    out, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, bias, residual, ln_weight, ln_bias, mean, rstd)
    ctx.eps = eps


def _brln_backward(ctx, grad_out, _grad_mean, _grad_rstd):
    x, bias, residual, ln_weight, ln_bias, mean, rstd = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if not any(needs[:5]):
        return (None,) * 6
    if has_backward_kernel("bias_residual_layernorm", x.device):
        grad_s, grad_w, grad_b = torch.ops.fastbert.bias_residual_layernorm_backward(
            grad_out, x, bias, residual, ln_weight, mean, rstd)
        grad_bias = _row_sum(grad_s, bias) if bias is not None and needs[1] else None
        return (grad_s if needs[0] else None, grad_bias, grad_s if needs[2] else None,
                grad_w if needs[3] else None, grad_b if needs[4] else None, None)
    grads = _reference_grads(reference.bias_residual_layernorm, [x, bias, residual, ln_weight, ln_bias, ctx.eps],
                             list(needs), [grad_out])
    return tuple(grads)


# ---------------------------------------------------------------- embeddings

def _embeddings_setup(ctx, inputs, output):
    ids, pos, types, word, position, token_type, ln_weight, ln_bias, eps = inputs
    out, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(ids, pos, types, word, position, token_type, ln_weight, ln_bias, mean, rstd)
    ctx.eps = eps


def _embeddings_backward(ctx, grad_out, _grad_mean, _grad_rstd):
    ids, pos, types, word, position, token_type, ln_weight, ln_bias, mean, rstd = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if not any(needs[3:8]):
        return (None,) * 9
    if has_backward_kernel("embeddings", word.device):
        g_word, g_pos, g_tt, g_w, g_b = torch.ops.fastbert.embeddings_backward(
            grad_out, ids, pos, types, word, position, token_type, ln_weight, mean, rstd)
        grads = (g_word, g_pos, g_tt if token_type is not None else None, g_w, g_b)
        return (None, None, None) + tuple(g if n else None for g, n in zip(grads, needs[3:8])) + (None,)
    grads = _reference_grads(reference.embeddings, [ids, pos, types, word, position, token_type, ln_weight,
                                                    ln_bias, ctx.eps], list(needs), [grad_out])
    return tuple(grads)


def zero_row_grad(weight: torch.Tensor, row: Optional[int]) -> torch.Tensor:
    """weight itself in the forward; in the backward, the gradient through this use has row `row` zeroed
    (nn.Embedding's padding_idx). A no-op when row is None or no gradient is recorded."""
    if row is None or not (torch.is_grad_enabled() and weight.requires_grad):
        return weight
    return _ZeroRowGrad.apply(weight, row)


class _ZeroRowGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, row):
        ctx.row = row
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[ctx.row] = 0
        return grad, None


# ---------------------------------------------------------------- attention

def _attention_setup(ctx, inputs, output):
    qkv, qkv_bias, cu_seqlens, max_seqlen, num_heads, scale, dropout_p, seed, offset = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, qkv_bias, cu_seqlens, out, lse)
    ctx.args = (max_seqlen, num_heads, scale, dropout_p, seed, offset)


def _attention_backward(ctx, grad_out, _grad_lse):
    qkv, qkv_bias, cu_seqlens, out, lse = ctx.saved_tensors
    max_seqlen, num_heads, scale, dropout_p, seed, offset = ctx.args
    needs = ctx.needs_input_grad
    if not any(needs[:2]):
        return (None,) * 9
    if has_backward_kernel("attention", qkv.device):
        grad_qkv = torch.ops.fastbert.attention_backward(grad_out, qkv, qkv_bias, out, lse, cu_seqlens, max_seqlen,
                                                         num_heads, scale, dropout_p, seed, offset)
        grad_bias = _row_sum(grad_qkv, qkv_bias) if qkv_bias is not None and needs[1] else None
        return (grad_qkv if needs[0] else None, grad_bias) + (None,) * 7
    grads = _reference_grads(reference.attention, [qkv, qkv_bias, cu_seqlens, *ctx.args], list(needs), [grad_out])
    return tuple(grads)


def _attention_masked_setup(ctx, inputs, output):
    qkv, qkv_bias, mask, num_heads, scale, dropout_p, seed, offset = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, qkv_bias, mask, out, lse)
    ctx.args = (num_heads, scale, dropout_p, seed, offset)


def _attention_masked_backward(ctx, grad_out, _grad_lse):
    """The mask gets no gradient (an additive float mask is treated as a constant)."""
    qkv, qkv_bias, mask, out, lse = ctx.saved_tensors
    num_heads, scale, dropout_p, seed, offset = ctx.args
    needs = ctx.needs_input_grad
    if not any(needs[:2]):
        return (None,) * 8
    if has_backward_kernel("attention_masked", qkv.device):
        grad_qkv = torch.ops.fastbert.attention_masked_backward(grad_out, qkv, qkv_bias, mask, out, lse, num_heads,
                                                                scale, dropout_p, seed, offset)
        grad_bias = _row_sum(grad_qkv, qkv_bias) if qkv_bias is not None and needs[1] else None
        return (grad_qkv if needs[0] else None, grad_bias) + (None,) * 6
    needs = [needs[0], needs[1]] + [False] * 6
    grads = _reference_grads(reference.attention_masked, [qkv, qkv_bias, mask, *ctx.args], needs, [grad_out])
    return tuple(grads)


# ---------------------------------------------------------------- fake implementations of the backward ops

def _bias_act_backward_fake(grad, x, bias, activation):
    return x.new_empty(x.shape)


def _brln_backward_fake(grad_out, x, bias, residual, ln_weight, mean, rstd):
    H = x.shape[-1]
    return x.new_empty(x.shape), ln_weight.new_empty(H), ln_weight.new_empty(H)


def _embeddings_backward_fake(grad_out, input_ids, position_ids, token_type_ids, word_weight, position_weight,
                              token_type_weight, ln_weight, mean, rstd):
    H = word_weight.shape[1]
    tt = token_type_weight.new_empty(token_type_weight.shape) if token_type_weight is not None \
        else word_weight.new_empty(0, H)
    return (word_weight.new_empty(word_weight.shape), position_weight.new_empty(position_weight.shape), tt,
            ln_weight.new_empty(H), ln_weight.new_empty(H))


def _attention_backward_fake(grad_out, qkv, qkv_bias, out, lse, cu_seqlens, max_seqlen, num_heads, scale,
                             dropout_p=0.0, seed=0, offset=0):
    return qkv.new_empty(qkv.shape)


def _attention_masked_backward_fake(grad_out, qkv, qkv_bias, mask, out, lse, num_heads, scale, dropout_p=0.0,
                                    seed=0, offset=0):
    return qkv.new_empty(qkv.shape)


# ---------------------------------------------------------------- registration (only with the extension loaded;
# without it the ops do not exist, the reference runs, and zero_row_grad above still works)

if hasattr(torch.ops.fastbert, "bias_act_backward"):
    torch.library.register_autograd("fastbert::bias_act", _bias_act_backward, setup_context=_bias_act_setup)
    torch.library.register_autograd("fastbert::bias_residual_layernorm", _brln_backward, setup_context=_brln_setup)
    torch.library.register_autograd("fastbert::embeddings", _embeddings_backward, setup_context=_embeddings_setup)
    torch.library.register_autograd("fastbert::attention", _attention_backward, setup_context=_attention_setup)
    torch.library.register_autograd("fastbert::attention_masked", _attention_masked_backward,
                                    setup_context=_attention_masked_setup)
    torch.library.register_fake("fastbert::bias_act_backward", _bias_act_backward_fake)
    torch.library.register_fake("fastbert::bias_residual_layernorm_backward", _brln_backward_fake)
    torch.library.register_fake("fastbert::embeddings_backward", _embeddings_backward_fake)
    torch.library.register_fake("fastbert::attention_backward", _attention_backward_fake)
    torch.library.register_fake("fastbert::attention_masked_backward", _attention_masked_backward_fake)
