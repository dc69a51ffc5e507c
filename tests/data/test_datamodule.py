import pytest
import torch

from genrec.data.catalog import Item
from genrec.data.datamodule import PAD_ITEM, SeqBatch, SequenceDataModule
from genrec.data.formats.base import DataSource, RawData


class ListSource(DataSource):
    """In-memory sequences, for tests."""

    def __init__(self, sequences: dict[str, list[str]]) -> None:
        super().__init__()
        self.sequences = sequences

    def read(self) -> RawData:
        names = sorted({i for seq in self.sequences.values() for i in seq})
        raw = RawData(items={n: Item.from_raw(n, title=n) for n in names})
        for user, seq in self.sequences.items():
            raw.add_sequence(user, seq)
        return raw


SEQS = {"u0": ["a", "b", "c", "d", "e", "f"], "u1": ["c", "a", "b"], "u2": ["f", "e", "d", "c"]}


def _module(**kwargs) -> SequenceDataModule:
    dm = SequenceDataModule(ListSource(SEQS), kcore=0, **kwargs)
    dm.setup("fit")
    return dm


def _ids(dm, row):
    return [dm.data.catalog[i].external_id for i in row if i != PAD_ITEM]


def test_train_batches_are_every_prefix_of_the_training_part():
    dm = _module(batch_size=100, max_history=50)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, SeqBatch)
    pairs = sorted((tuple(_ids(dm, h.tolist())), dm.data.catalog[t].external_id) for h, t in zip(batch.history, batch.targets, strict=True))
    # u0 training part a b c d -> (a)->b, (a b)->c, (a b c)->d ; u1 part 'c' -> none ; u2 'f e' -> (f)->e
    assert pairs == [(("a",), "b"), (("a", "b"), "c"), (("a", "b", "c"), "d"), (("f",), "e")]
    assert (batch.lengths == batch.mask.sum(1)).all()
    assert batch.history.shape == (4, 3)


def test_eval_batches_hold_full_history_and_respect_max_history():
    dm = _module(batch_size=2, max_history=3, sort_eval_by_length=False)  # the data order
    val = next(iter(dm.val_dataloader()))
    test = next(iter(dm.test_dataloader()))
    assert _ids(dm, val.history[0].tolist()) == ["b", "c", "d"]  # u0: a..d, last 3 kept
    assert dm.data.catalog[int(val.targets[0])].external_id == "e"
    assert _ids(dm, test.history[0].tolist()) == ["c", "d", "e"]
    assert dm.data.catalog[int(test.targets[0])].external_id == "f"
    assert _ids(dm, test.history[1].tolist()) == ["c", "a"]
    assert test.history[1, 2] == PAD_ITEM and test.lengths.tolist() == [3, 2]
    assert sum(len(b) for b in dm.test_dataloader()) == 3


def test_training_shuffle_is_deterministic_per_seed():
    order = lambda dm: torch.cat([b.targets for b in dm.train_dataloader()]).tolist()  # noqa: E731
    a, b, c = order(_module(batch_size=1, seed=1)), order(_module(batch_size=1, seed=1)), order(_module(batch_size=1, seed=7))
    assert a == b
    assert sorted(a) == sorted(c)


def test_batches_move_and_pin():
    dm = _module(batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    moved = batch.to("cpu")
    assert torch.equal(moved.history, batch.history)
    from lightning.fabric.utilities.apply_func import move_data_to_device

    assert isinstance(move_data_to_device(batch, torch.device("cpu")), SeqBatch)


def test_distributed_sampler_shards_without_loss():
    """Under DDP, Lightning swaps in a DistributedSampler; batches still come whole."""
    from torch.utils.data import DataLoader, DistributedSampler

    dm = _module(batch_size=2)
    dataset = dm.dataset("test")
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=lambda b: b)
        seen += [u for batch in loader for u in batch.users.tolist()]
    assert sorted(set(seen)) == [0, 1, 2]  # 3 users over 2 ranks: one padded repeat, none lost


def test_length_buckets_cut_padding_and_cover_every_sample_once():
    from genrec.data.datamodule import LengthBucketSampler

    lengths = torch.randint(1, 21, (1000,), generator=torch.Generator().manual_seed(0))
    sampler = LengthBucketSampler(lengths, batch_size=50, seed=3, bucket_batches=10)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(1000)) and sorted(second) == list(range(1000))
    assert first != second  # a new order every epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # reproducible per epoch
    batches = torch.tensor(first).view(20, 50)
    padded = lengths[batches].max(1).values.sum() * 50
    assert padded < 0.6 * 20 * 50 * 20  # far below random batches, which pad to ~20 each
    assert lengths[batches].max(1).values.float().mean() < 15


