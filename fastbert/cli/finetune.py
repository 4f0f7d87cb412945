"""`fastbert finetune TASK` and `fastbert predict`: fine-tune a BERT folder on a labelled file, then predict with
the result (fastbert/tasks)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import PROG, Formatter, add_run_options, die, run_options

FINETUNE_HELP = """\
Fine-tune a BERT folder on fastbert's kernels, with transformers' Trainer:

  classify   one text (--text-field, default text; --pair-field for pairs) and a class label
             (--label-field, default label; strings or integers)       -> accuracy, macro-F1, MCC
  pair       two texts (text, text_pair) and a class label              -> accuracy, F1
  regress    a text (or pair) and a number                              -> Pearson, Spearman (MSE loss)
  tag        words and one tag each (--text-field tokens, --label-field tags; BIO/IOBES), from JSONL
             or CoNLL (word ... tag per line, blank line between sentences) -> entity precision, recall, F1
  qa         SQuAD JSON, or JSONL question, context, answers {text, answer_start} (empty: no answer, as
             in SQuAD 2.0); long contexts in windows (--doc-stride)     -> exact match, F1 (SQuAD's)

classify, pair and regress read CSV, TSV, JSONL or Parquet. OUTPUT holds the best model (by accuracy;
Pearson for regress, entity F1 for tag, F1 for qa; on --validation, else the last), its tokenizer,
metrics.json and log.jsonl, and loads in transformers' matching BertFor* class. It appears only when the run
completes; checkpoints go to OUTPUT.checkpoints (--resume continues from the last one).

  fastbert finetune classify --model MODEL --train train.csv --validation dev.csv --output out/
  fastbert predict --model out/ --input test.csv --output predictions.jsonl
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a BERT folder on a labelled file",
        description=FINETUNE_HELP,
        formatter_class=Formatter,
    )
    p.add_argument("task", choices=["classify", "pair", "regress", "tag", "qa"])
    p.add_argument("--model", required=True, help="a BERT folder (config, weights, tokenizer)")
    p.add_argument(
        "--train", required=True, help="labelled training file (.csv, .tsv, .jsonl, .parquet; tag: .jsonl, CoNLL)"
    )
    p.add_argument("--validation", default=None, help="labelled validation file (evaluated each epoch)")
    p.add_argument("--output", required=True, help="a new folder for the fine-tuned model")
    p.add_argument("--text-field", default=None, help="the text (default: text; tag: tokens, a list of words)")
    p.add_argument("--pair-field", default=None, help="second text (default: text_pair for pair, none otherwise)")
    p.add_argument("--label-field", default=None, help="the label (default: label; tag: tags, one per word)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--doc-stride", type=int, default=None, help="qa: overlap of a long context's windows (default: max length / 4)"
    )
    add_run_options(p, lr=5e-5)
    p.set_defaults(func=run_finetune)

    q = sub.add_parser(
        "predict",
        help="predict with a fine-tuned model",
        formatter_class=Formatter,
        description="One prediction per input row, in order: label and score (classification) "
        "or score (regression), to .jsonl, .csv or .tsv; tokens and tags (tagging) or id, answer and score (qa), "
        "to .jsonl.",
    )
    q.add_argument("--model", required=True, help="a fine-tuned folder (fastbert finetune's output)")
    q.add_argument("--input", required=True, help="rows to predict (.csv, .tsv, .jsonl, .parquet, .txt; tag: CoNLL)")
    q.add_argument("--output", required=True, help="predictions file (.jsonl, .csv, .tsv)")
    q.add_argument(
        "--text-field", default=None, help="the text (default: as fine-tuned, else text; tagging models: tokens)"
    )
    q.add_argument("--pair-field", default=None, help="the second text (default: as fine-tuned)")
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--max-length", type=int, default=128)
    q.set_defaults(func=run_predict)


def run_finetune(args: argparse.Namespace) -> int:
    from ..batch.files import InputError
    from ..tasks import finetune

    try:
        metrics = finetune(
            args.task,
            args.model,
            args.train,
            args.output,
            validation=args.validation,
            text_field=args.text_field,
            pair_field=args.pair_field,
            label_field=args.label_field,
            max_length=args.max_length,
            stride=args.doc_stride,
            options=run_options(args),
        )
    except (InputError, OSError) as exc:
        return die("finetune", str(exc))
    except KeyboardInterrupt:
        print(
            f"\n{PROG} finetune: interrupted; {args.output} was not written (checkpoints: "
            f"{args.output}.checkpoints, --resume continues)",
            file=sys.stderr,
            flush=True,
        )
        return 130
    print(json.dumps(metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..batch.files import InputError
    from ..tasks import predict

    try:
        n = predict(
            args.model,
            args.input,
            args.output,
            args.text_field,
            args.pair_field,
            args.batch_size,
            args.max_length,
            args.device,
        )
    except (InputError, OSError) as exc:
        return die("predict", str(exc))
    print(f"{PROG} predict: {n} rows -> {args.output}", file=sys.stderr)
    return 0
