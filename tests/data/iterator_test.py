"""Tests for golfjax/data/iterator.py."""

import pytest

from golfjax.data.iterator import EpochIterator


def test_epochs_visit_every_item_once_in_a_seeded_order():
    it = EpochIterator(10, 5, seed=3)
    first_epoch = it.next() + it.next()
    assert sorted(first_epoch) == list(range(10))
    second_epoch = it.next() + it.next()
    assert sorted(second_epoch) == list(range(10)) and second_epoch != first_epoch
    assert EpochIterator(10, 5, seed=3).next() == first_epoch[:5]
    assert EpochIterator(10, 5, seed=4).next() != first_epoch[:5]


def test_restore_continues_exactly():
    it = EpochIterator(7, 3, seed=0)
    for _ in range(4):
        it.next()
    state = it.state()
    expected = [it.next() for _ in range(5)]
    resumed = EpochIterator(7, 3, seed=0)
    resumed.restore(state)
    assert [resumed.next() for _ in range(5)] == expected


def test_shards_are_disjoint_and_cover_the_epoch():
    shards = [EpochIterator(12, 3, seed=1, shard_index=i, num_shards=2) for i in range(2)]
    seen = [s.next() + s.next() for s in shards]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_items=0; the dataset is empty"):
        EpochIterator(0, 1, seed=0)
    with pytest.raises(ValueError, match=r"batch_size=9; expected 1 <= batch_size <= 8"):
        EpochIterator(8, 9, seed=0)
    with pytest.raises(ValueError, match="bad iterator state"):
        EpochIterator(8, 2, seed=0).restore({"epoch": 1})
