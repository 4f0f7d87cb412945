"""RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT and ELECTRA (fastbert/hf/roberta.py, distilbert.py, electra.py)
against transformers' eager classes with the same weights: every head's outputs at real positions (fp32, max
|diff| <= 1e-4; everywhere with pad_outputs="hf"), right and left padding and holes in the mask, head sizes 16
and 32, odd lengths, batch 1 and 3; every parameter's gradient under each head's own loss (relative 1e-3);
checkpoints both ways; optimize / restore; refused configurations."""

import pytest
import torch
import transformers

import fastbert
from tests.helpers import TOL, max_diff, perturb_

# family -> (config class, class-name prefix, extra config, pad token id)
FAMILIES = {
    "roberta": (transformers.RobertaConfig, "Roberta", dict(type_vocab_size=1), 1),
    "xlm-roberta": (transformers.XLMRobertaConfig, "XLMRoberta", dict(type_vocab_size=1), 1),
    "camembert": (transformers.CamembertConfig, "Camembert", dict(type_vocab_size=1), 1),
    "electra": (transformers.ElectraConfig, "Electra", dict(embedding_size=24, type_vocab_size=2), 0),
    "electra-same-width": (transformers.ElectraConfig, "Electra", dict(type_vocab_size=2), 0),
    "distilbert": (transformers.DistilBertConfig, "DistilBert", dict(), 0),
    "distilbert-sinusoidal": (transformers.DistilBertConfig, "DistilBert", dict(sinusoidal_pos_embds=True), 0),
}
COMMON_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMaskedLM",
    "ForMultipleChoice",
)


def heads_of(family):
    return ("Model",) + COMMON_HEADS + (("ForPreTraining",) if family.startswith("electra") else ())


CASES = [(f, h) for f in FAMILIES for h in heads_of(f)]
VOCAB, LAYERS, INTER, MAX_POS = 97, 2, 80, 40


def make_config(family, hidden=64, heads=2, **kw):
    cls, _, extra, pad = FAMILIES[family]
    if cls is transformers.DistilBertConfig:
        d = dict(dim=hidden, n_heads=heads, n_layers=LAYERS, hidden_dim=INTER, dropout=0.0, attention_dropout=0.0)
        d.update(seq_classif_dropout=0.0, qa_dropout=0.0)
    else:
        d = dict(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=LAYERS, intermediate_size=INTER)
        d.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
        if family.startswith("electra"):
            d["summary_last_dropout"] = 0.0  # the multiple-choice head's own dropout
            if "embedding_size" not in extra:
                d["embedding_size"] = hidden
    d.update(vocab_size=VOCAB, max_position_embeddings=MAX_POS, pad_token_id=pad, num_labels=2, **extra)
    d.update(kw)
    config = cls(**d)
    config._attn_implementation = "eager"
    return config


def pair(family, head, pad_outputs="zero", seed=0, **kw):
    """(transformers' model, fastbert's) with the same random weights, eval mode (dropout is 0 anyway)."""
    prefix = FAMILIES[family][1]
    config = make_config(family, **kw)
    torch.manual_seed(seed)
    ref = perturb_(getattr(transformers, prefix + head)(config), seed).eval()
    ours = getattr(fastbert, prefix + head)(config, pad_outputs=pad_outputs).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    return ref, ours


