"""`fastbert bench`: fastbert beside HF eager, HF sdpa, PyTorch's native fast path and ONNX Runtime, in one
process, over a grid of models, batch sizes, sequence lengths, padding fractions and dtypes.

The timing and the columns come from fastbert.bench.harness (warm-up, interleaved repeats, median and quartiles,
real tokens/s, fraction of the fp32 GEMM roofline, speedup over HF eager, max |diff| from HF eager at real
positions); ONNX Runtime comes from fastbert.bench.ort_peer when onnxruntime is installed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .common import Formatter, die

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import BertModel

HELP = (
    __doc__.split("\n", 3)[3]
    + """
A padding fraction p makes ragged batches: lengths uniform in [(1-2p)L, L] (p <= 0.5) or [1, 2(1-p)L - 1]
(p > 0.5), right-padded to L, so a fraction p of the batch is padding on average. Weights are random (seeded,
LayerNorm perturbed) for the named shapes (bert-base, bert-large, minilm-l6, roberta-base, xlm-roberta-base,
distilbert-base, electra-base), or the folder's for --model DIR (any model type of the BERT family).

examples:
  fastbert bench --quick                                   (under two minutes on 2 cores)
  fastbert bench --model bert-base --batch 8 --seq-len 128 512 --padding 0 0.5 --json out.json --plot out.png
  fastbert bench --model ./my-bert --impls hf_eager fastbert
