"""Op micro-benchmarks: each fused op against its unfused reference and a plain copy of the same bytes.

    python benchmarks/bench_ops.py            # prints the table (GB/s, fraction of copy speed)
    pytest benchmarks/bench_ops.py            # pytest-benchmark rows for regression tracking

Shapes are bert-base's on a packed batch of T = 640 real tokens (8 x 128 at ~38% padding), fp32, CPU.
"Bytes" counts what the op must move at least: every input read once and every output written once.
"""

from __future__ import annotations

import pytest
import torch

from fastbert.bench.timing import compare
from fastbert.ops import reference

T, H, I, V, P = 640, 768, 3072, 30522, 512


def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x_i, b_i = r(T, I), r(I)
    x_h, res, b_h, w, beta = r(T, H), r(T, H), r(H), r(H), r(H)
    ids = torch.randint(0, V, (T,), generator=g)
    pos = torch.randint(0, 128, (T,), generator=g)
    types = torch.randint(0, 2, (T,), generator=g)
    word, position, tt = r(V, H), r(P, H), r(2, H)
    f = 4  # bytes per fp32
    return {
        "bias_act(gelu)": (
            lambda: torch.ops.fastbert.bias_act(x_i, b_i, "gelu"),
            lambda: reference.bias_act(x_i, b_i, "gelu"),
            2 * T * I * f,
        ),
        "bias_act(relu)": (
            lambda: torch.ops.fastbert.bias_act(x_i, b_i, "relu"),
            lambda: reference.bias_act(x_i, b_i, "relu"),
            2 * T * I * f,
        ),
        "bias_residual_layernorm": (
            lambda: torch.ops.fastbert.bias_residual_layernorm(x_h, b_h, res, w, beta, 1e-12),
            lambda: torch.nn.functional.layer_norm(x_h + b_h + res, (H,), w, beta, 1e-12),
            3 * T * H * f,
        ),
        "embeddings": (
            lambda: torch.ops.fastbert.embeddings(ids, pos, types, word, position, tt, w, beta, 1e-12),
            lambda: torch.nn.functional.layer_norm(word[ids] + position[pos] + tt[types], (H,), w, beta, 1e-12),
            4 * T * H * f,
        ),
    }


def copy_fn(nbytes, allocate=False):
    """A plain copy of nbytes (half read, half written): into memory it already holds (copy_), or into a
    fresh output as every op here returns one (clone)."""
    src = torch.randn(nbytes // 8)
    if allocate:
        return src.clone
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def table(repeats=300):
    rows = []
    for name, (fused, unfused, nbytes) in _cases().items():
        t = compare(
            {"fused": fused, "unfused": unfused, "copy": copy_fn(nbytes), "clone": copy_fn(nbytes, True)},
            repeats=repeats,
            warmup=3,
        )
        gbs = lambda k: nbytes / t[k].median / 1e9  # noqa: E731
        rows.append(
            (
                name,
                nbytes / 1e6,
                t["fused"].median * 1e3,
                gbs("fused"),
                gbs("unfused"),
                gbs("copy"),
                t["copy"].median / t["fused"].median,
                t["clone"].median / t["fused"].median,
                t["unfused"].median / t["fused"].median,
            )
        )
    return rows


def torch_layer_norm_fraction(repeats=300):
    """PyTorch's own LayerNorm of one (T, H) input (no bias, no residual) as a fraction of a copy of its bytes: the
    reference point for bias_residual_layernorm's fraction."""
    g = torch.Generator().manual_seed(0)
    x, w, beta = torch.randn(T, H, generator=g), torch.randn(H, generator=g), torch.randn(H, generator=g)
    nbytes = 2 * T * H * 4
    t = compare(
        {"layer_norm": lambda: torch.nn.functional.layer_norm(x, (H,), w, beta, 1e-12), "copy": copy_fn(nbytes)},
        repeats=repeats,
        warmup=3,
    )
    return t["copy"].median / t["layer_norm"].median


def main():
    import platform

    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fastbert CPU path {torch.ops.fastbert and __import__('fastbert').ops.cpu_isa()}"
    )
    print(f"shapes: T={T} tokens, H={H}, I={I}, fp32\n")
    print("of copy: the op's speed as a fraction of copy_ into held memory; of clone: of a copy into a fresh output")
    print(
        f"{'op':26s} {'MB':>7s} {'ms':>7s} {'GB/s':>7s} {'unfused GB/s':>13s} {'copy GB/s':>10s} "
        f"{'of copy':>8s} {'of clone':>9s} {'vs unfused':>10s}"
    )
    for name, mb, ms, g, gu, gc, frac, frac_clone, speedup in table():
        print(
            f"{name:26s} {mb:7.1f} {ms:7.3f} {g:7.1f} {gu:13.1f} {gc:10.1f} {frac:8.2f} {frac_clone:9.2f} "
            f"{speedup:9.2f}x"
        )
    print(
        f"\nfor reference, torch.nn.functional.layer_norm alone (one input): {torch_layer_norm_fraction():.2f} of copy"
    )


@pytest.mark.parametrize("name", list(_cases()))
@pytest.mark.parametrize("impl", ["fused", "unfused"])
def test_op(benchmark, name, impl):
    fused, unfused, _ = _cases()[name]
    benchmark(fused if impl == "fused" else unfused)


if __name__ == "__main__":
    main()
