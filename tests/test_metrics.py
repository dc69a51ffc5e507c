import math

import pytest
import torch

from genrec.metrics import (
    NDCGAtK,
    RankingMetrics,
    RecallAtK,
    cold_exposure,
    popularity_ranking,
    target_rank,
)

INV_LOG2_3 = 0.6309297535714575  # 1 / log2(3): rank 1
INV_LOG2_5 = 0.43067655807339306  # 1 / log2(5): rank 3
INV_LOG2_9 = 0.31546487678572877  # 1 / log2(9): rank 7


def _hand_batch():
    """Six queries, lists of 12: target at rank 0, 3, 7, 10 (outside top 10), absent with -1
    padding, and a list repeating the target id (rank of the first occurrence: 1)."""
    base = list(range(100, 112))
    rows, targets = [], []
    for rank in (0, 3, 7, 10):
        row = list(base)
        row[rank] = 7
        rows.append(row)
        targets.append(7)
    rows.append([100, 101, 102, -1, -1, -1, -1, -1, -1, -1, -1, -1])
    targets.append(7)
    rows.append([4, 9, 9, 2, 9, 105, 106, 107, 108, 109, 110, 111])
    targets.append(9)
    return torch.tensor(rows), torch.tensor(targets)


EXPECTED = {
    "recall@5": 3 / 6,
    "recall@10": 4 / 6,
    "ndcg@5": (1.0 + INV_LOG2_5 + INV_LOG2_3) / 6,
    "ndcg@10": (1.0 + INV_LOG2_5 + INV_LOG2_9 + INV_LOG2_3) / 6,
}


def test_target_rank():
    ranked, targets = _hand_batch()
    assert target_rank(ranked, targets).tolist() == [0, 3, 7, 10, -1, 1]
    # -1 padding never matches, even a -1 target
    assert target_rank(torch.tensor([[-1, -1]]), torch.tensor([-1])).tolist() == [-1]
    assert target_rank(torch.zeros(2, 0, dtype=torch.long), torch.tensor([1, 2])).tolist() == [-1, -1]


def test_hand_computed_values():
    ranked, targets = _hand_batch()
    for name, value in EXPECTED.items():
        cls = RecallAtK if name.startswith("recall") else NDCGAtK
        metric = cls(int(name.split("@")[1]))
        metric.update(ranked, targets)
        assert metric.compute().item() == pytest.approx(value, abs=1e-6), name


def test_per_row_values():
    ranked, targets = _hand_batch()
    per_row = []
    for i in range(len(targets)):
        m = NDCGAtK(10)
        m.update(ranked[i : i + 1], targets[i : i + 1])
        per_row.append(m.compute().item())
    assert per_row == pytest.approx([1.0, INV_LOG2_5, INV_LOG2_9, 0.0, 0.0, INV_LOG2_3], abs=1e-9)


def test_short_lists_and_k_beyond_list():
    m = RecallAtK(10)
    m.update(torch.tensor([[3, 1], [5, -1]]), torch.tensor([1, 6]))
    assert m.compute().item() == pytest.approx(0.5)


def test_collection_names_and_values():
    ranked, targets = _hand_batch()
    metrics = RankingMetrics(ks=(5, 10), prefix="val/")
    metrics.update(ranked, targets)
    out = {k: v.item() for k, v in metrics.compute().items()}
    assert set(out) == {f"val/{k}" for k in EXPECTED}
    for name, value in EXPECTED.items():
        assert out[f"val/{name}"] == pytest.approx(value, abs=1e-6)
    assert set(RankingMetrics().keys()) == set(EXPECTED)


def test_accumulation_equals_one_update():
    g = torch.Generator().manual_seed(0)
    ranked = torch.randint(-1, 30, (50, 12), generator=g)
    targets = torch.randint(0, 30, (50,), generator=g)
    whole = RankingMetrics(ks=(1, 5, 10))
    whole.update(ranked, targets)
    parts = RankingMetrics(ks=(1, 5, 10))
    for chunk in (slice(0, 7), slice(7, 8), slice(8, 31), slice(31, 50)):
        parts.update(ranked[chunk], targets[chunk])
    a, b = whole.compute(), parts.compute()
    for name in a:
        assert b[name].item() == pytest.approx(a[name].item(), abs=1e-12), name


def test_first_batch_with_equal_states_does_not_merge_metrics():
    # After this batch recall@5 and recall@10 have equal states; a compute group would merge them.
    metrics = RankingMetrics(ks=(5, 10))
    metrics.update(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), torch.tensor([1]))
    metrics.update(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), torch.tensor([8]))
    out = metrics.compute()
    assert out["recall@5"].item() == pytest.approx(0.5)
    assert out["recall@10"].item() == pytest.approx(1.0)


