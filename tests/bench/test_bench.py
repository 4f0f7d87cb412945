"""fastbert.bench (the library behind benchmarks/bench_model.py and `fastbert bench`): every implementation
carries the same weights and agrees with HF eager at real positions; batches, FLOPs and rows are what they say.
No timing is asserted here."""

import json

import pytest
import torch

from fastbert.bench import harness as bench
from tests.helpers import load_benchmark, make_hf


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    make_hf(num_hidden_layers=2).save_pretrained(d)
    return str(d)


def test_make_batch_is_seeded_and_right_padded():
    ids, mask, lengths = bench.make_batch(6, 20, 5, 12, vocab_size=3000, seed=3)
    ids2, _, lengths2 = bench.make_batch(6, 20, 5, 12, vocab_size=3000, seed=3)
    assert torch.equal(ids, ids2) and lengths == lengths2
    assert all(5 <= n <= 12 for n in lengths)
    assert mask.sum(1).tolist() == lengths
    for row, n in zip(mask, lengths):
        assert row[:n].all() and not row[n:].any()
    with pytest.raises(ValueError, match="min_len"):
        bench.make_batch(2, 10, 8, 12)


def test_forward_flops():
    cfg = bench.make_hf_config("bert-base")
    # one sequence of 10 tokens: per layer 2*10*768*(4*768 + 2*3072) GEMM + 4*10*10*768 attention
    per_layer = 2 * 10 * 768 * (4 * 768 + 2 * 3072) + 4 * 100 * 768
    assert bench.forward_flops(cfg, [10]) == 12 * per_layer


def test_implementations_agree_with_hf(folder):
    models = bench.build_models(folder, seed=0)
    assert set(models) == set(bench.IMPLS)
    cfg = bench.make_hf_config(folder)
    rows = bench.bench_shape(models, cfg, batch=3, seq_len=16, min_len=4, max_len=16, repeats=1, warmup=0, rate=1e9)
    assert [r["impl"] for r in rows] == list(bench.IMPLS)
    for r in rows:
        assert r["max_abs_diff_vs_hf_eager"] <= 1e-4, r["impl"]
        assert r["real_tokens"] == round((1 - r["padding_frac"]) * 48)
        assert r["tokens_per_s"] > 0 and r["roofline_frac"] > 0
    assert "hf_eager" in bench.format_table(rows)


def test_bench_dtypes_script(tmp_path, capsys):
    """benchmarks/bench_dtypes.py runs end to end at a tiny size and reports every variant with a positive time
    and a roofline share (a regression here breaks the published dtype table's command)."""
    from fastbert import ops

    if not ops.has_kernel("quantize_rows", "cpu"):
        pytest.skip("int8 kernels not built")
    mod = load_benchmark("bench_dtypes")
    out = tmp_path / "rows.json"
    mod.main(f"--model minilm-l6 --layers 1 --shapes 2x16:5-16 --repeats 1 --warmup 0 --json {out}".split())
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == list(mod.VARIANTS)
    assert all(r["ms"] > 0 and r["roofline"] > 0 for r in rows)
    assert "| int8 |" in capsys.readouterr().out
