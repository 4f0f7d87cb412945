"""`fastbert encode`: batch inference from a file of texts to a file of embeddings.

The pipeline, per window of `window` input rows (bounded memory whatever the file size):

  read rows (fastbert/batch/files.py) -> tokenize the window (`tokenizers`, the model folder's tokenizer.json, in Rust
  threads) -> sort the window by token count -> cut batches by a token budget (rows x padded length), so
  padding is near zero and every batch is about the same amount of work -> model (padding-free fastbert
  encoder) -> pooling (cls | mean | max | pooler) [-> L2 normalize] -> un-sort -> append to the output.

Rows come out in input order. Under torchrun each window is split into WORLD_SIZE contiguous slices, rank r
encodes slice r of every window into its own part file, and rank 0 stitches the parts into the one output
(same order as a single process). Imports: torch, numpy, tokenizers and fastbert itself, never transformers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import (
    InputError,
    NpyWriter,
    Reader,
    Row,
    atomic_output,
    open_writer,
    output_format,
    sigterm_as_interrupt,
    temp_name,
)

if TYPE_CHECKING:
    import torch

POOLINGS = ("cls", "mean", "max", "pooler")


# ---------------------------------------------------------------------------------------------- model folder


@dataclass
class ModelDefaults:
    """What the model folder says about how to embed; sentence-transformers configs win when present."""

    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 512
    lowercase: bool = False
    hidden_size: int = 0
    source: list[str] = field(default_factory=list)  # which files the values came from


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def check_model_dir(model_dir: str) -> Path:
    p = Path(model_dir)
    if not p.exists():
        raise InputError(f"{model_dir}: no such model folder")
    if not p.is_dir():
        raise InputError(f"{model_dir}: not a folder (--model takes a Hugging Face model folder)")
    if not (p / "config.json").is_file():
        raise InputError(f"{model_dir}: no config.json here; --model takes a Hugging Face model folder")
    if not (p / "tokenizer.json").is_file() and not (p / "vocab.txt").is_file():
        raise InputError(f"{model_dir}: no tokenizer.json (or vocab.txt) here; encode needs the model's tokenizer")
    return p


def model_defaults(model_dir: str) -> ModelDefaults:
    """Read config.json plus sentence-transformers' modules.json, 1_Pooling/config.json and
    sentence_bert_config.json (the same defaults sentence-transformers uses for this folder)."""
    p = check_model_dir(model_dir)
    d = ModelDefaults()
    cfg = _read_json(p / "config.json")
    d.hidden_size = int(cfg.get("hidden_size", cfg.get("dim", 0)))  # DistilBERT's config says "dim"
    max_pos = int(cfg.get("max_position_embeddings", 512))
    d.max_length = max_pos
    tok_cfg = p / "tokenizer_config.json"
    if tok_cfg.is_file():
        mml = _read_json(tok_cfg).get("model_max_length")
        if isinstance(mml, (int, float)) and 0 < mml < 1e9:
            d.max_length = min(d.max_length, int(mml))

    pooling_dir = None
    if (p / "modules.json").is_file():
        d.source.append("modules.json")
        for m in _read_json(p / "modules.json"):
            kind = str(m.get("type", ""))
            if kind.endswith(".Pooling"):
                pooling_dir = p / m.get("path", "")
            elif kind.endswith(".Normalize"):
                d.normalize = True
    if pooling_dir is None and (p / "1_Pooling" / "config.json").is_file():
        pooling_dir = p / "1_Pooling"
    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        pc = _read_json(pooling_dir / "config.json")
        d.source.append(str((pooling_dir / "config.json").relative_to(p)))
        mode = pc.get("pooling_mode")
        if mode is None:
            modes = [k[len("pooling_mode_") :] for k, v in pc.items() if k.startswith("pooling_mode_") and v is True]
            names = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}
            unsupported = [m for m in modes if m not in names]
            if unsupported or len(modes) != 1:
                raise InputError(
                    f"{pooling_dir / 'config.json'}: pooling {modes} is not supported by fastbert "
                    f"encode (one of cls, mean, max); pass --pooling to override"
                )
            mode = names[modes[0]]
        d.pooling = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}.get(mode, mode)
    sb = p / "sentence_bert_config.json"
    if sb.is_file():
        sbc = _read_json(sb)
        d.source.append("sentence_bert_config.json")
        if sbc.get("max_seq_length"):
            d.max_length = int(sbc["max_seq_length"])
        d.lowercase = bool(sbc.get("do_lower_case", False))
    return d


# ---------------------------------------------------------------------------------------------- tokenizing


@dataclass
class Tokenized:
    ids: list[np.ndarray]  # per row, int64 token ids (specials included)
    type_ids: list[np.ndarray]  # per row, token type ids
    lengths: np.ndarray  # (n,) int64
    truncated: int  # rows cut to max_length
    empty: int  # rows whose text (and pair) is empty or whitespace


class TextTokenizer:
    """The model folder's fast tokenizer (tokenizer.json; a BERT WordPiece built from vocab.txt otherwise),
    truncating to `max_length` tokens and never padding (batches are padded later, to their own length)."""

    def __init__(self, model_dir: str, max_length: int, lowercase: bool = False):
        import tokenizers

        p = Path(model_dir)
        if (p / "tokenizer.json").is_file():
            self.tok = tokenizers.Tokenizer.from_file(str(p / "tokenizer.json"))
        else:
            from tokenizers.implementations import BertWordPieceTokenizer

            lower = True
            if (p / "tokenizer_config.json").is_file():
                lower = bool(_read_json(p / "tokenizer_config.json").get("do_lower_case", True))
            self.tok = BertWordPieceTokenizer(str(p / "vocab.txt"), lowercase=lower)
        self.tok.no_padding()
        if max_length < 2:
            raise InputError(f"--max-length must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
        self.tok.enable_truncation(max_length)
        self.max_length = max_length
        self.lowercase = lowercase

    def __call__(self, rows: Sequence[Row]) -> Tokenized:
        pairs = rows[0][1] is not None if rows else False
        if self.lowercase:
            rows = [(t.lower(), None if q is None else q.lower()) for t, q in rows]
        inputs = [(t, q) for t, q in rows] if pairs else [t for t, _ in rows]
        encs = self.tok.encode_batch(inputs, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        types = [np.asarray(e.type_ids, dtype=np.int64) for e in encs]
        truncated = sum(1 for e in encs if e.overflowing)
        empty = sum(1 for t, q in rows if not t.strip() and (q is None or not q.strip()))
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        return Tokenized(ids, types, lengths, truncated, empty)


# ---------------------------------------------------------------------------------------------- batching


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_rows: int = 1024) -> list[np.ndarray]:
    """Sort rows by length (longest first) and cut them into batches whose padded size
    rows x longest row stays within `batch_tokens` (a longer row gets a batch of its own)."""
    order = np.argsort(-lengths, kind="stable")
    batches, start, n = [], 0, len(order)
    while start < n:
        longest = max(1, int(lengths[order[start]]))
        take = max(1, min(max_rows, batch_tokens // longest, n - start))
        batches.append(order[start : start + take])
        start += take
    return batches


def collate(tok: Tokenized, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (B, L) int64 arrays: input_ids, attention_mask, token_type_ids."""
    lens = tok.lengths[idx]
    B, L = len(idx), int(lens.max()) if len(idx) else 0
    ids = np.zeros((B, L), dtype=np.int64)
    types = np.zeros((B, L), dtype=np.int64)
    for r, i in enumerate(idx):
        n = lens[r]
        ids[r, :n] = tok.ids[i]
        types[r, :n] = tok.type_ids[i]
    mask = (np.arange(L)[None, :] < lens[:, None]).astype(np.int64)
    return ids, mask, types


