"""x @ W^T for the differentiable forward (training, and any forward that records gradients): oneDNN's inner
product on CPU float32, F.linear everywhere else.

Why: on CPU, F.linear sends float32 to MKL, which takes no AVX-512 path on AMD processors; on the project's
AMD EPYC (Zen 5, 2 threads) it runs MiniLM's training GEMMs (672 tokens x 384 x 1536) at 205 GFLOP/s, where
oneDNN's inner product (the kernel of fastbert/ops/gemm.py) runs the forward and the input gradient at 450-470
and the weight gradient, with its two transposed copies, at 300-350. All three products of a linear layer go to
oneDNN: y = x W^T, dx = dy W (W^T copied: a weight's size), dW = dy^T x (dy and x transposed into copies).

Where F.linear stays: CUDA, float16/float64, ``FASTBERT_CPU_GEMM=mm``, under torch.autocast (which casts for
F.linear; bfloat16 products already go to oneDNN through torch) and while compiling (torch.compile makes its
own choice). The results differ from F.linear's by float32 rounding (another summation order).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import compiling, gemm

__all__ = ["linear"]


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return gemm.linear_onednn(x, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiable products (oneDNN's op records no graph)
            dx = grad.matmul(w) if ctx.needs_input_grad[0] else None
            dw = grad.t().matmul(x) if ctx.needs_input_grad[1] else None
            return dx, dw
        grad = grad.contiguous()
        dx = gemm.linear_onednn(grad, w.t().contiguous()) if ctx.needs_input_grad[0] else None
        dw = gemm.linear_onednn(grad.t().contiguous(), x.t().contiguous()) if ctx.needs_input_grad[1] else None
        return dx, dw


def linear(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T, w as nn.Linear stores it (out, in); x of any rank (the last dimension is w's input)."""
    if (
        x.dtype != torch.float32
        or w.dtype != torch.float32
        or not gemm.uses_onednn(x)
        or torch.is_autocast_enabled("cpu")
        or compiling()
    ):
        return F.linear(x, w)
    shape = x.shape
    x2, w = x.reshape(-1, shape[-1]).contiguous(), w.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        y = _OneDNNLinear.apply(x2, w)
    else:
        y = gemm.linear_onednn(x2, w)
    return y.reshape(*shape[:-1], w.shape[0])
