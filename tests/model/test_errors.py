"""Bad input gets a ValueError/TypeError/IndexError (or NotImplementedError for unsupported features) whose
message names the argument and what was expected."""

import json
import os

import pytest
import torch

import fastbert
from fastbert import ops
from fastbert.model import forward
from tests.helpers import hf_config, make_hf, ragged


@pytest.fixture(scope="module")
def fb():
    return fastbert.from_hf(make_hf())


@pytest.fixture(scope="module")
def lean():
    hf = make_hf()
    enc = fastbert.Encoder(fastbert.EncoderConfig.from_dict(hf.config.to_dict()))
    enc.load_state_dict(hf.state_dict())
    return enc


V, L = 211, 9


def _ids(B=2, n=L):
    return torch.randint(1, V, (B, n))


BAD = [
    (dict(input_ids=torch.tensor([[1, 2, V]])), IndexError, "input_ids.*vocabulary"),
    (dict(input_ids=torch.tensor([[1, -1, 3]])), IndexError, "input_ids"),
    (dict(input_ids=torch.rand(2, 5)), TypeError, "input_ids.*integer"),
    (dict(input_ids=torch.tensor([1, 2, 3])), ValueError, r"input_ids.*\(batch, seq_len\)"),
    (dict(input_ids=[[1, 2, 3]]), TypeError, "input_ids"),
    (dict(input_ids=_ids(), token_type_ids=torch.full((2, L), 2)), IndexError, "token_type_ids.*type_vocab_size"),
    (dict(input_ids=_ids(), token_type_ids=torch.zeros(2, L - 1, dtype=torch.long)), ValueError, "token_type_ids"),
    (dict(input_ids=_ids(), token_type_ids=torch.zeros(2, L)), TypeError, "token_type_ids"),
    (dict(input_ids=_ids(n=41)), ValueError, "max_position_embeddings"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(2, L + 1)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(3, L)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(L)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(2, L, L - 1)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(2, 3, L, L)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), attention_mask=torch.ones(1, 1, 2, L, L)), ValueError, "attention_mask"),
    (dict(input_ids=_ids(), position_ids=torch.full((2, L), 40)), IndexError, "position_ids"),
    (dict(input_ids=_ids(), position_ids=torch.zeros(2, L + 1, dtype=torch.long)), ValueError, "position_ids"),
]


@pytest.mark.parametrize("kwargs,exc,msg", BAD)
def test_bad_input(fb, lean, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        fb(**kwargs)
    lean_kwargs = {k: v for k, v in kwargs.items()}
    with pytest.raises(exc, match=msg):
        lean(**lean_kwargs)


def test_ids_and_embeds_exclusive(fb):
    with pytest.raises(ValueError, match="input_ids"):
        fb(input_ids=_ids(), inputs_embeds=torch.randn(2, L, 64))
    with pytest.raises(ValueError, match="input_ids"):
        fb()


def test_head_mask_is_refused(fb):
    with pytest.raises(ValueError, match="head_mask"):
        fb(_ids(), head_mask=torch.ones(2, 4))


def test_decoder_use_not_implemented(fb):
    with pytest.raises(NotImplementedError):
        fb(_ids(), encoder_hidden_states=torch.randn(2, 3, 64))
    with pytest.raises(NotImplementedError):
        fastbert.BertModel(hf_config(is_decoder=True))
    with pytest.raises(NotImplementedError):
        fastbert.optimize(make_hf(is_decoder=True))
    with pytest.raises(NotImplementedError):
        fastbert.Encoder(fastbert.EncoderConfig(is_decoder=True))


def test_bad_configs():
    with pytest.raises(ValueError, match="hidden_size.*num_attention_heads"):
        fastbert.EncoderConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="hidden_act"):
        fastbert.EncoderConfig(hidden_act="mish-ish")
    with pytest.raises(ValueError, match="pad_outputs"):
        fastbert.BertModel(hf_config(), pad_outputs="nan")
    with pytest.raises(ValueError, match="pad_outputs"):
        fastbert.optimize(make_hf(), pad_outputs="left")
    with pytest.raises(NotImplementedError, match="position_embedding_type"):
        fastbert.EncoderConfig(position_embedding_type="relative_key")


def _save(tmp_path, hf):
    d = tmp_path / "m"
    hf.save_pretrained(d)
    return d


def test_corrupt_checkpoint_names_the_file(tmp_path):
    d = _save(tmp_path, make_hf())
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        fastbert.load_encoder(str(d))
    f.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        fastbert.load_encoder(str(d))
    with pytest.raises(Exception, match="model.safetensors|safetensors|header|deserializ"):
        fastbert.BertModel.from_pretrained(str(d))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        fastbert.load_encoder(str(tmp_path / "nope"))
    d = _save(tmp_path, make_hf())
    os.remove(d / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors|pytorch_model.bin"):
        fastbert.load_encoder(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        fastbert.load_encoder(str(d))


def test_checkpoint_that_disagrees_with_config(tmp_path):
    d = _save(tmp_path, make_hf())
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model.safetensors.*intermediate.dense"):
        fastbert.load_encoder(str(d))


def test_lean_pool_without_pooler():
    enc = fastbert.Encoder(
        fastbert.EncoderConfig(
            **{
                k: v
                for k, v in hf_config().to_dict().items()
                if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
            }
        ),
        add_pooling_layer=False,
    )
    with pytest.raises(ValueError, match="pool"):
        enc.pool(torch.zeros(1, 2, 64))


def test_checks_skipped_while_compiling(monkeypatch):
    """check_inputs is not called while torch.compile traces (data-dependent branches)."""
    called = []
    monkeypatch.setattr(forward, "check_inputs", lambda *a, **k: called.append(1))
    monkeypatch.setattr(ops, "compiling", lambda: True)
    fb_ = fastbert.from_hf(make_hf())
    ids, mask, _ = ragged(2, 5, V)
    with torch.no_grad():
        fb_(ids, attention_mask=mask)
    assert not called
