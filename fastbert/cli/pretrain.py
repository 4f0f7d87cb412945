"""`fastbert pretrain`: BERT pretraining (masked LM + next sentence) from raw text (fastbert/tasks/pretrain.py)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import PROG, Formatter, add_run_options, die, run_options

HELP = """\
Pretrain BERT the way BERT was pretrained, on fastbert's kernels with transformers' Trainer:

  corpus     .txt in BERT's format (one sentence per line, a blank line between documents), or .jsonl /
             .parquet with one document per row (--text-field, default text; its lines are its sentences)
  pairs      segment pairs within documents up to --max-seq-length (shorter with --short-seq-prob),
             next sentence 50/50 (B follows A, or comes from another document); [CLS] A [SEP] B [SEP]
  masking    15% of the tokens (--mask-rate), never [CLS]/[SEP]/padding, 80% [MASK] / 10% random / 10% kept,
             drawn afresh for every batch; --whole-word masks words whole; --no-nsp drops next-sentence
  model      --config tiny|mini|small|medium|base|large|config.json (new), or --model DIR (continue;
             with --config, a new model on DIR's tokenizer); without --model a WordPiece vocabulary is
             trained on the corpus (--vocab-size, --lowercase / --cased)
  batches    --batch-size pairs grouped by length, or --max-tokens: cut by a token budget

The corpus streams: pairs are made --window documents at a time (a NotNext segment comes from the same
window) and kept on disk beside OUTPUT until the run ends. The log (progress bar, log.jsonl, loss.png,
TensorBoard when installed) carries the loss, MLM and NSP loss and accuracy, and tokens/s.

OUTPUT holds the model (loads in transformers' BertForPreTraining and BertModel), its tokenizer,
metrics.json (MLM loss and accuracy, NSP accuracy on held-out pairs) and log.jsonl; it appears only when the
run completes; --resume continues from OUTPUT.checkpoints. Several processes: torchrun --nproc_per_node N
-m fastbert pretrain ... (--batch-size is per process).

  fastbert pretrain --corpus wiki.txt books.txt --output bert-mini/ --config mini --epochs 10
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain BERT from raw text", description=HELP, formatter_class=Formatter)
    p.add_argument("--corpus", nargs="+", required=True, help="corpus files (.txt, .jsonl, .parquet)")
    p.add_argument("--output", required=True, help="a new folder for the model")
    p.add_argument("--model", default=None, help="a BERT folder to continue from (or take the tokenizer of)")
    p.add_argument("--config", default=None, help="a preset or a config.json for a new model (default: tiny)")
    p.add_argument("--vocab-size", type=int, default=30522, help="WordPiece vocabulary trained on the corpus")
    p.add_argument("--lowercase", dest="lowercase", action="store_true", default=True, help="lower case (default)")
    p.add_argument("--cased", dest="lowercase", action="store_false", help="keep case")
    p.add_argument("--text-field", default="text", help=".jsonl / .parquet: the document field")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--whole-word", action="store_true", help="mask whole words")
    p.add_argument("--no-nsp", dest="nsp", action="store_false", help="masked LM only")
    p.add_argument("--validation-share", type=float, default=0.02, help="pairs held out for metrics.json")
    p.add_argument("--window", type=int, default=5000, help="documents read into memory at a time to make pairs")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="cut batches by a token budget (pairs x the longest, per process) instead of --batch-size pairs",
    )
    add_run_options(p, lr=1e-4)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.files import InputError
    from ..tasks.pretrain import pretrain

    try:
        metrics = pretrain(
            args.corpus,
            args.output,
            model=args.model,
            config=args.config,
            vocab_size=args.vocab_size,
            lowercase=args.lowercase,
            max_seq_length=args.max_seq_length,
            short_seq_prob=args.short_seq_prob,
            mask_rate=args.mask_rate,
            whole_word=args.whole_word,
            nsp=args.nsp,
            text_field=args.text_field,
            validation_share=args.validation_share,
            window=args.window,
            max_tokens=args.max_tokens,
            options=run_options(args),
        )
    except (InputError, OSError) as exc:
        return die("pretrain", str(exc))
    except KeyboardInterrupt:
        print(f"\n{PROG} pretrain: interrupted; {args.output} was not written (--resume continues)", file=sys.stderr)
        return 130
    print(json.dumps(metrics))
    return 0
