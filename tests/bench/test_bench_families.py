"""fastbert.bench and `fastbert bench` on the other BERT-family model types: the named shapes (roberta-base,
xlm-roberta-base, distilbert-base, electra-base) make transformers' configs of the right class and size, and on
tiny folders of each family every implementation agrees with transformers' eager model at real positions."""

import pytest
import torch
import transformers

from fastbert import cli
from fastbert.bench import harness as bench
from tests.helpers import perturb_
from tests.hf.test_families import make_config

NAMED = {
    "roberta-base": (transformers.RobertaConfig, 50265),
    "xlm-roberta-base": (transformers.XLMRobertaConfig, 250002),
    "distilbert-base": (transformers.DistilBertConfig, 30522),
    "electra-base": (transformers.ElectraConfig, 30522),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_shapes(name):
    cls, vocab = NAMED[name]
    cfg = bench.make_hf_config(name)
    assert type(cfg) is cls and cfg.vocab_size == vocab
    assert (cfg.hidden_size, cfg.num_attention_heads) == (768, 12)
    layers = 6 if name == "distilbert-base" else 12
    assert cfg.num_hidden_layers == layers
    per_layer = 2 * 10 * 768 * (4 * 768 + 2 * 3072) + 4 * 100 * 768
    assert bench.forward_flops(cfg, [10]) == layers * per_layer
    assert bench.max_length(cfg) == 512
    assert bench.make_hf_config(name, num_layers=1).num_hidden_layers == 1


@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra"])
def test_implementations_agree_with_hf(tmp_path, family):
    torch.manual_seed(0)
    cls = {"roberta": transformers.RobertaModel, "distilbert": transformers.DistilBertModel}.get(
        family, transformers.ElectraModel
    )
    perturb_(cls(make_config(family, hidden=64, heads=4))).save_pretrained(tmp_path)
    impls = ("hf_eager", "hf_sdpa", "native", "fastbert")
    models = bench.build_models(str(tmp_path), impls, seed=0)
    cfg = bench.make_hf_config(str(tmp_path))
    rows = bench.bench_shape(models, cfg, batch=3, seq_len=16, min_len=4, max_len=16, repeats=1, warmup=0, rate=1e9)
    assert [r["impl"] for r in rows] == list(impls)
    for r in rows:
        assert r["max_abs_diff_vs_hf_eager"] <= 1e-4, r["impl"]


def test_bench_command_takes_a_named_family_shape(capsys):
    code = cli.main(
        "bench --model distilbert-base --layers 1 --batch 2 --seq-len 16 --padding 0.5 --repeats 1 --warmup 0 "
        "--impls hf_eager fastbert".split()
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "distilbert-base" in out.out and "fastbert" in out.out