"""
)

ALL_IMPLS = ("hf_eager", "hf_sdpa", "native", "fastbert", "onnxruntime")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark fastbert against HF eager/sdpa, native fast path, ONNX Runtime",
        description=HELP,
        formatter_class=Formatter,
    )
    p.add_argument(
        "--model",
        nargs="+",
        default=["bert-base"],
        help="bert-base, bert-large, minilm-l6, roberta-base, xlm-roberta-base, distilbert-base, electra-base "
        "(random weights) or HF model folders",
    )
    p.add_argument("--layers", type=int, default=None, help="keep only this many layers (shorter runs)")
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="batch sizes")
    p.add_argument("--seq-len", type=int, nargs="+", default=[128, 512], help="padded sequence lengths")
    p.add_argument("--padding", type=float, nargs="+", default=[0.0, 0.5], help="padding fractions in [0, 1)")
    p.add_argument(
        "--impls",
        nargs="+",
        default=None,
        choices=ALL_IMPLS,
        help="implementations (default: all; onnxruntime when installed)",
    )
    p.add_argument(
        "--dtype",
        nargs="+",
        default=None,
        choices=["float32", "float16", "bfloat16", "int8"],
        help="dtypes (default: float32 on CPU; float32 float16 bfloat16 on CUDA). int8 (CPU): fastbert "
        "with its encoder GEMMs in int8 (fastbert.quantize), every implementation's float parts in "
        "bfloat16 where the processor has AVX512-BF16, else float32; the roofline is "
        "torch._int_mm's rate",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (interleaved across implementations)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small grid (bert-base with 2 layers, batch 8, L 64/128, padding 0/0.5, 5 repeats)",
    )
    p.add_argument("--json", default=None, help="write rows + machine + versions + arguments here")
    p.add_argument("--plot", default=None, help="write a PNG of speedup vs sequence length and padding (matplotlib)")
    p.set_defaults(func=run)


def padding_range(seq_len: int, p: float) -> tuple[int, int]:
    """(min_len, max_len) of uniform lengths whose mean leaves a fraction p of seq_len as padding."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"--padding: expected fractions in [0, 1), got {p}")
    if p <= 0.5:
        return max(1, round((1 - 2 * p) * seq_len)), seq_len
    return 1, max(1, round(2 * (1 - p) * seq_len) - 1)


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.layers = args.layers or 2
        args.batch, args.seq_len, args.padding = [8], [64, 128], [0.0, 0.5]
        args.repeats, args.warmup = min(args.repeats, 5), 1
    import warnings

    import torch

    # the TorchScript exporter's tracer and the nested-tensor prototype notice are expected here, not news
    warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
    warnings.filterwarnings("ignore", module=r"transformers\.masking_utils")
    try:
        from ..bench import harness as bench
    except ImportError as exc:
        return die("bench", f"the benchmark library is unavailable ({exc})")
    from ..bench import ort_peer as onnx_peer

    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        return die("bench", "bench compares with transformers: pip install transformers")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = args.dtype or (["float32", "float16", "bfloat16"] if device.startswith("cuda") else ["float32"])
    if "int8" in dtypes and not device.startswith("cpu"):
        return die("bench", f"--dtype int8 runs on CPU only (device {device})")
    impls = list(args.impls or ALL_IMPLS)
    notes = []
    if "onnxruntime" in impls and not onnx_peer.available():
        impls.remove("onnxruntime")
        if args.impls:
            return die("bench", "--impls onnxruntime needs onnxruntime: pip install onnxruntime onnx")
        notes.append("onnxruntime not installed: skipped (pip install onnxruntime onnx)")
    if "hf_eager" not in impls:
        notes.append("no hf_eager: speedup and max |diff| columns empty")
    for m in args.model:
        if m not in bench.MODEL_CONFIGS and not os.path.isdir(m):
            return die("bench", f"--model: {m!r} is neither a folder nor one of {', '.join(bench.MODEL_CONFIGS)}")
    try:
        for p in args.padding:
            padding_range(8, p)
    except ValueError as exc:
        return die("bench", str(exc))

    info = bench.machine_info()
    print(
        f"fastbert bench: {info.get('processor')}, {info.get('cpus')} CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), fastbert ISA {info.get('fastbert_isa')}, device {device}"
    )
    for n in notes:
        print(f"  note: {n}")
    t0 = time.perf_counter()
    rows: list[dict] = []
    fused_all = {}
    total = len(args.model) * len(dtypes) * len(args.batch) * len(args.seq_len) * len(args.padding)
    done = 0

    def progress(msg: str) -> None:
        elapsed = time.perf_counter() - t0
        eta = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
        print(f"  [{done}/{total} shapes, {elapsed:.0f} s{eta}] {msg}", file=sys.stderr, flush=True)

    for model in args.model:
        for dt in dtypes:
            dtype = getattr(torch, dt)
            base_impls = [i for i in impls if i != "onnxruntime"]
            need_hf = "onnxruntime" in impls and "hf_eager" not in base_impls
            progress(f"building {', '.join(impls)} for {model} in {dt}")
            models = bench.build_models(
                model, base_impls + (["hf_eager"] if need_hf else []), dtype, device, args.seed, args.layers
            )
            if "onnxruntime" in impls:
                if bench.make_hf_config(model).model_type != "bert":
                    print(f"  onnxruntime: {model} not exported (the ONNX export here is BERT's)")
                elif dt == "float32" and not device.startswith("cuda"):
                    base = _hf_base(models["hf_eager"])
                    progress(f"exporting {model} to ONNX (a temporary folder, deleted after loading)")
                    f, fused = onnx_peer.build(base, device, torch.get_num_threads())
                    models["onnxruntime"] = f
                    fused_all[os.path.basename(model.rstrip("/"))] = fused
                    print(f"  onnxruntime {model}: fused nodes {', '.join(f'{k} {v}' for k, v in fused.items())}")
                else:
                    print(f"  onnxruntime: {dt} on {device} not exported (CPU float32 only)")
            if need_hf:
                models = {"hf_eager": models["hf_eager"], **{k: v for k, v in models.items() if k != "hf_eager"}}
            cfg = bench.make_hf_config(model, args.layers)
            name = os.path.basename(model.rstrip("/")) + (f" ({args.layers}L)" if args.layers else "")
            for b in args.batch:
                for L in args.seq_len:
                    L = min(L, bench.max_length(cfg))
                    for p in args.padding:
                        lo, hi = padding_range(L, p)
                        progress(f"{name} {dt}: batch {b}, length {L}, padding {p:.0%}")
                        shape_rows = bench.bench_shape(
                            models,
                            cfg,
                            b,
                            L,
                            lo,
                            hi,
                            args.repeats,
                            args.warmup,
                            args.seed,
                            device,
                            dtype,
                            model_name=name,
                        )
                        if need_hf:  # the reference for speedup and diff; not asked for as a row
                            shape_rows = [r for r in shape_rows if r["impl"] != "hf_eager"]
                        rows += shape_rows
                        done += 1
                        print(
                            bench.format_table(shape_rows).split("\n", 2)[2]
                            if len(rows) > len(shape_rows)
                            else bench.format_table(shape_rows),
                            flush=True,
                        )
            del models  # every implementation of this model and dtype, before the next is built
            gc.collect()
    elapsed = time.perf_counter() - t0
    print(f"fastbert bench: {len(rows)} rows in {elapsed:.0f} s")
    _summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "args": {k: v for k, v in vars(args).items() if k != "func"},
                    "device": device,
                    "onnxruntime_fused_nodes": fused_all,
                    "notes": notes,
                    "seconds": elapsed,
                    "rows": rows,
                },
                f,
                indent=1,
            )
        print(f"wrote {args.json}")
    if args.plot:
        err = plot(rows, args.plot)
        if err:
            print(f"fastbert bench: no plot: {err}", file=sys.stderr)
        else:
            print(f"wrote {args.plot}")
    return 0


