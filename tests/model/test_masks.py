"""Mask semantics as transformers 5.x defines them: 2-D bool/int/float (1 = keep), 4-D bool (True = keep) or
additive float, 3-D [B, L, L] keep-masks (HF crashes on those; we compare with the equivalent 4-D additive
mask), all-padding rows (never NaN), empty batches."""

import pytest
import torch

import fastbert
from tests.helpers import TOL, make_hf, max_diff, ragged


@pytest.fixture(scope="module")
def models():
    hf = make_hf(seed=2, num_hidden_layers=2)
    return hf, fastbert.from_hf(hf), fastbert.from_hf(hf, pad_outputs="hf")


def _additive(keep4d):
    return torch.zeros(keep4d.shape).masked_fill(~keep4d.bool(), torch.finfo(torch.float32).min)


@pytest.mark.parametrize("pad_outputs", [0, 1])
def test_2d_mask_dtypes_agree(models, pad_outputs):
    hf, *fbs = models
    fb = fbs[pad_outputs]
    ids, mask, _ = ragged(4, 21, hf.config.vocab_size, seed=5, holes=True)
    with torch.no_grad():
        outs = [
            fb(ids, attention_mask=m).last_hidden_state
            for m in (mask, mask.bool(), mask.float(), mask.int(), mask.to(torch.float16) * 3)
        ]
        ref = hf(ids, attention_mask=mask).last_hidden_state
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    keep = mask if pad_outputs == 0 else None
    assert max_diff(outs[0], ref, keep) <= TOL


def _random_keep(B, L, seed, heads=1):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(B, heads, L, L, generator=g) < 0.6
    keep[..., 0] = True  # every query sees at least one key
    return keep


def test_3d_keep_mask(models):
    hf, fb, _ = models
    B, L = 3, 14
    ids, _, _ = ragged(B, L, hf.config.vocab_size, lengths=[L] * B)
    keep = _random_keep(B, L, 1)[:, 0]
    with torch.no_grad():
        ref = hf(ids, attention_mask=_additive(keep[:, None])).last_hidden_state
        for m in (keep, keep.long(), keep.float()):
            assert max_diff(fb(ids, attention_mask=m).last_hidden_state, ref) <= TOL


@pytest.mark.parametrize("heads", [1, 4])
def test_4d_bool_and_additive(models, heads):
    hf, fb, fb_hf = models
    B, L = 3, 12
    ids, _, _ = ragged(B, L, hf.config.vocab_size, lengths=[L] * B, seed=4)
    keep = _random_keep(B, L, 2, heads)
    add = _additive(keep)
    with torch.no_grad():
        ref = hf(ids, attention_mask=add).last_hidden_state
        for model in (fb, fb_hf):
            assert max_diff(model(ids, attention_mask=keep).last_hidden_state, ref) <= TOL
            assert max_diff(model(ids, attention_mask=add).last_hidden_state, ref) <= TOL
        # broadcast over the batch
        ref1 = hf(ids, attention_mask=add[:1]).last_hidden_state
        assert max_diff(fb(ids, attention_mask=keep[:1]).last_hidden_state, ref1) <= TOL


def test_4d_additive_soft_bias(models):
    hf, fb, _ = models
    B, L = 2, 10
    ids, _, _ = ragged(B, L, hf.config.vocab_size, lengths=[L] * B, seed=6)
    bias = torch.randn(B, 1, L, L)
    with torch.no_grad():
        assert (
            max_diff(fb(ids, attention_mask=bias).last_hidden_state, hf(ids, attention_mask=bias).last_hidden_state)
            <= TOL
        )


def test_all_padding_row_never_nan(models):
    hf, fb, fb_hf = models
    ids, mask, _ = ragged(3, 9, hf.config.vocab_size, lengths=[9, 0, 4])
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        z = fb(ids, attention_mask=mask, output_hidden_states=True)
        h = fb_hf(ids, attention_mask=mask)
        a = fb(ids, attention_mask=mask, output_attentions=True)
    for t in (
        z.last_hidden_state,
        z.pooler_output,
        h.last_hidden_state,
        h.pooler_output,
        a.last_hidden_state,
        *z.hidden_states,
        *a.attentions,
    ):
        assert torch.isfinite(t).all()
    assert not z.last_hidden_state[1].any()
    assert max_diff(h.last_hidden_state, ref.last_hidden_state) <= TOL  # HF: uniform attention on that row
    keep3 = torch.zeros(1, 9, 9, dtype=torch.bool)
    keep3[0, :4, :4] = True  # query rows 4.. see no key
    with torch.no_grad():
        o = fb(ids[:1], attention_mask=keep3).last_hidden_state
    assert torch.isfinite(o).all()


def test_empty_batch(models):
    hf, fb, fb_hf = models
    ids = torch.zeros(0, 7, dtype=torch.long)
    for model in (fb, fb_hf):
        with torch.no_grad():
            out = model(ids, attention_mask=torch.zeros(0, 7), output_hidden_states=True)
        assert out.last_hidden_state.shape == (0, 7, hf.config.hidden_size)
        assert out.pooler_output.shape == (0, hf.config.hidden_size)
        assert len(out.hidden_states) == hf.config.num_hidden_layers + 1
    lean = fastbert.Encoder(fastbert.EncoderConfig.from_dict(hf.config.to_dict()))
    assert lean(ids).shape == (0, 7, hf.config.hidden_size)


def test_zero_length_is_a_clear_error(models):
    _, fb, _ = models
    with pytest.raises(ValueError, match="input_ids"):
        fb(torch.zeros(2, 0, dtype=torch.long))


def test_left_padding_pooler_hf_mode(models):
    hf, fb, fb_hf = models
    ids, mask, _ = ragged(3, 11, hf.config.vocab_size, lengths=[11, 5, 2], left=True)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask)
        h = fb_hf(ids, attention_mask=mask)
        z = fb(ids, attention_mask=mask)
    assert max_diff(h.pooler_output, ref.pooler_output) <= TOL
    assert max_diff(z.last_hidden_state, ref.last_hidden_state, mask) <= TOL
