"""Forward + backward of each fused op (its backward kernel through autograd) against the unfused PyTorch
autograd of the same computation, side by side in one process (fastbert.bench.timing.compare: warm-up,
interleaved repeats, medians).

    python benchmarks/bench_backward.py

Shapes are bert-base's: a packed batch of 8 sequences with lengths uniform in [32, 128] (seeded), H = 768,
I = 3072, 12 heads of 64, fp32, CPU. The unfused attention is HF eager's: padded (8, 12, 128, 128) scores
with the additive mask, softmax, PV.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastbert  # noqa: F401  (registers the ops and their autograd)
from fastbert.bench.timing import compare

H, I, NH, V, P, B, L = 768, 3072, 12, 30522, 512, 8, 128


def _leaf(t):
    return t.requires_grad_(True)


def cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    lens = torch.randint(32, L + 1, (B,), generator=g)
    T = int(lens.sum())
    x_i, b_i, go_i = _leaf(r(T, I)), _leaf(r(I)), r(T, I)
    x_h, res, b_h, w, beta, go_h = _leaf(r(T, H)), _leaf(r(T, H)), _leaf(r(H)), _leaf(r(H)), _leaf(r(H)), r(T, H)
    ids, pos, types = (
        torch.randint(0, V, (T,), generator=g),
        torch.randint(0, L, (T,), generator=g),
        torch.randint(0, 2, (T,), generator=g),
    )
    word, position, tt = _leaf(r(V, H) * 0.02), _leaf(r(P, H) * 0.02), _leaf(r(2, H) * 0.02)
    cu = torch.zeros(B + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    qkv, bqkv, go_a = _leaf(r(T, 3 * H)), _leaf(r(3 * H)), r(T, H)
    keep = torch.arange(L).view(1, L) < lens.view(B, 1)
    qkv_pad = _leaf(r(B, L, 3 * H))
    add_mask = (~keep).view(B, 1, 1, L).float() * torch.finfo(torch.float32).min
    go_pad = r(B, L, H)

    def step(out, grad, *leaves):
        torch.autograd.grad(out, leaves, grad)

    def hf_attention():
        x = qkv_pad + bqkv
        q, k, v = (t.view(B, L, NH, H // NH).transpose(1, 2) for t in x.split(H, -1))
        probs = torch.softmax(q @ k.transpose(-1, -2) / 8.0 + add_mask, -1)
        out = (probs @ v).transpose(1, 2).reshape(B, L, H)
        step(out, go_pad, qkv_pad, bqkv)

    return T, {
        "bias_act(gelu)": (
            lambda: step(torch.ops.fastbert.bias_act(x_i, b_i, "gelu"), go_i, x_i, b_i),
            lambda: step(F.gelu(x_i + b_i), go_i, x_i, b_i),
        ),
        "bias_residual_layernorm": (
            lambda: step(
                torch.ops.fastbert.bias_residual_layernorm(x_h, b_h, res, w, beta, 1e-12)[0],
                go_h,
                x_h,
                b_h,
                res,
                w,
                beta,
            ),
            lambda: step(F.layer_norm(x_h + b_h + res, (H,), w, beta, 1e-12), go_h, x_h, b_h, res, w, beta),
        ),
        "embeddings": (
            lambda: step(
                torch.ops.fastbert.embeddings(ids, pos, types, word, position, tt, w, beta, 1e-12)[0],
                go_h,
                word,
                position,
                tt,
                w,
                beta,
            ),
            lambda: step(
                F.layer_norm(
                    F.embedding(ids, word) + F.embedding(pos, position) + F.embedding(types, tt), (H,), w, beta, 1e-12
                ),
                go_h,
                word,
                position,
                tt,
                w,
                beta,
            ),
        ),
        "attention (packed vs HF eager padded)": (
            lambda: step(torch.ops.fastbert.attention(qkv, bqkv, cu, L, NH, 0.125)[0], go_a, qkv, bqkv),
            hf_attention,
        ),
    }


def main(repeats=15):
    T, table = cases()
    print(f"forward+backward, fp32, {torch.get_num_threads()} threads, T = {T} real tokens of {B} x {L}")
    print(f"{'op':40s} {'fused ms':>9s} {'unfused ms':>11s} {'speed-up':>9s} {'spread':>7s}")
    for name, (fused, unfused) in table.items():
        t = compare({"fused": fused, "unfused": unfused}, repeats=repeats, warmup=3)
        print(
            f"{name:40s} {t['fused'].median * 1e3:9.2f} {t['unfused'].median * 1e3:11.2f} "
            f"{t['unfused'].median / t['fused'].median:8.2f}x {max(t['fused'].spread(), t['unfused'].spread()):7.2f}"
        )


if __name__ == "__main__":
    main()
