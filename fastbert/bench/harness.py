"""Side-by-side BERT forward benchmarks (library code for benchmarks/bench_model.py and `fastbert bench`).

Implementations, all carrying the same weights, timed in one process with warm-up, interleaved repeats and
medians:

  hf_eager   transformers BertModel, attn_implementation="eager"   (the baseline: speedup 1.0)
  hf_sdpa    transformers BertModel, attn_implementation="sdpa"
  native     PyTorch's padding-free fast path: nn.TransformerEncoder over nested tensors (eval, no_grad),
             HF's embeddings in front (the engine under BetterTransformer)
  fastbert   fastbert.BertModel (padding-free, fused ops)

Roofline: the fastest GEMM rate of the rows' own dtype measured on the model's own GEMM shapes for the batch's real
tokens (probes timed inside the same interleaved rounds as the models), and the forward's FLOPs on real tokens
(GEMMs + attention's QK^T and PV); a row's fraction of the roofline is its real tokens/s over rate / (FLOPs per
real token). The probes are ``torch.mm`` and, on CPU in float32 and bfloat16, oneDNN's inner product (the library
fastbert's inference loop uses, fastbert/ops/gemm.py), and for int8 ``torch._int_mm`` alone; rows carry each
probe's GFLOP/s (``mm_gflops``,
``onednn_gflops``) and the ceiling used (``gemm_gflops``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..ops import gemm
from .timing import compare

if TYPE_CHECKING:
    from transformers import BertModel, PretrainedConfig

IMPLS = ("hf_eager", "hf_sdpa", "native", "fastbert")

_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_ROBERTA = dict(_BASE, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)
# name -> config fields (transformers' names for the model_type; "model_type" picks the family, BERT's by default)
MODEL_CONFIGS = {
    "bert-base": _BASE,
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "roberta-base": dict(_ROBERTA, model_type="roberta", vocab_size=50265),
    "xlm-roberta-base": dict(_ROBERTA, model_type="xlm-roberta", vocab_size=250002),
    "distilbert-base": dict(model_type="distilbert", dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    "electra-base": dict(_BASE, model_type="electra", embedding_size=768),
}


def machine_info() -> dict:
    import fastbert

    info = {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fastbert": fastbert.__version__,
        "fastbert_isa": fastbert.ops.cpu_isa(),
        "fastbert_kernels": sorted(f"{n}/{d}" for (n, d), ok in fastbert.ops.KERNELS.items() if ok),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------- models


def make_hf_config(model: str = "bert-base", num_layers: int | None = None, **overrides) -> PretrainedConfig:
    """A transformers config for a named size (MODEL_CONFIGS: "bert-base", "roberta-base", "distilbert-base", ...)
    or an HF folder of the BERT family (its config class by model_type)."""
    from transformers import AutoConfig

    if os.path.isdir(model):
        cfg = AutoConfig.from_pretrained(model)
    elif model in MODEL_CONFIGS:
        fields = dict(MODEL_CONFIGS[model])
        cfg = AutoConfig.for_model(fields.pop("model_type", "bert"), **fields)
    else:
        raise ValueError(f"model: expected one of {sorted(MODEL_CONFIGS)} or a model folder, got {model!r}")
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


class NativeFastPath(nn.Module):
    """HF's embeddings (and ELECTRA's projection) + nn.TransformerEncoder (post-norm, batch_first) holding the
    same weights as an HF model of the BERT family; in eval + no_grad with a key padding mask it runs PyTorch's
    fused nested-tensor fast path."""

    def __init__(self, hf_model: BertModel):
        super().__init__()
        from ..model.family import bert_names, family_of
        from ..runtime.layout import part
        from ..runtime.weights import fused_qkv, layer_parts

        fam = family_of(hf_model.config)
        c = bert_names(hf_model.config)
        act = c.hidden_act if c.hidden_act in ("gelu", "relu") else None
        if act is None:
            raise ValueError(f"hidden_act: the native fast path supports gelu/relu, got {c.hidden_act!r}")
        layer = nn.TransformerEncoderLayer(
            c.hidden_size,
            c.num_attention_heads,
            c.intermediate_size,
            dropout=0.0,
            activation=act,
            layer_norm_eps=c.layer_norm_eps,
            batch_first=True,
            norm_first=False,
            device="meta",
        )
        self.encoder = nn.TransformerEncoder(layer, c.num_hidden_layers, enable_nested_tensor=True, mask_check=False)
        self.embeddings = hf_model.embeddings
        self.project = hf_model._modules.get(fam.projection) if fam.projection else None
        sd = {}
        for i, hl in enumerate(part(hf_model, fam.layers)):
            sa, o_dense, ln1, inter, out_dense, ln2 = layer_parts(hl)
            w, b = fused_qkv(sa, True)
            p = f"layers.{i}."
            sd[p + "self_attn.in_proj_weight"], sd[p + "self_attn.in_proj_bias"] = w.detach(), b.detach()
            for name, m in (
                ("self_attn.out_proj", o_dense),
                ("linear1", inter),
                ("linear2", out_dense),
                ("norm1", ln1),
                ("norm2", ln2),
            ):
                sd[p + name + ".weight"], sd[p + name + ".bias"] = m.weight.detach(), m.bias.detach()
        self.encoder.load_state_dict(sd, strict=True, assign=True)
        self.eval()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.embeddings(input_ids=input_ids)
        if self.project is not None:
            x = self.project(x)
        out = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        if out.is_nested:
            out = out.to_padded_tensor(0.0, x.shape)
        return out


def build_models(
    model: str = "bert-base",
    impls: Sequence[str] = IMPLS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    num_layers: int | None = None,
) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """name -> f(input_ids, attention_mask) -> last_hidden_state (B, L, H), all sharing one set of weights
    (random, seeded, LayerNorm parameters perturbed, unless ``model`` is a folder). Any model type of the BERT
    family: transformers' own class for it (AutoModel), fastbert's namesake."""
    from transformers import AutoModel

    from ..hf.modeling import optimized_class
    from ..model.family import family_of

    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise ValueError(f"impls: unknown {sorted(unknown)}; expected some of {IMPLS}")
    cfg = make_hf_config(model, num_layers)
    torch.manual_seed(seed)
    if os.path.isdir(model):
        base = AutoModel.from_pretrained(model, attn_implementation="eager", torch_dtype=dtype)
        if num_layers is not None:
            parent, _, leaf = family_of(cfg).layers.rpartition(".")
            holder = base.get_submodule(parent)
            setattr(holder, leaf, getattr(holder, leaf)[:num_layers])
            base.config.num_hidden_layers = num_layers
    else:
        cfg._attn_implementation = "eager"
        base = AutoModel.from_config(cfg)
        with torch.no_grad():
            for m in base.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.7, 1.3)
                    m.bias.normal_(0.0, 0.05)
    int8 = dtype == torch.int8  # fastbert's encoder GEMMs in int8 (fastbert.quantize), as `encode --dtype int8`
    if int8:
        import fastbert

        dtype = fastbert.model.base_dtype()
    base = base.to(device=device, dtype=dtype).eval().requires_grad_(False)
    out: dict[str, Callable] = {}

    def hf_fn(m: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        def f(ids: Tensor, mask: Tensor) -> Tensor:
            return m(input_ids=ids, attention_mask=mask).last_hidden_state

        return f

    for name in impls:
        if name == "hf_eager":
            out[name] = hf_fn(base)
        elif name == "hf_sdpa":
            sdpa = _share(base, type(base), "sdpa")
            out[name] = hf_fn(sdpa)
        elif name == "native":
            out[name] = NativeFastPath(base)
        elif name == "fastbert":
            fb = _share(base, optimized_class(type(base)), "eager")
            if int8:
                import fastbert

                fb = fastbert.quantize(fb)
            out[name] = hf_fn(fb)
    return out


def _share(base: BertModel, cls: type[BertModel], attn: str) -> BertModel:
    """A model of ``cls`` whose parameters are base's tensors (no copy)."""
    import copy

    cfg = copy.deepcopy(base.config)
    cfg._attn_implementation = attn
    kw = {"add_pooling_layer": base.pooler is not None} if hasattr(base, "pooler") else {}
    with torch.device("meta"):
        m = cls(cfg, **kw)
    m.load_state_dict(base.state_dict(), strict=True, assign=True)
    for name, buf in base.named_buffers():  # non-persistent buffers (position_ids) stay on meta
        mod_name, _, leaf = name.rpartition(".")
        m.get_submodule(mod_name).register_buffer(leaf, buf, persistent=False)
    return m.eval().requires_grad_(False)


