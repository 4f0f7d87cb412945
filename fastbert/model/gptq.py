"""Rounding a weight to int8 so that the GEMM's output, not each weight, stays close: GPTQ (Frantar et al.,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).

Round-to-nearest makes each weight's error as small as it can be, but a GEMM sums them over the input channels,
and inputs are correlated. GPTQ rounds the columns (input channels) one at a time and moves each column's rounding
error onto the columns not yet rounded, weighted by the inverse of the inputs' Gram matrix ``X^T X`` (from a
calibration forward), which minimises ``||X (W - Q)^T||`` column by column. The per-output-channel scales stay
round-to-nearest's (max |row| / 127), so the int8 GEMM and its dequantization are unchanged: only which codes are
stored differs, at quantize time (bert-base: 7.7 s instead of 1.2 s on a 2-core Zen 5), nothing at run time.

On all-MiniLM-L6-v2 with all four GEMMs in int8 it raised the mean text cosine to float32 from 0.99867 to 0.99911
in a float emulation of the scheme (docs/notes/2026-12-low-precision.md): most of the FFN's second GEMM's error
was its weights', after smoothing scaled some of their columns up. It pairs with smoothing (fastbert.quantize's
default): without it, outlier input channels set the activations' int8 scales, their error dominates, and GPTQ,
which treats the inputs as exact, does not help (tests/runtime/test_int8.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gptq_codes", "DAMP", "BLOCK"]

DAMP = 0.01  # added to the Gram matrix's diagonal, relative to its mean: keeps a rank-deficient one invertible
BLOCK = 128  # columns rounded between two updates of the rest (the same result, done as GEMMs)


def _upper_inverse(R: Tensor, leaf: int = 256) -> Tensor:
    """R^-1 of an upper triangular R, by halves: inv([[A, B], [0, C]]) = [[A^-1, -A^-1 B C^-1], [0, C^-1]], so
    most of the work is GEMMs (2x faster than one triangular solve against the identity at 3072 columns)."""
    n = R.shape[0]
    if n <= leaf:
        return torch.linalg.solve_triangular(R, torch.eye(n, dtype=R.dtype), upper=True)
    h = n // 2
    Ai, Ci = _upper_inverse(R[:h, :h], leaf), _upper_inverse(R[h:, h:], leaf)
    out = torch.zeros(n, n, dtype=R.dtype)
    out[:h, :h], out[h:, h:] = Ai, Ci
    out[:h, h:] = -(Ai @ R[:h, h:]) @ Ci
    return out


def gptq_codes(w: Tensor, scale: Tensor, gram: Tensor, qmax: int = 127) -> Tensor:
    """int8 codes (N, K) of w (N, K) float32 at the per-row scale (N,), rounded column by column with each
    column's error compensated on the later columns through gram (K, K) = X^T X of the GEMM's inputs X (T, K)."""
    N, K = w.shape
    if gram.shape != (K, K):
        raise ValueError(f"gram: expected shape ({K}, {K}) for a weight of {K} input channels, got {tuple(gram.shape)}")
    H = gram.float().clone()
    dead = torch.diagonal(H) <= 0  # channels the calibration never saw: nothing to compensate through them
    H[dead, dead] = 1.0
    H.diagonal().add_(DAMP * torch.diagonal(H).mean())
    # U: the upper Cholesky factor of H^-1, each row divided by its diagonal: row i says how much of column i's
    # rounding error each later column takes. With J the reversal of the channels and J H J = L L^T (lower),
    # R = J L J is upper and H = R R^T, so H^-1 = R^-T R^-1 and U = R^-1: one factorisation and one triangular
    # inverse (by halves, as GEMMs).
    R = torch.linalg.cholesky(H.flip(0, 1)).flip(0, 1)
    U = _upper_inverse(R)
    U /= torch.diagonal(U).clone()[:, None]
    # Transposed, so that a column of w is a contiguous row: Wt (K, N), codes Qt (K, N).
    Wt = w.detach().float().t().contiguous()
    Qt = torch.empty(K, N)
    inv, sc = 1.0 / scale.float(), scale.float()
    err = torch.empty(BLOCK, N)
    for b0 in range(0, K, BLOCK):
        b1 = min(b0 + BLOCK, K)
        for i in range(b0, b1):
            col, q, e = Wt[i], Qt[i], err[i - b0]
            torch.mul(col, inv, out=q).round_().clamp_(-qmax, qmax)
            torch.addcmul(col, q, sc, value=-1.0, out=e)
            if i + 1 < b1:
                Wt[i + 1 : b1].addr_(U[i, i + 1 : b1], e, alpha=-1.0)
        if b1 < K:
            Wt[b1:].addmm_(U[b0:b1, b1:].t(), err[: b1 - b0], alpha=-1.0)
    return Qt.t().to(torch.int8)
