"""`fastbert info`: what this build runs on (torch, CUDA, archs, the CPU path, GEMM libraries, kernels per op)."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print the build: torch, CUDA, archs, CPU path, kernels per op",
        description="Print what this fastbert build runs on: torch and CUDA versions, compiled "
        "CUDA archs, the CPU kernel path (ISA), and which ops have compiled kernels.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    import fastbert
    from fastbert import ops

    lines = [
        f"fastbert {fastbert.__version__} ({os.path.dirname(fastbert.__file__)})",
        f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        f"torch {torch.__version__}, CUDA (torch build) {torch.version.cuda or 'none'}, "
        f"GPU available: {torch.cuda.is_available()}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
    ]
    if ops.LOAD_ERROR is None:
        lines.append("extension fastbert._C: loaded")
        archs = None
        try:
            archs = fastbert._C.cuda_archs()
        except Exception as exc:  # older builds without the function
            archs = f"unknown ({exc.__class__.__name__})"
        listed = ", ".join(archs) if isinstance(archs, (list, tuple)) and archs else None
        lines.append(f"CUDA archs compiled: {listed or archs or 'none (CPU-only build)'}")
    else:
        lines.append(f"extension fastbert._C: NOT loaded -> reference ops only ({ops.LOAD_ERROR.splitlines()[0]})")
    try:
        lines.append(f"CPU kernel path: {ops.cpu_isa()} (supported here: {', '.join(ops.supported_cpu_isas())})")
    except Exception as exc:
        lines.append(f"CPU kernel path: unknown ({exc})")
    from ..ops import gemm

    lines.extend(gemm.describe())
    if ops.HAS_EXTENSION:
        dot = (
            "on"
            if ops.cpu_bf16_dot()
            else ("off (FASTBERT_CPU_BF16_DOT=0)" if ops.cpu_bf16_dot_supported() else "not on this processor")
        )
        lines.append(f"bfloat16 CPU attention on AVX512-BF16 dot products: {dot}")
    from ..runtime import host_pool

    lines.append(host_pool.describe())
    lines.append(
        "ops: a compiled forward kernel per device ('-': the reference runs there); backward 'kernel': the "
        "op trains on its own backward kernel"
    )
    width = max(len(n) for n in ops.OPS)
    lines.append(f"  {'op':<{width}}  {'CPU':<4} {'CUDA':<5} backward")
    for name in ops.OPS:
        cpu = "yes" if ops.KERNELS.get((name, "cpu")) else "-"
        cuda = "yes" if ops.KERNELS.get((name, "cuda")) else "-"
        backward = "kernel" if name in ops.DIFFERENTIABLE and ops.HAS_EXTENSION else "-"
        lines.append(f"  {name:<{width}}  {cpu:<4} {cuda:<5} {backward}")
    print("\n".join(lines))
    return 0
