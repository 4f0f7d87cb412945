"""fastbert.load_encoder and `fastbert encode --model DIR` on folders of every BERT-family model type (roberta,
xlm-roberta, camembert, distilbert, electra; bert is tests/cli/test_encode.py's): random small models saved by
transformers (base models and head models, whose keys carry the family's prefix), a small tokenizer.json of the
family's kind; outputs against transformers' own model on the same ids."""

import json

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import fastbert
from fastbert import cli
from tests.helpers import TOL, max_diff, perturb_
from tests.hf.test_families import batch, make_config

WORDS = "the a quick brown fox jumps over lazy dog cat runs sleeps and or not very small big red blue".split()
FOLDERS = ["roberta", "xlm-roberta", "camembert", "distilbert", "distilbert-sinusoidal", "electra"]
HF_BASE = {
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "camembert": "CamembertModel",
    "distilbert": "DistilBertModel",
    "distilbert-sinusoidal": "DistilBertModel",
    "electra": "ElectraModel",
}


def save_tokenizer(path, family):
    """A word-level tokenizer.json: RoBERTa's specials (<s>=0, <pad>=1, </s>=2) or BERT's ([PAD]=0, ...)."""
    if family.startswith(("roberta", "xlm", "camembert")):
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        single, pair = "<s> $A </s>", "<s> $A </s> </s> $B </s>"
        cls, sep = "<s>", "</s>"
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        single, pair = "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"
        cls, sep = "[CLS]", "[SEP]"
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[3] if specials[0] == "<s>" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])]
    )
    tok.save(str(path / "tokenizer.json"))
    return tok


def save_model(path, family, head="Model"):
    config = make_config(family, hidden=32, heads=2)
    prefix = HF_BASE[family][: -len("Model")]
    torch.manual_seed(0)
    ref = perturb_(getattr(transformers, prefix + head)(config)).eval()
    ref.save_pretrained(path)
    return ref if head == "Model" else ref.base_model


@pytest.mark.parametrize("family", FOLDERS)
@pytest.mark.parametrize("head", ["Model", "ForMaskedLM"])
@pytest.mark.parametrize("pad_outputs", ["zero", "hf"])
def test_load_encoder_matches_transformers(tmp_path, family, head, pad_outputs):
    ref = save_model(tmp_path, family, head)
    enc = fastbert.load_encoder(str(tmp_path), pad_outputs=pad_outputs)
    assert enc.config.model_type == ref.config.model_type
    for padding in ("right", "left", "holes"):
        ids, mask = batch(family.split("-sinusoidal")[0], 3, 11, padding)
        with torch.no_grad():
            r = ref(input_ids=ids, attention_mask=mask)
            o = enc(ids, mask)
        assert max_diff(o, r.last_hidden_state, None if pad_outputs == "hf" else mask) <= TOL, padding
        if getattr(r, "pooler_output", None) is not None and padding != "left":
            assert max_diff(enc.pool(o), r.pooler_output) <= TOL


def test_load_encoder_keeps_the_family_names(tmp_path):
    ref = save_model(tmp_path, "distilbert")
    enc = fastbert.load_encoder(str(tmp_path))
    assert set(enc.state_dict()) == {k for k in ref.state_dict() if "position_ids" not in k}
    assert enc.config.hidden_size == 32 and enc.config.hidden_act == "gelu" and not enc.uses_token_types


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_encode_command_reads_the_folder(tmp_path, capsys, family):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    ref = save_model(model_dir, family)
    tok = save_tokenizer(model_dir, family)
    texts = ["the quick brown fox", "a lazy dog sleeps", "red", "the cat runs and the dog runs very small"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    code = cli.main(
        ["encode", "--model", str(model_dir), "-i", str(tmp_path / "in.txt"), "-o", str(out), "--pooling", "mean"]
        + ["--no-normalize"]
    )
    assert code == 0, capsys.readouterr().err
    got = np.load(out)
    pad = ref.config.pad_token_id
    expected = []
    with torch.no_grad():
        for text in texts:  # one row at a time, no padding: transformers' numbers
            ids = torch.tensor([tok.encode(text).ids])
            assert int(ids.max()) < ref.config.vocab_size and pad not in ids.tolist()[0]
            expected.append(ref(input_ids=ids).last_hidden_state.mean(1)[0].numpy())
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-4)


def test_model_defaults_read_distilbert_dim(tmp_path):
    from fastbert.batch import job

    save_model(tmp_path, "distilbert")
    save_tokenizer(tmp_path, "distilbert")
    assert json.loads((tmp_path / "config.json").read_text())["dim"] == 32
    assert job.model_defaults(str(tmp_path)).hidden_size == 32


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "camembert", "distilbert", "electra"])
def test_validate_command_passes(tmp_path, capsys, family):
    save_model(tmp_path, family, "ForMaskedLM")  # a head checkpoint: keys under the family's prefix
    save_tokenizer(tmp_path, family)
    code = cli.main(["validate", "--model", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert HF_BASE[family] + " last_hidden_state" in out and "sentences and pairs, tokenized" in out
    assert "PASS" in out


def test_encode_int8_on_distilbert_and_unknown_model_type(tmp_path):
    import numpy as np

    save_model(tmp_path, "distilbert")
    save_tokenizer(tmp_path, "distilbert")
    (tmp_path / "in.txt").write_text("the dog runs\na cat\nthe river bank and the money\n", encoding="utf-8")
    outs = {}
    for dtype in ("float32", "int8"):
        out = tmp_path / f"{dtype}.npy"
        args = ["encode", "--model", str(tmp_path), "-i", str(tmp_path / "in.txt"), "-o", str(out), "--dtype", dtype]
        assert cli.main(args) == 0
        outs[dtype] = np.load(out)
    f, q = outs["float32"], outs["int8"]
    cos = (f * q).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1))
    assert f.shape == q.shape == (3, f.shape[1]) and cos.min() >= 0.99 and not np.array_equal(f, q)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "albert"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'albert'"):
        fastbert.load_encoder(str(tmp_path))
