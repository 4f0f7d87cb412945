"""torch.ops.fastbert.encoder_layers (csrc/inference.cpp): the C++ layer loop behind fastbert.layers.run_layers.
Its numbers are checked through the model in tests/model/test_parity.py (bit-identical to the per-layer path with
torch.mm); here, its contract: every layer's output on request, and clear errors for what it cannot take."""

import pytest
import torch

import fastbert
from fastbert.runtime import layers
from tests.helpers import make_hf

pytestmark = pytest.mark.skipif(not fastbert.ops.HAS_EXTENSION, reason="needs the compiled extension")


def _setup(seed=0):
    fb = fastbert.from_hf(make_hf(seed=seed)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(13, fb.config.hidden_size, generator=g)
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    weights = layers.layer_weights(fb.encoder.layer, fb.config.hidden_act, x)
    assert weights is not None
    return fb, x, cu, weights


def _call(x, cu, weights, eps, all_layers=False):
    return torch.ops.fastbert.encoder_layers(x, cu, 7, 4, 0.25, "gelu", weights, eps, all_layers, False)


def test_every_layer_on_request_and_the_last_alone_by_default():
    fb, x, cu, w = _setup()
    with torch.no_grad():
        every = _call(x, cu, w.tensors, w.eps, all_layers=True)
        last = _call(x, cu, w.tensors, w.eps)
        first_only = _call(x, cu, w.tensors[:12], w.eps[:2])
        none = _call(x, cu, [], [])
    assert len(every) == fb.config.num_hidden_layers and len(last) == 1
    assert torch.equal(every[-1], last[0]) and torch.equal(every[0], first_only[0])
    assert not torch.equal(every[0], every[1])
    assert len(none) == 1 and torch.equal(none[0], x)


def test_refuses_to_run_where_a_gradient_is_wanted():
    _, x, cu, w = _setup(1)
    with pytest.raises(RuntimeError, match="inference-only"):
        _call(x, cu, w.tensors, w.eps)  # the parameters require grad and grad mode is on
    with pytest.raises(RuntimeError, match="inference-only"):
        _call(x.requires_grad_(), cu, [t.detach() if t is not None else None for t in w.tensors], w.eps)


def test_malformed_weight_lists_are_named():
    _, x, cu, w = _setup(2)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="not a multiple of 12"):
            _call(x, cu, w.tensors[:11], w.eps)
        with pytest.raises(RuntimeError, match="2 LayerNorm eps per layer"):
            _call(x, cu, w.tensors, w.eps[:-1])
        broken = list(w.tensors)
        broken[12 + 7] = None  # layer 1's intermediate bias
        with pytest.raises(RuntimeError, match="layer 1's intermediate bias is missing"):
            _call(x, cu, broken, w.eps)
        broken = list(w.tensors)
        broken[8] = broken[8][:, :-1]  # a wrongly shaped output weight: at::mm's own error
        with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
            _call(x, cu, broken, w.eps)


def test_cuda_graph_buckets_cover_and_bound_the_padding():
    """The CUDA graphs' buckets (fastbert/runtime/cuda_graphs.py) hold every size, on the grid they promise, with at
    most 12.5% extra rows above 512 tokens."""
    from fastbert.runtime.cuda_graphs import bucket_batch, bucket_seqlen, bucket_tokens

    prev = 0
    for t in range(1, 70000, 7):
        cap = bucket_tokens(t)
        assert cap >= t and cap % 64 == 0 and cap >= prev
        if t > 512:
            assert cap <= t * 1.125
        prev = cap
    assert bucket_tokens(2048) == 2048 and bucket_tokens(2049) == 2304 and bucket_tokens(1) == 64
    assert [bucket_batch(b) for b in (1, 2, 3, 5, 32, 33)] == [1, 2, 4, 8, 32, 64]
    assert [bucket_seqlen(n) for n in (1, 64, 65, 512)] == [64, 64, 128, 512]


