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
