"""bias_residual_layernorm and embeddings kernels against fastbert/ops/reference.py."""

import pytest
import torch

from fastbert.ops import reference
from tests.helpers import assert_close, randn, requires_extension

pytestmark = requires_extension
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
HIDDEN = [1, 7, 33, 389, 768, 1029]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_residual_layernorm(cpu_isa, gen, dtype, H, rows, with_bias):
    x = randn(rows, H, dtype=dtype, gen=gen)
    residual = randn(rows, H, dtype=dtype, gen=gen, scale=3.0)
    bias = randn(H, dtype=dtype, gen=gen) if with_bias else None
    w, b = randn(H, dtype=dtype, gen=gen), randn(H, dtype=dtype, gen=gen)
    out, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, bias, residual, w, b, 1e-12)
    ref_out, ref_mean, ref_rstd = reference.bias_residual_layernorm(x, bias, residual, w, b, 1e-12)
    assert_close(out, ref_out, msg="out")
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == stat_dtype and rstd.dtype == stat_dtype
    assert_close(mean, ref_mean, dtype=stat_dtype)
    # rstd of a near-constant row is large; compare relatively
    torch.testing.assert_close(rstd, ref_rstd, rtol=1e-4 if dtype != torch.float64 else 1e-9, atol=0)


def test_layernorm_stable_with_large_offset(gen):
    """E[x^2]-E[x]^2 cancels catastrophically for a row with a large mean; the two-pass variance does not."""
    H = 768
    x = randn(4, H, gen=gen, scale=1e-3) + 1000.0
    zeros = torch.zeros(H)
    ones = torch.ones(H)
    out, _, rstd = torch.ops.fastbert.bias_residual_layernorm(x, None, torch.zeros_like(x), ones, zeros, 1e-12)
    ref, _, ref_rstd = reference.bias_residual_layernorm(
        x.double(), None, torch.zeros_like(x).double(), ones.double(), zeros.double(), 1e-12
    )
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=5e-2, rtol=0)  # fp32 input resolution at 1e3 is 6e-5
    torch.testing.assert_close(rstd.double(), ref_rstd, rtol=5e-2, atol=0)


@pytest.mark.parametrize("H", [64, 768, 1029])
def test_layernorm_stats_with_outliers_under_the_pivot(cpu_isa, gen, H):
    """The one-pass statistics centre on the mean of a row's first 64 values: put BERT-like outlier dimensions
    there (far from the rest of the row), on top of a large offset, and the statistics must still match float64."""
    x = randn(5, H, gen=gen) + 300.0
    x[:, :64:3] += 40.0 * randn(5, len(range(0, min(H, 64), 3)), gen=gen)
    ones, zeros = torch.ones(H), torch.zeros(H)
    out, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, None, torch.zeros_like(x), ones, zeros, 1e-12)
    ref, ref_mean, ref_rstd = reference.bias_residual_layernorm(
        x.double(), None, torch.zeros_like(x).double(), ones.double(), zeros.double(), 1e-12
    )
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), ref_rstd, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


def test_bias_residual_layernorm_3d_and_noncontiguous(gen):
    x = randn(5, 9, 64, gen=gen).transpose(0, 1)  # (9, 5, 64), non-contiguous
    residual = randn(9, 5, 64, gen=gen)
    w, b, bias = randn(64, gen=gen), randn(64, gen=gen), randn(64, gen=gen)
    out, mean, _ = torch.ops.fastbert.bias_residual_layernorm(x, bias, residual, w, b, 1e-5)
    ref, ref_mean, _ = reference.bias_residual_layernorm(x, bias, residual, w, b, 1e-5)
    assert out.shape == (9, 5, 64) and mean.shape == (9, 5)
    assert_close(out, ref)


def test_bias_residual_layernorm_empty():
    x = torch.empty(0, 16)
    out, mean, rstd = torch.ops.fastbert.bias_residual_layernorm(x, None, x, torch.ones(16), torch.zeros(16), 1e-5)
    assert out.shape == (0, 16) and mean.shape == (0,)


@pytest.mark.parametrize(
    "bad, match, exc",
    [
        (dict(residual=torch.randn(3, 8)), "residual", RuntimeError),
        (dict(bias=torch.randn(7)), "bias", RuntimeError),
        (dict(ln_weight=torch.randn(8, 1)), "ln_weight", RuntimeError),
        (dict(ln_bias=torch.randn(8, dtype=torch.float64)), "ln_bias", RuntimeError),
        (dict(x=torch.randint(0, 4, (4, 8))), "floating", RuntimeError),
        (dict(eps=-1.0), "eps", ValueError),
    ],
)
def test_bias_residual_layernorm_bad_args(bad, match, exc):
    args = dict(
        x=torch.randn(4, 8),
        bias=torch.randn(8),
        residual=torch.randn(4, 8),
        ln_weight=torch.randn(8),
        ln_bias=torch.randn(8),
        eps=1e-5,
    )
    args.update(bad)
    with pytest.raises(exc, match=match):
        torch.ops.fastbert.bias_residual_layernorm(**args)