@pytest.mark.parametrize("lengths", [[7], [5, 1, 7], [3] * 8, [60, 2]])
def test_cuda_graph_padding_leaves_the_real_rows_alone(lengths):
    """What a CUDA graph replays (fastbert/runtime/cuda_graphs.py), run on the CPU: the batch padded to its bucket, the
    extra rows as extra sequences, gives the real rows' output of the unpadded batch (up to the GEMM library's
    rounding for another row count: a leak between rows would be of order 1)."""
    from fastbert.runtime import cuda_graphs

    fb, _, _, w = _setup(3)
    g = torch.Generator().manual_seed(len(lengths))
    t, b, max_len = sum(lengths), len(lengths), max(lengths)
    x = torch.randn(t, fb.config.hidden_size, generator=g)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    t_cap, b_cap, l_cap = cuda_graphs.buckets(t, b, max_len)
    static_x = torch.randn(t_cap, x.shape[1], generator=g)  # stale rows of an earlier batch
    static_cu = torch.empty(b_cap + 1, dtype=torch.int32)
    ramp = torch.arange(1, b_cap + 1, dtype=torch.int32) * l_cap
    cuda_graphs._fill(static_x, static_cu, ramp, x, cu)
    assert int(static_cu[-1]) == t_cap and bool((static_cu.diff() <= l_cap).all())
    with torch.no_grad():
        args = (fb.config.num_attention_heads, 0.25, "gelu", w.tensors, w.eps, False, False)
        want = torch.ops.fastbert.encoder_layers(x, cu, max_len, *args)[0]
        got = torch.ops.fastbert.encoder_layers(static_x, static_cu, l_cap, *args)[0]
    torch.testing.assert_close(got[:t], want, rtol=1e-5, atol=1e-5)


def _random_stack(layers, nh, d, inter, seed, dtype=torch.float32):
    """Random weights (off their init: every bias and LayerNorm parameter matters) for `layers` layers of hidden
    nh * d; the three projection biases absent in layer 1."""
    g = torch.Generator().manual_seed(seed)
    H = nh * d
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype)  # noqa: E731
    weights, eps = [], []
    for i in range(layers):
        no_bias = i == 1
        weights += [
            r(3 * H, H, scale=H**-0.5),
            None if no_bias else r(3 * H, scale=0.1),
            r(H, H, scale=H**-0.5),
            None if no_bias else r(H, scale=0.1),
            1 + r(H, scale=0.2),
            r(H, scale=0.1),
            r(inter, H, scale=H**-0.5),
            r(inter, scale=0.1),
            r(H, inter, scale=inter**-0.5),
            None if no_bias else r(H, scale=0.1),
            1 + r(H, scale=0.2),
            r(H, scale=0.1),
        ]
        eps += [1e-12, 1e-5]
    return weights, eps


@pytest.mark.parametrize("nh,d,inter", [(3, 16, 37), (2, 32, 70), (2, 64, 130), (3, 80, 241), (1, 128, 300)])
@pytest.mark.parametrize("lengths", [[1], [13], [5, 1, 9, 2]])
@pytest.mark.parametrize("onednn", [False, True])
def test_matches_the_reference(nh, d, inter, lengths, onednn):
    """The kernel against fastbert/ops/reference.py on random weights and inputs: head dims 16-128, hidden and
    intermediate sizes off the vector width, ragged lengths and a batch of one; float32 within 1e-4 (three
    LayerNorm'd layers, |x| ~ 1). With oneDNN the GEMMs sum in another order: within the same bound."""
    from fastbert.ops import gemm, reference

    if onednn and not gemm.HAS_ONEDNN:
        pytest.skip("this PyTorch has no oneDNN linear")
    weights, eps = _random_stack(3, nh, d, inter, seed=d + len(lengths))
    g = torch.Generator().manual_seed(len(lengths))
    x = torch.randn(sum(lengths), nh * d, generator=g)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    args = (x, cu, max(lengths), nh, d**-0.5, "gelu", weights, eps, True)
    with torch.no_grad():
        got = torch.ops.fastbert.encoder_layers(*args, onednn)
    want = reference.encoder_layers(*args)
    assert len(got) == len(want) == 3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_opcheck():
    """Schema and fake implementation (torch.compile's view of the op) agree with the kernel."""
    weights, eps = _random_stack(2, 2, 16, 40, seed=9)
    x = torch.randn(11, 32)
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    for all_layers in (False, True):
        torch.library.opcheck(
            torch.ops.fastbert.encoder_layers.default,
            (x, cu, 7, 2, 0.25, "gelu", weights, eps, all_layers, False),
            test_utils=("test_schema", "test_faketensor"),
        )
