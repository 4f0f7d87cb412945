"""torch.ops.fastbert.encoder_layers (csrc/inference.cpp): the C++ layer loop behind fastbert.inference.run_layers.
Its numbers are checked through the model in tests/test_model_parity.py (bit-identical to the per-layer path with
torch.mm); here, its contract: every layer's output on request, and clear errors for what it cannot take."""
import pytest
import torch

import fastbert
from fastbert import inference
from model_common import make_hf

pytestmark = pytest.mark.skipif(not fastbert.ops.HAS_EXTENSION, reason="needs the compiled extension")


def _setup(seed=0):
    fb = fastbert.from_hf(make_hf(seed=seed)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(13, fb.config.hidden_size, generator=g)
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    weights = inference.layer_weights(fb.encoder.layer, fb.config.hidden_act, x)
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
