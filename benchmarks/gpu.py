"""GPU benchmark: each fastbert CUDA op's achieved bandwidth against a device-to-device copy, and the model
against HF BertModel (eager and sdpa) at fp16. Prints one table (markdown) per part.

    python benchmarks/gpu.py [--dtype fp16] [--repeats 50] [--ops-only | --model-only | --profile]

Needs a GPU and a CUDA build of fastbert._C; works with torch >= 2.11, Python >= 3.10 and no network
(bert-base is built from a BertConfig with random weights: speed does not depend on the weights).
Method: CUDA events around each call, warm-up first, the candidates interleaved within each repeat, the
median reported. Ops and attention: 10 calls replayed from a CUDA graph per sample (GPU time per call, without
Python's launch overhead; pack, which syncs for its output size, is timed by plain calls). Model: plain calls
under inference_mode (what a user sees, Python included); "fastbert, no graphs" is the same model with the
layer loop's CUDA graphs off (fastbert/runtime/cuda_graphs.py), its ops launched one by one from C++. Bytes per op
are the minimum the op must move (inputs read once, outputs written once);
"of copy" divides the op's achieved bytes/s by what torch's device-to-device copy of the same number of
bytes achieves (read + write), i.e. the practical bandwidth ceiling.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch

import fastbert
from fastbert import ops


def as_graph(fn, calls: int = 10):
    """A callable replaying `calls` back-to-back calls of fn from one CUDA graph, so a timing shows the GPU's
    time per call without Python's launch overhead (divide by `calls`); None if fn can't be captured (a
    host sync, as pack's output size needs)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()  # warm-up outside the capture (allocator, lazy init)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
        return g.replay
    except Exception:  # noqa: BLE001 - any capture failure means: time it uncaptured
        torch.cuda.synchronize()
        return None


def time_kernels(fns: dict, repeats: int, calls: int = 10) -> dict:
    """Median GPU milliseconds per call of each callable (CUDA-graph replays where capturable, else plain
    calls under inference_mode), interleaved."""
    graphs = {}
    with torch.inference_mode():
        for k, f in fns.items():
            g = as_graph(f, calls)
            graphs[k] = (g, calls) if g is not None else (f, 1)
        t = time_interleaved({k: g for k, (g, _) in graphs.items()}, repeats)
    return {k: t[k] / n for k, (_, n) in graphs.items()}


def time_interleaved(fns: dict, repeats: int, warmup: int = 5) -> dict:
    """Median milliseconds of each callable, the callables interleaved within each repeat."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            f()
            b.record()
            b.synchronize()
            times[k].append(a.elapsed_time(b))
    return {k: statistics.median(v) for k, v in times.items()}


def op_cases(dtype, B=32, L=128, H=768, nh=12, inter=3072, padding=0.5):
    """(name, shape text, bytes moved, callable) for each op at bert-base shapes, B x L with `padding` pads."""
    dev = "cuda"
    es = torch.tensor([], dtype=dtype).element_size()
    lengths = [max(1, int(L * (1 - padding))) if b % 2 == 0 else L - int(L * padding * 0.5) for b in range(B)]
    mask = torch.zeros(B, L, dtype=torch.long, device=dev)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    idx, cu, pos = torch.ops.fastbert.pack(mask)
    T = idx.numel()
    maxlen = max(lengths)
    x = torch.randn(T, H, device=dev, dtype=dtype)
    res = torch.randn(T, H, device=dev, dtype=dtype)
    vec = torch.randn(H, device=dev, dtype=dtype)
    h = torch.randn(T, inter, device=dev, dtype=dtype)
    bi = torch.randn(inter, device=dev, dtype=dtype)
    qkv = torch.randn(T, 3 * H, device=dev, dtype=dtype)
    bqkv = torch.randn(3 * H, device=dev, dtype=dtype)
    word = torch.randn(30522, H, device=dev, dtype=dtype)
    ptab = torch.randn(512, H, device=dev, dtype=dtype)
    ttab = torch.randn(2, H, device=dev, dtype=dtype)
    ids = torch.randint(0, 30522, (T,), device=dev)
    tt = torch.zeros(T, dtype=torch.long, device=dev)
    d = H // nh
    shape = f"T={T} ({B}x{L}, {padding:.0%} pad)"
    return T, [
        ("pack", f"mask {B}x{L}", B * L * 8 + T * 16, lambda: torch.ops.fastbert.pack(mask)),
        (
            "unpack",
            f"{shape}, H={H}",
            T * H * es + B * L * H * es + T * 8,
            lambda: torch.ops.fastbert.unpack(x, idx, B, L),
        ),
        (
            "embeddings",
            f"{shape}, H={H}",
            4 * T * H * es + T * 24,
            lambda: torch.ops.fastbert.embeddings(ids, pos, tt, word, ptab, ttab, vec, vec, 1e-12),
        ),
        (
            "attention",
            f"{shape}, nh={nh}, d={d}",
            T * 3 * H * es + T * H * es + nh * T * 4,
            lambda: torch.ops.fastbert.attention(qkv, bqkv, cu, maxlen, nh, 1 / math.sqrt(d)),
        ),
        (
            "bias_act gelu",
            f"{shape}, I={inter}",
            2 * T * inter * es,
            lambda: torch.ops.fastbert.bias_act(h, bi, "gelu"),
        ),
        (
            "bias_residual_layernorm",
            f"{shape}, H={H}",
            3 * T * H * es + 8 * T,
            lambda: torch.ops.fastbert.bias_residual_layernorm(x, vec, res, vec, vec, 1e-12),
        ),
    ]


def bench_attention(dtype, repeats, nh=12, d=64):
    """fastbert's packed attention (QKV bias added on load) against torch SDPA on the padded batch (q, k, v
    already split, bias already added: SDPA's best case), TFLOP/s over the real tokens' 4 * n^2 * d per head."""
    import torch.nn.functional as F

    print(f"\n### attention alone, {dtype}, nh={nh}, d={d}, {torch.cuda.get_device_name()} (median of {repeats})\n")
    print("| batch x length | padding | fastbert (us) | TFLOP/s | SDPA padded (us) | TFLOP/s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    H = nh * d
    for B, L, pad in ((32, 128, 0.5), (8, 512, 0.0), (32, 512, 0.0), (32, 512, 0.5)):
        lengths = [L] * B if not pad else [max(1, int(L * (1 - pad) * (0.5 + (b % 4) / 3))) for b in range(B)]
        T = sum(lengths)
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        qkv = torch.randn(T, 3 * H, device="cuda", dtype=dtype)
        bias = torch.randn(3 * H, device="cuda", dtype=dtype)
        q, k, v = (torch.randn(B, nh, L, d, device="cuda", dtype=dtype) for _ in range(3))
        mask = None
        if pad:
            mask = torch.zeros(B, 1, 1, L, dtype=torch.bool, device="cuda")
            for b, n in enumerate(lengths):
                mask[b, ..., :n] = True
        fns = {
            "fb": lambda: torch.ops.fastbert.attention(qkv, bias, cu, L, nh, d**-0.5),
            "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        }
        t = time_kernels(fns, repeats)
        flops = sum(4 * n * n * d * nh for n in lengths)
        tf = {k_: flops / (v_ * 1e-3) / 1e12 for k_, v_ in t.items()}
        print(
            f"| {B} x {L} | {pad:.0%} | {t['fb'] * 1e3:.1f} | {tf['fb']:.0f} | {t['sdpa'] * 1e3:.1f} | "
            f"{tf['sdpa']:.0f} | {t['sdpa'] / t['fb']:.2f}x |"
        )


def bench_ops(dtype, repeats):
    T, cases = op_cases(dtype)
    rows = []
    for name, shape, nbytes, fn in cases:
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        t = time_kernels({"op": fn, "copy": lambda: dst.copy_(src)}, repeats)
        gbs = nbytes / (t["op"] * 1e-3) / 1e9
        copy_gbs = (2 * src.numel()) / (t["copy"] * 1e-3) / 1e9
        rows.append((name, shape, f"{nbytes / 1e6:.2f}", f"{t['op'] * 1e3:.1f}", f"{gbs:.0f}", f"{gbs / copy_gbs:.0%}"))
    print(f"\n### fastbert CUDA ops, {dtype}, {torch.cuda.get_device_name()} (median of {repeats})\n")
    print("| op | shape | MB moved | time (us) | GB/s | of copy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def _fastbert_model(hf):
    for path in ("from_hf", "convert.from_hf"):
        obj = fastbert
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj(hf)
        except AttributeError:
            continue
    return None


def _without_graphs(model, ids, mask):
    from fastbert.runtime import cuda_graphs

    cuda_graphs.set_cuda_graphs(False)
    try:
        return model(input_ids=ids, attention_mask=mask)
    finally:
        cuda_graphs.set_cuda_graphs(True)


def bench_model(dtype, repeats):
    import copy

    import transformers

    cfg = transformers.BertConfig()  # bert-base
    torch.manual_seed(0)
    models = {}
    for impl in ("eager", "sdpa"):
        c = copy.deepcopy(cfg)
        c._attn_implementation = impl
        models[f"HF {impl}"] = transformers.BertModel(c).eval().to("cuda", dtype)
    fb = _fastbert_model(copy.deepcopy(models["HF eager"]))
    if fb is not None:
        models["fastbert"] = fb.eval().to("cuda", dtype)
    else:
        print("\n(fastbert has no from_hf yet: the model rows show HF only)")
    print(f"\n### bert-base forward, {dtype}, {torch.cuda.get_device_name()} (ms, median of {repeats})\n")
    names = list(models) + (["fastbert, no graphs"] if fb is not None else [])
    head = "| batch | length | padding | " + " | ".join(names) + (" | vs eager | vs sdpa |" if fb is not None else " |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for B in (1, 8, 32):
        for L in (128, 512):
            for pad in (0.0, 0.5):
                ids = torch.randint(1000, 20000, (B, L), device="cuda")
                mask = torch.ones(B, L, dtype=torch.long, device="cuda")
                if pad:
                    for b in range(B):  # ragged: lengths spread around L * (1 - pad)
                        n = max(1, int(L * (1 - pad) * (0.5 + (b % 4) / 3)))
                        mask[b, min(n, L) :] = 0
                fns = {k: (lambda m=m: m(input_ids=ids, attention_mask=mask)) for k, m in models.items()}
                if fb is not None:  # the same model with the layer loop launched op by op
                    fns["fastbert, no graphs"] = lambda: _without_graphs(models["fastbert"], ids, mask)
                with torch.inference_mode():
                    t = time_interleaved(fns, repeats)
                real = mask.float().mean().item()
                cells = [str(B), str(L), f"{1 - real:.0%}"] + [f"{t[k]:.2f}" for k in names]
                if fb is not None:
                    cells += [f"{t['HF eager'] / t['fastbert']:.2f}x", f"{t['HF sdpa'] / t['fastbert']:.2f}x"]
                print("| " + " | ".join(cells) + " |")


def profile_model(dtype, B=32, L=128, pad=0.5, rows=20):
    """torch.profiler over a few fastbert forwards: where the GPU time of one bert-base forward goes."""
    import transformers

    torch.manual_seed(0)
    fb = _fastbert_model(transformers.BertModel(transformers.BertConfig()).eval()).eval().to("cuda", dtype)
    ids = torch.randint(1000, 20000, (B, L), device="cuda")
    mask = torch.ones(B, L, dtype=torch.long, device="cuda")
    for b in range(B):
        mask[b, max(1, int(L * (1 - pad) * (0.5 + (b % 4) / 3))) :] = 0
    with torch.inference_mode():
        for _ in range(5):
            fb(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        ) as prof:
            for _ in range(5):
                fb(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
    print(f"\n### where the time goes: fastbert bert-base, {B}x{L}, {pad:.0%} padding, {dtype} (5 forwards)\n")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--ops-only", action="store_true")
    ap.add_argument("--model-only", action="store_true")
    ap.add_argument("--profile", action="store_true", help="only profile one fastbert forward (32x128, 50%% pad)")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    if not ops.has_kernel("attention", "cuda"):
        sys.exit(f"fastbert._C has no CUDA kernels (CPU-only build or not built: {ops.LOAD_ERROR})")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
    if a.profile:
        return profile_model(dtype)
    if not a.model_only:
        bench_ops(dtype, a.repeats)
        bench_attention(dtype, a.repeats)
    if not a.ops_only:
        bench_model(dtype, a.repeats)


if __name__ == "__main__":
    main()