# ---------------------------------------------------------------- batches, FLOPs, roofline


def make_batch(
    batch: int,
    seq_len: int,
    min_len: int | None = None,
    max_len: int | None = None,
    vocab_size: int = 30522,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor, list[int]]:
    """(input_ids, attention_mask, lengths): lengths uniform in [min_len, max_len] (default all seq_len), seeded,
    right padding with id 0."""
    lo = seq_len if min_len is None else min_len
    hi = seq_len if max_len is None else max_len
    if not 1 <= lo <= hi <= seq_len:
        raise ValueError(f"min_len/max_len: expected 1 <= min_len <= max_len <= seq_len={seq_len}, got {lo}, {hi}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (batch,), generator=g)
    ids = torch.randint(min(1000, vocab_size - 1), vocab_size, (batch, seq_len), generator=g)
    mask = (torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = ids * mask
    return ids.to(device), mask.to(device), lengths.tolist()


def max_length(config: Any) -> int:
    """The longest sequence a config's model takes without position_ids (RoBERTa's positions start after
    padding_idx)."""
    from ..model.family import family_of

    first = config.pad_token_id + 1 if family_of(config).positions == "after_padding" else 0
    return int(config.max_position_embeddings) - first


def forward_flops(config: Any, lengths: Sequence[int]) -> float:
    """FLOPs of the encoder forward on the real tokens: GEMMs (2 per multiply-add) + QK^T + PV per sequence."""
    from ..model.family import bert_names

    config = bert_names(config)
    H, I, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    T = sum(lengths)
    gemms = 2 * T * H * (3 * H + H + 2 * I)
    attn = sum(4 * n * n * H for n in lengths)
    return float(n_layers * (gemms + attn))


def gemm_probe(
    config: Any,
    tokens: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    mm: Callable = gemm.linear_mm,
    pack: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Callable[[], None], float]:
    """(fn, flops): fn runs ``mm(x, w)`` (x @ w^T, w packed by ``pack`` when given) once on each of one layer's
    GEMM shapes for ``tokens`` rows."""
    from ..model.family import bert_names

    config = bert_names(config)
    H, I = config.hidden_size, config.intermediate_size
    shapes = [(tokens, H, 3 * H), (tokens, H, H), (tokens, H, I), (tokens, I, H)]
    mats = [
        (torch.randn(m, k, dtype=dtype, device=device), torch.randn(n, k, dtype=dtype, device=device))
        for m, k, n in shapes
    ]
    if pack is not None:
        mats = [(x, pack(w)) for x, w in mats]

    def fn():
        for x, w in mats:
            mm(x, w)

    return fn, float(sum(2 * m * k * n for m, k, n in shapes))


def int8_gemm_probe(config: Any, tokens: int, device: torch.device | str = "cpu") -> tuple[Callable[[], None], float]:
    """(fn, ops): torch._int_mm (int8 x int8 -> int32, the GEMM of fastbert.quantize) on one layer's shapes."""
    from ..model.family import bert_names

    config = bert_names(config)
    H, I = config.hidden_size, config.intermediate_size
    shapes = [(tokens, H, 3 * H), (tokens, H, H), (tokens, H, I), (tokens, I, H)]
    mats = [
        (
            torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device),
            torch.randint(-127, 128, (k, n), dtype=torch.int8, device=device),
        )
        for m, k, n in shapes
    ]

    def fn():
        for x, w in mats:
            torch._int_mm(x, w)

    return fn, float(sum(2 * m * k * n for m, k, n in shapes))


def gemm_probes(
    config: Any, tokens: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> dict[str, tuple]:
    """The roofline's probes, {name: (fn, flops)}: torch.mm, and the library fastbert's inference loop uses when
    that is another (oneDNN for float32/bfloat16 on CPU, on weights packed as the loop packs them,
    fastbert/ops/gemm.py). The ceiling is the faster of them, in the dtype of the rows."""
    if dtype == torch.int8:
        return {"int_mm": int8_gemm_probe(config, tokens, device)}
    probes = {"mm": gemm_probe(config, tokens, dtype, device)}
    like = torch.empty(0, dtype=dtype, device=device)
    loop_mm = gemm.linear_fn(like)
    if loop_mm is not gemm.linear_mm:
        probes[gemm.cpu_gemm()] = gemm_probe(config, tokens, dtype, device, loop_mm, gemm.weight_packer(like))
    return probes


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- timing


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2, device: torch.device | str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each fn (inference mode), run in interleaved rounds (fastbert.bench.timing.compare)."""
    with torch.inference_mode():
        timings = compare(fns, repeats=repeats, warmup=warmup, sync=lambda: _sync(device))
    return {name: t.samples for name, t in timings.items()}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: the profiler's C++ side prints a line per start and stop
    (``USDT: ... profiler_start``) that would interleave with the tables."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_memory(fn: Callable[[], object], device: torch.device | str) -> float | None:
    """Peak MiB allocated during one forward, above what was allocated before it: CUDA's allocator stats, or
    on CPU the profiler's allocation events (sorted by time, summed)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.inference_mode():
            fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    try:
        from torch.profiler import ProfilerActivity, profile

        with (
            _quiet_stderr(),
            torch.inference_mode(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        ):
            fn()
        events = sorted(
            (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
        )
    except Exception:  # profiler internals differ across torch versions: no figure rather than a wrong one
        return None
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak / 2**20


def bench_shape(
    models: dict[str, Callable],
    config: Any,
    batch: int,
    seq_len: int,
    min_len: int | None = None,
    max_len: int | None = None,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    rate: float | None = None,
    model_name: str = "",
) -> list[dict]:
    """One row per implementation for one batch shape; see the module docstring for the columns."""
    ids, mask, lengths = make_batch(batch, seq_len, min_len, max_len, config.vocab_size, seed, device)
    T = sum(lengths)
    flops = forward_flops(config, lengths)
    real = mask.bool()
    with torch.inference_mode():
        outs = {name: f(ids, mask) for name, f in models.items()}
    ref = outs.get("hf_eager")
    fns = {name: (lambda f=f: f(ids, mask)) for name, f in models.items()}
    probe_rates = {}
    if rate is None:
        # The roofline's GEMM probes run inside the same interleaved rounds, so load drift hits them too.
        probes = gemm_probes(config, T, dtype=dtype, device=device)
        fns.update({f"_gemm_{name}": fn for name, (fn, _) in probes.items()})
    times = time_interleaved(fns, repeats, warmup, device)
    if rate is None:
        probe_rates = {
            name: flops / statistics.median(times.pop(f"_gemm_{name}")) for name, (_, flops) in probes.items()
        }
        rate = max(probe_rates.values())
    roof_tps = rate / (flops / T)
    base_med = statistics.median(times["hf_eager"]) if "hf_eager" in times else None
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [med, med, med]
        diff = None
        if ref is not None:
            diff = float((outs[name].float() - ref.float())[real].abs().max())
        rows.append(
            {
                "impl": name,
                "model": model_name,
                "dtype": str(dtype).replace("torch.", ""),
                "device": str(device),
                "batch": batch,
                "seq_len": seq_len,
                "min_len": min(lengths),
                "max_len": max(lengths),
                "real_tokens": T,
                "padding_frac": 1.0 - T / (batch * seq_len),
                "ms_median": med * 1e3,
                "ms_p25": q[0] * 1e3,
                "ms_p75": q[2] * 1e3,
                "tokens_per_s": T / med,
                "roofline_tokens_per_s": roof_tps,
                "roofline_frac": (T / med) / roof_tps,
                "speedup_vs_hf_eager": (base_med / med) if base_med else None,
                "max_abs_diff_vs_hf_eager": diff,
                "peak_mem_mb": _peak_memory(lambda f=models[name]: f(ids, mask), device),
                "gemm_gflops": rate / 1e9,
                **{f"{name}_gflops": r / 1e9 for name, r in probe_rates.items()},
            }
        )
    del outs
    gc.collect()
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [
        ("impl", "{}"),
        ("model", "{}"),
        ("batch", "{}"),
        ("seq_len", "{}"),
        ("padding_frac", "{:.0%}"),
        ("ms_median", "{:.1f}"),
        ("ms_p25", "{:.1f}"),
        ("ms_p75", "{:.1f}"),
        ("tokens_per_s", "{:.0f}"),
        ("roofline_frac", "{:.0%}"),
        ("speedup_vs_hf_eager", "{:.2f}x"),
        ("max_abs_diff_vs_hf_eager", "{:.1e}"),
        ("peak_mem_mb", "{:.0f}"),
    ]
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for c, fmt in cols:
            v = r.get(c)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
