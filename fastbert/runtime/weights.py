"""Weights the inference loop derives from a model's parameters, cached beside the modules and rebuilt when a
parameter changes: each layer's fused QKV projection weight (3H, H) and bias (3H,), and each GEMM weight packed
for the GEMM library (fastbert/ops/gemm.py: oneDNN's blocked layout for bfloat16, int8 with scales).

Inference reads q|k|v as one GEMM's weight. When the three Linear weights already lie side by side in
memory (fastbert's own loader puts them so) the fused weight is a view; otherwise a concatenated copy is cached
on the attention module. Every entry is keyed by each source tensor's object, storage, in-place version, dtype
and shape, so an optimizer step, load_state_dict, .to() or a replaced Linear all rebuild it. A packed QKV weight
is packed from the concatenation, which is then dropped: one derived copy per weight. The caches are never
parameters or buffers (state_dict stays HF's) and are not copied by deepcopy or pickle;
``clear_fused_cache(model)`` frees them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from . import host_pool
from .layout import parts as layer_parts  # the six submodules a forward reads, any family's names
from .layout import qkv_names

__all__ = ["layer_parts", "fused_qkv", "packed_weight", "clear_fused_cache", "tensors_key", "key_matches"]

CACHE_ATTRS = ("_fastbert_fused", "_fastbert_packed", "_fastbert_packed_bias")


class _FusedCache:
    """Holds (key, weight, bias) of a layer's fused QKV projection. Not copied by deepcopy or pickle (a copy
    rebuilds its own), and never a parameter or buffer, so state_dict stays HF's."""

    __slots__ = ("entry", "__weakref__")

    def __init__(self):
        self.entry = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _FusedCache:
        return _FusedCache()

    def __reduce__(self):
        return (_FusedCache, ())


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def tensors_key(ts: Sequence[Tensor | None]) -> tuple:
    """What identifies the tensors ts (None allowed) for a cache: object, storage, in-place version, dtype, device,
    shape."""
    return tuple(
        (weakref.ref(t), t.data_ptr(), _version(t), t.dtype, t.device, t.shape) if t is not None else None for t in ts
    )


def key_matches(key: tuple | None, ts: Sequence[Tensor | None]) -> bool:
    """Whether ts are still the tensors ``tensors_key`` saw, unchanged."""
    if key is None or len(key) != len(ts):
        return False
    for k, t in zip(key, ts):
        if t is None or k is None:
            if not (t is None and k is None):
                return False
            continue
        ref, ptr, ver, dtype, device, shape = k
        if (
            ref() is not t
            or ptr != t.data_ptr()
            or ver != _version(t)
            or dtype != t.dtype
            or shape != t.shape
            or device != t.device
        ):
            return False
    return True


def _adjacent_view(ts: Sequence[Tensor]) -> Tensor | None:
    """The (3n, ...) tensor q|k|v already form in memory when they are consecutive views of one storage."""
    t0 = ts[0]
    if not all(t.is_contiguous() and t.dtype == t0.dtype and t.device == t0.device and t.shape == t0.shape for t in ts):
        return None
    try:
        base = t0.untyped_storage().data_ptr()
        if any(t.untyped_storage().data_ptr() != base for t in ts):
            return None
    except RuntimeError:
        return None
    step = t0.numel() * t0.element_size()
    if any(t.data_ptr() != t0.data_ptr() + i * step for i, t in enumerate(ts)):
        return None
    shape = (t0.shape[0] * len(ts),) + tuple(t0.shape[1:])
    return t0.detach().as_strided(shape, torch.empty(shape, device="meta").stride())


