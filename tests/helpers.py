"""What the tests share: tolerances per dtype, random inputs, small random HF BERT models with every parameter
moved off its init (LayerNorm weights/biases and Linear biases too, so each one matters), ragged batches, and a
fresh Python process. Fixtures live in tests/conftest.py; everything else a test imports comes from here."""

import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from fastbert import ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

requires_extension = pytest.mark.skipif(not ops.HAS_EXTENSION, reason=f"fastbert._C not built: {ops.LOAD_ERROR}")

# (atol, rtol) of a kernel against the reference run on the same (rounded) inputs.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual, expected, dtype=None, msg=""):
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def randn(*shape, dtype=torch.float32, gen=None, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def run_python(code, **env):
    """Runs code in a fresh interpreter from the repository root, with env added to the environment."""
    full_env = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=120
    )


TOL = 1e-4  # fp32 max |diff| vs HF eager at real positions (the documented parity bound)

SMALL = dict(
    vocab_size=211,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=40,
    type_vocab_size=2,
)
BASE = dict(vocab_size=1000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
LARGE = dict(vocab_size=1000, hidden_size=1024, num_hidden_layers=3, num_attention_heads=16, intermediate_size=4096)


def load_benchmark(name: str):
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hf_config(**kw):
    d = dict(SMALL)
    d.update(kw)
    cfg = BertConfig(**d)
    cfg._attn_implementation = "eager"
    return cfg


def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
    return model


def make_hf(cls=BertModel, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = hf_config(**kw)
    return perturb_(cls(cfg), seed).eval()


def ragged(B, L, vocab, seed=0, lengths=None, left=False, holes=False, types=0):
    """ids (B, L) int64, mask (B, L) int64 (1 = real), token_type_ids or None."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(1, L + 1, (B,), generator=g).tolist()
    ids = torch.randint(1, vocab, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if left:
            mask[b, L - n :] = 1
        else:
            mask[b, :n] = 1
    if holes:
        hole = torch.rand(B, L, generator=g) < 0.2
        mask = mask.masked_fill(hole, 0)
        mask[:, 0] = 1
    ids = ids * mask
    tt = torch.randint(0, types, (B, L), generator=g) if types else None
    return ids, mask, tt


def max_diff(a, b, keep=None):
    d = (a.float() - b.float()).abs()
    if keep is not None:
        d = d[keep.bool()]
    return float(d.max()) if d.numel() else 0.0


def run_threads(work, n):
    """work(k) in n threads at once; the exceptions they raised, to assert on in the test's own thread."""
    errors = []

    def guarded(k):
        try:
            work(k)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


# ---------------------------------------------------------------- the kernels' tests (tests/ops)
# Tolerances of a kernel against the reference on the same (rounded) inputs, atol = rtol, beside TOLERANCES:
# fp32 statistics computed in fp32 (LayerNorm's mean and rstd, the FMA attention kernels' lse): STAT_TOL.
STAT_TOL = 2e-5
# Attention's out and lse: fp32 5e-5 for out (sums over up to 130 keys in another order); fp16 / bf16 as the
# tensor-core kernel (csrc/cuda/attention_mma.cuh) gives them: it rounds q, k, v (bias added) and the
# probabilities to the storage dtype before its products, as cuBLAS-based attention does, a few ulps more than
# the reference, which multiplies in fp32 (lse: |lse| ~ 1-10). The FMA kernels' 16-bit outputs are within
# TOLERANCES and their lse within STAT_TOL.
ATTN_TOL = {torch.float32: 5e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
ATTN_LSE_TOL = {torch.float32: STAT_TOL, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Backward of LayerNorm, activations, embeddings (vs float64 autograd through the reference, cast to the
# kernel's dtype): fp32 5e-5 (sums over H and over rows in another order), 16-bit one rounding of the result.
BWD_TOL = {torch.float32: 5e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Attention backward, grad_qkv vs ref_grad_qkv (|grad| up to ~10): fp32 5e-5 (sums over up to 130 keys in
# another order, P from a fp32 lse); 16-bit: both sides round to the dtype (one ulp at |g| in [4, 8) is 3.9e-3 /
# 3.1e-2), and the kernel's D_i = dO_i . O_i uses the forward's rounded out, as the CPU op and FlashAttention do
# (out from the tensor-core forward on a GPU).
ATTN_BWD_TOL = {torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def length_mask(lengths, L, left=False, holes=False, gen=None):
    """(len(lengths), L) bool mask, row b True on lengths[b] positions: at the start, at the end (left=True), or
    at the end of odd rows only (left="odd"); holes=True also clears about L / 7 random positions (gen) of each
    row longer than 2."""
    m = torch.zeros(len(lengths), L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left is True or (left == "odd" and b % 2):
            m[b, L - n :] = True
        else:
            m[b, :n] = True
        if holes and n > 2:
            m[b, torch.randint(0, L, (max(1, L // 7),), generator=gen)] = False
    return m


def ref_grad_qkv(fn, qkv, grad_out):
    """d out / d qkv . grad_out by autograd through fn(qkv) -> (out, lse), a reference attention of qkv."""
    q = qkv.detach().clone().requires_grad_(True)
    fn(q)[0].backward(grad_out)
    return q.grad


def grads64(fn, leaves, grad_out):
    """float64 gradients of fn(*leaves)[0] (or fn(*leaves)) w.r.t. each of the tensors `leaves`, for grad_out."""
    xs = [t.double().requires_grad_(True) for t in leaves]
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    return torch.autograd.grad(out, xs, grad_out.double())
