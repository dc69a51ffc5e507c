"""LightningDataModules shared by every model.

:class:`SequenceDataModule` serves item-id histories and next-item targets (train: every
prefix of every training sequence; val/test: the leave-one-out targets with their full
histories). It knows nothing about semantic IDs or titles: each model maps item ids to its
own tokens with a table lookup on the device.

:class:`ItemEmbeddingDataModule` serves the rows of an item-embedding matrix to a tokenizer.

Batches are built whole by the dataset (``__getitems__``), with tensor gathers over the flat
sequence storage: no per-sample Python in the loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from genrec.data.catalog import counting_cleaning
from genrec.data.formats.base import DataSource, expand
from genrec.data.sequences import SequenceData, Stage, build_sequences
from genrec.errors import ArtifactError, ConfigError, at_least

log = logging.getLogger(__name__)

PAD_ITEM = -1
"""Value of the padding positions in :attr:`SeqBatch.history`."""


@dataclass
class SeqBatch:
    """A batch of histories and next-item targets.

    Attributes:
        users: ``[B]`` int64 dense user ids.
        history: ``[B, L]`` int64 item ids, oldest first, right-padded with ``PAD_ITEM`` (-1);
            ``L`` is the longest history in the batch (at most ``max_history``).
        lengths: ``[B]`` int64 number of real items in each history (>= 1).
        targets: ``[B]`` int64 the next item of each history.
    """

    users: torch.Tensor
    history: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """``[B, L]`` bool, True at real (non-padding) history positions."""
        return self.history != PAD_ITEM

    def __len__(self) -> int:
        return self.targets.shape[0]

    def to(self, device: torch.device | str) -> SeqBatch:
        return SeqBatch(*(getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))

    def pin_memory(self) -> SeqBatch:
        return SeqBatch(*(getattr(self, f.name).pin_memory() for f in fields(self)))


class PrefixDataset(Dataset[SeqBatch]):
    """Samples ``(user, target position)`` over flat sequences; a batch is gathered at once.

    Args:
        data: the sequences.
        users: ``[N]`` user of each sample.
        positions: ``[N]`` index of each sample's target in its user's sequence (>= 1).
        max_history: keep at most this many most recent history items.
    """

    def __init__(self, data: SequenceData, users: torch.Tensor, positions: torch.Tensor, max_history: int) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.offsets = data.offsets
        self.items = data.items
        self.users = users
        self.positions = positions
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> SeqBatch:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> SeqBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        users, positions = self.users[idx], self.positions[idx]
        starts = self.offsets[users]
        lengths = positions.clamp(max=self.max_history)
        width = int(lengths.max())
        steps = torch.arange(width)
        first = starts + positions - lengths  # global index of each history's oldest kept item
        gather = first[:, None] + steps[None, :]
        valid = steps[None, :] < lengths[:, None]
        history = torch.where(valid, self.items[gather.clamp(max=len(self.items) - 1)], PAD_ITEM)
        return SeqBatch(users=users, history=history, lengths=lengths, targets=self.items[starts + positions])


class LengthBucketSampler(torch.utils.data.Sampler[int]):
    """A shuffled order in which every run of ``batch_size`` samples has similar history lengths.

    Each epoch: a random permutation, cut into buckets of ``bucket_batches`` batches; inside a
    bucket samples are sorted by length and cut into batches; the batches are shuffled. A batch
    then pads to a length close to its own samples' (random batches pad to the longest history,
    nearly always ``max_history``). Under DDP, Lightning wraps this sampler and deals its order
    round-robin to the ranks, so ``batch_size`` here is the *global* batch (per-device batch x
    world size), keeping every rank's batch inside one bucket. The order changes every epoch
    (``set_epoch``, or each new iteration) and is the same on every rank.

    Args:
        lengths: ``[N]`` history length of each sample.
        batch_size: samples per (global) batch.
        seed: base seed of the shuffles.
        bucket_batches: batches per bucket (more: less padding, less randomness).
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int = 0, bucket_batches: int = 64) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1  # a wrapper that only re-iterates still gets a new order each epoch
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for bucket in order.split(self.batch_size * self.bucket_batches):
            bucket = bucket[torch.sort(self.lengths[bucket], stable=True).indices]
            batches.extend(bucket.split(self.batch_size))
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        yield from torch.cat([batches[i] for i in shuffled]).tolist() if batches else []


