"""torch.mm (MKL) against oneDNN's inner product on BERT's GEMM shapes, float32, CPU: why fastbert/ops/gemm.py exists.

    python benchmarks/bench_gemm.py [--tokens 64 512 2048] [--repeats 15]

For each model width and token count: the four GEMMs of one layer (QKV, attention output, FFN in, FFN out), each
library's GFLOP/s over the four, side by side in interleaved rounds (fastbert.bench.timing.compare), and the ratio.
"""

from __future__ import annotations

import argparse
import sys

import torch  # noqa: E402

from fastbert.bench import harness as bench
from fastbert.bench.timing import compare
from fastbert.ops import gemm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["bert-base", "minilm-l6"])
    ap.add_argument("--tokens", nargs="+", type=int, default=[64, 512, 2048])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    if not gemm.HAS_ONEDNN:
        sys.exit("this PyTorch has no oneDNN inner product (torch.ops.mkldnn._linear_pointwise)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    print(f"{'model':10s} {'tokens':>6s} {'mm GFLOP/s':>11s} {'oneDNN GFLOP/s':>15s} {'oneDNN / mm':>12s}")
    for model in args.models:
        cfg = bench.make_hf_config(model)
        for tokens in args.tokens:
            mm, flops = bench.gemm_probe(cfg, tokens)
            onednn, _ = bench.gemm_probe(cfg, tokens, mm=gemm.linear_onednn)
            t = compare({"mm": mm, "onednn": onednn}, repeats=args.repeats, warmup=2)
            a, b = flops / t["mm"].median / 1e9, flops / t["onednn"].median / 1e9
            print(f"{model:10s} {tokens:6d} {a:11.0f} {b:15.0f} {b / a:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
