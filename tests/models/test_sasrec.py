import torch

from genrec.data import SeqBatch, SequenceDataModule, SyntheticSource
from genrec.models import SASRecModule
from tests.trainer import quiet_trainer


def _data(**kwargs) -> SequenceDataModule:
    dm = SequenceDataModule(SyntheticSource(num_users=400, num_items=200, num_categories=10, max_length=15, seed=1), kcore=0, batch_size=128, **kwargs)
    dm.setup("fit")
    return dm


def test_state_reads_the_last_real_item_only():
    torch.manual_seed(0)
    model = SASRecModule(num_items=10, hidden_size=16, num_layers=1, dropout=0.0, max_length=8).eval()
    history = torch.tensor([[1, 2, 3, -1, -1], [1, 2, 3, 4, 5]])
    state = model(history, torch.tensor([3, 5]))
    alone = model(torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    assert torch.allclose(state[0], alone[0], atol=1e-5)  # padding after the history changes nothing
    long = torch.arange(12)[None] % 10
    cut = model(long, torch.tensor([12]))  # longer than max_length: the 8 most recent items
    assert torch.allclose(cut, model(long[:, 4:], torch.tensor([8])), atol=1e-5)


def test_mask_history_removes_history_items_from_the_ranking():
    model = SASRecModule(num_items=6, hidden_size=8, num_layers=1, dropout=0.0, mask_history=True, ks=(3,))
    batch = SeqBatch(users=torch.tensor([0]), history=torch.tensor([[0, 1, -1]]), lengths=torch.tensor([2]), targets=torch.tensor([2]))
    scores = torch.tensor([[9.0, 8.0, 1.0, 2.0, 3.0, 0.0]])
    assert model.rank(scores, batch).tolist() == [[4, 3, 2]]


def test_sasrec_learns_and_beats_popularity():
    dm = _data()
    torch.manual_seed(0)
    model = SASRecModule(hidden_size=32, num_layers=1, dropout=0.1, max_length=20, lr=5e-3)
    trainer = quiet_trainer(max_epochs=6, check_val_every_n_epoch=6)
    trainer.fit(model, datamodule=dm)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert result["test/recall@10"] > 2 * result["test/popularity/recall@10"], result
    assert model.hparams.num_items == dm.data.num_items  # recorded for checkpoint loading
