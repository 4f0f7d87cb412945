"""Attention speed: fastbert's packed CPU kernel vs torch SDPA run per sequence vs the plain-PyTorch reference.

All three do the same job: from the fused QKV output (T, 3H), its bias and cu_seqlens of a ragged batch, to
the context (T, H). bert-base heads (12 x 64), fp32 (or --dtype bfloat16), lengths drawn uniformly with a fixed
seed. With bfloat16 on a processor with avx512_bf16, the table also has fastbert's fp32-staged bf16 path (the
AVX512-BF16 dot products switched off, fastbert.ops.set_cpu_bf16_dot(False)) and its fp32 run, in the same
interleaved rounds.

    python benchmarks/bench_attention.py            # the side-by-side table (interleaved runs, medians)
    python benchmarks/bench_attention.py --dtype bfloat16 --threads 2
    python -m pytest benchmarks/bench_attention.py  # the same cases under pytest-benchmark
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

import fastbert
from fastbert.ops import reference

NUM_HEADS, HEAD_DIM = 12, 64
# name -> (batch, low, high): lengths uniform in [low, high]
CASES = {"8x128": (8, 32, 128), "2x512": (2, 128, 512)}


def make_case(name: str, dtype=torch.float32, seed: int = 0):
    batch, low, high = CASES[name]
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(low, high + 1, (batch,), generator=g)
    cu = torch.zeros(batch + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    T, H = int(cu[-1]), NUM_HEADS * HEAD_DIM
    qkv = torch.randn(T, 3 * H, generator=g).to(dtype)
    bias = torch.randn(3 * H, generator=g).to(dtype) * 0.1
    return qkv, bias, cu, int(lengths.max())


def flops(cu: torch.Tensor) -> float:
    """4 n^2 d per head per sequence (QK^T and PV)."""
    n = (cu[1:] - cu[:-1]).double()
    return float((4 * n * n * HEAD_DIM * NUM_HEADS).sum())


def run_fastbert(qkv, bias, cu, max_seqlen):
    return torch.ops.fastbert.attention(qkv, bias, cu, max_seqlen, NUM_HEADS, 1 / math.sqrt(HEAD_DIM))[0]


def run_fastbert_staged(qkv, bias, cu, max_seqlen):
    """bf16 without the AVX512-BF16 dot products (the fp32-staged path)."""
    fastbert.ops.set_cpu_bf16_dot(False)
    try:
        return run_fastbert(qkv, bias, cu, max_seqlen)
    finally:
        fastbert.ops.set_cpu_bf16_dot(True)


def run_fastbert_fp32(qkv, bias, cu, max_seqlen):
    """The same case in fp32 (the inputs converted beforehand, see table())."""
    return run_fastbert(qkv, bias, cu, max_seqlen)


def run_sdpa(qkv, bias, cu, max_seqlen):
    """What a user writes without a varlen kernel: bias add, then SDPA on each sequence."""
    x = qkv + bias
    H = x.shape[1] // 3
    outs = []
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t.view(1, e - s, NUM_HEADS, HEAD_DIM).transpose(1, 2) for t in x[s:e].split(H, dim=1))
        outs.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(e - s, H))
    return torch.cat(outs) if outs else x.new_empty(0, H)


def run_reference(qkv, bias, cu, max_seqlen):
    return reference.attention(qkv, bias, cu, max_seqlen, NUM_HEADS, 1 / math.sqrt(HEAD_DIM))[0]


IMPLS = {"fastbert": run_fastbert, "sdpa per sequence": run_sdpa, "reference": run_reference}


def table(repeats: int = 30, warmup: int = 3, clock=time.perf_counter, dtype=torch.float32) -> str:
    """clock: time.perf_counter (wall) or, at 1 thread on a shared machine, time.thread_time (this thread's CPU
    time, which other processes' load does not inflate)."""
    impls = dict(IMPLS)
    if dtype == torch.bfloat16 and fastbert.ops.cpu_bf16_dot():
        impls = {
            "fastbert": run_fastbert,
            "fastbert bf16 fp32-staged": run_fastbert_staged,
            "fastbert fp32": run_fastbert_fp32,
            **{k: v for k, v in IMPLS.items() if k != "fastbert"},
        }
    elif dtype != torch.float32:
        impls = {
            "fastbert": run_fastbert,
            "fastbert fp32": run_fastbert_fp32,
            **{k: v for k, v in IMPLS.items() if k != "fastbert"},
        }
    dname = str(dtype).replace("torch.", "")
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dname}, bert-base heads "
        f"({NUM_HEADS} x {HEAD_DIM}), CPU ISA {fastbert.ops.cpu_isa()}; median of {repeats} interleaved runs, "
        f"clock {clock.__name__}",
        "",
        "| batch | tokens | impl | ms | GFLOP/s | vs fastbert |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in CASES:
        qkv, bias, cu, mx = make_case(name, dtype)
        args = (qkv, bias, cu, mx)
        args32 = (qkv.float(), bias.float(), cu, mx)
        with torch.inference_mode():
            for k, fn in impls.items():
                for _ in range(warmup):
                    fn(*(args32 if k == "fastbert fp32" else args))
            times = {k: [] for k in impls}
            for _ in range(repeats):
                for k, fn in impls.items():
                    a = args32 if k == "fastbert fp32" else args
                    t0 = clock()
                    fn(*a)
                    times[k].append(clock() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, t in med.items():
            lines.append(
                f"| {name} | {qkv.shape[0]} | {k} | {t * 1e3:.3f} | {flops(cu) / t / 1e9:.1f} | "
                f"{t / med['fastbert']:.2f}x |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("case", list(CASES))
    @pytest.mark.parametrize("impl", list(IMPLS))
    def test_attention_speed(benchmark, case, impl):
        if impl == "fastbert" and not fastbert.ops.has_kernel("attention", "cpu"):
            pytest.skip("fastbert._C not built")
        args = make_case(case)
        benchmark.extra_info["gflop"] = flops(args[2]) / 1e9
        with torch.inference_mode():
            benchmark(IMPLS[impl], *args)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="thread: CPU time of this thread (needs --threads 1), for a machine shared with other load",
    )
    opts = ap.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.clock == "thread" and torch.get_num_threads() != 1:
        ap.error("--clock thread measures one thread: add --threads 1")
    print(
        table(
            repeats=opts.repeats,
            clock=time.thread_time if opts.clock == "thread" else time.perf_counter,
            dtype=getattr(torch, opts.dtype),
        )
    )
