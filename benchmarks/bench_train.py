"""Training-step benchmark: one forward + backward of BertForSequenceClassification, fastbert vs HF eager,
side by side in one process (the training goal: >= 1.3x on CPU at bert-base width, less peak memory).

    python benchmarks/bench_train.py                  # bert-base, 8 x 128, lengths uniform [32, 128]
    python benchmarks/bench_train.py --layers 4 --repeats 5

Both models carry the same weights, dropout off (so the two compute the same function; the step is
forward + loss + backward, no optimizer update). Peak memory: the most bytes held at once during one step
(torch profiler allocation events), above what the model itself holds.
"""

import argparse
import json

import torch  # noqa: E402
from transformers.models.bert import modeling_bert as hf  # noqa: E402

from fastbert.bench import harness as bench
from fastbert.bench.timing import compare
from fastbert.hf import heads


def peak_memory_mib(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    config = bench.make_hf_config(
        args.model, args.layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2
    )
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = hf.BertForSequenceClassification(config).train()
    ours = heads.BertForSequenceClassification(config).train()
    ours.load_state_dict(ref.state_dict())
    ids, mask, lengths = bench.make_batch(args.batch, args.seq_len, args.min_len, args.seq_len, config.vocab_size)
    labels = torch.randint(0, 2, (args.batch,), generator=torch.Generator().manual_seed(1))

    def step(model):
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss

    losses = {name: step(m).item() for name, m in (("hf_eager", ref), ("fastbert", ours))}
    t = compare(
        {"hf_eager": lambda: step(ref), "fastbert": lambda: step(ours)}, repeats=args.repeats, warmup=args.warmup
    )
    mem = {"hf_eager": peak_memory_mib(lambda: step(ref)), "fastbert": peak_memory_mib(lambda: step(ours))}
    T = sum(lengths)
    info = bench.machine_info()
    print(
        f"machine: {info['processor']} ({info['cpus']} CPUs), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, "
        f"fastbert CPU path {info['fastbert_isa']}"
    )
    print(
        f"{args.model} ({config.num_hidden_layers} layers), fp32, batch {args.batch} x {args.seq_len}, lengths "
        f"uniform in [{args.min_len}, {args.seq_len}]: {T} real tokens, padding {1 - T / ids.numel():.0%}; "
        f"forward + backward, dropout off"
    )
    print(
        f"{'impl':10s} {'ms/step':>9s} {'p10-p90':>15s} {'tokens/s':>9s} {'speedup':>8s} {'peak MiB':>9s} {'loss':>10s}"
    )
    rows = []
    for name in ("hf_eager", "fastbert"):
        r = t[name]
        row = dict(
            impl=name,
            ms=r.median * 1e3,
            low=r.low * 1e3,
            high=r.high * 1e3,
            tokens_per_s=T / r.median,
            speedup=t["hf_eager"].median / r.median,
            peak_mib=mem[name],
            loss=losses[name],
        )
        rows.append(row)
        print(
            f"{name:10s} {row['ms']:9.1f} {row['low']:7.1f}-{row['high']:<7.1f} {row['tokens_per_s']:9.0f} "
            f"{row['speedup']:7.2f}x {row['peak_mib']:9.0f} {row['loss']:10.6f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