def _linears(sa: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The query, key and value Linears of an attention module (any family's names)."""
    q, k, v = qkv_names(sa)
    return getattr(sa, q), getattr(sa, k), getattr(sa, v)


def _cat_bias(sa: nn.Module, like: Tensor) -> Tensor | None:
    bs = [m.bias for m in _linears(sa)]
    if all(b is None for b in bs):
        return None
    n = like.shape[0] // 3
    return torch.cat([b if b is not None else like.new_zeros(n) for b in bs])


def _qkv_params(sa: nn.Module) -> tuple[tuple, tuple]:
    """(q, k, v weights), (q, k, v biases or None): through the modules' dicts where the Linears keep plain
    parameters (cheap: this runs per layer per forward), else by attribute (a parametrized weight, say)."""
    names = qkv_names(sa)
    try:
        mods = sa._modules
        ps = (mods[names[0]]._parameters, mods[names[1]]._parameters, mods[names[2]]._parameters)
        return (ps[0]["weight"], ps[1]["weight"], ps[2]["weight"]), (
            ps[0].get("bias"),
            ps[1].get("bias"),
            ps[2].get("bias"),
        )
    except (KeyError, AttributeError):
        q, k, v = _linears(sa)
        return (q.weight, k.weight, v.weight), (q.bias, k.bias, v.bias)


def _cache(module: nn.Module, attr: str) -> _FusedCache:
    cache = module.__dict__.get(attr)
    if cache is None:
        cache = _FusedCache()
        module.__dict__[attr] = cache
    return cache


def fused_qkv(sa: nn.Module, need_grad: bool, pack: Callable[[Tensor], Any] | None = None) -> tuple[Any, Tensor | None]:
    """(Wqkv (3H, H), bqkv (3H,) or None) of a self-attention module with query/key/value Linears (or
    DistilBERT's q_lin/k_lin/v_lin).

    With gradients or while compiling: torch.cat in the graph (differentiable). Otherwise a cached copy,
    rebuilt whenever a weight changes (object, storage or in-place version), or a view when the weights
    already lie side by side. With ``pack`` (inference only), the cache holds ``pack(Wqkv)`` instead of Wqkv."""
    if need_grad or ops.compiling():
        w = torch.cat([m.weight for m in _linears(sa)])
        return w, _cat_bias(sa, w)
    ws, bs = _qkv_params(sa)
    cache = _cache(sa, "_fastbert_fused")
    entry = cache.entry
    if entry is not None and entry[3] is pack and key_matches(entry[0], ws + bs):
        return entry[1], entry[2]
    with torch.no_grad(), host_pool.outside():  # the cache outlives the forward: not in its memory pool
        w = _adjacent_view(ws)
        if w is None:
            w = torch.cat([t.detach() for t in ws])
        b = None
        if all(t is not None for t in bs):
            b = _adjacent_view(bs)
            if b is None:
                b = torch.cat([t.detach() for t in bs])
        elif any(t is not None for t in bs):
            b = _cat_bias(sa, w).detach()
        if pack is not None:
            w = pack(w)
    # one assignment: threads see the old or the new entry, never a mix
    cache.entry = (tensors_key(ws + bs), w, b, pack)
    return w, b


def packed_weight(module: nn.Module, w: Tensor, pack: Callable[[Tensor], Any] | None, slot: str = "weight") -> Any:
    """``pack(w)`` for a module's tensor w (its ``slot``: "weight", "bias"), cached on the module and rebuilt
    when w changes; w itself when pack is None."""
    if pack is None:
        return w
    cache = _cache(module, "_fastbert_packed" if slot == "weight" else f"_fastbert_packed_{slot}")
    entry = cache.entry
    if entry is not None and entry[2] is pack and key_matches(entry[0], (w,)):
        return entry[1]
    with torch.no_grad(), host_pool.outside():
        packed = pack(w.detach())
    cache.entry = (tensors_key((w,)), packed, pack)
    return packed


def clear_fused_cache(model: nn.Module) -> None:
    """Frees every derived weight (fused QKV, packed GEMM weights) of a model's modules."""
    for m in model.modules():
        for attr in CACHE_ATTRS:
            m.__dict__.pop(attr, None)
