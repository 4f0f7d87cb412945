"""CUDA graphs over the inference layer loop: the whole layer stack replayed with one launch.

Why: at the batch sizes that keep a GPU busy for a millisecond or two per forward (bert-base, 32 x 128 at fp16:
about 1.3 ms), launching the stack's 96 kernels one by one costs the host about as long again, even from C++
(csrc/inference.cpp; docs/gpu.md has the measurements). A captured graph replays them for one launch.

How: a graph fixes its tensors' shapes and addresses, and a packed batch's token count T changes with every batch.
So each graph is captured for a bucket: T rounded up (to a multiple of 64 below 512, then to 8 steps per power of
two: at most 12.5% extra rows), the sequence count B to a power of two, max_seqlen to a multiple of 64. A replay
copies the batch's rows and cu_seqlens into the graph's static inputs. The extra rows form extra sequences of at
most max_seqlen rows each (then empty ones up to the bucket's count): attention never mixes rows of two sequences
and every other op is row-wise, so they cannot touch the real rows. The real rows of the output are copied out
(the static output is overwritten by the next replay).

The results equal the un-graphed loop's up to the GEMM library's choice of algorithm for the padded row count
(cuBLAS may pick another kernel for another M): float rounding, checked by tests/ops/test_cuda.py.

Graphs are cached per layer stack (on the ModuleList, never copied by deepcopy or pickle), keyed by the bucket,
dtype, device, stream, geometry and every weight's address, so a replaced or rebuilt weight (a new tensor, or the
fused QKV copy rebuilt after an in-place update) gets a new graph; in-place updates of a weight are seen by the
existing graph, which reads the weight's memory when it replays. At most MAX_GRAPHS are kept per stack (least
recently used goes); all of a stream's graphs share one memory pool, which is safe because replays on one stream
run one after another and each replay's output is copied out before the next.

FASTBERT_CUDA_GRAPHS=0 or set_cuda_graphs(False) turns them off; clear_cuda_graphs(module) frees them (a model
moved off the GPU keeps its graphs' memory until then). If a capture fails, the model warns once and runs its
layers op by op from then on.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MAX_GRAPHS",
    "bucket_tokens",
    "bucket_batch",
    "bucket_seqlen",
    "buckets",
    "cuda_graphs_enabled",
    "set_cuda_graphs",
    "clear_cuda_graphs",
    "run",
]

MAX_GRAPHS = 8
_enabled = os.environ.get("FASTBERT_CUDA_GRAPHS", "1") != "0"


def set_cuda_graphs(enabled: bool) -> None:
    """Turn CUDA graphs of the inference loop on (the default) or off."""
    global _enabled
    _enabled = bool(enabled)


def cuda_graphs_enabled() -> bool:
    return _enabled


def bucket_tokens(t: int) -> int:
    """T rounded up: to a multiple of 64 below 512, then to 8 steps per power of two."""
    if t <= 512:
        return max(64, -(-t // 64) * 64)
    step = 1 << (t.bit_length() - 4)
    return -(-t // step) * step


def bucket_batch(b: int) -> int:
    return 1 << max(0, (b - 1).bit_length())


def bucket_seqlen(n: int) -> int:
    return max(64, -(-n // 64) * 64)


def buckets(t: int, b: int, max_seqlen: int) -> tuple[int, int, int]:
    """(rows, sequences, max_seqlen) of the graph a batch of t rows in b sequences replays in: the sequence count
    leaves room for the extra rows' sequences, max_seqlen rows each at most."""
    t_cap, l_cap = bucket_tokens(t), bucket_seqlen(max_seqlen)
    return t_cap, bucket_batch(b + -(-(t_cap - t) // l_cap)), l_cap


class _Graphs:
    """The captured graphs of one layer stack, one memory pool per stream, and a lock: filling a graph's inputs,
    replaying it and copying its output out must not interleave with another thread's. Not copied by deepcopy or
    pickle."""

    __slots__ = ("entries", "pools", "lock", "failed")

    def __init__(self):
        self.entries: OrderedDict[tuple, tuple] = OrderedDict()
        self.pools: dict = {}
        self.lock = threading.Lock()
        self.failed = False  # a capture raised: this stack runs op by op from then on

    def __deepcopy__(self, memo: dict[int, Any]) -> _Graphs:
        return _Graphs()

    def __reduce__(self):
        return (_Graphs, ())


def clear_cuda_graphs(module: nn.Module) -> None:
    """Free every captured graph (and its memory) held under module."""
    for m in module.modules():
        m.__dict__.pop("_fastbert_graphs", None)


def _fill(static_x: Tensor, static_cu: Tensor, ramp: Tensor, x: Tensor, cu_seqlens: Tensor) -> None:
    """The batch into a graph's static inputs: x's rows first; cu_seqlens, then the extra rows (x's count up to
    static_x's) as sequences of ramp's step (max_seqlen's bucket), then empty sequences."""
    t, b = x.shape[0], cu_seqlens.shape[0] - 1
    static_x[:t].copy_(x)
    static_cu[: b + 1].copy_(cu_seqlens)
    extra = static_cu[b + 1 :]
    torch.add(ramp[: extra.shape[0]], t, out=extra)
    extra.clamp_(max=static_x.shape[0])


def _capture(
    pool: tuple[int, int],
    tensors: Sequence[Tensor | None],
    eps: list[float],
    static_x: Tensor,
    static_cu: Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    activation: str,
    all_layers: bool,
) -> tuple[torch.cuda.CUDAGraph, list[Tensor]]:
    op = torch.ops.fastbert.encoder_layers.default
    args = (static_x, static_cu, max_seqlen, num_heads, scale, activation, list(tensors), eps, all_layers, False)
    side = torch.cuda.Stream(device=static_x.device)
    side.wait_stream(torch.cuda.current_stream(static_x.device))
    with torch.cuda.stream(side):
        op(*args)  # warm-up outside the capture (cuBLAS handles and workspaces, lazy module loading)
    torch.cuda.current_stream(static_x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads' CUDA calls may go on during the capture
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outs = op(*args)
    return graph, outs


def run(
    layers: nn.Module,
    tensors: Sequence[Tensor | None],
    eps: list[float],
    x: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int,
    num_heads: int,
    scale: float,
    activation: str,
    all_layers: bool,
) -> list[Tensor] | None:
    """encoder_layers through a cached graph: the last layer's output, or every layer's with all_layers; None if
    this stack cannot be captured (the caller then calls encoder_layers itself)."""
    caps = buckets(x.shape[0], cu_seqlens.shape[0] - 1, max_seqlen)
    stream = torch.cuda.current_stream(x.device)
    key = (
        *caps,
        x.shape[1],
        x.dtype,
        x.device,
        stream.cuda_stream,
        num_heads,
        scale,
        activation,
        all_layers,
        tuple(eps),
        tuple(w.data_ptr() if w is not None else 0 for w in tensors),
    )
    graphs = layers.__dict__.get("_fastbert_graphs") or layers.__dict__.setdefault("_fastbert_graphs", _Graphs())
    if graphs.failed:
        return None
    with graphs.lock:  # enqueues only: the GPU work runs after it is released
        return _run_locked(
            graphs, key, tensors, eps, x, cu_seqlens, caps, stream, num_heads, scale, activation, all_layers
        )


def _run_locked(
    graphs: _Graphs,
    key: tuple,
    tensors: Sequence[Tensor | None],
    eps: list[float],
    x: Tensor,
    cu_seqlens: Tensor,
    caps: tuple[int, int, int],
    stream: torch.cuda.Stream,
    num_heads: int,
    scale: float,
    activation: str,
    all_layers: bool,
) -> list[Tensor] | None:
    t = x.shape[0]
    t_cap, b_cap, l_cap = caps
    entry = graphs.entries.get(key)
    if entry is None:
        # Plain tensors even under inference_mode: replays write into them from any grad mode.
        with torch.inference_mode(False), torch.no_grad():
            static_x = torch.zeros(t_cap, x.shape[1], dtype=x.dtype, device=x.device)
            static_cu = torch.empty(b_cap + 1, dtype=torch.int32, device=x.device)
            ramp = torch.arange(1, b_cap + 1, dtype=torch.int32, device=x.device) * l_cap
            _fill(static_x, static_cu, ramp, x, cu_seqlens)
            pool = graphs.pools.get(stream.cuda_stream)
            if pool is None:
                pool = graphs.pools[stream.cuda_stream] = torch.cuda.graph_pool_handle()
            try:
                graph, outs = _capture(
                    pool, tensors, eps, static_x, static_cu, l_cap, num_heads, scale, activation, all_layers
                )
            except RuntimeError as exc:
                graphs.failed = True
                graphs.entries.clear()
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                warnings.warn(
                    f"fastbert: capturing the layer stack in a CUDA graph failed ({reason}); this model "
                    "runs its layers op by op from now on",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return None
        entry = graphs.entries[key] = (graph, static_x, static_cu, ramp, outs)
        while len(graphs.entries) > MAX_GRAPHS:
            graphs.entries.popitem(last=False)
    else:
        graphs.entries.move_to_end(key)
        _fill(*entry[1:4], x, cu_seqlens)
    graph, outs = entry[0], entry[4]
    graph.replay()
    return [o[:t].clone() for o in outs]
