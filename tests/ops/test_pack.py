"""pack / unpack kernels against fastbert/ops/reference.py."""

import pytest
import torch

from fastbert.ops import reference
from tests.helpers import randn, requires_extension

pytestmark = requires_extension


def _masks(gen):
    yield torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]])  # right/left/all-pad
    yield torch.tensor([[1, 0, 1, 0, 1, 1]])  # holes, batch of 1
    yield torch.tensor([[1]])  # one token
    yield (torch.rand(7, 37, generator=gen) > 0.4)  # random bool
    yield (torch.rand(5, 13, generator=gen) > 0.5).float()  # float mask


@pytest.mark.parametrize("case", range(5))
def test_pack_matches_reference(gen, case):
    mask = list(_masks(gen))[case]
    got = torch.ops.fastbert.pack(mask)
    want = reference.pack(mask)
    for g, w, name in zip(got, want, ("indices", "cu_seqlens", "positions")):
        assert g.dtype == w.dtype, name
        assert torch.equal(g, w), name


def test_unpack_roundtrip(gen):
    mask = torch.rand(6, 29, generator=gen) > 0.3
    mask[2] = False
    indices, cu, _ = torch.ops.fastbert.pack(mask)
    x = randn(6 * 29, 11, gen=gen)
    packed = x[indices]
    out = torch.ops.fastbert.unpack(packed, indices, 6, 29)
    assert torch.equal(out, reference.unpack(packed, indices, 6, 29))
    assert torch.equal(out.view(-1, 11)[mask.view(-1)], packed)
    assert (out[~mask] == 0).all()


def test_pack_empty_batch():
    indices, cu, pos = torch.ops.fastbert.pack(torch.zeros(0, 4, dtype=torch.long))
    assert indices.numel() == 0 and cu.tolist() == [0]


def test_bad_args():
    with pytest.raises(RuntimeError, match=r"attention_mask must have shape \(batch, seqlen\)"):
        torch.ops.fastbert.pack(torch.ones(2, 3, 4))
    with pytest.raises(RuntimeError, match="indices must be an int64 tensor"):
        torch.ops.fastbert.unpack(torch.randn(3, 4), torch.arange(2), 1, 3)
    with pytest.raises(IndexError, match=r"indices\[1\] = 9 is out of range \[0, 6\)"):
        torch.ops.fastbert.unpack(torch.randn(2, 4), torch.tensor([0, 9]), 2, 3)
    with pytest.raises(ValueError, match="batch and seqlen"):
        torch.ops.fastbert.unpack(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), -1, 3)


def test_opcheck(cpu_isa, gen):
    mask = torch.rand(3, 9, generator=gen) > 0.3
    torch.library.opcheck(torch.ops.fastbert.pack.default, (mask,))
    indices = reference.pack(mask)[0]
    torch.library.opcheck(torch.ops.fastbert.unpack.default, (randn(indices.numel(), 5, gen=gen), indices, 3, 9))


def test_pack_traces_under_compile(gen):
    """pack's data-dependent size traces with fullgraph=True."""

    def f(mask, x):
        indices, cu, pos = torch.ops.fastbert.pack(mask)
        return torch.ops.fastbert.unpack(x.view(-1, x.shape[-1])[indices] * 2, indices, mask.shape[0], mask.shape[1])

    mask = torch.rand(3, 9, generator=gen) > 0.3
    x = randn(3, 9, 4, gen=gen)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(mask, x), f(mask, x))