def length_sorted_blocks(lengths: torch.Tensor, block: int) -> torch.Tensor:
    """An evaluation order: the samples in consecutive blocks of ``block``, each block sorted by
    history length (stable), so a batch pads to about its own samples' length.

    Sorting within blocks rather than globally keeps any prefix of whole blocks (what
    ``limit_val_batches`` / ``limit_test_batches`` evaluate) a sample of all lengths.

    Args:
        lengths: ``[N]`` history length of each sample, in the data's order.
        block: samples per block (>= 1).

    Returns:
        ``[N]`` int64 permutation of ``range(N)``.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    order = torch.arange(len(lengths))
    parts = [part[torch.sort(lengths[part], stable=True).indices] for part in order.split(block)]
    return torch.cat(parts) if parts else order


def _keep_batch(batch: SeqBatch | torch.Tensor) -> SeqBatch | torch.Tensor:
    """The collate function: the dataset already built the batch."""
    return batch


class SequenceDataModule(L.LightningDataModule):
    """Leave-one-out next-item data from any reader, for every model.

    Args:
        source: the reader of the on-disk format (a ``genrec.data.formats`` class).
        name: the data set's preset name, used in messages and artifact records.
        kcore: keep users and items with at least this many interactions (iterated); 0 disables.
        min_length: drop users with fewer interactions after filtering (counted); at least 3.
        max_history: the most recent items kept in a history.
        batch_size: training batch size (per device).
        eval_batch_size: validation/test batch size; defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
        bucket_by_length: draw training batches of similar history lengths
            (:class:`LengthBucketSampler`): less padding, faster steps; off = uniform shuffle.
        sort_eval_by_length: evaluate in blocks of ``16 * eval_batch_size`` samples, each sorted
            by history length (:func:`length_sorted_blocks`): less padding, faster decoding, the
            same metrics (each sample is scored on its own); off = the data's order.
        text_template: the data set's default item text template (``{title}[. Brand: {brand}]``,
            see :func:`genrec.data.catalog.render`), used by the encode stage unless
            ``--encode.template`` is given; ``None``: :data:`~genrec.data.catalog.DEFAULT_TEMPLATE`.

    The attribute ``item_cost`` (``[num_items]``, default ``None``) is what each item costs in the
    model's input, set by a model that knows it (``LMRecModule.setup``: the tokens of each item's
    history line). With it, the evaluation order and the training buckets group samples by the
    summed cost of their kept history (:meth:`sample_lengths`) rather than its item count: an LM's
    prompts then pad to about their own length in tokens, which item counts do not give when
    titles differ in length.

    The uniform training shuffle draws from one generator seeded with ``seed``; its state is the
    module's :meth:`state_dict`, saved in every checkpoint, so a resumed run shuffles the next
    epoch as the uninterrupted run would (not as epoch 0).
    """

    def __init__(
        self,
        source: DataSource,
        name: str = "custom",
        kcore: int = 5,
        min_length: int = 3,
        max_history: int = 50,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        bucket_by_length: bool = False,
        sort_eval_by_length: bool = True,
        text_template: str | None = None,
    ) -> None:
        super().__init__()
        at_least("SequenceDataModule", 0, kcore=kcore, num_workers=num_workers)
        at_least("SequenceDataModule", 1, max_history=max_history, batch_size=batch_size, eval_batch_size=eval_batch_size)
        at_least("SequenceDataModule", 3, min_length=min_length)
        self.save_hyperparameters(ignore=["source"])
        self.text_template = text_template
        self.bucket_by_length = bucket_by_length
        self.sort_eval_by_length = sort_eval_by_length
        self.source = source
        self.name = name
        self.kcore = kcore
        self.min_length = min_length
        self.max_history = max_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._data: SequenceData | None = None
        self.item_cost: torch.Tensor | None = None  # [num_items], set by the model (see the class docstring)
        self._shuffle: torch.Generator | None = None
        self._shuffle_state: torch.Tensor | None = None

    @property
    def data(self) -> SequenceData:
        """The filtered sequences, read on first use."""
        if self._data is None:
            self._data = self.load()
        return self._data

    def load(self) -> SequenceData:
        """Read and filter the data set (no caching; :attr:`data` caches)."""
        try:
            with counting_cleaning() as cleaned:
                raw = self.source.read()
            raw.report.markup_removed += cleaned.markup_removed
            raw.report.markup_examples += cleaned.examples[: 5 - len(raw.report.markup_examples)]
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} -- expected by data preset {self.name!r} ({type(self.source).__name__}); "
                "point the source's path at your copy"
            ) from error
        try:
            data = build_sequences(raw, kcore=self.kcore, min_length=self.min_length)
        except ConfigError as error:
            raise ConfigError(f"data set {self.name!r} ({type(self.source).__name__} {_files(self.source)}): {error}") from error
        data.catalog.name = self.name
        log.info("data set %s: %d users, %d items, %d interactions", self.name, data.num_users, data.num_items, len(data.items))
        return data

    def describe(self) -> dict[str, object]:
        """Everything that determines the data, for artifact records and cache keys."""
        return {
            "name": self.name,
            "source": self.source.describe(),
            "kcore": self.kcore,
            "min_length": self.min_length,
            "max_history": self.max_history,
        }

    def setup(self, stage: str | None = None) -> None:
        _ = self.data

    def sample_lengths(self, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[N]`` length of each sample's kept history (``users``, ``positions`` ``[N]``): its item
        count, or with :attr:`item_cost` the summed cost of those items (an LM: prompt tokens)."""
        counts = positions.clamp(max=self.max_history)
        if self.item_cost is None:
            return counts
        data = self.data
        if len(self.item_cost) != data.num_items:
            raise ValueError(f"item_cost has {len(self.item_cost)} items, data set {self.name!r} {data.num_items}")
        prefix = torch.cat([torch.zeros(1, dtype=torch.long), self.item_cost.long()[data.items].cumsum(0)])
        end = data.offsets[users] + positions  # one past each history's newest item
        return prefix[end] - prefix[end - counts]

    def dataset(self, stage: Stage) -> PrefixDataset:
        users, positions = self.data.samples(stage)
        if stage != "train" and self.sort_eval_by_length:
            order = length_sorted_blocks(self.sample_lengths(users, positions), 16 * self.eval_batch_size)
            users, positions = users[order], positions[order]
        return PrefixDataset(self.data, users, positions, self.max_history)

    def _loader(self, stage: Stage, batch_size: int, shuffle: bool) -> DataLoader[SeqBatch]:
        dataset = self.dataset(stage)
        sampler = None
        if stage != "train" and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every user exactly once over all ranks: the default DistributedSampler would repeat
            # users to even the shards out, and the repeats would count in Recall/NDCG.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        elif stage == "train" and self.bucket_by_length:
            world = self.trainer.world_size if self.trainer is not None else 1
            sampler = LengthBucketSampler(self.sample_lengths(dataset.users, dataset.positions), batch_size * world, seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle if sampler is None else None,
            generator=self.shuffle_generator() if shuffle and sampler is None else None,
            collate_fn=_keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def shuffle_generator(self) -> torch.Generator:
        """The training shuffle's generator: seeded with ``seed`` on first use, or set to the state
        a checkpoint restored (:meth:`load_state_dict`); one per module, so every epoch draws on."""
        if self._shuffle is None:
            self._shuffle = torch.Generator().manual_seed(self.seed)
            if self._shuffle_state is not None:
                self._shuffle.set_state(self._shuffle_state)
        return self._shuffle

    def state_dict(self) -> dict[str, Any]:
        """``{"shuffle_generator": ByteTensor}`` once training has drawn from it (saved in checkpoints)."""
        return {} if self._shuffle is None else {"shuffle_generator": self._shuffle.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training shuffle from a checkpoint's state (see :meth:`state_dict`)."""
        state = state_dict.get("shuffle_generator")
        if state is None:
            return
        self._shuffle_state = state
        if self._shuffle is not None:
            self._shuffle.set_state(state)

    def train_dataloader(self) -> DataLoader[SeqBatch]:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[SeqBatch]:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader[SeqBatch]:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader[SeqBatch]:
        return self.test_dataloader()


class ItemEmbeddingDataModule(L.LightningDataModule):
    """Rows of an item-embedding matrix, for training a tokenizer.

    Args:
        embeddings: a safetensors file with an ``embeddings`` tensor ``[num_items, dim]``
            (what the ``encode`` stage writes).
        batch_size: rows per training batch.
        val_fraction: share of items held out to report reconstruction on unseen rows (0: none;
            then validation runs over all items).
        num_workers: DataLoader worker processes.
        seed: seed of the shuffle and the held-out draw.
    """

    def __init__(
        self,
        embeddings: str,
        batch_size: int = 1024,
        val_fraction: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        at_least("ItemEmbeddingDataModule", 1, batch_size=batch_size)
        at_least("ItemEmbeddingDataModule", 0, num_workers=num_workers, val_fraction=val_fraction)
        self.save_hyperparameters()
        self.path = expand(embeddings)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed
        self._table: torch.Tensor | None = None

    @property
    def table(self) -> torch.Tensor:
        """``[num_items, dim]`` float32 embeddings."""
        if self._table is None:
            self._table = load_embeddings(self.path)
        return self._table

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.table.shape[0]
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        held = int(round(n * self.val_fraction))
        return order[held:], (order[:held] if held else torch.arange(n))

    def _loader(self, rows: torch.Tensor, shuffle: bool) -> DataLoader[torch.Tensor]:
        return DataLoader(
            RowDataset(self.table[rows]),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=_keep_batch,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._loader(self._split()[0], shuffle=True)

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        return self._loader(self._split()[1], shuffle=False)


class RowDataset(Dataset[torch.Tensor]):
    """Rows of a ``[N, D]`` tensor; a batch is one indexing operation (``__getitems__``)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.table[index]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        return self.table[torch.as_tensor(indices, dtype=torch.long)]


def load_embeddings(path: str | Path) -> torch.Tensor:
    """The ``embeddings`` tensor of a safetensors file as float32 ``[num_items, dim]``.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: not a readable safetensors file with an ``embeddings`` matrix, or rows
            with NaN or infinite values (naming the first item ids, i.e. rows).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the encode stage first)")
    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ArtifactError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error
    if "embeddings" not in tensors or tensors["embeddings"].dim() != 2:
        raise ArtifactError(f"{path} has no [num_items, dim] 'embeddings' tensor (found {sorted(tensors)})")
    table = tensors["embeddings"].float()
    bad = (~torch.isfinite(table)).any(1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else "")
        raise ArtifactError(f"{path}: {len(bad)} of {len(table)} item embeddings have NaN or infinite values (item ids {shown}); re-run the encode stage")
    return table


def _files(source: DataSource) -> str:
    """The file settings of a reader, for messages (``path=...``, ``reviews=...``)."""
    described = source.describe()
    files = {k: v for k, v in described.items() if isinstance(v, str) and k in ("path", "reviews", "meta", "sequences", "datamaps", "name")}
    return ", ".join(f"{k}={v}" for k, v in files.items()) or "no files"