def batch(family, B, L, padding, seed=0):
    """ids (B, L) with the family's pad id at pad positions, mask (B, L) int64. padding: "right", "left",
    "holes" (right padding plus masked-out real tokens: RoBERTa's positions still count them, as
    transformers', which reads the ids), "holes-pad" (holes that carry the pad id too)."""
    pad = FAMILIES[family][3]
    g = torch.Generator().manual_seed(seed)
    lengths = [L, max(1, L - 4), max(1, L // 2)][:B] if B > 1 else [L - 2]
    ids = torch.randint(2, VOCAB, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, n in enumerate(lengths):
        if padding == "left":
            mask[b, L - n :] = 1
        else:
            mask[b, :n] = 1
    real = mask.bool()
    if padding.startswith("holes"):
        hole = (torch.rand(B, L, generator=g) < 0.25) & real
        hole[:, 0] = False
        mask = mask.masked_fill(hole, 0)
        if padding == "holes-pad":
            real = mask.bool()
    ids = ids.masked_fill(~real, pad)
    return ids, mask


def inputs(family, head, B, L, padding, seed=0):
    ids, mask = batch(family, B, L, padding, seed)
    if head == "ForMultipleChoice":  # (B, 2, L): two choices per example
        ids2, mask2 = batch(family, B, L, padding, seed + 5)
        return dict(input_ids=torch.stack([ids, ids2], 1), attention_mask=torch.stack([mask, mask2], 1)), None
    kw = dict(input_ids=ids, attention_mask=mask)
    if FAMILIES[family][2].get("type_vocab_size", 0) > 1:
        kw["token_type_ids"] = (torch.arange(L) >= L // 2).long().expand(B, L).contiguous()
    return kw, mask.bool()


def outputs(out, head):
    """(name, tensor, per-token?) of every tensor a head returns."""
    if head == "Model":
        res = [("last_hidden_state", out.last_hidden_state, True)]
        if getattr(out, "pooler_output", None) is not None:
            res.append(("pooler_output", out.pooler_output, False))
        return res
    if head == "ForQuestionAnswering":
        return [("start_logits", out.start_logits, True), ("end_logits", out.end_logits, True)]
    per_token = head in ("ForTokenClassification", "ForMaskedLM", "ForPreTraining")
    return [("logits", out.logits, per_token)]


def compare(ref_out, our_out, head, keep, everywhere):
    for (name, r, tok), (_, o, _) in zip(outputs(ref_out, head), outputs(our_out, head)):
        assert r.shape == o.shape, name
        d = max_diff(o, r, None if (everywhere or not tok) else keep)
        assert d <= TOL, f"{name}: max |diff| {d}"


@pytest.mark.parametrize("family,head", CASES)
@pytest.mark.parametrize("padding", ["right", "left", "holes", "holes-pad"])
@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_outputs_match_transformers(family, head, padding, pad_outputs):
    ref, ours = pair(family, head, pad_outputs)
    for B, L in ((3, 13), (1, 7)):
        kw, keep = inputs(family, head, B, L, padding)
        with torch.no_grad():
            r, o = ref(**kw), ours(**kw)
        # A sequence-level output reads position 0, a pad position under left padding: only "hf" computes it.
        if padding == "left" and pad_outputs == "zero" and head in ("ForSequenceClassification", "ForMultipleChoice"):
            continue
        if padding == "left" and pad_outputs == "zero" and head == "Model":
            assert max_diff(o.last_hidden_state, r.last_hidden_state, keep) <= TOL
            continue
        compare(r, o, head, keep, pad_outputs == "hf")


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("hidden,heads", [(32, 2), (64, 2)])  # head sizes 16 and 32
def test_head_sizes_and_hidden_states(family, hidden, heads):
    ref, ours = pair(family, "Model", hidden=hidden, heads=heads, seed=3)
    kw, keep = inputs(family, "Model", 3, 11, "holes", seed=4)
    with torch.no_grad():
        r = ref(**kw, output_hidden_states=True)
        o = ours(**kw, output_hidden_states=True)
    assert len(r.hidden_states) == len(o.hidden_states) == LAYERS + 1
    for i, (a, b) in enumerate(zip(r.hidden_states, o.hidden_states)):
        assert max_diff(b, a, keep) <= TOL, f"hidden_states[{i}]"


def _labels(family, head, kw, keep, config, g):
    B = kw["input_ids"].shape[0]
    if head == "ForSequenceClassification" or head == "ForMultipleChoice":
        return dict(labels=torch.randint(0, 2 if head == "ForMultipleChoice" else config.num_labels, (B,), generator=g))
    if head == "ForQuestionAnswering":
        return dict(start_positions=torch.tensor([1, 3, 2][:B]), end_positions=torch.tensor([2, 4, 6][:B]))
    n = {"ForTokenClassification": config.num_labels, "ForMaskedLM": config.vocab_size, "ForPreTraining": 2}[head]
    labels = torch.randint(0, n, keep.shape, generator=g)
    if head == "ForPreTraining":  # ELECTRA's discriminator: 1 = replaced token; its loss reads the mask
        return dict(labels=labels)
    return dict(labels=labels.masked_fill(~keep, -100))


GRAD_CASES = [(f, h) for f, h in CASES if h != "Model"]


@pytest.mark.parametrize("family,head", GRAD_CASES)
def test_gradients_match_transformers(family, head):
    """Each head's own loss; pad positions out of every loss (labels -100; ELECTRA's discriminator loss reads
    the mask), except QA's softmax over all positions: "hf" pad outputs there."""
    pad_outputs = "hf" if head == "ForQuestionAnswering" else "zero"
    ref, ours = pair(family, head, pad_outputs, seed=1)
    ref.train(), ours.train()  # dropout probabilities are 0
    kw, keep = inputs(family, head, 3, 9, "right", seed=2)
    if keep is None:
        keep = kw["attention_mask"][:, 0].bool()
    kw.update(_labels(family, head, kw, keep, ref.config, torch.Generator().manual_seed(3)))
    lr, lo = ref(**kw).loss, ours(**kw).loss
    assert abs(float(lr) - float(lo)) <= TOL * max(1.0, abs(float(lr)))
    lr.backward()
    lo.backward()
    ours_params = dict(ours.named_parameters())
    checked = 0
    for name, p in ref.named_parameters():
        q = ours_params[name]
        if p.grad is None:
            assert q.grad is None or float(q.grad.abs().max()) == 0.0, name
            continue
        # relative 1e-3, with a floor for gradients that are 0 up to rounding (a bias every choice shares)
        assert float((q.grad - p.grad).abs().max()) <= 1e-3 * float(p.grad.abs().max()) + 1e-6, name
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_save_pretrained_loads_in_transformers(tmp_path, family):
    prefix = FAMILIES[family][1]
    config = make_config(family)
    torch.manual_seed(0)
    ours = perturb_(getattr(fastbert, prefix + "ForMaskedLM")(config)).eval()
    ours.save_pretrained(tmp_path)
    ref = getattr(transformers, prefix + "ForMaskedLM").from_pretrained(tmp_path, attn_implementation="eager").eval()
    back = getattr(fastbert, prefix + "ForMaskedLM").from_pretrained(tmp_path, pad_outputs="hf").eval()
    assert getattr(back, ref.base_model_prefix).pad_outputs == "hf"
    kw, keep = inputs(family, "ForMaskedLM", 3, 9, "right")
    with torch.no_grad():
        r, o, b = ref(**kw).logits, ours(**kw).logits, back(**kw).logits
    assert max_diff(o, r, keep) <= TOL and max_diff(b, r) <= TOL


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "camembert", "distilbert", "electra"])
def test_optimize_and_restore(family):
    ref, _ = pair(family, "ForTokenClassification")
    hf_cls = type(ref.base_model)
    kw, keep = inputs(family, "ForTokenClassification", 3, 11, "left")
    with torch.no_grad():
        expected = ref(**kw).logits
        copy = fastbert.from_hf(ref)
        assert not fastbert.is_optimized(ref) and fastbert.is_optimized(copy)
        assert max_diff(copy(**kw).logits, expected, keep) <= TOL
        fastbert.optimize(ref)
        assert isinstance(ref.base_model, hf_cls) and fastbert.is_optimized(ref)
        assert max_diff(ref(**kw).logits, expected, keep) <= TOL
        fastbert.restore(ref)
        assert type(ref.base_model) is hf_cls
        assert max_diff(ref(**kw).logits, expected) == 0.0


def test_optimize_finds_a_sentence_transformers_model():
    """A sentence-transformers model keeps its encoder as ``auto_model`` inside a module list."""
    ref, _ = pair("roberta", "Model")

    class Transformer(torch.nn.Module):  # sentence-transformers' module shape: the HF model under auto_model
        def __init__(self, auto_model):
            super().__init__()
            self.auto_model = auto_model

    st = torch.nn.Sequential(Transformer(ref))
    kw, keep = inputs("roberta", "Model", 3, 11, "right")
    with torch.no_grad():
        expected = ref(**kw).last_hidden_state
        fastbert.optimize(st)
        assert fastbert.is_optimized(st[0].auto_model)
        assert max_diff(st[0].auto_model(**kw).last_hidden_state, expected, keep) <= TOL


def test_roberta_positions_follow_input_ids_not_the_mask():
    """transformers counts RoBERTa positions over non-pad ids; a masked-out real token still takes a position."""
    ref, ours = pair("roberta", "Model", pad_outputs="hf")
    ids, mask = batch("roberta", 3, 11, "holes", seed=9)
    assert bool(((mask == 0) & (ids != 1)).any())  # a hole carrying a real id
    with torch.no_grad():
        assert max_diff(ours(ids, mask).last_hidden_state, ref(ids, mask).last_hidden_state) <= TOL
        embeds = ref.embeddings.word_embeddings(ids)  # from inputs_embeds: sequential from padding_idx + 1
        r = ref(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        assert max_diff(ours(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, r) <= TOL


def test_electra_inputs_embeds_have_the_embedding_width():
    ref, ours = pair("electra", "Model")
    ids, mask = batch("electra", 3, 9, "right")
    embeds = ref.embeddings.word_embeddings(ids).detach()
    assert embeds.shape[-1] == 24
    with torch.no_grad():
        r = ref(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        assert max_diff(ours(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, r, mask) <= TOL
    with pytest.raises(ValueError, match="inputs_embeds"):
        ours(inputs_embeds=torch.randn(2, 5, 64))


def test_roberta_length_limit_counts_the_offset():
    ref, ours = pair("roberta", "Model")
    ids = torch.randint(2, VOCAB, (1, MAX_POS - 1))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(ids)
    ok = ids[:, : MAX_POS - 2]
    with torch.no_grad():
        assert max_diff(ours(ok).last_hidden_state, ref(ok).last_hidden_state) <= TOL


@pytest.mark.parametrize("family", ["roberta", "electra", "distilbert"])
@pytest.mark.parametrize(
    "field,value",
    [("position_embedding_type", "relative_key"), ("is_decoder", True), ("add_cross_attention", True)],
)
def test_unsupported_configurations_name_the_field(family, field, value):
    config = make_config(family, **{field: value})
    prefix = FAMILIES[family][1]
    with pytest.raises(NotImplementedError, match=field):
        getattr(fastbert, prefix + "Model")(config)
    with pytest.raises(NotImplementedError, match=field):
        getattr(fastbert, prefix + "ForSequenceClassification")(config)
    hf_model = getattr(transformers, prefix + "Model")(make_config(family))
    hf_model.config.position_embedding_type = "relative_key_query"
    with pytest.raises(NotImplementedError, match="position_embedding_type"):
        fastbert.optimize(hf_model)


def test_distilbert_refuses_token_type_ids():
    _, ours = pair("distilbert", "Model")
    enc = ours  # DistilBertModel's forward has no token_type_ids; the shared run refuses them by name
    from fastbert.model import run

    with pytest.raises(ValueError, match="token_type_ids"):
        run(enc, enc.config, torch.ones(1, 3, dtype=torch.long), token_type_ids=torch.zeros(1, 3, dtype=torch.long))


def _additive(keep4d):
    return torch.zeros(keep4d.shape).masked_fill(~keep4d.bool(), torch.finfo(torch.float32).min)


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_every_mask_form(family):
    """2-D bool/int/float masks agree; 3-D keep masks and 4-D bool or additive masks match transformers given
    the equivalent 4-D additive mask."""
    ref, ours = pair(family, "Model", seed=4)
    ids, mask = batch(family, 3, 13, "holes-pad", seed=5)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        for m in (mask.bool(), mask.float(), mask.int()):
            assert max_diff(ours(input_ids=ids, attention_mask=m).last_hidden_state, expected, mask) <= TOL
        full = torch.randint(2, VOCAB, (3, 12), generator=torch.Generator().manual_seed(6))
        keep = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(7)) < 0.6
        keep[..., 0] = True
        r = ref(input_ids=full, attention_mask=_additive(keep)).last_hidden_state
        for m in (keep, _additive(keep), keep[:, 0], keep[:, 0].long()):
            assert max_diff(ours(input_ids=full, attention_mask=m).last_hidden_state, r) <= TOL


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_position_ids_attentions_and_inputs_embeds(family):
    ref, ours = pair(family, "Model", seed=5)
    ids, mask = batch(family, 3, 11, "right", seed=6)
    pos = torch.randint(0, MAX_POS - 11, (1,)).item() + torch.arange(11).expand(3, 11)
    embeds = ref.embeddings.word_embeddings(ids).detach()
    with torch.no_grad():
        for kw in (
            dict(input_ids=ids, attention_mask=mask, position_ids=pos),
            dict(inputs_embeds=embeds, attention_mask=mask),
            dict(input_ids=ids[:, :7], position_ids=torch.tensor([[2, 3, 4, 2, 3, 4, 5]])),  # packed rows
        ):
            keep = kw.get("attention_mask")
            r, o = ref(**kw), ours(**kw)
            assert max_diff(o.last_hidden_state, r.last_hidden_state, keep) <= TOL, sorted(kw)
        r = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        o = ours(input_ids=ids, attention_mask=mask, output_attentions=True)
        assert len(o.attentions) == LAYERS
        for a, b in zip(r.attentions, o.attentions):
            assert (
                max_diff(b[mask.bool()[:, None, :, None].expand_as(b)], a[mask.bool()[:, None, :, None].expand_as(a)])
                <= TOL
            )


def test_pickle_and_deepcopy_of_an_optimized_model():
    import copy
    import pickle

    ref, _ = pair("distilbert", "ForSequenceClassification")
    fastbert.optimize(ref)
    ids, mask = batch("distilbert", 3, 9, "right")
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        for other in (pickle.loads(pickle.dumps(ref)), copy.deepcopy(ref)):
            assert fastbert.is_optimized(other)
            assert max_diff(other(input_ids=ids, attention_mask=mask).logits, expected) == 0.0


@pytest.mark.skipif(not fastbert.ops.has_kernel("quantize_rows", "cpu"), reason="int8 kernels not built")
@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_int8_runs_every_family(family):
    """int8 (the family's own layer names, RoBERTa's positions in the calibration forward, ELECTRA's projection
    before the layers) within int8's tolerance of transformers' float model, and back to float after dequantize."""
    ref, ours = pair(family, "Model", seed=3)
    ids, mask = batch(family, 3, 13, "right")
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = fastbert.quantize(ours)(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        assert float(torch.nn.functional.cosine_similarity(got[keep], expected[keep], dim=-1).min()) >= 0.999
        assert max_diff(got[keep], expected[keep]) > 0  # int8 ran, not the float path
        fastbert.dequantize(ours)
        assert max_diff(ours(input_ids=ids, attention_mask=mask).last_hidden_state[keep], expected[keep]) < 1e-4


def test_sentence_transformers_model_on_roberta(tmp_path):
    """A real sentence-transformers model (its Transformer module + mean pooling) over a RoBERTa folder, optimized
    in place, then restored."""
    st = pytest.importorskip("sentence_transformers")
    from tests.model.test_family_loading import save_tokenizer

    ref, _ = pair("roberta", "Model", seed=8)
    ref.save_pretrained(tmp_path)
    save_tokenizer(tmp_path, "roberta")
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "model_max_length": 32}'
    )
    model = st.SentenceTransformer(str(tmp_path), device="cpu", model_kwargs={"attn_implementation": "eager"})
    texts = ["the quick brown fox", "a dog", "the lazy cat sleeps and the red fox runs"]
    expected = model.encode(texts, convert_to_tensor=True)
    fastbert.optimize(model)
    assert fastbert.is_optimized(model)
    assert max_diff(model.encode(texts, convert_to_tensor=True), expected) <= TOL
    fastbert.restore(model)
    assert not fastbert.is_optimized(model)


@pytest.mark.skipif(
    not all(fastbert.ops.has_kernel(op, "cpu") for op in ("attention", "attention_masked", "pack")),
    reason="fullgraph needs the compiled CPU attention kernels",
)
@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_compile_fullgraph(family):
    torch._dynamo.reset()
    ref, ours = pair(family, "Model", seed=2)
    compiled = torch.compile(ours, fullgraph=True, dynamic=True)
    for B, L in ((3, 13), (2, 9)):
        ids, mask = batch(family, B, L, "right")
        with torch.no_grad():
            o = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
            assert max_diff(o, ref(input_ids=ids, attention_mask=mask).last_hidden_state, mask) <= TOL


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_gradient_checkpointing(family):
    ref, ours = pair(family, "ForTokenClassification", seed=6)
    ours.gradient_checkpointing_enable()
    assert all(
        layer.gradient_checkpointing
        for layer in ours.base_model.get_submodule("transformer.layer" if family == "distilbert" else "encoder.layer")
    )
    ref.train(), ours.train()
    kw, keep = inputs(family, "ForTokenClassification", 3, 9, "right", seed=7)
    kw["labels"] = torch.randint(0, 2, keep.shape).masked_fill(~keep, -100)
    ref(**kw).loss.backward()
    ours(**kw).loss.backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            assert float((grads[name].grad - p.grad).abs().max()) <= 1e-3 * float(p.grad.abs().max()) + 1e-6, name


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_layer_parts_look_through_a_forwarding_wrapper(family):
    """An activation-checkpoint wrapper forwards attributes; the layer's parts are found through it."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from fastbert.runtime.weights import layer_parts

    _, ours = pair(family, "Model")
    layer = ours.base_model.get_submodule("transformer.layer" if family == "distilbert" else "encoder.layer")[0]
    assert layer_parts(checkpoint_wrapper(layer)) == layer_parts(layer)
