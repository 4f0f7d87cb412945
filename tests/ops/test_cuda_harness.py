"""fastbert's CUDA kernels, run on the CPU by the execution harness (tests/cuda_harness), against the reference.

The kernel sources (csrc/cuda/*.cuh) are compiled with the host compiler into one driver executable
(tests/cuda_harness/driver.cpp), twice: plain (-O1, guard zones around every buffer) and with
-fsanitize=address. Each case below writes its inputs as raw files, the driver runs the op's kernels with the
same launch configuration as csrc/cuda/*.cu, once in forward and once in reverse thread order, and the test
checks: both orders give bit-identical outputs, and they match fastbert.ops.reference within the dtype's
tolerance. A deadlock, a divergent barrier, a kernel assert, an out-of-range access (guard zones / ASan) or a
hang (timeout) fails the run. Planted-fault kernels (tests/cuda_harness/faults.cuh) check that the harness
catches each kind of bug, every time.

Tolerances (kernel vs reference on the same inputs): tests/helpers.py's TOLERANCES for the outputs (fp16 2e-3:
one fp16 ulp at |x| ~ 1 is 1e-3, the two sides may round differently; bf16 1.6e-2: one bf16 ulp is 7.8e-3),
STAT_TOL for fp32 statistics (mean, rstd, lse), ATTN_TOL / ATTN_LSE_TOL for attention, BWD_TOL and ATTN_BWD_TOL
for the backward ops.
Needs g++ (or $CXX) and torch's headers; no GPU, no CUDA toolkit.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from fastbert.ops import CPU_ONLY_OPS, reference  # CPU_ONLY_OPS: a CPU kernel only, by design (the int8 ops)
from tests.helpers import ATTN_BWD_TOL, ATTN_LSE_TOL, ATTN_TOL, BWD_TOL, STAT_TOL, TOLERANCES, grads64, ref_grad_qkv
from tests.helpers import ROOT as _ROOT
from tests.helpers import generator as _gen
from tests.helpers import length_mask as _mask

ROOT = Path(_ROOT)

HARNESS = ROOT / "tests" / "cuda_harness"
CXX = os.environ.get("CXX", "g++")
TIMEOUT = int(os.environ.get("FASTBERT_HARNESS_TIMEOUT", "600"))

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
ACT_ENUM = {
    "gelu": 0,
    "gelu_new": 1,
    "gelu_pytorch_tanh": 1,
    "gelu_fast": 2,
    "quick_gelu": 3,
    "relu": 4,
    "silu": 5,
    "swish": 5,
}  # csrc/activation.h's Activation enum


# ---------------------------------------------------------------- building the driver


def _sources():
    files = sorted((ROOT / "csrc" / "cuda").glob("*.cuh")) + sorted((ROOT / "csrc").glob("*.h"))  # dropout_hash.h
    files += sorted(HARNESS.glob("*.h")) + sorted(HARNESS.glob("*.cuh")) + sorted(HARNESS.glob("*.cpp"))
    return files


def _build(asan: bool, out_dir: Path) -> Path:
    from torch.utils.cpp_extension import include_paths

    flags = [
        "-std=c++20",
        "-O1",
        "-g",
        "-fno-strict-aliasing",
        "-Wall",
        "-Wno-unknown-pragmas",
        "-Wno-unused-function",
        "-Wno-maybe-uninitialized",
    ]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    key = hashlib.sha256(" ".join([CXX] + flags).encode())
    for f in _sources():
        key.update(f.read_bytes())
    exe = out_dir / f"driver-{'asan-' if asan else ''}{key.hexdigest()[:16]}"
    if not exe.exists():
        cmd = [
            CXX,
            *flags,
            f"-I{ROOT / 'csrc'}",
            f"-I{include_paths()[0]}",
            str(HARNESS / "driver.cpp"),
            "-o",
            str(exe) + ".tmp",
        ]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(str(exe) + ".tmp", exe)
    return exe


@pytest.fixture(scope="session")
def drivers(tmp_path_factory):
    """(plain, asan) driver executables, built in parallel, cached by source hash."""
    cache = Path(os.environ.get("FASTBERT_HARNESS_CACHE", tmp_path_factory.getbasetemp() / "harness-build"))
    cache.mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(_build, asan, cache) for asan in (False, True)]
        try:
            return tuple(f.result() for f in futs)
        except subprocess.CalledProcessError as e:
            pytest.fail(f"building the harness driver failed:\n{e.stderr[-4000:]}")


def run_driver(exe: Path, manifest: Path, timeout: int = TIMEOUT):
    env = dict(os.environ, FBH_TIMEOUT=str(timeout), ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=23")
    try:
        return subprocess.run([str(exe), str(manifest)], capture_output=True, text=True, timeout=timeout + 30, env=env)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -9, "", f"timeout after {timeout + 30} s (deadlock or hang)")


# ---------------------------------------------------------------- cases


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().tobytes()


def _read(path: Path, dtype: torch.dtype, shape) -> torch.Tensor:
    np_dtype = {
        torch.float32: np.float32,
        torch.float16: np.int16,
        torch.bfloat16: np.int16,
        torch.int32: np.int32,
        torch.int64: np.int64,
        torch.uint8: np.uint8,
    }[dtype]
    t = torch.from_numpy(np.fromfile(path, dtype=np_dtype).copy())
    if dtype in (torch.float16, torch.bfloat16):
        t = t.view(dtype)
    return t.reshape(shape)


class Case:
    def __init__(
        self, name, op, dtype="f32", inputs=None, scalars=None, expected=None, tol=None, exact=False, stat_tol=STAT_TOL
    ):
        self.name, self.op, self.dtype = name, op, dtype
        self.stat_tol = stat_tol
        self.inputs = inputs or {}
        self.scalars = scalars or {}
        self.expected = expected or {}  # output name -> expected tensor (shape and dtype of the kernel's output)
        self.tol = tol
        self.exact = exact

    def write(self, d: Path) -> str:
        toks = [f"op={self.op}", f"dtype={self.dtype}", f"out={d / self.name}"]
        for k, t in self.inputs.items():
            p = d / f"{self.name}.in.{k}"
            p.write_bytes(_raw(t))
            toks.append(f"in.{k}={p}")
        toks += [f"{k}={v}" for k, v in self.scalars.items()]
        return " ".join(toks)

    def check(self, d: Path):
        for name, want in self.expected.items():
            got = {tag: _read(d / f"{self.name}.{name}.{tag}.bin", want.dtype, want.shape) for tag in ("fwd", "rev")}
            assert _same_bits(got["fwd"], got["rev"]), (
                f"{self.name}.{name}: forward and reverse thread orders differ (a race)"
            )
            if self.exact or not want.dtype.is_floating_point:
                assert torch.equal(got["fwd"], want), f"{self.name}.{name}: mismatch\n got {got['fwd']}\nwant {want}"
            else:
                tol = self.tol or TOLERANCES[DTYPES[self.dtype] if name == "out" else want.dtype][0]
                if name in ("mean", "rstd", "lse"):
                    tol = self.stat_tol
                torch.testing.assert_close(
                    got["fwd"].float(),
                    want.float(),
                    atol=tol,
                    rtol=tol,
                    equal_nan=False,
                    msg=lambda m: f"{self.name}.{name}: {m}",
                )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.is_floating_point:
        ints = {4: torch.int32, 2: torch.int16}[a.element_size()]
        return torch.equal(a.view(ints), b.view(ints))
    return torch.equal(a, b)


def pack_cases():
    g = _gen(1)
    out = []
    specs = [
        ("b3_l37", [37, 0, 20], 37, False, False),
        ("b1_l1", [1], 1, False, False),
        ("b4_l300_left_holes", [300, 17, 256, 0], 300, True, True),
        ("b300_l3", None, 3, False, True),
    ]
    for name, lengths, L, left, holes in specs:
        if lengths is None:
            lengths = torch.randint(0, L + 1, (300,), generator=g).tolist()
        m = _mask(lengths, L, left, holes, g)
        idx, cu, pos = reference.pack(m)
        out.append(
            Case(
                f"pack_{name}",
                "pack",
                inputs={"keep": m},
                scalars={"B": m.shape[0], "L": L},
                expected={"cu_seqlens": cu, "indices": idx, "positions": pos},
            )
        )
    return out


def unpack_cases():
    g = _gen(2)
    out = []
    for dt in DTYPES:
        for C, misalign in ((24, 0), (7, 0), (100, 0), (24, 2)):
            m = _mask([5, 0, 9], 11, holes=True, gen=g)
            idx, _, _ = reference.pack(m)
            x = torch.randn(idx.numel(), C, generator=g).to(DTYPES[dt])
            want = reference.unpack(x, idx, 3, 11).reshape(33, C)
            out.append(
                Case(
                    f"unpack_{dt}_c{C}_m{misalign}",
                    "unpack",
                    dt,
                    {"x": x, "indices": idx},
                    {"B": 3, "L": 11, "C": C, "T": idx.numel(), "elem_size": x.element_size(), "misalign": misalign},
                    {"out": want},
                    exact=True,
                )
            )
    return out


def _ln_params(H, dt, g):
    w = (1 + 0.1 * torch.randn(H, generator=g)).to(DTYPES[dt])
    b = (0.1 * torch.randn(H, generator=g)).to(DTYPES[dt])
    return w, b


def embeddings_cases():
    g = _gen(3)
    out = []
    for dt in DTYPES:
        for H, with_type, type_ids, idtype, shift, misalign in (
            (64, True, True, "i64", 0.0, 0),
            (37, True, False, "i32", 0.0, 0),
            (100, False, False, "i64", 0.0, 0),
            (768, True, True, "i32", 30.0, 0),
            (64, True, True, "i64", 0.0, 2),
        ):
            N, V, P, TT = 13, 50, 40, 2
            ids = torch.randint(0, V, (N,), generator=g)
            pids = torch.randint(0, P, (N,), generator=g)
            tids = torch.randint(0, TT, (N,), generator=g)
            word = (torch.randn(V, H, generator=g) + shift).to(DTYPES[dt])  # shift: a large mean, as BERT's outliers
            pos = torch.randn(P, H, generator=g).to(DTYPES[dt])
            typ = torch.randn(TT, H, generator=g).to(DTYPES[dt])
            w, b = _ln_params(H, dt, g)
            eps = 1e-12
            itype = torch.int32 if idtype == "i32" else torch.int64
            o, mean, rstd = reference.embeddings(
                ids, pids, tids if type_ids else None, word, pos, typ if with_type else None, w, b, eps
            )
            inputs = {"ids": ids.to(itype), "pos_ids": pids.to(itype), "word": word, "pos": pos, "gamma": w, "beta": b}
            if with_type:
                inputs["type"] = typ
            if type_ids:
                inputs["type_ids"] = tids.to(itype)
            scalars = {
                "N": N,
                "H": H,
                "V": V,
                "P": P,
                "TT": TT if with_type else 0,
                "eps": eps,
                "idtype": idtype,
                "misalign": misalign,
            }
            out.append(
                Case(
                    f"embeddings_{dt}_h{H}_{idtype}_t{int(with_type)}{int(type_ids)}_m{misalign}",
                    "embeddings",
                    dt,
                    inputs,
                    scalars,
                    {"out": o, "mean": mean, "rstd": rstd},
                )
            )
    return out


def brln_cases():
    g = _gen(4)
    out = []
    for dt in DTYPES:
        for N, H, with_bias, eps, misalign in (
            (7, 64, True, 1e-12, 0),
            (1, 37, False, 1e-5, 0),
            (33, 100, True, 1e-12, 0),
            (5, 768, True, 1e-12, 0),
            (3, 1030, True, 1e-12, 0),
            (7, 64, True, 1e-12, 2),
            (2, 3100, False, 1e-12, 0),
        ):
            x = (torch.randn(N, H, generator=g) + 20.0).to(DTYPES[dt])
            r = torch.randn(N, H, generator=g).to(DTYPES[dt])
            bias = torch.randn(H, generator=g).to(DTYPES[dt])
            w, b = _ln_params(H, dt, g)
            o, mean, rstd = reference.bias_residual_layernorm(x, bias if with_bias else None, r, w, b, eps)
            inputs = {"x": x, "residual": r, "gamma": w, "beta": b}
            if with_bias:
                inputs["bias"] = bias
            out.append(
                Case(
                    f"brln_{dt}_n{N}_h{H}_b{int(with_bias)}_m{misalign}",
                    "bias_residual_layernorm",
                    dt,
                    inputs,
                    {"N": N, "H": H, "eps": eps, "misalign": misalign},
                    {"out": o, "mean": mean, "rstd": rstd},
                )
            )
    return out


def bias_act_cases():
    g = _gen(5)
    out = []
    for dt in DTYPES:
        for act in reference.ACTIVATIONS:
            for N, C, misalign in ((5, 64, 0), (3, 37, 0), (1, 100, 2)):
                x = (3 * torch.randn(N, C, generator=g)).to(DTYPES[dt])
                bias = torch.randn(C, generator=g).to(DTYPES[dt])
                want = reference.bias_act(x, bias, act)
                out.append(
                    Case(
                        f"bias_act_{dt}_{act}_n{N}_c{C}_m{misalign}",
                        "bias_act",
                        dt,
                        {"x": x, "bias": bias},
                        {"N": N, "C": C, "act": ACT_ENUM[act], "misalign": misalign},
                        {"out": want},
                    )
                )
    return out


def attention_cases():
    g = _gen(6)
    out = []
    specs = [  # (lengths, nh, d, bias, dropout_p, misalign)
        ([5, 0, 33, 70], 2, 64, True, 0.0, 0),
        ([19, 40], 2, 16, True, 0.0, 0),
        ([1], 1, 32, False, 0.0, 0),
        ([37, 3], 2, 80, True, 0.0, 0),
        ([45, 8], 1, 128, True, 0.0, 0),
        ([33, 12], 2, 64, True, 0.1, 0),
        ([20, 41], 3, 24, True, 0.0, 2),
    ]
    for dt in DTYPES:
        for k, (lengths, nh, d, with_bias, p, misalign) in enumerate(specs):
            out.append(_attention_case(f"attention_{dt}_{k}_d{d}", dt, lengths, nh, d, with_bias, p, misalign, g))
    out.append(_attention_case("attention_f32_long_d64", "f32", [300, 130], 1, 64, True, 0.0, 0, g))
    # The tensor-core kernel (attention_mma.cuh, fp16/bf16): the same shapes, plus several key tiles of 64.
    for dt in ("f16", "bf16"):
        for k, (lengths, nh, d, with_bias, p, misalign) in enumerate(specs + [([130, 64, 65], 1, 32, True, 0.1, 0)]):
            out.append(
                _attention_case(
                    f"attention_mma_{dt}_{k}_d{d}", dt, lengths, nh, d, with_bias, p, misalign, g, impl="mma"
                )
            )
    return out


def _attention_case(name, dt, lengths, nh, d, with_bias, p, misalign, g, impl=None):
    H = nh * d
    T = sum(lengths)
    qkv = torch.randn(T, 3 * H, generator=g).to(DTYPES[dt])
    bias = torch.randn(3 * H, generator=g).to(DTYPES[dt]) if with_bias else None
    cu = torch.tensor([0] + list(np.cumsum(lengths)), dtype=torch.int32)
    scale = 1 / math.sqrt(d)
    seed, offset = 0x1234_5678_9ABC, 17
    o, lse = reference.attention(qkv, bias, cu, max(lengths), nh, scale, p, seed, offset)
    inputs = {"qkv": qkv, "cu_seqlens": cu}
    if bias is not None:
        inputs["bias"] = bias
    scalars = {
        "B": len(lengths),
        "T": T,
        "max_seqlen": max(lengths),
        "nh": nh,
        "H": H,
        "scale": repr(scale),
        "dropout_p": p,
        "seed": seed,
        "offset": offset,
        "misalign": misalign,
    }
    if impl:
        scalars["impl"] = impl
    return Case(
        name,
        "attention",
        dt,
        inputs,
        scalars,
        {"out": o, "lse": lse},
        tol=ATTN_TOL[DTYPES[dt]] if dt == "f32" or impl == "mma" else None,
        stat_tol=ATTN_LSE_TOL[DTYPES[dt]] if impl == "mma" else STAT_TOL,
    )


def attention_masked_cases():
    g = _gen(7)
    out = []
    specs = [
        (2, 37, 2, 32, "bool_keys", 0.0),
        (2, 37, 2, 80, "float_full", 0.0),
        (1, 40, 3, 16, "bool_per_head", 0.1),
        (2, 9, 1, 64, "float_min", 0.0),
    ]
    runs = [(dt, spec, None) for dt in DTYPES for spec in specs]
    runs += [(dt, spec, "mma") for dt in ("f16", "bf16") for spec in specs + [(1, 70, 1, 128, "float_full", 0.0)]]
    for k, (dt, (B, L, nh, d, kind, p), impl) in enumerate(runs):
        if True:
            H = nh * d
            qkv = torch.randn(B, L, 3 * H, generator=g).to(DTYPES[dt])
            bias = torch.randn(3 * H, generator=g).to(DTYPES[dt])
            if kind == "bool_keys":  # (B, 1, 1, L): padding mask; batch 1 fully masked
                mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
                mask[1] = False
            elif kind == "float_full":  # (B, 1, L, L) additive, some rows fully -inf
                mask = torch.randn(B, 1, L, L, generator=g)
                mask[0, 0, 3] = float("-inf")
            elif kind == "bool_per_head":  # (B, nh, L, L) causal per head
                mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, nh, L, L).clone()
            else:  # HF's finfo.min additive mask, (B, 1, 1, L); batch 1 fully masked:
                mask = torch.zeros(B, 1, 1, L)  # its rows attend uniformly, as in HF (the scores stay finite)
                mask[:, :, :, L - 3 :] = torch.finfo(torch.float32).min
                mask[-1] = torch.finfo(torch.float32).min
            scale = 1 / math.sqrt(d)
            seed, offset = 99, 5
            o, lse = reference.attention_masked(qkv, bias, mask, nh, scale, p, seed, offset)
            # The .cu launcher turns the mask into an additive fp32 one (bool: 0 / -inf) and broadcasts by strides.
            add = torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask.float()
            add = add.contiguous()
            st = add.expand(B, nh, L, L).stride()
            scalars = {
                "B": B,
                "L": L,
                "nh": nh,
                "H": H,
                "scale": repr(scale),
                "dropout_p": p,
                "seed": seed,
                "offset": offset,
                "ms_b": st[0],
                "ms_h": st[1],
                "ms_i": st[2],
                "ms_j": st[3],
            }
            if impl:
                scalars["impl"] = impl
            out.append(
                Case(
                    f"attention_masked_{impl or 'fma'}_{dt}_{k}_{kind}",
                    "attention_masked",
                    dt,
                    {"qkv": qkv, "bias": bias, "mask": add},
                    scalars,
                    {"out": o, "lse": lse},
                    tol=ATTN_TOL[DTYPES[dt]] if dt == "f32" or impl else None,
                    stat_tol=ATTN_LSE_TOL[DTYPES[dt]] if impl else STAT_TOL,
                )
            )
    return out


# ---------------------------------------------------------------- backward ops
# Expected gradients: torch.autograd through the reference forward in float64 on the same (rounded) inputs,
# cast to the kernel's output dtype (grads64), or through the reference attention (ref_grad_qkv). The kernels
# get the forward's fp32 statistics (mean, rstd; lse), as in training.


def bias_act_backward_cases():
    g = _gen(10)
    out = []
    for dt in DTYPES:
        for act in reference.ACTIVATIONS:
            for N, C, misalign in ((17, 64, 0), (3, 37, 0), (1, 100, 2)):
                x = (3 * torch.randn(N, C, generator=g)).to(DTYPES[dt])
                bias = torch.randn(C, generator=g).to(DTYPES[dt])
                grad = torch.randn(N, C, generator=g).to(DTYPES[dt])
                (want,) = grads64(lambda x: reference.bias_act(x, bias.double(), act), [x], grad)
                out.append(
                    Case(
                        f"bias_act_backward_{dt}_{act}_n{N}_c{C}_m{misalign}",
                        "bias_act_backward",
                        dt,
                        {"grad": grad, "x": x, "bias": bias},
                        {"N": N, "C": C, "act": ACT_ENUM[act], "misalign": misalign},
                        {"grad_input": want.to(DTYPES[dt])},
                        tol=BWD_TOL[DTYPES[dt]],
                    )
                )
    return out


def brln_backward_cases():
    g = _gen(11)
    out = []
    specs = [
        (1, 37, False, 0),
        (3, 64, True, 0),
        (17, 100, True, 0),
        (7, 64, True, 2),
        (5, 768, True, 0),
        (2, 1030, False, 0),
        (2, 3100, True, 0),
    ]
    for dt in DTYPES:
        for N, H, with_bias, misalign in specs + ([(2100, 40, True, 0)] if dt == "f32" else []):
            x = (torch.randn(N, H, generator=g) + 20.0).to(DTYPES[dt])  # a large mean, as BERT's outliers
            r = torch.randn(N, H, generator=g).to(DTYPES[dt])
            bias = torch.randn(H, generator=g).to(DTYPES[dt]) if with_bias else None
            w, b = _ln_params(H, dt, g)
            grad_out = torch.randn(N, H, generator=g).to(DTYPES[dt])
            _, mean, rstd = reference.bias_residual_layernorm(x, bias, r, w, b, 1e-12)
            bias64 = None if bias is None else bias.double()
            want = grads64(
                lambda x, w, b: reference.bias_residual_layernorm(x, bias64, r.double(), w, b, 1e-12),
                [x, w, b],
                grad_out,
            )
            inputs = {"grad_out": grad_out, "x": x, "residual": r, "gamma": w, "mean": mean, "rstd": rstd}
            if with_bias:
                inputs["bias"] = bias
            expected = dict(zip(("grad_s", "grad_w", "grad_b"), want))
            out.append(
                Case(
                    f"brln_backward_{dt}_n{N}_h{H}_b{int(with_bias)}_m{misalign}",
                    "bias_residual_layernorm_backward",
                    dt,
                    inputs,
                    {"N": N, "H": H, "misalign": misalign},
                    {k: v.to(DTYPES[dt]) for k, v in expected.items()},
                    tol=BWD_TOL[DTYPES[dt]],
                )
            )
    return out


def embeddings_backward_cases():
    """Small tables so that ids repeat: runs of equal row keys inside one scatter chunk (32 sorted keys), across
    chunk boundaries, starting exactly at one (64 tokens, 3 words, 1 position), and spanning many (300 tokens
    of one token type)."""
    g = _gen(12)
    out = []
    specs = [  # (N, H, V, P, TT, types, idtype, shift, misalign); types: "ids", "zeros" (table, no ids), None
        (1, 37, 5, 4, 2, "ids", "i64", 0.0, 0),
        (3, 64, 5, 4, 2, "zeros", "i32", 0.0, 0),
        (17, 100, 6, 5, 2, None, "i64", 0.0, 0),
        (100, 64, 7, 40, 2, "ids", "i32", 0.0, 0),
        (64, 16, 3, 1, 2, None, "i64", 0.0, 0),
        (300, 40, 50, 3, 1, "zeros", "i64", 0.0, 0),
        (13, 64, 50, 40, 2, "ids", "i64", 0.0, 2),
        (5, 768, 50, 40, 2, "ids", "i32", 30.0, 0),
    ]
    for dt in DTYPES:
        for N, H, V, P, TT, types, idtype, shift, misalign in specs:
            ids = torch.randint(0, V, (N,), generator=g)
            pids = torch.randint(0, P, (N,), generator=g)
            tids = torch.randint(0, TT, (N,), generator=g) if types == "ids" else None
            word = (torch.randn(V, H, generator=g) + shift).to(DTYPES[dt])
            pos = torch.randn(P, H, generator=g).to(DTYPES[dt])
            typ = torch.randn(TT, H, generator=g).to(DTYPES[dt]) if types is not None else None
            w, b = _ln_params(H, dt, g)
            grad_out = torch.randn(N, H, generator=g).to(DTYPES[dt])
            _, mean, rstd = reference.embeddings(ids, pids, tids, word, pos, typ, w, b, 1e-12)
            want = grads64(
                lambda word, pos, w, b, *t: reference.embeddings(
                    ids, pids, tids, word, pos, t[0] if t else None, w, b, 1e-12
                ),
                [word, pos, w, b] + ([typ] if typ is not None else []),
                grad_out,
            )
            itype = torch.int32 if idtype == "i32" else torch.int64
            inputs = {
                "grad_out": grad_out,
                "ids": ids.to(itype),
                "pos_ids": pids.to(itype),
                "word": word,
                "pos": pos,
                "gamma": w,
                "mean": mean,
                "rstd": rstd,
            }
            expected = dict(zip(("grad_word", "grad_pos", "grad_w", "grad_b", "grad_type"), want))
            if typ is not None:
                inputs["type"] = typ
            if tids is not None:
                inputs["type_ids"] = tids.to(itype)
            out.append(
                Case(
                    f"embeddings_backward_{dt}_n{N}_h{H}_{types}_{idtype}_m{misalign}",
                    "embeddings_backward",
                    dt,
                    inputs,
                    {
                        "N": N,
                        "H": H,
                        "V": V,
                        "P": P,
                        "TT": TT if typ is not None else 0,
                        "idtype": idtype,
                        "misalign": misalign,
                    },
                    {k: v.to(DTYPES[dt]) for k, v in expected.items()},
                    tol=BWD_TOL[DTYPES[dt]],
                )
            )
    return out


def attention_backward_cases():
    g = _gen(10)
    out = []
    specs = [  # (lengths, nh, d, bias, dropout_p, misalign)
        ([5, 0, 37], 2, 64, True, 0.0, 0),
        ([1], 1, 32, False, 0.0, 0),
        ([70, 33], 1, 16, True, 0.1, 0),
        ([37, 3], 2, 80, True, 0.0, 0),
        ([19, 6], 1, 128, True, 0.2, 0),
        ([20, 41], 3, 24, True, 0.0, 2),  # odd head dim and misaligned buffers: the scalar staging path
        ([33, 12], 2, 64, False, 0.1, 0),
    ]
    for dt in DTYPES:
        for k, (lengths, nh, d, with_bias, p, misalign) in enumerate(specs):
            H, T = nh * d, sum(lengths)
            qkv = torch.randn(T, 3 * H, generator=g).to(DTYPES[dt])
            bias = torch.randn(3 * H, generator=g).to(DTYPES[dt]) if with_bias else None
            grad_out = torch.randn(T, H, generator=g).to(DTYPES[dt])
            cu = torch.tensor([0] + list(np.cumsum(lengths)), dtype=torch.int32)
            args = (cu, max(lengths), nh, 1 / math.sqrt(d), p, 0x1234_5678_9ABC, 17)
            o, lse = reference.attention(qkv, bias, *args)
            want = ref_grad_qkv(lambda q: reference.attention(q, bias, *args), qkv, grad_out)
            inputs = {"qkv": qkv, "cu_seqlens": cu, "out": o, "lse": lse, "grad_out": grad_out}
            if bias is not None:
                inputs["bias"] = bias
            out.append(
                Case(
                    f"attention_backward_{dt}_{k}_d{d}",
                    "attention_backward",
                    dt,
                    inputs,
                    {
                        "B": len(lengths),
                        "T": T,
                        "max_seqlen": max(lengths),
                        "nh": nh,
                        "H": H,
                        "scale": repr(args[3]),
                        "dropout_p": p,
                        "seed": args[5],
                        "offset": args[6],
                        "misalign": misalign,
                    },
                    {"grad_qkv": want},
                    tol=ATTN_BWD_TOL[DTYPES[dt]],
                )
            )
    return out


def attention_masked_backward_cases():
    g = _gen(11)
    out = []
    for dt in DTYPES:
        for k, (B, L, nh, d, kind, p) in enumerate(
            [
                (2, 37, 2, 32, "bool_keys", 0.0),
                (2, 21, 2, 80, "float_full", 0.1),
                (1, 40, 3, 16, "bool_per_head", 0.1),
                (2, 9, 1, 64, "float_min", 0.0),
                (1, 20, 1, 128, "bool_rows", 0.2),
            ]
        ):
            H = nh * d
            qkv = torch.randn(B, L, 3 * H, generator=g).to(DTYPES[dt])
            bias = torch.randn(3 * H, generator=g).to(DTYPES[dt])
            grad_out = torch.randn(B, L, H, generator=g).to(DTYPES[dt])
            if kind == "bool_keys":  # (B, 1, 1, L) padding mask; batch 1 fully masked: zero gradient
                mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
                mask[1] = False
            elif kind == "float_full":  # (B, nh, L, L) additive per head, one row fully -inf
                mask = torch.randn(B, nh, L, L, generator=g)
                mask[0, 1, 3] = float("-inf")
            elif kind == "bool_per_head":  # (B, nh, L, L) causal
                mask = torch.ones(L, L, dtype=torch.bool).tril().expand(B, nh, L, L).clone()
            elif kind == "float_min":  # HF's finfo.min additive mask (B, 1, 1, L); batch 1 fully masked rows
                mask = torch.zeros(B, 1, 1, L)  # come out uniform (lse rounds to min: statistics recomputed)
                mask[:, :, :, L - 3 :] = torch.finfo(torch.float32).min
                mask[1] = torch.finfo(torch.float32).min
            else:  # (B, 1, L, L) bool, random, rows 0 and 5 fully masked
                mask = torch.rand(B, 1, L, L, generator=g) > 0.4
                mask[:, :, 0] = False
                mask[:, :, 5] = False
            scale = 1 / math.sqrt(d)
            args = (nh, scale, p, 99, 5)
            o, lse = reference.attention_masked(qkv, bias, mask, *args)
            want = ref_grad_qkv(lambda q: reference.attention_masked(q, bias, mask, *args), qkv, grad_out)
            add = torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask.float()
            add = add.contiguous()
            st = add.expand(B, nh, L, L).stride()
            out.append(
                Case(
                    f"attention_masked_backward_{dt}_{k}_{kind}",
                    "attention_masked_backward",
                    dt,
                    {"qkv": qkv, "bias": bias, "mask": add, "out": o, "grad_out": grad_out},
                    {
                        "B": B,
                        "L": L,
                        "nh": nh,
                        "H": H,
                        "scale": repr(scale),
                        "dropout_p": p,
                        "seed": 99,
                        "offset": 5,
                        "ms_b": st[0],
                        "ms_h": st[1],
                        "ms_i": st[2],
                        "ms_j": st[3],
                    },
                    {"grad_qkv": want},
                    tol=ATTN_BWD_TOL[DTYPES[dt]],
                )
            )
    return out


ALL_CASES = (
    pack_cases()
    + unpack_cases()
    + embeddings_cases()
    + brln_cases()
    + bias_act_cases()
    + attention_cases()
    + attention_masked_cases()
    + attention_backward_cases()
    + attention_masked_backward_cases()
    + bias_act_backward_cases()
    + brln_backward_cases()
    + embeddings_backward_cases()
)
ASAN_CASES = ALL_CASES  # the ASan build is ~2x slower than the plain one; both run every case


def _run_all(exe, cases, d: Path):
    d.mkdir(parents=True, exist_ok=True)
    manifest = d / "manifest.txt"
    manifest.write_text("\n".join(c.write(d) for c in cases) + "\n")
    res = run_driver(exe, manifest)
    return res


@pytest.fixture(scope="session")
def plain_run(drivers, tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    return _run_all(drivers[0], ALL_CASES, d), d


@pytest.fixture(scope="session")
def asan_run(drivers, tmp_path_factory):
    d = tmp_path_factory.mktemp("asan")
    return _run_all(drivers[1], ASAN_CASES, d), d


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_kernel_vs_reference(case, plain_run):
    res, d = plain_run
    assert res.returncode == 0, f"driver failed (rc {res.returncode}):\n{res.stderr[-3000:]}"
    case.check(d)


@pytest.mark.parametrize("case", ASAN_CASES, ids=lambda c: c.name)
def test_kernel_vs_reference_asan(case, asan_run):
    res, d = asan_run
    assert res.returncode == 0, f"ASan driver failed (rc {res.returncode}):\n{res.stderr[-3000:]}"
    case.check(d)


# Ops with no device code of their own: encoder_layers (csrc/inference.cpp) only calls the other ops and at::mm.
COMPOSITE_OPS = {"encoder_layers"}


def _schema_names():
    import re

    names = re.findall(r'm\.def\(\s*"(\w+)\(', (ROOT / "csrc" / "fastbert.cpp").read_text())
    return [n for n in names if n not in COMPOSITE_OPS | set(CPU_ONLY_OPS)]


def test_every_op_is_covered():
    """Every forward op of csrc/fastbert.cpp has harness cases in every dtype it takes."""
    covered = {(c.op, c.dtype) for c in ALL_CASES}
    for n in [n for n in _schema_names() if not n.endswith("_backward")]:
        dts = ["f32"] if n == "pack" else list(DTYPES)
        for dt in dts:
            assert (n, dt) in covered, f"no harness case for {n} / {dt}"


def test_every_backward_op_is_covered():
    """Every backward op of csrc/fastbert.cpp has harness cases in every dtype."""
    covered = {(c.op, c.dtype) for c in ALL_CASES}
    for n in [n for n in _schema_names() if n.endswith("_backward")]:
        for dt in DTYPES:
            assert (n, dt) in covered, f"no harness case for {n} / {dt}"


# ---------------------------------------------------------------- planted faults

# kind -> (how the plain build catches it, how the ASan build catches it): a substring of the outcome.
FAULTS = {
    "missing_sync": ("thread orders differ", "thread orders differ"),
    "missing_sync_war": ("thread orders differ", "thread orders differ"),
    "global_oob_write": ("out-of-range write next to buffer", "AddressSanitizer"),
    "global_oob_read": ("not close", "AddressSanitizer"),  # plain: the guard zone reads as NaN
    "shared_oob": ("not close", "AddressSanitizer"),
    "dynamic_smem_oob": ("not close", "AddressSanitizer"),
    "uninit_shared": ("not close", "not close"),  # the unwritten slot reads as NaN
    "divergent_barrier": ("__syncthreads reached by only part of the block",) * 2,
    "shuffle_exited_lane": ("deadlock",) * 2,
}


def _fault_outcome(exe, kind, d: Path):
    """None when the harness let the kernel pass, else how it was caught."""
    g = _gen(8)
    x = torch.randn(3 * 64, generator=g)
    case = Case(
        f"fault_{kind}",
        "fault",
        "f32",
        {"x": x},
        {"kind": kind, "blocks": 3, "threads": 64},
        {"out": x.view(3, 64).sum(1)},
        tol=1e-5,
    )
    d.mkdir(parents=True, exist_ok=True)
    manifest = d / f"{kind}.txt"
    manifest.write_text(case.write(d) + "\n")
    res = run_driver(exe, manifest, timeout=60)
    if res.returncode != 0:
        asan = "AddressSanitizer " if "AddressSanitizer" in res.stderr else ""
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
        return f"run failed (rc {res.returncode}): {asan}{last}"
    try:
        case.check(d)
    except AssertionError as e:
        return f"check failed: {str(e).splitlines()[0]}"
    return None


@pytest.mark.parametrize("build", ["plain", "asan"])
def test_fault_free_control_passes(build, drivers, tmp_path):
    exe = drivers[0] if build == "plain" else drivers[1]
    assert _fault_outcome(exe, "control", tmp_path) is None


@pytest.mark.parametrize("build", ["plain", "asan"])
@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_planted_fault_is_caught_every_time(kind, build, drivers, tmp_path):
    exe = drivers[0] if build == "plain" else drivers[1]
    expect = FAULTS[kind][0 if build == "plain" else 1]
    for rep in range(3):
        outcome = _fault_outcome(exe, kind, tmp_path / str(rep))
        assert outcome is not None, f"planted fault {kind} passed the {build} harness (repetition {rep})"
        assert expect in outcome, f"planted fault {kind} caught, but not as expected ({expect!r}): {outcome}"


# ---------------------------------------------------------------- device-side argument checks


def _bad_embeddings_case():
    g = _gen(9)
    H, V, P = 16, 10, 8
    ids = torch.tensor([1, 2, V])  # V is out of range
    return Case(
        "bad_embeddings",
        "embeddings",
        "f32",
        {
            "ids": ids,
            "pos_ids": torch.tensor([0, 1, 2]),
            "word": torch.randn(V, H, generator=g),
            "pos": torch.randn(P, H, generator=g),
            "gamma": torch.ones(H),
            "beta": torch.zeros(H),
        },
        {"N": 3, "H": H, "V": V, "P": P, "TT": 0, "eps": 1e-12, "idtype": "i64"},
    )


def _bad_unpack_case():
    x = torch.randn(3, 8)
    return Case(
        "bad_unpack",
        "unpack",
        "f32",
        {"x": x, "indices": torch.tensor([0, 5, 6])},
        {"B": 2, "L": 3, "C": 8, "T": 3, "elem_size": 4},
    )


def _bad_attention_case():
    qkv = torch.randn(10, 3 * 32)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)  # cu_seqlens[B] = 9 != T = 10
    return Case(
        "bad_attention",
        "attention",
        "f32",
        {"qkv": qkv, "cu_seqlens": cu},
        {"B": 2, "T": 10, "max_seqlen": 5, "nh": 2, "H": 32, "scale": 0.25, "dropout_p": 0.0, "seed": 0, "offset": 0},
    )


def _bad_embeddings_backward_case():
    g = _gen(13)
    H, V, P = 16, 10, 8
    return Case(
        "bad_embeddings_backward",
        "embeddings_backward",
        "f32",
        {
            "grad_out": torch.randn(3, H, generator=g),
            "ids": torch.tensor([1, 2, 3]),
            "pos_ids": torch.tensor([0, P, 2]),  # P is out of range
            "word": torch.randn(V, H, generator=g),
            "pos": torch.randn(P, H, generator=g),
            "gamma": torch.ones(H),
            "mean": torch.zeros(3),
            "rstd": torch.ones(3),
        },
        {"N": 3, "H": H, "V": V, "P": P, "TT": 0, "idtype": "i64"},
    )


@pytest.mark.parametrize(
    "make",
    [_bad_embeddings_case, _bad_unpack_case, _bad_attention_case, _bad_embeddings_backward_case],
    ids=[
        "embeddings_id_out_of_range",
        "unpack_index_out_of_range",
        "attention_cu_seqlens_short",
        "embeddings_backward_position_out_of_range",
    ],
)
def test_kernel_assert_stops_bad_input(make, drivers, tmp_path):
    case = make()
    manifest = tmp_path / "m.txt"
    manifest.write_text(case.write(tmp_path) + "\n")
    res = run_driver(drivers[0], manifest, timeout=60)
    assert res.returncode == 2 and "kernel assertion failed" in res.stderr, res.stderr[-2000:]
