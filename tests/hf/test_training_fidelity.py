"""What training code expects of transformers' BERT classes, held by fastbert's: hidden states on the gradient
path (retain_grad, autograd.grad), forward signatures that declare transformers' keyword arguments, and
gradient checkpointing through the function and settings transformers gave the layers."""

import inspect
import warnings

import pytest
import torch
from transformers.models.bert import modeling_bert as hf

import fastbert
from fastbert.hf import heads
from tests.helpers import make_hf, max_diff, ragged


def _masked_loss(out, mask, seed=0):
    """A loss over the real positions of the last hidden state, with random weights (so no gradient is uniform)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out.last_hidden_state.shape[-1], generator=g)
    return (out.last_hidden_state * w * mask.unsqueeze(-1)).sum()


@pytest.mark.parametrize(
    "pad_outputs, output_attentions",
    [("zero", False), ("hf", False), ("zero", True)],
    ids=["padding-free", "pad_outputs=hf", "padded, attentions"],
)
def test_hidden_states_are_on_the_gradient_path(pad_outputs, output_attentions):
    ref = make_hf(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fb = fastbert.from_hf(ref)
    fb.pad_outputs = pad_outputs
    ids, mask, _ = ragged(3, 13, ref.config.vocab_size, seed=2)
    grads = []
    for model in (ref, fb):
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=output_attentions)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        for h in out.hidden_states:
            h.retain_grad()
        _masked_loss(out, mask).backward()
        assert all(h.grad is not None for h in out.hidden_states), [h.grad is None for h in out.hidden_states]
        grads.append([h.grad for h in out.hidden_states])
    keep = mask.bool().unsqueeze(-1)
    for i, (g_ref, g_fb) in enumerate(zip(*grads)):
        assert float(g_fb.abs().max()) > 0, i
        # pad positions: transformers' pad states feed nothing the loss reads, so their gradient is zero too
        assert max_diff(g_fb * keep, g_ref * keep) <= 1e-4 * max(1.0, float(g_ref.abs().max())), i
        assert max_diff(g_fb, g_ref) <= 1e-4 * max(1.0, float(g_ref.abs().max())), i


def test_selected_hidden_states_are_on_the_gradient_path():
    fb = fastbert.from_hf(make_hf(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, mask, _ = ragged(2, 9, fb.config.vocab_size, seed=5)
    out = fb(input_ids=ids, attention_mask=mask, output_hidden_states=[1, -1])
    hs = out.hidden_states
    assert [h is None for h in hs] == [i not in (1, len(hs) - 1) for i in range(len(hs))]
    grad_1, grad_last = torch.autograd.grad(_masked_loss(out, mask), [hs[1], hs[-1]])
    assert float(grad_1.abs().max()) > 0 and float(grad_last.abs().max()) > 0


def test_hidden_states_without_gradients_are_unchanged():
    """Under no_grad the states are the same values (the re-packing only happens when gradients flow)."""
    fb = fastbert.from_hf(make_hf())
    fb.eval()
    ids, mask, _ = ragged(3, 11, fb.config.vocab_size, seed=1)
    with torch.no_grad():
        a = fb(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    b = fb(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for x, y in zip(a, b):
        assert max_diff(x, y.detach()) <= 1e-5


CLASSES = [(getattr(heads, name), getattr(hf, name)) for name in heads.__all__] + [(fastbert.BertModel, hf.BertModel)]


@pytest.mark.parametrize("ours, theirs", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
def test_forward_declares_transformers_keyword_arguments(ours, theirs):
    """Code that reads the signature (Trainer's label and loss-kwargs detection, generation's argument check)
    sees what it sees on transformers' class: every parameter, and **kwargs typed Unpack[TransformersKwargs]."""
    mine = inspect.signature(ours.forward, eval_str=True).parameters
    ref = inspect.signature(theirs.forward, eval_str=True).parameters
    # transformers renamed past_key_values to cache (fastbert takes both and refuses them: an encoder only)
    missing = set(ref) - set(mine)
    assert not missing, missing
    assert mine["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert mine["kwargs"].annotation == ref["kwargs"].annotation


def test_cache_is_refused():
    fb = fastbert.from_hf(make_hf())
    ids, mask, _ = ragged(1, 5, fb.config.vocab_size)
    with pytest.raises(NotImplementedError, match="encoder only"):
        fb(input_ids=ids, attention_mask=mask, cache=object())


def _enable_checkpointing(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5.x: an alias of activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _graph_names(t):
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_keeps_its_settings(reentrant):
    ref = make_hf(hf.BertForSequenceClassification, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fb = fastbert.from_hf(ref)
    batch = dict(zip(("input_ids", "attention_mask"), ragged(3, 13, ref.config.vocab_size, seed=3)[:2]))
    labels = torch.tensor([0, 1, 1])
    for model in (ref, fb):
        _enable_checkpointing(model, use_reentrant=reentrant)
        model.train()
    loss_fb = fb(**batch, labels=labels).loss
    # torch's reentrant checkpoint is an autograd.Function (CheckpointFunction); the non-reentrant one is not
    assert ("CheckpointFunctionBackward" in _graph_names(loss_fb)) == reentrant
    loss_fb.backward()
    ref(**batch, labels=labels).loss.backward()
    for (name, a), b in zip(fb.named_parameters(), ref.parameters()):
        if b.grad is not None:
            assert max_diff(a.grad, b.grad) <= 1e-3 * max(1.0, float(b.grad.abs().max())), name


def test_gradient_checkpointing_uses_a_custom_function():
    fb = fastbert.from_hf(make_hf(hf.BertForSequenceClassification, hidden_dropout_prob=0.0))
    calls = []

    def my_checkpoint(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)

    fb._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=my_checkpoint)
    fb.train()
    ids, mask, _ = ragged(2, 7, fb.config.vocab_size, seed=4)
    fb(input_ids=ids, attention_mask=mask, labels=torch.tensor([1, 0])).loss.backward()
    assert len(calls) == fb.config.num_hidden_layers
    assert all(p.grad is not None for p in fb.bert.encoder.parameters())


def test_masked_lm_refuses_cross_attention_inputs():
    fb = fastbert.from_hf(make_hf(hf.BertForMaskedLM))
    ids, mask, _ = ragged(1, 5, fb.config.vocab_size)
    with pytest.raises(NotImplementedError, match="encoder_hidden_states"):
        fb(input_ids=ids, attention_mask=mask, encoder_hidden_states=torch.zeros(1, 5, fb.config.hidden_size))


def test_reentrant_checkpointing_with_frozen_embeddings():
    """Frozen embeddings (as under LoRA) and use_reentrant=True: the layers still get their gradients, as in
    transformers (which makes the embedding output require grad)."""
    ref = make_hf(hf.BertForSequenceClassification, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    fb = fastbert.from_hf(ref)
    batch = dict(zip(("input_ids", "attention_mask"), ragged(2, 9, ref.config.vocab_size, seed=6)[:2]))
    labels = torch.tensor([1, 0])
    for model in (ref, fb):
        model.bert.embeddings.requires_grad_(False)
        _enable_checkpointing(model, use_reentrant=True)
        model.train()
        model(**batch, labels=labels).loss.backward()
    for (name, a), b in zip(fb.named_parameters(), ref.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            assert max_diff(a.grad, b.grad) <= 1e-3 * max(1.0, float(b.grad.abs().max())), name
    assert fb.bert.encoder.layer[0].attention.self.query.weight.grad is not None
