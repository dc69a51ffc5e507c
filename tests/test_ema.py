"""EMAWeights: the average follows its recursion, validation and checkpoints see the average while
training goes on from the trained weights, a resumed fit continues both exactly, test uses the
average, and the CLI appends it to genrec's default callbacks."""

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from genrec.divergence import StopOnNonFiniteLoss
from genrec.ema import EMAWeights


class Linear(L.LightningModule):
    """y = w x + b by SGD: every step changes the weights (momentum-free, deterministic)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.frozen = torch.nn.Linear(4, 1).requires_grad_(False)  # not averaged
        self.seen: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x) + 0 * self.frozen(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen["val"].append(self.layer.weight.detach().clone())
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen["test"].append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    return DataLoader(TensorDataset(x, y), batch_size=8)  # 8 steps an epoch, no shuffle


class Trained(Callback):
    """Records the trained weight after every step (it runs before EMAWeights in the list)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append(module.layer.weight.detach().clone())


def _trainer(tmp_path: Path, callbacks: list[Callback], epochs: int = 2, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=callbacks, **kw)


def _recursion(weights: list[torch.Tensor], decay: float, start: int) -> list[torch.Tensor]:
    """The average after each step (``None`` before ``start``): steps are 1-based."""
    out, average = [], None
    for step, w in enumerate(weights, start=1):
        if step >= start:
            average = w.clone() if average is None else decay * average + (1 - decay) * w
        out.append(average)
    return out


def test_average_follows_the_recursion_and_validation_sees_it(tmp_path):
    record, ema = Trained(), EMAWeights(decay=0.8, start_step=3)
    module = Linear()
    _trainer(tmp_path, [record, ema], enable_checkpointing=False).fit(module, _data(), _data())
    expected = _recursion(record.weights, 0.8, 3)
    # validation after each epoch (8 steps) ran on the average of that moment
    assert len(module.seen["val"]) == 2
    for epoch, seen in enumerate(module.seen["val"], start=1):
        torch.testing.assert_close(seen, expected[8 * epoch - 1], rtol=0, atol=1e-6)
        assert not torch.allclose(seen, record.weights[8 * epoch - 1])  # not the trained weight
    # the module ends with the final average; the frozen layer is untouched
    torch.testing.assert_close(module.layer.weight.detach(), expected[-1], rtol=0, atol=1e-6)
    assert torch.equal(module.frozen.weight, Linear().frozen.weight)
    assert ema.updates == 16 - 2


def test_training_is_not_changed_by_the_average(tmp_path):
    """The trained weights of a run with EMAWeights are those of the same run without it
    (validation's swap puts them back exactly)."""
    with_ema, plain = Trained(), Trained()
    _trainer(tmp_path / "a", [with_ema, EMAWeights(decay=0.9)], enable_checkpointing=False).fit(Linear(), _data(), _data())
    _trainer(tmp_path / "b", [plain], enable_checkpointing=False).fit(Linear(), _data(), _data())
    assert len(with_ema.weights) == len(plain.weights) == 16
    for a, b in zip(with_ema.weights, plain.weights, strict=True):
        assert torch.equal(a, b)


def test_checkpoint_holds_the_average_resume_continues_and_test_uses_it(tmp_path):
    decay = 0.7
    # uninterrupted: 2 epochs
    record = Trained()
    full = Linear()
    _trainer(tmp_path / "full", [record, EMAWeights(decay=decay)], enable_checkpointing=False).fit(full, _data(), _data())
    expected = _recursion(record.weights, decay, 1)

    # 1 epoch, checkpoint, then resume to 2 epochs in a new trainer
    folder = tmp_path / "ckpt"
    first = _trainer(tmp_path / "first", [EMAWeights(decay=decay), ModelCheckpoint(dirpath=str(folder), save_last=True)], epochs=1)
    first.fit(Linear(), _data(), _data())
    checkpoint = torch.load(folder / "last.ckpt", weights_only=True)  # still loads without unpickling
    torch.testing.assert_close(checkpoint["state_dict"]["layer.weight"], expected[7], rtol=0, atol=1e-6)
    torch.testing.assert_close(checkpoint["ema"]["trained"]["layer.weight"], record.weights[7], rtol=0, atol=1e-6)
    assert "frozen.weight" not in checkpoint["ema"]["trained"]

    resumed_record, resumed = Trained(), Linear()
    _trainer(tmp_path / "second", [resumed_record, EMAWeights(decay=decay)], enable_checkpointing=False).fit(
        resumed, _data(), _data(), ckpt_path=str(folder / "last.ckpt"), weights_only=True)
    # training went on from the trained weights, and the average from the saved average
    for a, b in zip(resumed_record.weights, record.weights[8:], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed.layer.weight.detach(), expected[-1], rtol=0, atol=1e-6)

    # test of the checkpoint, with the callback still in the trainer: the average is the model
    tester = Linear()
    _trainer(tmp_path / "test", [EMAWeights(decay=decay)]).test(tester, _data(), ckpt_path=str(folder / "last.ckpt"), weights_only=True)
    torch.testing.assert_close(tester.seen["test"][0], expected[7], rtol=0, atol=1e-6)