def _embedding_inputs(gen, dtype, H, n, V=97, P=41, TV=3, index_dtype=torch.long, with_types=True):
    ids = torch.randint(0, V, (n,), generator=gen).to(index_dtype)
    pos = torch.randint(0, P, (n,), generator=gen).to(index_dtype)
    types = torch.randint(0, TV, (n,), generator=gen).to(index_dtype) if with_types else None
    tables = [randn(V, H, dtype=dtype, gen=gen), randn(P, H, dtype=dtype, gen=gen), randn(TV, H, dtype=dtype, gen=gen)]
    ln = [randn(H, dtype=dtype, gen=gen), randn(H, dtype=dtype, gen=gen)]
    return ids, pos, types, tables, ln


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", [7, 33, 384, 389])
@pytest.mark.parametrize("n", [1, 61])
@pytest.mark.parametrize("index_dtype", [torch.long, torch.int32])
@pytest.mark.parametrize("with_types", [True, False])
def test_embeddings(cpu_isa, gen, dtype, H, n, index_dtype, with_types):
    ids, pos, types, (word, position, tt), (w, b) = _embedding_inputs(
        gen, dtype, H, n, index_dtype=index_dtype, with_types=with_types
    )
    out, mean, rstd = torch.ops.fastbert.embeddings(ids, pos, types, word, position, tt, w, b, 1e-12)
    ref, ref_mean, ref_rstd = reference.embeddings(ids, pos, types, word, position, tt, w, b, 1e-12)
    assert out.shape == (n, H)
    assert_close(out, ref)
    assert_close(mean, ref_mean, dtype=mean.dtype)


def test_embeddings_without_token_type_table(gen):
    ids, pos, _, (word, position, _), (w, b) = _embedding_inputs(gen, torch.float32, 32, 9)
    out, _, _ = torch.ops.fastbert.embeddings(ids, pos, None, word, position, None, w, b, 1e-5)
    assert_close(out, reference.embeddings(ids, pos, None, word, position, None, w, b, 1e-5)[0])


def test_embeddings_2d_ids(gen):
    ids, pos, types, (word, position, tt), (w, b) = _embedding_inputs(gen, torch.float32, 48, 12)
    shape = (3, 4)
    out, mean, _ = torch.ops.fastbert.embeddings(
        ids.view(shape), pos.view(shape), types.view(shape), word, position, tt, w, b, 1e-5
    )
    ref = reference.embeddings(ids, pos, types, word, position, tt, w, b, 1e-5)[0]
    assert out.shape == (3, 4, 48) and mean.shape == shape
    assert_close(out.view(12, 48), ref)


@pytest.mark.parametrize(
    "which, value, match",
    [
        ("ids", 97, r"input_ids\[\d+\] = 97 is out of range \[0, 97\)"),
        ("ids", -1, r"input_ids\[\d+\] = -1"),
        ("pos", 41, r"position_ids\[\d+\] = 41"),
        ("types", 3, r"token_type_ids\[\d+\] = 3"),
    ],
)
def test_embeddings_index_out_of_range(gen, which, value, match):
    ids, pos, types, (word, position, tt), (w, b) = _embedding_inputs(gen, torch.float32, 16, 10)
    {"ids": ids, "pos": pos, "types": types}[which][4] = value
    with pytest.raises(IndexError, match=match):
        torch.ops.fastbert.embeddings(ids, pos, types, word, position, tt, w, b, 1e-5)


def test_embeddings_bad_args(gen):
    ids, pos, types, (word, position, tt), (w, b) = _embedding_inputs(gen, torch.float32, 16, 10)
    with pytest.raises(RuntimeError, match="input_ids must be int64 or int32"):
        torch.ops.fastbert.embeddings(ids.float(), pos, types, word, position, tt, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="position_ids must have input_ids' shape"):
        torch.ops.fastbert.embeddings(ids, pos[:3], types, word, position, tt, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="position_weight must have shape"):
        torch.ops.fastbert.embeddings(ids, pos, types, word, position[:, :5], tt, w, b, 1e-5)
    with pytest.raises(RuntimeError, match="ln_weight must have shape"):
        torch.ops.fastbert.embeddings(ids, pos, types, word, position, tt, w[:3], b, 1e-5)
    with pytest.raises(RuntimeError, match="token_type_weight"):
        torch.ops.fastbert.embeddings(ids, pos, types, word, position, None, w, b, 1e-5)


def test_opcheck(cpu_isa, gen):
    x, r = randn(5, 33, gen=gen), randn(5, 33, gen=gen)
    vecs = [randn(33, gen=gen) for _ in range(3)]
    torch.library.opcheck(torch.ops.fastbert.bias_residual_layernorm.default, (x, vecs[0], r, vecs[1], vecs[2], 1e-5))
    ids, pos, types, (word, position, tt), (w, b) = _embedding_inputs(gen, torch.float32, 33, 11)
    torch.library.opcheck(torch.ops.fastbert.embeddings.default, (ids, pos, types, word, position, tt, w, b, 1e-5))