def _hf_base(fn: Callable[[Tensor, Tensor], Tensor]) -> BertModel:
    """The transformers model inside bench.build_models' hf_eager closure (shared weights, no copy)."""
    for cell in fn.__closure__ or ():
        if hasattr(cell.cell_contents, "config"):
            return cell.cell_contents
    raise RuntimeError("cannot find the HF model behind hf_eager")


def _summary(rows: list[dict]) -> None:
    import statistics

    by = {}
    for r in rows:
        if r.get("speedup_vs_hf_eager"):
            by.setdefault(r["impl"], []).append(r["speedup_vs_hf_eager"])
    if by:
        print("median speedup over HF eager: " + ", ".join(f"{k} {statistics.median(v):.2f}x" for k, v in by.items()))


def plot(rows: list[dict], path: str) -> str | None:
    """Speedup over HF eager against sequence length (at the lowest padding) and against padding fraction
    (at the longest sequence), one line per implementation; first model/dtype/batch of the rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib)"
    rows = [r for r in rows if r.get("speedup_vs_hf_eager")]
    if not rows:
        return "no rows with a speedup over HF eager"
    first = rows[0]
    rows = [r for r in rows if (r["model"], r["dtype"], r["batch"]) == (first["model"], first["dtype"], first["batch"])]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    seqs = sorted({r["seq_len"] for r in rows})
    for impl in impls:
        mine = [r for r in rows if r["impl"] == impl]
        pts = []
        for L in seqs:  # at each length, the row with the least padding
            at = [r for r in mine if r["seq_len"] == L]
            if at:
                best = min(at, key=lambda r: r["padding_frac"])
                pts.append((L, best["speedup_vs_hf_eager"]))
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        L = max(seqs)
        pts = sorted(
            (r["padding_frac"], r["speedup_vs_hf_eager"]) for r in rows if r["impl"] == impl and r["seq_len"] == L
        )
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
    axes[0].set(
        xlabel="sequence length",
        ylabel="speedup over HF eager (x)",
        title=f"{first['model']}, batch {first['batch']}, {first['dtype']}, least padding",
    )
    axes[1].set(
        xlabel="padding fraction",
        ylabel="speedup over HF eager (x)",
        title=f"{first['model']}, batch {first['batch']}, L={max(seqs)}",
    )
    for ax in axes:
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
