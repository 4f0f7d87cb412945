"""Model benchmark: fastbert vs HF eager, HF sdpa and PyTorch's native fast path, side by side in one process.

    python benchmarks/bench_model.py                 # bert-base, ragged 8x128 and 2x512, full 8x128
    python benchmarks/bench_model.py --model bert-large --layers 6 --repeats 5
    python benchmarks/bench_model.py --json out.json

Rows: real tokens/s, fraction of the roofline of the rows' dtype (the faster of torch.mm and oneDNN on the
model's own GEMM shapes, forward FLOPs on real tokens), speedup over HF eager, max |diff| vs HF eager at real
positions. fp32 by default (--dtype bfloat16: every implementation in bf16), random weights.
"""

import argparse
import json
import os

import torch  # noqa: E402

from fastbert.bench import harness as bench

DEFAULT_SHAPES = ["8x128:32-128", "2x512:128-512", "8x128"]


def parse_shape(s: str):
    """'8x128:32-128' -> (8, 128, 32, 128); '8x128' -> full length."""
    dims, _, rng = s.partition(":")
    b, l = (int(x) for x in dims.split("x"))
    if rng:
        lo, hi = (int(x) for x in rng.split("-"))
        return (b, l, lo, hi)
    return (b, l, None, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="bert-base",
        help="bert-base, bert-large, minilm-l6, roberta-base, xlm-roberta-base, distilbert-base, electra-base or an "
        "HF folder",
    )
    ap.add_argument("--layers", type=int, default=None, help="override num_hidden_layers (faster runs)")
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="BxL[:min-max] ragged lengths")
    ap.add_argument("--impls", nargs="+", default=list(bench.IMPLS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "int8"],
        help="weights and activations of every implementation (the roofline is this dtype's); int8: "
        "fastbert quantized (fastbert.quantize), every implementation's float parts in "
        "fastbert.model.base_dtype(), the roofline torch._int_mm's",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [parse_shape(s) for s in args.shapes]
    info = bench.machine_info()
    print(json.dumps(info))
    dtype = getattr(torch, args.dtype)
    models = bench.build_models(args.model, args.impls, dtype=dtype, seed=args.seed, num_layers=args.layers)
    cfg = bench.make_hf_config(args.model, args.layers)
    name = os.path.basename(args.model.rstrip("/"))
    rows = []
    for b, l, lo, hi in shapes:  # one table per shape, printed as soon as it is measured
        shape_rows = bench.bench_shape(
            models, cfg, b, l, lo, hi, args.repeats, args.warmup, args.seed, dtype=dtype, model_name=name
        )
        print(bench.format_table(shape_rows))
        probes = {
            k[: -len("_gflops")]: v for k, v in shape_rows[0].items() if k.endswith("_gflops") and k != "gemm_gflops"
        }
        print(
            "GEMM GFLOP/s on this batch's shapes (the roofline takes the fastest): "
            + ", ".join(f"{k} {v:.0f}" for k, v in probes.items()),
            flush=True,
        )
        rows += shape_rows
    print(bench.format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
