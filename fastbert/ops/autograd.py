"""The Python side of the fused ops' autograd: fake (meta) implementations of the backward ops, so that
torch.compile traces training through the kernels, and ``zero_row_grad`` for an embedding's padding_idx.

The autograd formulas themselves are C++ (csrc/autograd.cpp), registered at the Autograd key of each op in
``DIFFERENTIABLE_OPS``: the backward calls ``torch.ops.fastbert.<op>_backward``, whose CPU and CUDA kernels
every build has. (They were Python, ``torch.library.register_autograd``, until that wrapper's cost per call
showed in the op benchmarks.)

The word embedding's ``padding_idx`` is not part of the embeddings formula: the gradient of every word row,
the pad id's included, is the scatter-add of its tokens' gradients. nn.Embedding(padding_idx=p) zeroes row p
of the gradient that flows through the lookup; ``zero_row_grad(word_weight, p)`` does the same for the
weight as passed to ``fastbert.ops.embeddings`` (and leaves other uses of the same tensor, e.g. a tied MLM
decoder, untouched).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DIFFERENTIABLE_OPS", "zero_row_grad", "has_backward_kernel"]

# The forward ops given an autograd formula (in csrc/autograd.cpp).
DIFFERENTIABLE_OPS = ("bias_act", "bias_residual_layernorm", "embeddings", "attention", "attention_masked")


def has_backward_kernel(name: str, device: torch.device) -> bool:
    """Whether ``fastbert::<name>_backward`` has a compiled kernel for this device type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastbert::{name}_backward", key)


def zero_row_grad(weight: torch.Tensor, row: int | None) -> torch.Tensor:
    """weight itself in the forward; in the backward, the gradient through this use has row `row` zeroed
    (nn.Embedding's padding_idx). A no-op when row is None or no gradient is recorded. The result must feed
    only fastbert's embeddings op: the row is zeroed in place in the gradient that op's backward returns."""
    if row is None or not (torch.is_grad_enabled() and weight.requires_grad):
        return weight
    return _ZeroRowGrad.apply(weight, row)


class _ZeroRowGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, row: int) -> torch.Tensor:
        ctx.row = row
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # The incoming gradient is the embeddings backward kernel's fresh output (the one use of this view), so
        # the row is zeroed in place: copying a vocabulary-sized table every step cost 12 ms a step when
        # fine-tuning MiniLM (30522 x 384). A gradient that is not a plain dense tensor of its own (double
        # backward, a view, expanded zeros) is copied first.
        if grad.requires_grad or grad._base is not None or not grad.is_contiguous():
            grad = grad.clone()
        grad[ctx.row] = 0
        return grad, None


# ---------------------------------------------------------------- fake implementations of the backward ops


def _bias_act_backward_fake(grad: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, activation: str) -> torch.Tensor:
    return x.new_empty(x.shape)


def _brln_backward_fake(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    ln_weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H = x.shape[-1]
    return x.new_empty(x.shape), ln_weight.new_empty(H), ln_weight.new_empty(H)


def _embeddings_backward_fake(
    grad_out: torch.Tensor,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    word_weight: torch.Tensor,
    position_weight: torch.Tensor,
    token_type_weight: torch.Tensor | None,
    ln_weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    H = word_weight.shape[1]
    tt = (
        token_type_weight.new_empty(token_type_weight.shape)
        if token_type_weight is not None
        else word_weight.new_empty(0, H)
    )
    return (
        word_weight.new_empty(word_weight.shape),
        position_weight.new_empty(position_weight.shape),
        tt,
        ln_weight.new_empty(H),
        ln_weight.new_empty(H),
    )


def _attention_backward_fake(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    return qkv.new_empty(qkv.shape)


def _attention_masked_backward_fake(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    mask: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    num_heads: int,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    return qkv.new_empty(qkv.shape)


# ---------------------------------------------------------------- registration (only with the extension loaded;
# without it the ops do not exist, the reference runs, and zero_row_grad above still works)

if hasattr(torch.ops.fastbert, "bias_act_backward"):
    torch.library.register_fake("fastbert::bias_act_backward", _bias_act_backward_fake)
    torch.library.register_fake("fastbert::bias_residual_layernorm_backward", _brln_backward_fake)
    torch.library.register_fake("fastbert::embeddings_backward", _embeddings_backward_fake)
    torch.library.register_fake("fastbert::attention_backward", _attention_backward_fake)
    torch.library.register_fake("fastbert::attention_masked_backward", _attention_masked_backward_fake)
