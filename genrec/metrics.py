"""Top-K ranking metrics for leave-one-out evaluation, as torchmetrics Metrics.

Each query has one target item and a ranked list of predicted item ids (``-1`` pads empty slots,
e.g. when beam search found fewer than ``R`` items). With ``rank`` the 0-based position of the
first occurrence of the target in the list:

* Recall@K (= HitRate@K with one target) is 1 if ``rank < K``, else 0;
* NDCG@K is ``1 / log2(rank + 2)`` if ``rank < K``, else 0 (the ideal DCG of one target is 1).

Both are means over queries, kept as a sum and a count with ``dist_reduce_fx="sum"`` so they
synchronise under DDP. ``update(..., mask=...)`` counts only the masked rows: the cold-start
slice passes ``mask = train_count[targets] <= N``. A metric that saw no rows computes NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection


def target_rank(ranked: Tensor, targets: Tensor) -> Tensor:
    """0-based position of each target in its ranked list, ``-1`` if absent.

    Args:
        ranked: ``[B, R]`` int64 item ids, best first; ``-1`` marks empty slots and never matches.
        targets: ``[B]`` int64 target item ids.

    Returns:
        ``[B]`` int64; the first occurrence counts if an id repeats.
    """
    if ranked.dim() != 2 or targets.shape != ranked.shape[:1]:
        raise ValueError(f"expected ranked [B, R] and targets [B], got {tuple(ranked.shape)} and {tuple(targets.shape)}")
    hit = (ranked == targets[:, None]) & (ranked >= 0)
    if hit.shape[1] == 0:
        return torch.full_like(targets, -1)
    first = hit.to(torch.uint8).argmax(dim=1)  # the first maximal index
    return torch.where(hit.any(dim=1), first, torch.full_like(first, -1))


class _TopKMean(Metric):
    """Mean over (masked) queries of a per-query gain depending on the target's rank."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _gain(self, rank: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, ranked: Tensor, targets: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            ranked: ``[B, R]`` int64 item ids, best first, ``-1`` for empty slots.
            targets: ``[B]`` int64 target item ids.
            mask: ``[B]`` bool, the rows to count (default all), e.g. the cold-start slice.
        """
        rank = target_rank(ranked, targets)
        hit = (rank >= 0) & (rank < self.k)
        gain = torch.where(hit, self._gain(rank.clamp(min=0)), torch.zeros((), dtype=torch.float64, device=rank.device))
        if mask is not None:
            mask = mask.to(torch.bool)
            gain = gain[mask]
        self.total += gain.sum()
        self.count += gain.numel()

    def compute(self) -> Tensor:
        """The mean gain (float64); NaN when no row was counted."""
        return self.total / self.count


class RecallAtK(_TopKMean):
    """Recall@K with one target per query: the fraction of queries whose target is in the top K."""

    def __init__(self, k: int, **kwargs) -> None:
        """
        Args:
            k: the cut-off K.
            **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
        """
        super().__init__(k, **kwargs)

    def _gain(self, rank: Tensor) -> Tensor:
        return torch.ones_like(rank, dtype=torch.float64)


class NDCGAtK(_TopKMean):
    """NDCG@K with one target per query: ``1 / log2(rank + 2)`` if ``rank < K`` (0-based), else 0."""

    def __init__(self, k: int, **kwargs) -> None:
        """
        Args:
            k: the cut-off K.
            **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).
        """
        super().__init__(k, **kwargs)

    def _gain(self, rank: Tensor) -> Tensor:
        return 1.0 / torch.log2(rank.to(torch.float64) + 2.0)


class RankingMetrics(MetricCollection):
    """Recall@K and NDCG@K for several K, named ``{prefix}recall@{k}`` and ``{prefix}ndcg@{k}``.

    ``update(ranked [B, R], targets [B], mask=None)`` updates all of them; ``compute()`` returns a
    dict for ``LightningModule.log_dict``. Keep one instance per split and slice (e.g.
    ``RankingMetrics(prefix="test/")`` and ``RankingMetrics(prefix="test/cold_")`` updated with the
    cold-start mask). Compute groups are off: two metrics whose states happen to agree after the
    first batch must not be merged.
    """

    def __init__(self, ks: Sequence[int] = (5, 10), prefix: str = "") -> None:
        """
        Args:
            ks: the cut-offs K.
            prefix: prepended to every metric name, e.g. ``"val/"``.
        """
        metrics: dict[str, Metric] = {}
        for k in ks:
            metrics[f"recall@{k}"] = RecallAtK(k)
        for k in ks:
            metrics[f"ndcg@{k}"] = NDCGAtK(k)
        super().__init__(metrics, prefix=prefix or None, compute_groups=False)


def popularity_ranking(train_counts: Tensor, k: int) -> Tensor:
    """The ``k`` most frequent training items, the most popular first (ties: lower id first).

    Args:
        train_counts: ``[N]`` interactions per item in the training split.
        k: list length (at most ``N``).

    Returns:
        ``[k]`` int64 item ids; ``expand(B, k)`` it as the ranked list of a popularity baseline.
    """
    order = torch.sort(train_counts, descending=True, stable=True).indices
    return order[:k].to(torch.int64)


class RecEvaluation(torch.nn.Module):
    """Everything a recommender measures on val and test, in one place for every model.

    Holds, for each of ``val`` and ``test``: Recall/NDCG over every user (``val/...``), the
    cold-start slice (``val/cold/...``: targets seen at most ``cold_start_max_count`` times in
    training), the rest (``val/warm/...``) and a popularity baseline (``val/popularity/...``),
    plus the item counts they need (buffers, not saved). The slices show where a model's test
    score differs from its val score: the last items are newer, so more test than val targets
    are cold.

    Args:
        ks: the cut-offs K.
        cold_start_max_count: the largest training count of a cold-start target.
    """

    SLICES = ("", "cold/", "warm/", "popularity/")

    def __init__(self, ks: Sequence[int] = (5, 10), cold_start_max_count: int = 5) -> None:
        super().__init__()
        self.ks = tuple(int(k) for k in ks)
        self.cold_start_max_count = cold_start_max_count
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_{i}": RankingMetrics(self.ks, prefix=f"{stage}/{name}") for stage in ("val", "test") for i, name in enumerate(self.SLICES)}
        )
        self.register_buffer("train_counts", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("popular", torch.zeros(0, dtype=torch.long), persistent=False)

    @property
    def val(self) -> RankingMetrics:
        return self.metrics["val_0"]

    @property
    def test(self) -> RankingMetrics:
        return self.metrics["test_0"]

    @property
    def test_cold(self) -> RankingMetrics:
        return self.metrics["test_1"]

    @property
    def test_popularity(self) -> RankingMetrics:
        return self.metrics["test_3"]

    def attach(self, train_counts: Tensor | None, num_items: int) -> None:
        """Set the ``[num_items]`` training interactions per item (cold-start mask, popularity
        ranking); ``None``: all zero."""
        device = self.train_counts.device
        counts = torch.zeros(num_items, dtype=torch.long) if train_counts is None else train_counts.long().cpu()
        if counts.shape != (num_items,):
            raise ValueError(f"train_counts has shape {tuple(counts.shape)}, expected ({num_items},)")
        self.train_counts = counts.to(device)
        self.popular = popularity_ranking(counts.cpu(), min(max(self.ks), counts.numel())).to(device)

    def update(self, stage: str, ranked: Tensor, targets: Tensor) -> list[RankingMetrics]:
        """Add a batch of ``ranked [B, R]`` recommendations for ``targets [B]``.

        Returns:
            the metric collections updated, for ``LightningModule.log_dict``.
        """
        if stage not in ("val", "test"):
            raise ValueError(f"stage must be 'val' or 'test', got {stage!r}")
        everyone, cold, warm, popularity = (self.metrics[f"{stage}_{i}"] for i in range(len(self.SLICES)))
        is_cold = self.train_counts[targets] <= self.cold_start_max_count
        everyone.update(ranked, targets)
        cold.update(ranked, targets, mask=is_cold)
        warm.update(ranked, targets, mask=~is_cold)
        popularity.update(self.popular.expand(targets.shape[0], -1), targets)
        return [everyone, cold, warm, popularity]


def cold_exposure(ranked: Tensor, targets: Tensor, train_counts: Tensor, max_count: int = 5, k: int = 10) -> dict[str, float]:
    """How often a recommender puts cold items (seen at most ``max_count`` times in training)
    in its top ``k``, against how often they are the target: a model that never recommends
    cold items cannot hit them, whatever it learned.

    Args:
        ranked: ``[N, R]`` int64 item ids, best first (``-1``: empty slot); the first ``k`` count.
        targets: ``[N]`` int64 target item ids.
        train_counts: ``[I]`` training interactions per item.

    Returns:
        ``cold share of catalogue``, ``cold share of targets``, ``cold share of top-k`` (of
        the filled slots), ``users with a cold item in top-k``, ``cold recall@k`` and
        ``warm recall@k`` (NaN where there is no cold / warm target).
    """
    top = ranked[:, :k]
    filled = top >= 0
    cold_item = train_counts <= max_count  # [I]
    cold_slot = cold_item[top.clamp(min=0)] & filled
    cold_target = cold_item[targets]
    hit = target_rank(top, targets) >= 0
    nan = float("nan")
    return {
        "cold share of catalogue": float(cold_item.float().mean()),
        "cold share of targets": float(cold_target.float().mean()),
        f"cold share of top-{k}": float(cold_slot.sum() / filled.sum().clamp(min=1)),
        f"users with a cold item in top-{k}": float(cold_slot.any(1).float().mean()),
        f"cold recall@{k}": float(hit[cold_target].float().mean()) if cold_target.any() else nan,
        f"warm recall@{k}": float(hit[~cold_target].float().mean()) if (~cold_target).any() else nan,
    }
