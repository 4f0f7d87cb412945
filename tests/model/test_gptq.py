"""GPTQ rounding of int8 weights (fastbert/model/gptq.py): against round-to-nearest, on inputs it must help with
(correlated channels) and on inputs where it must change nothing (uncorrelated, equal channels)."""

import pytest
import torch

from fastbert.model.gptq import gptq_codes


def _weight(N, K, gen):
    w = torch.randn(N, K, generator=gen)
    w[:, :3] *= 20.0  # a few large input channels, as smoothing makes them
    return w, w.abs().amax(dim=1) / 127


def _nearest(w, scale):
    return torch.round(w / scale[:, None]).clamp(-127, 127)


@pytest.mark.parametrize("N,K", [(1, 1), (5, 7), (48, 200), (64, 300)])  # K over BLOCK (128): blocked updates
def test_gptq_lowers_the_output_error_on_correlated_inputs(N, K):
    gen = torch.Generator().manual_seed(N * 1000 + K)
    w, scale = _weight(N, K, gen)
    mix = torch.eye(K) + 0.5 * torch.randn(K, K, generator=gen) / K**0.5
    X = torch.randn(4 * K + 8, K, generator=gen) @ mix  # correlated channels
    q = gptq_codes(w, scale, X.t() @ X)
    assert q.dtype == torch.int8 and q.shape == (N, K)
    assert int(q.abs().max()) <= 127
    err = (X @ (w - q.float() * scale[:, None]).t()).norm()
    err_nearest = (X @ (w - _nearest(w, scale) * scale[:, None]).t()).norm()
    if K > 1:
        assert err < 0.95 * err_nearest, (float(err), float(err_nearest))
    else:  # one channel: nothing to compensate on
        assert torch.equal(q.float(), _nearest(w, scale))


def test_gptq_is_round_to_nearest_when_inputs_are_uncorrelated():
    gen = torch.Generator().manual_seed(7)
    w, scale = _weight(16, 50, gen)
    assert torch.equal(gptq_codes(w, scale, torch.eye(50) * 3.0).float(), _nearest(w, scale))


def test_gptq_channels_never_seen():
    """A channel whose inputs were all zero in calibration still gets codes (rounded to nearest), and the others
    are still compensated."""
    gen = torch.Generator().manual_seed(3)
    w, scale = _weight(8, 40, gen)
    X = torch.randn(200, 40, generator=gen) @ (torch.eye(40) + 0.3 * torch.randn(40, 40, generator=gen) / 6)
    X[:, 10] = 0.0
    q = gptq_codes(w, scale, X.t() @ X)
    assert int(q.abs().max()) <= 127
    err = (X @ (w - q.float() * scale[:, None]).t()).norm()
    assert err < (X @ (w - _nearest(w, scale) * scale[:, None]).t()).norm()


def test_gptq_bad_gram():
    w, scale = _weight(4, 6, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"gram: expected shape \(6, 6\)"):
        gptq_codes(w, scale, torch.eye(5))
