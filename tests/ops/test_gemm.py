"""fastbert/ops/gemm.py: the inference loop's x @ W^T, through oneDNN for float32/bfloat16 on CPU (bfloat16 weights
packed once) and torch.mm otherwise."""

import pytest
import torch

from fastbert.ops import gemm
from tests.helpers import run_python

requires_onednn = pytest.mark.skipif(not gemm.HAS_ONEDNN, reason="this PyTorch has no oneDNN linear")


@requires_onednn
@pytest.mark.parametrize("m,k,n", [(1, 768, 2304), (7, 33, 97), (130, 384, 1536), (513, 80, 17)])
@pytest.mark.parametrize("weight_layout", ["contiguous", "transposed view"])
def test_onednn_matches_float64(m, k, n, weight_layout):
    g = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) if weight_layout == "contiguous" else torch.randn(k, n, generator=g).t()
    out = gemm.linear_onednn(x, w)
    ref = x.double() @ w.double().t()
    assert out.dtype == torch.float32 and out.shape == (m, n)
    # float32 accumulation over k terms of size ~1: error grows like sqrt(k) * eps * |terms|
    assert (out.double() - ref).abs().max() <= 2e-6 * k


@requires_onednn
@pytest.mark.parametrize("m,k,n", [(1, 768, 2304), (7, 33, 97), (130, 384, 1536), (513, 80, 17)])
def test_packed_bfloat16_matches_float64(m, k, n):
    g = torch.Generator().manual_seed(m * 1000 + n)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = torch.randn(n, k, generator=g).bfloat16()
    packed = gemm.pack_onednn(w)
    assert packed.is_mkldnn and packed.shape == w.shape and packed.dtype == torch.bfloat16
    out = gemm.linear_onednn(x, packed)
    ref = x.double() @ w.double().t()
    assert out.dtype == torch.bfloat16 and out.shape == (m, n)
    # exact bf16 products, fp32 accumulation, one bf16 rounding of the result (relative 2^-8)
    assert ((out.double() - ref).abs() <= 2**-8 * ref.abs() + 1e-5 * k).all()
    assert torch.equal(out, gemm.linear_onednn(x, w))  # the same kernel as on the plain weight


@requires_onednn
def test_cpu_goes_to_onednn(monkeypatch):
    monkeypatch.setattr(gemm, "_choice", "onednn")
    assert gemm.linear_fn(torch.ones(2, 3)) is gemm.linear_onednn
    assert gemm.linear_fn(torch.ones(2, 3, dtype=torch.bfloat16)) is gemm.linear_onednn
    assert gemm.weight_packer(torch.ones(2, 3, dtype=torch.bfloat16)) is gemm.pack_onednn
    assert gemm.weight_packer(torch.ones(2, 3)) is None  # float32: plain weights measure as fast
    for other in (torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float16)):
        assert gemm.linear_fn(other) is gemm.linear_mm
        assert gemm.weight_packer(other) is None
    with torch.backends.mkldnn.flags(enabled=False):
        assert gemm.cpu_gemm() == "mm" and gemm.linear_fn(torch.ones(2, 3)) is gemm.linear_mm
    gemm.set_cpu_gemm("mm")
    assert gemm.linear_fn(torch.ones(2, 3)) is gemm.linear_mm


def test_mm_path_is_x_times_w_transposed():
    x, w = torch.randn(5, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    assert torch.equal(gemm.linear_mm(x, w), torch.mm(x, w.t()))


def test_set_cpu_gemm_rejects_unknown():
    with pytest.raises(ValueError, match="set_cpu_gemm='mkl': expected onednn or mm"):
        gemm.set_cpu_gemm("mkl")


def test_env_var_selects_and_validates():
    ok = run_python("from fastbert.ops import gemm; print(gemm.cpu_gemm())", FASTBERT_CPU_GEMM="mm")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "mm"
    bad = run_python("import fastbert", FASTBERT_CPU_GEMM="blas")
    assert bad.returncode != 0
    assert "FASTBERT_CPU_GEMM='blas': expected onednn or mm" in bad.stderr


@requires_onednn
@pytest.mark.parametrize("bad", ["dtype", "shape"])
def test_onednn_mismatch_gets_torch_mm_error(bad):
    """A weight of another dtype or width raises torch.mm's message (as the general path does), not oneDNN's."""
    x = torch.randn(3, 8)
    w = torch.randn(4, 8, dtype=torch.bfloat16) if bad == "dtype" else torch.randn(4, 7)
    with pytest.raises(RuntimeError) as mm_error:
        torch.mm(x, w.t())
    with pytest.raises(RuntimeError) as ours:
        gemm.linear_onednn(x, w)
    assert str(ours.value) == str(mm_error.value)


def test_onednn_caches_are_capped_unless_the_environment_says_otherwise(monkeypatch):
    # this process imported fastbert, which set both variables: the child must start without them
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    code = (
        "import os; assert 'LRU_CACHE_CAPACITY' not in os.environ; import fastbert; "
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(gemm.ONEDNN_CACHE_CAPACITY)] * 2
    out = run_python(code, LRU_CACHE_CAPACITY="7")
    assert out.returncode != 0  # the child's own assert: the variable was set
    out = run_python("import os, fastbert; print(os.environ['LRU_CACHE_CAPACITY'])", LRU_CACHE_CAPACITY="7")
    assert out.stdout.strip() == "7"


def test_bucket_rows():
    prev = 0
    for t in range(1, 5000):
        b = gemm.bucket_rows(t)
        assert b >= t and b >= prev
        assert b <= max(16, t + 15) if t <= 128 else b <= t + 63 if t <= 512 else b <= t * 1.125
        prev = b
    assert len({gemm.bucket_rows(t) for t in range(1, 2049)}) <= 32  # a few dozen shapes, within the caches


@requires_onednn
def test_padded_rows_give_the_unpadded_results(monkeypatch):
    """The loop's bucket padding (extra rows as a sequence of their own) leaves the real rows' results as they are
    without it, up to the GEMM's summation order (another row count can block the GEMM differently)."""
    import fastbert
    from tests.helpers import make_hf, ragged

    monkeypatch.setattr(gemm, "_choice", "onednn")
    fb = fastbert.from_hf(make_hf(num_hidden_layers=2))
    ids, mask, _ = ragged(3, 23, fb.config.vocab_size, seed=4, lengths=[23, 5, 11])  # 39 rows -> 48
    with torch.no_grad():
        padded = fb(ids, attention_mask=mask, output_hidden_states=True)
        monkeypatch.setattr(gemm, "bucket_rows", lambda t: t)
        plain = fb(ids, attention_mask=mask, output_hidden_states=True)
    for a, b in zip(padded.hidden_states, plain.hidden_states):
        assert (a - b).abs().max() <= 1e-5
