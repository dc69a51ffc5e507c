"""User sequences: time ordering, k-core filtering, the leave-one-out split and statistics.

:func:`build_sequences` turns a reader's :class:`~genrec.data.formats.base.RawData` into
:class:`SequenceData`: every user's items in time order (equal timestamps keep file order, a
stable tie-break), iterated k-core filtering to a fixed point, users too short for the split
dropped and counted, and the catalogue renumbered densely over the items that remain (in the
reader's order). Sequences are stored flat (CSR): ``items[offsets[u]:offsets[u+1]]``.

Leave-one-out: for a user with items ``s_0 .. s_{n-1}``, ``s_{n-1}`` is the test target,
``s_{n-2}`` the validation target and ``s_0 .. s_{n-3}`` the training sequence, whose every
prefix is a training sample (history ``s_0 .. s_{j-1}`` -> target ``s_j`` for ``j >= 1``).
A sample is named by ``(user, position of its target)``; its history is what comes before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from genrec.data.catalog import ItemCatalog
from genrec.data.formats.base import RawData, ReadReport
from genrec.errors import ConfigError, at_least

Stage = Literal["train", "val", "test"]


@dataclass
class DataStats:
    """Sizes and every count of what was filtered, dropped or replaced on the way."""

    users: int
    items: int
    interactions: int
    length_min: int
    length_mean: float
    length_max: int
    raw_events: int
    raw_users: int
    raw_items: int
    kcore: int
    kcore_rounds: int
    kcore_removed_events: int
    short_users_dropped: int
    catalog_items_without_events: int
    items_without_title: int
    empty_fields: dict[str, int]
    read: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A human-readable table of the statistics."""
        rows = [
            ("users", f"{self.users:,}"),
            ("items", f"{self.items:,}"),
            ("interactions", f"{self.interactions:,}"),
            ("sequence length min / mean / max", f"{self.length_min} / {self.length_mean:.2f} / {self.length_max}"),
            ("raw events / users / items", f"{self.raw_events:,} / {self.raw_users:,} / {self.raw_items:,}"),
            (f"{self.kcore}-core: rounds / events removed", f"{self.kcore_rounds} / {self.kcore_removed_events:,}"),
            ("users dropped (too short for the split)", f"{self.short_users_dropped:,}"),
            ("catalogue items left without events (dropped)", f"{self.catalog_items_without_events:,}"),
            ("items without title (kept)", f"{self.items_without_title:,}"),
            ("empty fields", ", ".join(f"{k} {v:,}" for k, v in self.empty_fields.items())),
        ]
        read = self.read
        if read.get("bad_lines"):
            examples = "; ".join(read.get("bad_line_examples", [])[:3])
            rows.append(("malformed lines skipped", _per_file(read["bad_lines"]) + (f" (e.g. {examples})" if examples else "")))
        if read.get("empty_sequences"):
            rows.append(("users listed without items (no events)", _per_file(read["empty_sequences"])))
        if read.get("markup_removed"):
            examples = "; ".join(read.get("markup_examples", [])[:2])
            rows.append(("text values with HTML markup removed", f"{read['markup_removed']:,} (e.g. {examples})"))
        if read.get("non_utf8_lines"):
            rows.append(("lines with non-UTF-8 bytes (replaced)", _per_file(read["non_utf8_lines"])))
        for reason, count in read.get("filtered_events", {}).items():
            rows.append((f"events filtered ({reason})", f"{count:,}"))
        if read.get("duplicate_meta_lines"):
            rows.append(("duplicate meta lines (first kept)", _per_file(read["duplicate_meta_lines"])))
        if read.get("html_unescaped"):
            rows.append(("field values with HTML entities (unescaped)", _per_file(read["html_unescaped"])))
        for name, columns in read.get("absent_columns", {}).items():
            rows.append((f"columns absent from {name} (fields empty)", ", ".join(columns)))
        for name, columns in read.get("ignored_columns", {}).items():
            rows.append((f"columns of {name} not read", ", ".join(columns)))
        if read.get("missing_item_events"):
            examples = ", ".join(read.get("missing_item_examples", []))
            rows.append(("events on items without catalogue entry (dropped)", f"{read['missing_item_events']:,} (e.g. {examples})"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _per_file(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count:,}" for name, count in counts.items())


@dataclass
class SequenceData:
    """Time-ordered item sequences of every user, over a dense catalogue.

    Attributes:
        catalog: the items, dense ids ``0 .. num_items-1``.
        user_ids: external id of each dense user id.
        offsets: ``[num_users + 1]`` int64, user ``u``'s items are ``items[offsets[u]:offsets[u+1]]``.
        items: ``[num_interactions]`` int64 dense item ids, each user's in time order.
        timestamps: ``[num_interactions]`` float64, the time of each interaction.
        stats: sizes and filtering counts.
    """

    catalog: ItemCatalog
    user_ids: list[str]
    offsets: torch.Tensor
    items: torch.Tensor
    timestamps: torch.Tensor
    stats: DataStats

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.catalog)

    @property
    def lengths(self) -> torch.Tensor:
        """``[num_users]`` sequence lengths."""
        return self.offsets[1:] - self.offsets[:-1]

    def sequence(self, user: int) -> torch.Tensor:
        """``[length]`` user ``user``'s items in time order."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def samples(self, stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
        """The leave-one-out samples of ``stage`` as ``(users, target_positions)``.

        Returns:
            Two ``[num_samples]`` int64 tensors: the user of each sample and the index of its
            target inside the user's sequence (the history is every earlier position).
            ``train``: every position ``1 .. n-3`` of every user; ``val``: ``n-2``; ``test``: ``n-1``.
        """
        lengths = self.lengths
        users = torch.arange(self.num_users)
        if stage == "test":
            return users, lengths - 1
        if stage == "val":
            return users, lengths - 2
        if stage != "train":
            raise ValueError(f"unknown stage {stage!r}; expected train, val or test")
        per_user = (lengths - 3).clamp(min=0)  # targets 1 .. n-3
        sample_users = torch.repeat_interleave(users, per_user)
        starts = torch.cumsum(per_user, 0) - per_user
        positions = torch.arange(int(per_user.sum())) - torch.repeat_interleave(starts, per_user) + 1
        return sample_users, positions

    def training_pairs(self, distance: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Item pairs ``distance`` positions apart inside one user's training part (positions
        ``0 .. n-3``: validation and test items never appear).

        Returns:
            ``(earlier [P], later [P])`` int64 item ids, ``later`` the item ``distance`` steps
            after ``earlier`` in the same user's sequence.
        """
        if distance < 1:
            raise ValueError(f"distance must be >= 1, got {distance}")
        lengths = self.lengths
        owner = torch.repeat_interleave(torch.arange(self.num_users), lengths)  # [I] user of each position
        index = torch.arange(len(self.items)) - torch.repeat_interleave(self.offsets[:-1], lengths)  # [I] position in its sequence
        keep = index < torch.repeat_interleave((lengths - 2).clamp(min=0), lengths)  # [I] inside the training part
        pair = keep[:-distance] & keep[distance:] & (owner[:-distance] == owner[distance:])
        return self.items[:-distance][pair], self.items[distance:][pair]

    def train_item_counts(self) -> torch.Tensor:
        """``[num_items]`` how often each item occurs in the training part of the split
        (every position ``0 .. n-3``), for popularity baselines and the cold-start slice."""
        lengths = self.lengths
        mask = torch.ones(len(self.items), dtype=torch.bool)
        ends = self.offsets[1:]
        mask[ends - 1] = False
        mask[ends - 2] = False
        return torch.bincount(self.items[mask], minlength=self.num_items) if len(lengths) else torch.zeros(self.num_items, dtype=torch.long)


def build_sequences(raw: RawData, kcore: int = 5, min_length: int = 3) -> SequenceData:
    """Order, filter and index a reader's events.

    Args:
        raw: a reader's items and events.
        kcore: keep only users and items with at least this many interactions, iterated to a
            fixed point (0 or 1 disables it).
        min_length: users with fewer interactions after filtering are dropped and counted
            (3 is the least the leave-one-out split can use).

    Raises:
        ConfigError: a setting out of range, or nothing is left after filtering.
    """
    at_least("build_sequences", 0, kcore=kcore)
    at_least("build_sequences", 3, min_length=min_length)  # the leave-one-out split needs 3
    catalog_ids = list(raw.items)
    item_index = {ext: i for i, ext in enumerate(catalog_ids)}
    user_index: dict[str, int] = {}
    users = np.fromiter((user_index.setdefault(u, len(user_index)) for u in raw.users), dtype=np.int64, count=len(raw))
    items = np.fromiter((item_index[i] for i in raw.item_ids), dtype=np.int64, count=len(raw))
    times = np.asarray(raw.timestamps, dtype=np.float64)
    raw_events, raw_users = len(users), len(user_index)
    raw_items = len(np.unique(items))

    # Time order per user; np.lexsort is stable, so equal timestamps keep file order.
    order = np.lexsort((times, users))
    users, items, times = users[order], items[order], times[order]

    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    if kcore > 1:
        while True:
            user_count = np.bincount(users[keep], minlength=raw_users)
            item_count = np.bincount(items[keep], minlength=len(catalog_ids))
            bad = keep & ((user_count[users] < kcore) | (item_count[items] < kcore))
            if not bad.any():
                break
            keep &= ~bad
            rounds += 1
    kcore_removed = int((~keep).sum())

    user_count = np.bincount(users[keep], minlength=raw_users)
    present = user_count > 0
    short = present & (user_count < min_length)
    keep &= ~short[users]
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise ConfigError(
            f"no interactions left after {kcore}-core filtering and dropping users with fewer than "
            f"{min_length} interactions ({raw_events:,} events read)"
        )

    kept_items = np.unique(items)  # sorted: the reader's catalogue order
    new_item = np.full(len(catalog_ids), -1, dtype=np.int64)
    new_item[kept_items] = np.arange(len(kept_items))
    user_order = np.unique(users)  # first-appearance order, as the sort keeps users contiguous
    new_user = np.full(raw_users, -1, dtype=np.int64)
    new_user[user_order] = np.arange(len(user_order))
    dense_users = new_user[users]
    counts = np.bincount(dense_users, minlength=len(user_order))
    offsets = np.concatenate([[0], np.cumsum(counts)])

    ext_users = list(user_index)
    catalog = ItemCatalog([raw.items[catalog_ids[i]] for i in kept_items])
    empty = catalog.field_counts()
    stats = DataStats(
        users=len(user_order),
        items=len(catalog),
        interactions=len(items),
        length_min=int(counts.min()),
        length_mean=float(counts.mean()),
        length_max=int(counts.max()),
        raw_events=raw_events,
        raw_users=raw_users,
        raw_items=raw_items,
        kcore=kcore,
        kcore_rounds=rounds,
        kcore_removed_events=kcore_removed,
        short_users_dropped=int(short.sum()),
        catalog_items_without_events=len(catalog_ids) - len(kept_items),
        items_without_title=empty["title"],
        empty_fields=empty,
        read=raw.report.as_dict() if isinstance(raw.report, ReadReport) else dict(raw.report),
    )
    return SequenceData(
        catalog=catalog,
        user_ids=[ext_users[u] for u in user_order],
        offsets=torch.from_numpy(offsets.astype(np.int64)),
        items=torch.from_numpy(new_item[items]),
        timestamps=torch.from_numpy(times),
        stats=stats,
    )
