"""Pretraining batches cut by a token budget (fastbert.tasks.pretrain_trainer.TokenBudgetBatches): every pair once
an epoch, no batch over the budget (padded size: pairs x the longest), little padding, the order drawn afresh
each epoch and the same for the same (seed, epoch)."""

import numpy as np
import pytest

from fastbert.tasks.pretrain_trainer import TokenBudgetBatches


@pytest.fixture
def lengths():
    return np.random.default_rng(0).integers(5, 129, size=1000)


def test_batches_cover_every_pair_within_the_budget(lengths):
    sampler = TokenBudgetBatches(lengths, 1024, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) * max(lengths[b]) <= 1024 for b in batches)
    padded = sum(len(b) * max(lengths[b]) for b in batches)
    assert 1 - lengths.sum() / padded < 0.05  # sorted by length: almost no padding
    sizes = [len(b) for b in batches]
    assert max(sizes) >= 4 * min(sizes)  # short pairs many to a batch, long ones few
    assert len(sampler) == len(batches)


def test_order_by_seed_and_epoch(lengths):
    a, b = TokenBudgetBatches(lengths, 1024, seed=1), TokenBudgetBatches(lengths, 1024, seed=1)
    first = list(a)
    assert list(b) == first  # same seed and epoch: same batches, same order
    a.set_epoch(1)
    second = list(a)
    assert second != first and sorted(map(tuple, second)) == sorted(map(tuple, first))  # reshuffled, same batches
    assert a.sampler is a  # where accelerate's shard looks for set_epoch under torchrun


def test_a_pair_over_the_budget_rides_alone():
    batches = list(TokenBudgetBatches([10, 500, 12], 100, seed=0))
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2]