# ---------------------------------------------------------------------------------------------- the model


class Model:
    """What the pipeline needs from a model: hidden states for a padded batch and the BERT pooler.
    `forward(input_ids, attention_mask, token_type_ids) -> (B, L, H)`; `pool(hidden) -> (B, H)`."""

    def __init__(
        self,
        forward: Callable,
        hidden_size: int,
        pool: Callable | None = None,
        device: torch.device | str = "cpu",
        name: str = "model",
    ):
        self.forward, self.pool, self.hidden_size, self.device, self.name = forward, pool, hidden_size, device, name


def load_model(model_dir: str, dtype: str = "float32", device: str = "cpu") -> Model:
    """fastbert's padding-free encoder on the folder's weights (fastbert/model/forward.py, no transformers)."""
    import torch

    from ..model import load_encoder

    torch_dtype = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "int8": None,
    }[dtype]
    check_model_dir(model_dir)
    if dtype == "int8":
        if torch.device(device).type != "cpu":
            raise InputError(f"--dtype int8 runs on CPU only (device {device}); use bfloat16 or float16 on CUDA")
        from ..model.quantize import base_dtype

        torch_dtype = base_dtype()
    try:
        enc = load_encoder(model_dir, dtype=torch_dtype, device=device)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"cannot load the model: {exc}") from None
    if dtype == "int8":
        from ..model.quantize import quantize

        try:
            quantize(enc)
        except NotImplementedError as exc:
            raise InputError(f"--dtype int8: {exc}") from None
    hidden = int(enc.config.hidden_size)
    forward = enc.forward
    if not enc.uses_token_types:
        # RoBERTa's and DistilBERT's tokenizers give no token types to their models (transformers' tokenizers
        # for them return none); the tokenizer.json's own type ids are not the model's.
        def forward(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
            return enc(ids, mask)

    return Model(forward, hidden, enc.pool if enc.pooler is not None else None, device, "fastbert")


def pool_embeddings(hidden: torch.Tensor, mask: torch.Tensor, mode: str, model: Model, normalize: bool) -> torch.Tensor:
    """(B, L, H) hidden states + (B, L) mask -> (B, H) float32 embeddings, as sentence-transformers pools."""
    import torch

    if mode == "pooler":
        if model.pool is None:
            raise InputError("--pooling pooler: this model has no pooler")
        out = model.pool(hidden).float()
    elif mode == "cls":
        out = hidden[:, 0].float()
    elif mode == "mean":
        m = mask.unsqueeze(-1).to(torch.float32)
        out = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif mode == "max":
        h = hidden.float().masked_fill(mask.unsqueeze(-1) == 0, -1e9)
        out = h.max(1).values
    else:
        raise InputError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=1)
    return out


