"""fastbert against itself across dtypes, side by side in one process: float32, bfloat16, int8 (float parts in
bfloat16 where the processor has AVX512-BF16, as `--dtype int8` picks them) and int8 keeping the FFN's second GEMM in
float (`fastbert.quantize(model, keep_float=("ffn_out",))`), with each dtype's GEMM roofline probed in the same
interleaved rounds.

    python benchmarks/bench_dtypes.py                      # bert-base, ragged 8x128 and 2x512, full 8x128
    python benchmarks/bench_dtypes.py --model minilm-l6 --repeats 15 --json out.json

Rows: median ms, speed over bfloat16, and the share of the roofline of the row's GEMM dtype (the probe's rate on
one layer's GEMM shapes at the batch's real-token count, over the forward's FLOPs on real tokens).
"""

import argparse
import copy
import json
import statistics

import torch

import fastbert
from fastbert.bench import harness as bench
from fastbert.model.quantize import base_dtype

VARIANTS = ("float32", "bfloat16", "int8", "int8 keep ffn_out")


def build(model_name: str, layers: int | None, seed: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    base = fastbert.BertModel(bench.make_hf_config(model_name, layers)).eval()
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    float_part = bf16 if base_dtype() == torch.bfloat16 else base
    return {
        "float32": base,
        "bfloat16": bf16,
        "int8": fastbert.quantize(copy.deepcopy(float_part)),
        "int8 keep ffn_out": fastbert.quantize(copy.deepcopy(float_part), keep_float=("ffn_out",)),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert-base", help="bert-base, bert-large or minilm-l6 (random weights)")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--shapes", nargs="+", default=["8x128:32-128", "2x512:128-512", "8x128"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    info = bench.machine_info()
    print(json.dumps(info))
    models = build(args.model, args.layers, args.seed)
    cfg = models["float32"].config
    rows = []
    for shape in args.shapes:
        dims, _, rng = shape.partition(":")
        b, n = (int(x) for x in dims.split("x"))
        lo, hi = (int(x) for x in rng.split("-")) if rng else (None, None)
        ids, mask, lengths = bench.make_batch(b, n, lo, hi, cfg.vocab_size, args.seed)
        tokens = sum(lengths)
        fns = {name: (lambda m=m: m(input_ids=ids, attention_mask=mask)) for name, m in models.items()}
        probes = {
            "float32": bench.gemm_probes(cfg, tokens, torch.float32),
            "bfloat16": bench.gemm_probes(cfg, tokens, torch.bfloat16),
            "int8": bench.gemm_probes(cfg, tokens, torch.int8),
        }
        for dtype, ps in probes.items():
            fns.update({f"probe {dtype} {lib}": fn for lib, (fn, _) in ps.items()})
        samples = bench.time_interleaved(fns, args.repeats, args.warmup)
        med = {k: statistics.median(v) for k, v in samples.items()}
        # The roofline of a dtype: the fastest of its probes, scaled from one layer to the model's layers.
        rate = {
            dtype: max(flops / med[f"probe {dtype} {lib}"] for lib, (_, flops) in ps.items())
            for dtype, ps in probes.items()
        }
        flops = bench.forward_flops(cfg, lengths)
        print(f"\n{args.model}, batch {shape} ({tokens} real tokens of {b * n}); median of {args.repeats}")
        print("| variant | ms | vs bfloat16 | share of its GEMM dtype's roofline |")
        print("| --- | --- | --- | --- |")
        for name in VARIANTS:
            gemm_dtype = "int8" if name.startswith("int8") else name
            share = flops / rate[gemm_dtype] / med[name]
            row = dict(
                shape=shape, variant=name, ms=1e3 * med[name], vs_bf16=med["bfloat16"] / med[name], roofline=share
            )
            rows.append(row)
            print(f"| {name} | {row['ms']:.1f} | {row['vs_bf16']:.2f}x | {share:.0%} |")
        print("GEMM rates (G op/s): " + ", ".join(f"{d} {r / 1e9:.0f}" for d, r in rate.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
