"""Pretraining pairs made a window of documents at a time and kept on disk: the store gives back exactly the pairs
made, the corpus is read in windows (memory bounded by the window, not the corpus), a NotNext segment comes from
the same window, the held-out share is as asked, and a corpus with no pair is refused."""

import random

import numpy as np
import pytest

from fastbert.batch.files import InputError
from fastbert.tasks.pair_store import PairStore, write_pairs
from fastbert.tasks.pretrain_data import make_pairs

CLS, SEP = 1, 2


class WordTokenizer:
    """Each word "d<doc>w<k>" is one token, numbered by (doc, k), so a token names its document; records the
    sentences of every call."""

    cls_token_id, sep_token_id = CLS, SEP

    def __init__(self):
        self.calls = []

    def __call__(self, sentences, add_special_tokens):
        assert add_special_tokens is False
        self.calls.append(len(sentences))
        return {"input_ids": [[self.id(w) for w in s.split()] for s in sentences]}

    @staticmethod
    def id(word):
        doc, k = word[1:].split("w")
        return 10 + int(doc) * 1000 + int(k)

    @staticmethod
    def doc(token):
        return (token - 10) // 1000


def corpus(n_docs, seed=0):
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        k, sentences = 0, []
        for _ in range(rng.randint(2, 8)):
            n = rng.randint(1, 9)
            sentences.append(" ".join(f"d{d}w{k + i}" for i in range(n)))
            k += n
        docs.append(sentences)
    return docs


def test_the_store_gives_back_the_pairs_made(tmp_path):
    docs = corpus(60)
    tok = WordTokenizer()
    train, held_out = write_pairs(iter(docs), tok, tmp_path, 32, seed=5, window=1000)
    assert len(held_out) == 0
    tokenized = [[[tok.id(w) for w in s.split()] for s in d] for d in docs]
    want = make_pairs(tokenized, CLS, SEP, 32, random.Random(5))
    assert len(train) == len(want) > 60
    for i, p in enumerate(want):
        row = train[i]
        assert row["input_ids"].tolist() == p.input_ids
        assert row["token_type_ids"].tolist() == p.token_type_ids
        assert row["next_sentence_label"] == p.next_sentence_label
    assert train.lengths.tolist() == [len(p.input_ids) for p in want]
    again = PairStore(tmp_path / "train")  # a store reopens from its folder
    assert again[len(want) - 1]["input_ids"].tolist() == want[-1].input_ids


def test_the_corpus_is_read_a_window_at_a_time(tmp_path):
    docs = corpus(250, seed=1)
    tok = WordTokenizer()
    read = []

    def stream():
        for d in docs:
            read.append(d)
            yield d

    train, _ = write_pairs(stream(), tok, tmp_path, 24, seed=0, window=40)
    sentences = [len(d) for d in docs]
    assert len(read) == 250 and len(tok.calls) == 250 // 40
    assert max(tok.calls) <= max(sum(sentences[i : i + 79]) for i in range(250))  # at most 2 windows - 1 document
    assert sum(tok.calls) == sum(sentences)
    windows = [range(0, 40), range(40, 80), range(80, 120), range(120, 160), range(160, 200), range(200, 250)]
    not_next = 0
    for i in range(len(train)):
        row = train[i]
        ids, types = row["input_ids"], row["token_type_ids"]
        a = {WordTokenizer.doc(t) for t in ids[types == 0] if t > SEP}
        b = {WordTokenizer.doc(t) for t in ids[types == 1] if t > SEP}
        assert len(a) == 1 and len(b) == 1
        (da,), (db,) = a, b
        assert (da == db) == (row["next_sentence_label"] == 0)
        assert any(da in w and db in w for w in windows)  # B from A's window
        not_next += row["next_sentence_label"]
    assert 0.4 < not_next / len(train) < 0.6


def test_held_out_share(tmp_path):
    docs = corpus(400, seed=2)
    train, held_out = write_pairs(iter(docs), WordTokenizer(), tmp_path, 32, seed=3, validation_share=0.1)
    total = len(train) + len(held_out)
    tok = WordTokenizer()
    tokenized = [[[tok.id(w) for w in s.split()] for s in d] for d in docs]
    assert total == len(make_pairs(tokenized, CLS, SEP, 32, random.Random(3)))
    assert abs(len(held_out) / total - 0.1) < 0.03, (len(held_out), total)
    one_doc_each = write_pairs(iter(docs[:2]), WordTokenizer(), tmp_path / "small", 32, 0, validation_share=0.01)
    assert len(one_doc_each[1]) == 1  # at least one pair is held out
    assert isinstance(held_out[0]["input_ids"], np.ndarray)


def test_no_pair_is_refused(tmp_path):
    with pytest.raises(InputError, match="too little text"):
        write_pairs(iter([]), WordTokenizer(), tmp_path, 32, seed=0)
    with pytest.raises(InputError, match="window"):
        write_pairs(iter(corpus(3)), WordTokenizer(), tmp_path / "w", 32, seed=0, window=1)
