"""BERT's pretraining data, checked by statistics on large samples: next-sentence labels 50/50, IsNext pairs
contiguous within one document and NotNext pairs across two, 15% of the non-special tokens chosen, of which
80/10/10 masked / random / kept, no special token ever chosen, whole words masked whole."""

import random

import numpy as np
import pytest

from fastbert.batch.files import InputError
from fastbert.tasks import pretrain_data as pd

CLS, SEP, MASK, VOCAB = 1, 2, 3, 1_000_000


def _corpus(n_docs, seed):
    """Documents of sentences whose token ids count up through the corpus: every token is unique, so a pair's
    tokens say exactly where they came from."""
    rng = random.Random(seed)
    docs, owner, next_id = [], {}, 10
    for d in range(n_docs):
        doc = []
        for _ in range(rng.randint(1, 12)):
            n = rng.randint(1, 40)
            doc.append(list(range(next_id, next_id + n)))
            owner.update({t: d for t in range(next_id, next_id + n)})
            next_id += n
        docs.append(doc)
    return docs, owner


def test_pairs_nsp_balance_and_contiguity():
    docs, owner = _corpus(8000, seed=0)
    pairs = pd.make_pairs(docs, CLS, SEP, 64, random.Random(1))
    assert len(pairs) > 20_000  # the label share then has a standard deviation of 0.0035
    labels = np.array([p.next_sentence_label for p in pairs])
    assert abs(labels.mean() - 0.5) <= 0.01, labels.mean()
    for p in pairs:
        ids = p.input_ids
        assert ids[0] == CLS and ids[-1] == SEP and len(ids) <= 64
        sep = ids.index(SEP)
        a, b = ids[1:sep], ids[sep + 1 : -1]
        assert a and b
        assert p.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert len({owner[t] for t in a}) == 1 and len({owner[t] for t in b}) == 1
        if p.next_sentence_label == 0:  # IsNext: one stretch of one document
            assert a + b == list(range(a[0], a[0] + len(a) + len(b)))
        else:
            assert owner[a[0]] != owner[b[0]]
    assert all(p.next_sentence_label == 0 for p in pd.make_pairs(docs[:50], CLS, SEP, 64, random.Random(2), nsp=False))


def test_pairs_need_two_documents_for_nsp():
    with pytest.raises(InputError, match="at least two documents"):
        pd.make_pairs([[[10, 11, 12]]], CLS, SEP, 32, random.Random(0))


def test_masking_statistics():
    rng = np.random.default_rng(0)
    chosen = total = masked = replaced = kept = special_hit = 0
    for _ in range(4000):
        n = int(rng.integers(20, 120))
        ids = rng.integers(10, VOCAB, n)
        ids[0], ids[-1], ids[n // 2] = CLS, SEP, SEP
        special = np.isin(ids, [CLS, SEP])
        out, labels = pd.mask_tokens(ids, special, rng, MASK, VOCAB)
        sel = labels != pd.IGNORE
        assert (labels[sel] == ids[sel]).all() and (out[~sel] == ids[~sel]).all()
        special_hit += int((sel & special).sum())
        chosen += int(sel.sum())
        total += int((~special).sum())
        masked += int((out[sel] == MASK).sum())
        kept += int((out[sel] == ids[sel]).sum())
        replaced += int(((out[sel] != MASK) & (out[sel] != ids[sel])).sum())
    assert special_hit == 0
    assert abs(chosen / total - 0.15) <= 0.005, chosen / total
    assert abs(masked / chosen - 0.8) <= 0.01 and abs(replaced / chosen - 0.1) <= 0.01, (masked, replaced, chosen)
    assert abs(kept / chosen - 0.1) <= 0.01


def test_whole_word_masking_masks_words_whole():
    rng = np.random.default_rng(1)
    for _ in range(500):
        n = int(rng.integers(10, 80))
        ids = rng.integers(10, VOCAB, n)
        ids[0], ids[-1] = CLS, SEP
        special = np.isin(ids, [CLS, SEP])
        word_start = rng.random(n) < 0.6
        word_start[1] = True
        _, labels = pd.mask_tokens(ids, special, rng, MASK, VOCAB, word_start=word_start)
        sel = labels != pd.IGNORE
        assert sel.any() and not (sel & special).any()
        for i in range(2, n - 1):  # a continuation token is chosen exactly when its word start is
            if not word_start[i]:
                assert sel[i] == sel[i - 1], (i, word_start, sel)