def test_resume_refuses_another_decay(tmp_path):
    folder = tmp_path / "ckpt"
    _trainer(tmp_path, [EMAWeights(decay=0.7), ModelCheckpoint(dirpath=str(folder), save_last=True)], epochs=1).fit(Linear(), _data())
    with pytest.raises(ValueError, match="decay 0.7"):
        _trainer(tmp_path / "b", [EMAWeights(decay=0.9)], epochs=2, enable_checkpointing=False).fit(
            Linear(), _data(), ckpt_path=str(folder / "last.ckpt"), weights_only=True)


@pytest.mark.parametrize("kwargs", [{"decay": 1.0}, {"decay": 0.0}, {"start_step": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="EMAWeights"):
        EMAWeights(**kwargs)


def test_cli_appends_it_to_the_default_callbacks(tmp_path, monkeypatch):
    """``--trainer.callbacks+=genrec.ema.EMAWeights`` on a genrec model: genrec's defaults stay,
    the best checkpoint holds the average, and fit's test pass runs on it."""
    from tests.test_cli import _cli

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli = _cli(tmp_path, epochs=1, extra=["--trainer.callbacks+=genrec.ema.EMAWeights", "--trainer.callbacks.decay=0.9"])
    finally:
        torch.set_num_threads(threads)
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert EMAWeights in kinds and StopOnNonFiniteLoss in kinds
    assert next(c for c in cli.trainer.callbacks if isinstance(c, EMAWeights)).decay == 0.9
    assert "test/recall@10" in cli.trainer.callback_metrics
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, weights_only=True)
    name = next(iter(best["ema"]["trained"]))
    assert not torch.equal(best["state_dict"][name], best["ema"]["trained"][name])  # the average, not the trained weights


def test_applied_puts_the_average_in_for_a_block(tmp_path):
    record, ema = Trained(), EMAWeights(decay=0.6)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Probe(Callback):
        def on_validation_end(self, trainer, module):  # after validation's own swap back
            with ema.applied(module):
                inside = module.layer.weight.detach().clone()
            seen.append((inside, module.layer.weight.detach().clone()))

    _trainer(tmp_path, [record, ema, Probe()], enable_checkpointing=False).fit(Linear(), _data(), _data())
    expected = _recursion(record.weights, 0.6, 1)
    for epoch, (inside, after) in enumerate(seen, start=1):
        torch.testing.assert_close(inside, expected[8 * epoch - 1], rtol=0, atol=1e-6)
        assert torch.equal(after, record.weights[8 * epoch - 1])


EMA_FLAGS = ["--set", "trainer.callbacks+=genrec.ema.EMAWeights", "--set", "trainer.callbacks.decay=0.9"]


def test_bench_timeline_tests_the_average(tmp_path, monkeypatch):
    """bench.tiger_train's test at every validation runs on the average, as validation and the
    final test of the best checkpoint do: with one validation, the two test numbers agree exactly."""
    import functools
    import json
    import sys

    import yaml

    from bench import tiger_train
    from bench.record import record
    from tests.test_configs import ROOT, TINY_DATA, tiny_sids

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    sids = tiny_sids(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tiger_train, "record", functools.partial(record, path=tmp_path / "benchmarks.md"))
    out = tmp_path / "run.json"
    monkeypatch.setattr(sys, "argv", [
        "tiger_train", "--data", str(data), "--model", str(ROOT / "configs/tiger/synthetic.yaml"), "--sids", sids,
        "--set", "trainer.accelerator=cpu", "--set", "data.init_args.batch_size=16", "--set", "trainer.check_val_every_n_epoch=1",
        "--set", "trainer.enable_progress_bar=false", "--set", "trainer.logger=false", "--set", "trainer.max_epochs=1",
        *EMA_FLAGS,
        "--test-target", "0.0", "--out", str(out)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiger_train.main()
    finally:
        torch.set_num_threads(threads)
    done = json.loads(out.read_text())
    assert len(done["timeline"]) == 1
    at_validation, final = done["timeline"][0], done["test"]
    assert at_validation["test/recall@10"] == pytest.approx(final["test/recall@10"], abs=1e-7)
    assert at_validation["test/ndcg@10"] == pytest.approx(final["test/ndcg@10"], abs=1e-7)