def test_bucketed_training_batches_from_the_datamodule():
    dm = SequenceDataModule(ListSource({f"u{i}": [chr(97 + (i + j) % 20) for j in range(3 + i % 12)] for i in range(60)}),
                            kcore=0, batch_size=8, bucket_by_length=True)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == len(dm.dataset("train"))
    spread = [int(b.lengths.max() - b.lengths.min()) for b in batches]
    assert sum(spread) / len(spread) < 3  # histories of one batch have similar lengths


def test_length_sorted_blocks_sort_inside_blocks_only():
    from genrec.data.datamodule import length_sorted_blocks

    lengths = torch.tensor([5, 1, 3, 9, 2, 2, 7])
    order = length_sorted_blocks(lengths, block=3)
    assert order.tolist() == [1, 2, 0, 4, 5, 3, 6]  # blocks [5,1,3] [9,2,2] [7], each stably sorted
    assert length_sorted_blocks(torch.zeros(0, dtype=torch.long), 4).tolist() == []
    with pytest.raises(ValueError, match="block"):
        length_sorted_blocks(lengths, 0)


def test_bucketed_evaluation_sees_every_user_once_in_length_sorted_blocks():
    source = ListSource({f"u{i}": [chr(97 + (i + j) % 20) for j in range(3 + (i * 7) % 12)] for i in range(60)})
    plain = SequenceDataModule(source, kcore=0, batch_size=8, eval_batch_size=2, sort_eval_by_length=False)
    bucketed = SequenceDataModule(source, kcore=0, batch_size=8, eval_batch_size=2)  # sorted by default

    def pairs(batches: list[SeqBatch]) -> list[tuple[int, int]]:
        return sorted(zip(torch.cat([x.users for x in batches]).tolist(), torch.cat([x.targets for x in batches]).tolist(), strict=True))

    for stage, loader in (("val", "val_dataloader"), ("test", "test_dataloader")):
        a = list(getattr(plain, loader)())
        b = list(getattr(bucketed, loader)())
        assert pairs(a) == pairs(b) and len(pairs(b)) == len(plain.dataset(stage))
        lengths = torch.cat([x.lengths for x in b])
        block = 16 * 2
        for start in range(0, len(lengths), block):
            part = lengths[start : start + block]
            assert torch.equal(part, part.sort().values)
        assert sum(int(x.lengths.max()) for x in b) < sum(int(x.lengths.max()) for x in a)


def test_item_costs_order_evaluation_and_training_buckets_by_summed_cost():
    """With the model's per-item cost (an LM: tokens of each item's line), samples are grouped by
    the summed cost of their kept history, not its item count: a history of a few long-titled
    items sorts after one of many short-titled ones."""
    source = ListSource({f"u{i}": [chr(97 + (i + j) % 20) for j in range(3 + (i * 7) % 12)] for i in range(60)})
    dm = SequenceDataModule(source, kcore=0, batch_size=8, eval_batch_size=4, max_history=6, bucket_by_length=True)
    dm.setup("fit")
    cost = torch.randint(1, 40, (dm.data.num_items,), generator=torch.Generator().manual_seed(0))
    dm.item_cost = cost

    def summed(batch: SeqBatch) -> torch.Tensor:  # [B] the cost of each row's history, from the batch itself
        return torch.where(batch.history >= 0, cost[batch.history.clamp(min=0)], 0).sum(1)

    test = list(dm.test_dataloader())
    costs = torch.cat([summed(b) for b in test])
    assert len(costs) == len(dm.dataset("test")) and torch.equal(costs, costs.sort().values)  # one block: sorted
    assert not torch.equal(torch.cat([b.lengths for b in test]), torch.cat([b.lengths for b in test]).sort().values)
    users, positions = dm.dataset("test").users, dm.dataset("test").positions
    assert torch.equal(dm.sample_lengths(users, positions), costs)
    spread = [int(summed(b).max() - summed(b).min()) for b in dm.train_dataloader()]
    dm.item_cost = None
    by_count = [int(summed(b).max() - summed(b).min()) for b in dm.train_dataloader()]
    assert sum(spread) < sum(by_count)  # buckets of similar cost, not of similar item count
    dm.item_cost = cost[:-1]
    with pytest.raises(ValueError, match="item_cost has"):
        dm.dataset("test")
