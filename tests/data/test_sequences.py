import pytest

from genrec.data.catalog import Item
from genrec.data.formats.base import RawData
from genrec.data.sequences import build_sequences


def _raw(events, items=None):
    names = items or sorted({i for _, i, _ in events})
    raw = RawData(items={n: Item.from_raw(n, title=f"t{n}") for n in names})
    for user, item, time in events:
        raw.add(user, item, time)
    return raw


def test_time_order_with_stable_tie_break():
    events = [("u", "c", 3), ("u", "a", 1), ("u", "b", 2), ("u", "e", 2), ("u", "d", 5)]
    data = build_sequences(_raw(events), kcore=0)
    names = [data.catalog[i].external_id for i in data.sequence(0).tolist()]
    assert names == ["a", "b", "e", "c", "d"]  # b and e share time 2: file order kept


def test_kcore_iterates_to_a_fixed_point():
    # Round 1 removes user x (2 events) and item z (2 users); that leaves user w and item y
    # with 2, removed in round 2; that leaves user v with 2, removed in round 3.
    events = []
    for u in ("p", "q", "r"):
        events += [(u, "a", 1), (u, "b", 2), (u, "c", 3)]
    events += [("v", "a", 1), ("v", "y", 2), ("v", "b", 3)]
    events += [("w", "y", 1), ("w", "z", 2), ("w", "c", 3)]
    events += [("x", "y", 1), ("x", "z", 2)]
    data = build_sequences(_raw(events), kcore=3)
    assert data.stats.kcore_rounds == 3
    assert data.user_ids == ["p", "q", "r"]
    assert [i.external_id for i in data.catalog.items] == ["a", "b", "c"]
    assert data.stats.kcore_removed_events == 8
    assert data.stats.interactions == 9
    assert data.stats.short_users_dropped == 0
    # at k=2 nothing is removed by the core, and x (2 events) is dropped as too short
    two = build_sequences(_raw(events), kcore=2).stats
    assert (two.kcore_rounds, two.users, two.short_users_dropped) == (0, 5, 1)


def test_short_users_are_dropped_and_counted():
    events = [("a", "i1", 1), ("a", "i2", 2), ("a", "i3", 3), ("b", "i1", 1), ("b", "i2", 2)]
    data = build_sequences(_raw(events, items=["i1", "i2", "i3", "unused"]), kcore=0, min_length=3)
    assert data.user_ids == ["a"]
    assert data.stats.short_users_dropped == 1
    assert data.stats.catalog_items_without_events == 1  # "unused" is counted, not silently lost
    with pytest.raises(ValueError, match=">= 3"):
        build_sequences(_raw(events), kcore=0, min_length=2)
    with pytest.raises(ValueError, match="no interactions left"):
        build_sequences(_raw(events), kcore=10)


def test_leave_one_out_samples_and_train_counts():
    events = [("a", x, t) for t, x in enumerate(["i0", "i1", "i2", "i3", "i4"])]
    events += [("b", x, t) for t, x in enumerate(["i4", "i0", "i2"])]
    data = build_sequences(_raw(events), kcore=0)
    users, pos = data.samples("test")
    assert users.tolist() == [0, 1] and pos.tolist() == [4, 2]
    assert data.samples("val")[1].tolist() == [3, 1]
    users, pos = data.samples("train")
    # a: train part i0 i1 i2 -> targets at 1, 2; b: train part i4 -> no sample
    assert users.tolist() == [0, 0] and pos.tolist() == [1, 2]
    # training part: a -> i0 i1 i2, b -> i4
    assert data.train_item_counts().tolist() == [1, 1, 1, 0, 1]


def test_training_pairs_stay_inside_each_users_training_part():
    events = [("a", x, t) for t, x in enumerate(["i0", "i1", "i2", "i3", "i4"])]
    events += [("b", x, t) for t, x in enumerate(["i4", "i3", "i1", "i0", "i2"])]
    data = build_sequences(_raw(events), kcore=0)
    named = lambda pairs: [(data.catalog[int(x)].external_id, data.catalog[int(y)].external_id) for x, y in zip(*pairs, strict=True)]  # noqa: E731
    # training parts: a -> i0 i1 i2, b -> i4 i3 i1 (the last two items of each are val / test)
    assert named(data.training_pairs(1)) == [("i0", "i1"), ("i1", "i2"), ("i4", "i3"), ("i3", "i1")]
    assert named(data.training_pairs(2)) == [("i0", "i2"), ("i4", "i1")]
    assert data.training_pairs(3)[0].numel() == 0
    with pytest.raises(ValueError, match="distance"):
        data.training_pairs(0)
