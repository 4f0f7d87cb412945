"""Resident memory over many batch shapes, every dtype: a model of bert-base width runs `--forwards` forwards of
varied shapes (batch 1-8, padded length 1-512, ragged lengths; seeded), each dtype in a process of its own, and
the growth of resident memory over the second half is printed beside the first half's. A job that sees many shapes
must not grow: oneDNN and ideep cache a GEMM primitive per shape (fastbert/ops/gemm.py caps both caches and the
inference loop pads its rows to buckets), and the forwards' buffers come from fastbert's host pool
(fastbert/runtime/host_pool.py), not glibc's heaps. The goal: < 32 MB over the second half of 2000 forwards, every
dtype.

    python benchmarks/bench_memory.py                        # 2 layers of bert-base, 2000 forwards, fp32/bf16/int8
    python benchmarks/bench_memory.py --no-buckets           # every token count a new GEMM shape: only the caps hold
    python benchmarks/bench_memory.py --layers 12 --forwards 400 --dtypes bfloat16
    python benchmarks/bench_memory.py --allocator glibc       # the pool off (FASTBERT_HOST_POOL=0): glibc's heaps
    python benchmarks/bench_memory.py --trim                  # glibc's free pages returned before each reading

Resident memory is what the process holds in use (activations, caches, weights), what the host pool keeps mapped
(`pool_mb`, what it had mapped at each reading) and what glibc's allocator keeps of freed blocks. `--trim` calls
glibc's malloc_trim(0) before each reading, so glibc's share is only the memory in use.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time

DTYPES = ("float32", "bfloat16", "int8")
ALLOCATORS = ("pool", "glibc")


def rss_mb(trim: bool = False) -> float:
    if trim:
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(dtype: str, layers: int, forwards: int, buckets: bool, seed: int, trim: bool) -> dict:
    """The measurement in this process: RSS after the model is built, after the first half, after the second."""
    import torch

    import fastbert
    from fastbert.bench import harness as bench
    from fastbert.model.quantize import base_dtype
    from fastbert.ops import gemm
    from fastbert.runtime import host_pool

    if not buckets:
        gemm.bucket_rows = lambda t: t
    torch.manual_seed(seed)
    model = fastbert.BertModel(bench.make_hf_config("bert-base", layers)).eval()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    elif dtype == "int8":
        model = fastbert.quantize(model.to(base_dtype()))
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size

    def run(n: int) -> int:
        tokens = 0
        for _ in range(n):
            B, L = int(torch.randint(1, 9, (1,), generator=g)), int(torch.randint(1, 513, (1,), generator=g))
            lengths = torch.randint(1, L + 1, (B,), generator=g)
            mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
            ids = torch.randint(1, vocab, (B, L), generator=g) * mask
            with torch.no_grad():
                model(ids, attention_mask=mask)
            tokens += int(lengths.sum())
        return tokens

    def pool_mb() -> float:
        return host_pool.stats()["mapped"] / 2**20

    built = rss_mb(trim)
    t0 = time.perf_counter()
    tokens = run(forwards // 2)
    half, pool_half = rss_mb(trim), pool_mb()
    tokens += run(forwards - forwards // 2)
    end, pool_end = rss_mb(trim), pool_mb()
    return {
        "dtype": dtype,
        "layers": layers,
        "forwards": forwards,
        "row_buckets": buckets,
        "allocator": "pool" if host_pool.enabled() else "glibc",
        "trim": trim,
        "rss_built_mb": round(built, 1),
        "rss_half_mb": round(half, 1),
        "rss_end_mb": round(end, 1),
        "growth_first_half_mb": round(half - built, 1),
        "growth_second_half_mb": round(end - half, 1),
        "pool_mb": [round(pool_half, 1), round(pool_end, 1)],
        "tokens": tokens,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--layers", type=int, default=2, help="layers of bert-base width (default 2)")
    ap.add_argument("--forwards", type=int, default=2000)
    ap.add_argument("--no-buckets", action="store_true", help="turn the inference loop's row buckets off")
    ap.add_argument("--allocator", default="pool", choices=ALLOCATORS, help="the forwards' buffers: see above")
    ap.add_argument("--trim", action="store_true", help="malloc_trim(0) before each reading")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one dtype in this process
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.layers, args.forwards, not args.no_buckets, args.seed, args.trim)))
        return 0
    rows = []
    for dtype in args.dtypes:  # a fresh process each: the caches are process-wide
        cmd = [sys.executable, __file__, "--one", dtype, "--layers", str(args.layers)]
        cmd += ["--forwards", str(args.forwards), "--seed", str(args.seed)]
        cmd += (["--no-buckets"] if args.no_buckets else []) + (["--trim"] if args.trim else [])
        env = dict(os.environ, FASTBERT_HOST_POOL="1" if args.allocator == "pool" else "0")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(f"{dtype}: {rows[-1]}", flush=True)
    print(
        f"\n{platform.processor() or platform.machine()}, bert-base width, {args.layers} layers, {args.forwards} "
        f"forwards of varied shapes, row buckets {'off' if args.no_buckets else 'on'}, allocator {args.allocator}"
        f"{', malloc_trim before each reading' if args.trim else ''}"
    )
    print("| dtype | RSS built MB | growth, first half MB | growth, second half MB | pool mapped MB | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['rss_built_mb']} | {r['growth_first_half_mb']} | {r['growth_second_half_mb']} | "
            f"{r['pool_mb'][0]} -> {r['pool_mb'][1]} | {r['seconds']} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["growth_second_half_mb"] < 32 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
