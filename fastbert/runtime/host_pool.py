"""The host memory pool: CPU memory of fastbert's forwards kept for the next forward, so that a job of many batch
shapes stays flat and reuses its pages instead of faulting them in again.

A forward on CPU allocates and frees buffers of 0.25-50 MB (activations, oneDNN's outputs and scratchpads) whose
sizes change with every batch shape. glibc's heaps keep freed blocks resident wherever they fell: over 2000
varied-shape forwards of bert-base width a process grew by -5 to +132 MB in the second half, run to run, and
buffers above glibc's moving mmap threshold were faulted in afresh on every forward. The pool (csrc/host_pool.cpp)
serves those sizes inside a fastbert forward from segments it maps once, best fit and split to size, merged again
when freed: the process settles at the largest working set the job has seen (docs/performance.md has the
figures). The backward pass through a forward takes its buffers from the pool too (``route_backward``), so
varied-shape training stays flat as well. Allocations outside fastbert's forwards and their backward passes,
smaller than 256 KiB or larger than 256 MiB go to PyTorch's own allocator as before.

The cost: the pool keeps its segments mapped after the forward, as PyTorch's CUDA caching allocator does on the
GPU. ``release()`` unmaps the wholly free ones (after a one-off large batch, say); ``stats()`` says what it holds.
``FASTBERT_HOST_POOL=0`` in the environment (or ``set_enabled(False)``) turns it off. Where another library
installs a CPU allocator of its own (after this import, or at a higher priority), the pool stays out of the way
(``stats()["active"]`` is False).
"""

from __future__ import annotations

import os

from torch import Tensor

from .. import ops

__all__ = ["describe", "enabled", "outside", "release", "route_backward", "scope", "set_enabled", "stats"]

_ENABLED = os.environ.get("FASTBERT_HOST_POOL", "1") != "0"
if _ENABLED and ops.HAS_EXTENSION:
    # Turning the routing on once installs the allocator: now, at import, not while other threads may allocate.
    ops._C.host_pool_scope(ops._C.host_pool_scope(True))


def enabled() -> bool:
    """Whether fastbert's CPU forwards allocate from the pool."""
    return _ENABLED and ops.HAS_EXTENSION


def set_enabled(on: bool) -> None:
    """Turn the pool on or off for the forwards that follow (what it holds stays until ``release()``)."""
    global _ENABLED
    _ENABLED = bool(on)


class _Routing:
    """A with-block in which this thread's CPU allocations of pool size go to the pool (to=True) or to PyTorch's
    allocator (to=False); the previous setting comes back after it. to=None leaves the setting alone."""

    __slots__ = ("_to", "_was")

    def __init__(self, to: bool | None) -> None:
        self._to = to

    def __enter__(self) -> None:
        if self._to is not None:
            self._was = ops._C.host_pool_scope(self._to)

    def __exit__(self, *exc: object) -> None:
        if self._to is not None:
            ops._C.host_pool_scope(self._was)


def _routes(x: object) -> bool:
    return isinstance(x, Tensor) and x.device.type == "cpu" and enabled() and not ops.compiling()


def scope(x: Tensor | None) -> _Routing:
    """``with scope(x):`` routes this thread's allocations of pool size to the pool, if x is a CPU tensor and the
    pool is enabled (nothing under torch.compile's tracing; anything else in x is left to the forward's input
    checks). Nests."""
    return _Routing(True if _routes(x) else None)


def _backward_reached(grad_outputs: object) -> None:
    if enabled():
        ops._C.host_pool_route_backward()


def route_backward(out: Tensor) -> None:
    """Route the backward pass through ``out``, a forward's output, to the pool as well: from when autograd reaches
    out's node to the end of that pass, on the thread running it (csrc/host_pool.cpp compares the graph task it runs
    at each allocation, so the routing ends with the pass, even one that raises). The gradients a training step
    allocates then come from the pool like the forward's activations, and a run of many batch shapes stays flat in
    training too. A parameter's gradient stays in the pool while it is kept: ``zero_grad()`` (set_to_none, PyTorch's
    default) hands it back every step."""
    if _routes(out) and out.grad_fn is not None:  # compiling first: dynamo cannot trace grad_fn
        out.grad_fn.register_prehook(_backward_reached)


def outside() -> _Routing:
    """``with outside():`` routes this thread's allocations to PyTorch's allocator even inside a forward: for what
    outlives the forward by design (the weight caches of fastbert/runtime/weights.py), which would otherwise pin
    the pool's segments for good."""
    return _Routing(False if ops.HAS_EXTENSION else None)


def stats() -> dict:
    """``{"active", "mapped", "allocated", "segments"}``: whether the pool is PyTorch's CPU allocator (it installs
    itself when fastbert is imported, or at the first forward after ``set_enabled(True)``), the bytes of its mapped
    segments and of the blocks in use."""
    if not ops.HAS_EXTENSION:
        return {"active": False, "mapped": 0, "allocated": 0, "segments": 0}
    return ops._C.host_pool_stats()


def release() -> int:
    """Unmap the pool's wholly free segments; returns the bytes given back to the system."""
    return ops._C.host_pool_release() if ops.HAS_EXTENSION else 0


def describe() -> str:
    """A line for `fastbert info`."""
    if not ops.HAS_EXTENSION:
        return "host memory pool: unavailable (no compiled extension)"
    if not enabled():
        return "host memory pool: off (FASTBERT_HOST_POOL=0 or set_enabled(False)): forwards use PyTorch's allocator"
    s = stats()
    now = f"{s['mapped'] / 2**20:.0f} MiB mapped" if s["active"] else "not installed (another CPU allocator won)"
    return (
        f"host memory pool for CPU forwards (buffers of 256 KiB-256 MiB; FASTBERT_HOST_POOL=0 turns it off): on, {now}"
    )
