"""The synthetic generator: determinism, sizes, the planted structure, and that it is learnable."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from genrec.data.sequences import SequenceData, build_sequences
from genrec.data.synthetic import SyntheticSource, SyntheticTruth


@pytest.fixture(scope="module")
def source() -> SyntheticSource:
    return SyntheticSource()


@pytest.fixture(scope="module")
def raw(source: SyntheticSource):
    return source.read()


@pytest.fixture(scope="module")
def data(raw) -> SequenceData:
    return build_sequences(raw, kcore=0, min_length=3)


def _per_user(raw) -> dict[str, list[tuple[float, str]]]:
    seqs: dict[str, list[tuple[float, str]]] = {}
    for user, item, t in zip(raw.users, raw.item_ids, raw.timestamps, strict=True):
        seqs.setdefault(user, []).append((t, item))
    return seqs


def test_deterministic_for_a_seed_and_different_for_another():
    a, b = SyntheticSource(seed=3).read(), SyntheticSource(seed=3).read()
    assert a.items == b.items
    assert (a.users, a.item_ids, a.timestamps) == (b.users, b.item_ids, b.timestamps)
    c = SyntheticSource(seed=4).read()
    assert [i.title for i in c.items.values()] != [i.title for i in a.items.values()]
    assert c.item_ids != a.item_ids


def test_catalogue_does_not_depend_on_user_arguments():
    small = SyntheticSource(num_users=10, p_sequential=0.1, seed=5)
    large = SyntheticSource(num_users=300, max_length=30, seed=5)
    assert small.read().items == large.read().items
    assert np.array_equal(small.truth.successor, large.truth.successor)


def test_sizes_lengths_ids_and_time_order(source: SyntheticSource, raw):
    assert len(raw.items) == source.num_items
    assert list(raw.items) == [f"S{i:07d}" for i in range(source.num_items)]  # id order
    seqs = _per_user(raw)
    assert list(seqs) == [f"U{u:06d}" for u in range(source.num_users)]
    lengths = np.array([len(s) for s in seqs.values()])
    assert lengths.min() >= source.min_length and lengths.max() <= source.max_length
    assert lengths.min() < lengths.max()  # uniform lengths, not all the same
    assert np.array_equal(lengths, source.truth.lengths)
    assert len(raw) == lengths.sum()
    for events in seqs.values():
        times = [t for t, _ in events]
        assert all(isinstance(t, int) for t in times)
        assert all(a < b for a, b in zip(times, times[1:], strict=False))
        items = [i for _, i in events]
        assert len(set(items)) == len(items), "an item repeats inside a sequence"
    assert set(raw.item_ids) <= set(raw.items)


def test_no_repeats_even_when_categories_are_nearly_exhausted():
    # 12 items per category, sequences of up to 12, one interest: forces many walks.
    src = SyntheticSource(
        num_users=300,
        num_items=60,
        num_categories=5,
        num_brands=5,
        min_length=10,
        max_length=12,
        interests_per_user=1,
        seed=1,
    )
    seqs = src.truth.sequences
    for row, n in zip(seqs, src.truth.lengths, strict=True):
        assert len(set(row[:n].tolist())) == n
        assert (row[n:] == -1).all()


def test_items_carry_their_category_in_text(source: SyntheticSource, raw):
    truth = source.truth
    assert truth.item_category.shape == (source.num_items,)
    assert np.bincount(truth.item_category).max() - np.bincount(truth.item_category).min() <= 1
    assert np.array_equal(truth.brand_category[truth.item_brand], truth.item_category)
    for i, item in enumerate(raw.items.values()):
        c = int(truth.item_category[i])
        assert (
            item.title and item.description and item.brand == truth.brand_names[truth.item_brand[i]]
        )
        assert item.categories == ("Beauty", truth.category_names[c])
        assert item.title.startswith(item.brand)
        own = [w for w in truth.category_words[c] if w in item.title]
        others = [
            w for k, ws in enumerate(truth.category_words) if k != c for w in ws if w in item.title
        ]
        assert own and not others, (item.title, truth.category_names[c])
    # Items of one category share title words; the brand, model number and adjective vary.
    titles = {
        c: {raw.items[f"S{i:07d}"].title for i in np.flatnonzero(truth.item_category == c)}
        for c in range(3)
    }
    assert all(len(t) > 1 for t in titles.values())


def test_planted_popularity_and_successor_structure(source: SyntheticSource, raw):
    truth = source.truth
    n, c = source.num_items, truth.item_category
    assert np.allclose(np.bincount(c, weights=truth.popularity), 1.0)
    # The successor is a single cycle through each category.
    assert np.array_equal(np.sort(truth.successor), np.arange(n))
    assert np.array_equal(c[truth.successor], c)
    for k in range(source.num_categories):
        members = np.flatnonzero(c == k)
        seen, item = set(), members[0]
        while item not in seen:
            seen.add(item)
            item = truth.successor[item]
        assert seen == set(members.tolist())
    # About p_sequential of the steps follow the successor (a few become walks past a repeat).
    seqs, lengths = truth.sequences, truth.lengths
    valid = np.arange(source.max_length)[None, 1:] < lengths[:, None]
    follows = (seqs[:, 1:] == truth.successor[np.maximum(seqs[:, :-1], 0)]) & valid
    assert abs(follows.sum() / valid.sum() - source.p_sequential) < 0.05
    assert truth.sequential[:, 1:][valid].mean() == pytest.approx(source.p_sequential, abs=0.05)
    # Popular items are frequent: each category's top item beats its median one.
    counts = np.bincount([int(i[1:]) for i in raw.item_ids], minlength=n)
    for k in range(source.num_categories):
        members = np.flatnonzero(c == k)
        by_pop = members[np.argsort(-truth.popularity[members])]
        assert counts[by_pop[0]] > np.median(counts[members])
    # Popularity draws stay inside the user's interests.
    first = c[seqs[:, 0]]
    assert (truth.user_interests == first[:, None]).any(axis=1).all()


def test_p_sequential_zero_has_no_successor_pattern():
    src = SyntheticSource(num_users=300, p_sequential=0.0)
    seqs, lengths, succ = src.truth.sequences, src.truth.lengths, src.truth.successor
    valid = np.arange(src.max_length)[None, 1:] < lengths[:, None]
    follows = (seqs[:, 1:] == succ[np.maximum(seqs[:, :-1], 0)]) & valid
    assert follows.sum() / valid.sum() < 0.1
    assert not src.truth.sequential.any()


def test_build_sequences_and_category_of(source: SyntheticSource, raw, data: SequenceData):
    assert data.num_users == source.num_users
    assert len(data.items) == len(raw)
    assert data.num_items <= source.num_items
    numbers = SyntheticTruth.item_numbers(data.catalog)
    assert all(data.catalog[j].external_id == f"S{n:07d}" for j, n in enumerate(numbers))
    assert np.array_equal(
        source.truth.category_of(data.catalog), source.truth.item_category[numbers]
    )
    assert data.samples("test")[0].shape == (source.num_users,)


def _hit_rate_at_10(data: SequenceData) -> tuple[float, float]:
    """HitRate@10 on the test targets of a first-order transition-count model and of popularity,
    both fitted on the training part (positions 0 .. n-3) and both excluding history items."""
    items, offsets, n = data.items, data.offsets, data.num_items
    train = torch.ones(len(items), dtype=torch.bool)
    train[offsets[1:] - 1] = False
    train[offsets[1:] - 2] = False
    pair = train[:-1] & train[1:]  # consecutive training positions of one user
    transitions = torch.zeros(n, n)
    transitions.index_put_(
        (items[:-1][pair], items[1:][pair]), torch.ones(int(pair.sum())), accumulate=True
    )
    popularity = data.train_item_counts().float()

    users, positions = data.samples("test")
    targets = items[offsets[users] + positions]
    last = items[offsets[users] + positions - 1]
    seen = torch.zeros(len(users), n, dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(data.num_users), data.lengths)
    history = torch.ones(len(items), dtype=torch.bool)
    history[offsets[1:] - 1] = False
    seen[owner[history], items[history]] = True

    def hit_rate(scores: torch.Tensor) -> float:
        top = scores.masked_fill(seen, float("-inf")).topk(10, dim=1).indices
        return (top == targets[:, None]).any(dim=1).float().mean().item()

    tie_break = popularity / (popularity.max() + 1)  # < 1: only orders equal transition counts
    return hit_rate(transitions[last] + tie_break), hit_rate(popularity.expand(len(users), n))


@pytest.fixture(scope="module")
def hit_rates(data: SequenceData) -> tuple[float, float]:
    return _hit_rate_at_10(data)


def test_transition_model_beats_popularity(hit_rates: tuple[float, float]):
    transition, popularity = hit_rates
    assert transition >= 0.4
    assert transition >= 2 * popularity, (transition, popularity)


def test_the_gain_comes_from_the_sequential_pattern(hit_rates: tuple[float, float]):
    # Without successor steps, transitions only carry the users' interest categories.
    data = build_sequences(SyntheticSource(p_sequential=0.0).read(), kcore=0, min_length=3)
    transition, _ = _hit_rate_at_10(data)
    assert transition < 0.4 * hit_rates[0], (transition, hit_rates[0])


def test_target_shares_category_with_last_history_item(source: SyntheticSource, data: SequenceData):
    category = torch.from_numpy(source.truth.category_of(data.catalog))
    users, positions = data.samples("test")
    target = data.items[data.offsets[users] + positions]
    last = data.items[data.offsets[users] + positions - 1]
    same = (category[target] == category[last]).float().mean().item()
    chance = 1 / source.num_categories
    assert same >= 5 * chance, same


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_length": 51},  # > 500 // 10 items in a category: would need repeats
        {"min_length": 8, "max_length": 6},
        {"interests_per_user": 11},
        {"num_brands": 5},
        {"p_sequential": 1.5},
        {"zipf_exponent": -1.0},
        {"num_categories": 0},
        {"missing_items": "keep"},
    ],
)
def test_rejects_inconsistent_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticSource(**kwargs)


def test_fast_and_configurable_from_yaml_keys():
    start = time.perf_counter()
    SyntheticSource(seed=7).read()
    assert time.perf_counter() - start < 1.0

    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(SyntheticSource, "source")
    cfg = parser.parse_object({"source": {"num_users": 50, "p_sequential": 0.3, "seed": 2}})
    src = parser.instantiate_classes(cfg).source
    assert isinstance(src, SyntheticSource) and src.num_users == 50 and src.p_sequential == 0.3
    assert "within-category popularity" in parser.format_help()  # docstring Args become help
    described = src.describe()
    assert described["class"] == "SyntheticSource" and described["seed"] == 2
    assert not any(k.startswith("_") for k in described)