def encode_tokenized(
    tok: Tokenized,
    model: Model,
    pooling: str,
    normalize: bool,
    batch_tokens: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embed one tokenized window; returns (n, H) float32 in the window's row order."""
    import torch

    n = len(tok.lengths)
    out = np.empty((n, model.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx in plan_batches(tok.lengths, batch_tokens):
            ids, mask, types = collate(tok, idx)
            ids_t = torch.from_numpy(ids).to(model.device)
            mask_t = torch.from_numpy(mask).to(model.device)
            types_t = torch.from_numpy(types).to(model.device)
            hidden = model.forward(ids_t, mask_t, types_t)
            emb = pool_embeddings(hidden, mask_t, pooling, model, normalize)
            out[idx] = emb.cpu().numpy()
            if on_batch is not None:
                on_batch(len(idx), int(tok.lengths[idx].sum()))
    return out


def windows(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    buf: list[Row] = []
    for row in rows:
        buf.append(row)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


# ---------------------------------------------------------------------------------------------- progress


class Progress:
    """A one-line progress bar on stderr (rows, percent, rate, ETA), redrawn at most 8 times a second."""

    def __init__(self, enabled: bool, total: Callable[[], float | None], share: float = 1.0):
        self.enabled, self.total, self.share = enabled, total, share
        self.t0 = time.perf_counter()
        self.rows = self.tokens = 0
        self._last = 0.0

    def update(self, rows: int, tokens: int) -> None:
        self.rows += rows
        self.tokens += tokens
        now = time.perf_counter()
        if self.enabled and now - self._last >= 0.125:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        el = max(now - self.t0, 1e-9)
        total = self.total()
        frac = self.rows / (total * self.share) if total else None
        bar = ""
        eta = "--:--"
        if frac is not None:
            frac = min(max(frac, 0.0), 1.0)
            width = 20
            filled = int(frac * width)
            bar = f"{frac * 100:3.0f}% |{'#' * filled}{'.' * (width - filled)}| "
            if frac > 0:
                eta = _fmt_time(el * (1 - frac) / frac)
        line = (
            f"\rencode {bar}{self.rows:,} rows  {self.rows / el:,.0f} rows/s  {self.tokens / el:,.0f} tok/s  "
            f"elapsed {_fmt_time(el)}  ETA {eta} "
        )
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")
            sys.stderr.flush()


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class EncodeStats:
    rows: int = 0
    tokens: int = 0
    truncated: int = 0
    empty: int = 0
    seconds: float = 0.0
    dim: int = 0

    def summary(self, output: str) -> str:
        s = max(self.seconds, 1e-9)
        return (
            f"encoded {self.rows:,} rows ({self.tokens:,} tokens; {self.truncated:,} truncated, "
            f"{self.empty:,} empty) in {self.seconds:.2f} s: {self.tokens / s:,.0f} tokens/s, "
            f"{self.rows / s:,.1f} rows/s -> {output} ({self.rows} x {self.dim} float32)"
        )


@dataclass
class EncodeOptions:
    input: str
    output: str
    input_format: str | None = None
    output_format: str | None = None
    text_field: str | None = None
    pair_field: str | None = None
    header: bool = True
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    batch_tokens: int = 2048
    window: int = 8192
    progress: bool | None = None
    quiet: bool = False


def _split(n: int, world: int, rank: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


class _Dist:
    """torchrun (WORLD_SIZE > 1): a gloo group for a few barriers and sums; nothing when run alone."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.dist = None
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group(backend="gloo")
            self.dist = dist

    def tag(self) -> str:
        """A name for this run's part files, the same on every rank."""
        import torch

        t = torch.tensor([os.getpid() if self.rank == 0 else 0], dtype=torch.int64)
        if self.dist is not None:
            self.dist.broadcast(t, src=0)
        return f"{int(t.item())}"

    def sum(self, values: Sequence[float]) -> list[float]:
        if self.dist is None:
            return list(values)
        import torch

        t = torch.tensor(list(values), dtype=torch.float64)
        self.dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()


def run_encode(
    opts: EncodeOptions,
    model: Model,
    tokenizer: TextTokenizer,
    pooling: str,
    normalize: bool,
    dist: _Dist | None = None,
) -> EncodeStats:
    """Stream `opts.input` through tokenizer and model into `opts.output` (atomically). With `dist`
    spanning several ranks, rank r encodes slice r of every window and rank 0 writes the one output."""
    dist = dist or _Dist()
    out_fmt = output_format(opts.output, opts.output_format)
    reader = Reader(opts.input, opts.input_format, opts.text_field, opts.pair_field, opts.header)
    if opts.window < 1 or opts.batch_tokens < 1:
        raise InputError("--window and --batch-tokens must be positive")
    show = opts.progress if opts.progress is not None else sys.stderr.isatty()
    # rank 0 encodes about 1/world of the rows: its share of the estimated total drives percent and ETA
    progress = Progress(bool(show) and not opts.quiet and dist.rank == 0, reader.estimated_rows, 1.0 / dist.world)
    stats = EncodeStats(dim=model.hidden_size)
    t0 = time.perf_counter()
    tag = dist.tag()
    dim = model.hidden_size

    def encode_slice(window: list[Row]) -> np.ndarray | None:
        lo, hi = _split(len(window), dist.world, dist.rank)
        part = window[lo:hi]
        if not part:
            return None
        tok = tokenizer(part)
        stats.truncated += tok.truncated
        stats.empty += tok.empty
        stats.tokens += int(tok.lengths.sum())
        stats.rows += len(part)
        return encode_tokenized(tok, model, pooling, normalize, opts.batch_tokens, progress.update)

    with sigterm_as_interrupt():
        if dist.world == 1:
            with atomic_output(opts.output, tag) as tmp:
                writer = open_writer(tmp, out_fmt, dim)
                try:
                    for window in windows(reader, opts.window):
                        emb = encode_slice(window)
                        if emb is not None:
                            writer.write(emb)
                    writer.close()
                except BaseException:
                    writer.abort()
                    progress.close()
                    raise
            progress.close()
        else:
            _run_sharded(opts, reader, encode_slice, dist, tag, out_fmt, dim, progress)
    stats.seconds = time.perf_counter() - t0
    if dist.world > 1:
        r, t, tr, e = dist.sum([stats.rows, stats.tokens, stats.truncated, stats.empty])
        stats.rows, stats.tokens, stats.truncated, stats.empty = int(r), int(t), int(tr), int(e)
    return stats


def _run_sharded(
    opts: EncodeOptions,
    reader: Reader,
    encode_slice: Callable[[list[Row]], np.ndarray | None],
    dist: _Dist,
    tag: str,
    out_fmt: str,
    dim: int,
    progress: Progress,
) -> None:
    parts = [temp_name(opts.output, f"{tag}.rank{r}.npy") for r in range(dist.world)]
    mine = NpyWriter(parts[dist.rank], dim)
    window_sizes: list[int] = []
    try:
        try:
            for window in windows(reader, opts.window):
                window_sizes.append(len(window))
                emb = encode_slice(window)
                if emb is not None:
                    mine.write(emb)
            mine.close()
        finally:
            progress.close()
        dist.barrier()  # every part is complete
        if dist.rank == 0:
            with atomic_output(opts.output, tag) as tmp:
                writer = open_writer(tmp, out_fmt, dim)
                try:
                    arrays = [np.load(p, mmap_mode="r") for p in parts]
                    offsets = [0] * dist.world
                    for n in window_sizes:
                        for r in range(dist.world):
                            lo, hi = _split(n, dist.world, r)
                            if hi > lo:
                                writer.write(arrays[r][offsets[r] : offsets[r] + hi - lo])
                                offsets[r] += hi - lo
                    del arrays
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
        dist.barrier()  # rank 0 has read the parts
    finally:
        mine.abort()
        for p in parts if dist.rank == 0 else [parts[dist.rank]]:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
