"""torch.compile(fastbert_model, fullgraph=True) gives the eager outputs (the Python input checks are skipped
while tracing; pack's data-dependent size traces through its fake implementation)."""

import pytest
import torch

import fastbert
from fastbert import ops
from tests.helpers import TOL, make_hf, max_diff, ragged

needs_kernels = pytest.mark.skipif(
    not all(ops.has_kernel(op, "cpu") for op in ("attention", "attention_masked", "pack")),
    reason="the reference attention loops over sequences in Python (cu_seqlens.tolist()); fullgraph needs the "
    "compiled CPU attention kernels",
)


@needs_kernels
@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_compile_fullgraph_parity(pad_outputs):
    torch._dynamo.reset()
    hf = make_hf(num_hidden_layers=2)
    fb = fastbert.from_hf(hf, pad_outputs=pad_outputs)
    compiled = torch.compile(fb, fullgraph=True, dynamic=True)
    for seed, (B, L) in enumerate([(3, 13), (2, 21), (4, 7)]):
        ids, mask, tt = ragged(B, L, hf.config.vocab_size, seed=seed, types=2)
        with torch.no_grad():
            out = compiled(ids, attention_mask=mask, token_type_ids=tt)
            eager = fb(ids, attention_mask=mask, token_type_ids=tt)
            ref = hf(ids, attention_mask=mask, token_type_ids=tt)
        keep = mask if pad_outputs == "zero" else None
        assert max_diff(out.last_hidden_state, eager.last_hidden_state) <= TOL
        assert max_diff(out.last_hidden_state, ref.last_hidden_state, keep) <= TOL
        assert max_diff(out.pooler_output, eager.pooler_output) <= TOL


@needs_kernels
def test_compile_lean_encoder():
    torch._dynamo.reset()
    hf = make_hf(num_hidden_layers=2)
    enc = fastbert.Encoder(fastbert.EncoderConfig.from_dict(hf.config.to_dict()))
    enc.load_state_dict(hf.state_dict())
    enc.requires_grad_(False)
    compiled = torch.compile(enc, fullgraph=True)
    ids, mask, _ = ragged(3, 11, hf.config.vocab_size)
    assert max_diff(compiled(ids, mask), enc(ids, mask)) <= TOL


@needs_kernels
def test_compile_fullgraph_training_step():
    """A training step under torch.compile(fullgraph=True) runs the fused ops' C++ autograd (csrc/autograd.cpp)
    through AOTAutograd, where the token count is a data-dependent symbol: same loss and gradients as eager."""
    torch._dynamo.reset()
    hf = make_hf(num_hidden_layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fb = fastbert.from_hf(hf).train()
    ids, mask, tt = ragged(3, 13, hf.config.vocab_size, seed=0, types=2)

    def step(model):
        fb.zero_grad(set_to_none=True)
        out = model(ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        loss = (out * mask[..., None]).pow(2).sum()
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in fb.named_parameters() if p.grad is not None}

    loss, eager = step(fb)
    compiled_loss, compiled = step(torch.compile(fb, fullgraph=True))
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=0)
    assert set(eager) <= set(compiled) and len(eager) == 37  # embeddings, 2 x 16 layer tensors
    for name, grad in eager.items():
        # The key bias's true gradient is zero (softmax ignores a shift); both give float32 noise (~1e-9) there.
        scale = max(grad.abs().max().item(), 1e-3)
        assert (compiled[name] - grad).abs().max().item() <= 1e-4 * scale, name