def test_states_merge_by_sum():
    ranked, targets = _hand_batch()
    left, right = NDCGAtK(10), NDCGAtK(10)
    left.update(ranked[:2], targets[:2])
    right.update(ranked[2:], targets[2:])
    left.merge_state(right)  # what DDP's sum reduction does
    assert left.compute().item() == pytest.approx(EXPECTED["ndcg@10"], abs=1e-9)


def test_masked_cold_start_slice():
    ranked, targets = _hand_batch()
    mask = torch.tensor([False, True, True, False, True, False])
    metrics = RankingMetrics(ks=(5, 10), prefix="cold_")
    metrics.update(ranked, targets, mask=mask)
    subset = RankingMetrics(ks=(5, 10), prefix="cold_")
    subset.update(ranked[mask], targets[mask])
    out, ref = metrics.compute(), subset.compute()
    assert out["cold_recall@10"].item() == pytest.approx(2 / 3)
    assert out["cold_ndcg@10"].item() == pytest.approx((INV_LOG2_5 + INV_LOG2_9) / 3)
    for name in out:
        assert out[name].item() == pytest.approx(ref[name].item())


def test_no_rows_gives_nan():
    m = RecallAtK(5)
    m.update(torch.tensor([[1, 2]]), torch.tensor([1]), mask=torch.tensor([False]))
    assert math.isnan(m.compute().item())


def test_invalid_arguments():
    with pytest.raises(ValueError):
        RecallAtK(0)
    with pytest.raises(ValueError):
        RecallAtK(5).update(torch.tensor([1, 2]), torch.tensor([1]))


def test_popularity_ranking():
    counts = torch.tensor([3, 9, 0, 9, 5])
    assert popularity_ranking(counts, 4).tolist() == [1, 3, 4, 0]


def test_rec_evaluation_slices_and_baseline():
    from genrec.metrics import RecEvaluation

    evaluation = RecEvaluation(ks=(1, 2), cold_start_max_count=1)
    evaluation.attach(torch.tensor([5, 0, 3, 1]), num_items=4)  # item 0 most popular, then 2
    ranked = torch.tensor([[1, 2], [0, 3], [3, 1]])
    targets = torch.tensor([1, 3, 2])  # item 1 (count 0) and 3 (count 1) are cold, 2 is not
    updated = evaluation.update("test", ranked, targets)
    assert [m.prefix for m in updated] == ["test/", "test/cold/", "test/warm/", "test/popularity/"]
    overall = evaluation.test.compute()
    assert overall["test/recall@1"] == pytest.approx(1 / 3) and overall["test/recall@2"] == pytest.approx(2 / 3)
    cold = evaluation.test_cold.compute()
    assert cold["test/cold/recall@2"] == pytest.approx(1.0)  # rows 0 and 1 only
    warm = evaluation.metrics["test_2"].compute()
    assert warm["test/warm/recall@2"] == pytest.approx(0.0)  # row 2 only: item 2 not in [3, 1]
    popularity = evaluation.test_popularity.compute()  # ranking [0, 2] for everyone: hits target 2
    assert popularity["test/popularity/recall@2"] == pytest.approx(1 / 3)
    val = evaluation.update("val", ranked, targets)
    assert [m.prefix for m in val] == ["val/", "val/cold/", "val/warm/", "val/popularity/"]
    assert evaluation.metrics["val_1"].compute()["val/cold/recall@2"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        evaluation.attach(torch.zeros(3, dtype=torch.long), num_items=4)


def test_cold_exposure_hand_computed():
    """Items 0, 1 cold (count <= 5), 2, 3 warm. Top-2 lists: user 0 [2, 0] (target 0: cold hit),
    user 1 [3, -1] (target 1: cold miss), user 2 [2, 3] (target 3: warm hit)."""
    counts = torch.tensor([0, 5, 6, 100])
    ranked = torch.tensor([[2, 0, 1], [3, -1, -1], [2, 3, 0]])
    result = cold_exposure(ranked, torch.tensor([0, 1, 3]), counts, max_count=5, k=2)
    assert result == {
        "cold share of catalogue": 0.5,
        "cold share of targets": pytest.approx(2 / 3),
        "cold share of top-2": pytest.approx(1 / 5),  # 5 filled slots, one cold (item 1 at rank 3 is past k)
        "users with a cold item in top-2": pytest.approx(1 / 3),
        "cold recall@2": 0.5,
        "warm recall@2": 1.0,
    }
    assert math.isnan(cold_exposure(ranked, torch.tensor([2, 2, 3]), counts, k=2)["cold recall@2"])
