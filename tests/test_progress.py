"""Plain progress lines (genrec.progress): one line per due interval in training, validation,
test and predict, the ETA of the remaining training batches, and the switch on stdout's TTY."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from genrec.progress import (
    ENV_EVERY,
    LogProgress,
    format_seconds,
    progress_callbacks,
    progress_every,
)
from tests.trainer import quiet_trainer


class _Tiny(L.LightningModule):
    """A linear regression on 8 batches of 4 rows: just enough for every loop to run."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def _loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def predict_step(self, batch, batch_idx):
        return self.layer(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(torch.randn(32, 3, generator=torch.Generator().manual_seed(0)), batch_size=4)


def test_lines_in_every_loop(capsys, one_thread):
    model = _Tiny()
    trainer = quiet_trainer(max_epochs=2, callbacks=[LogProgress(every=1e-9)], enable_progress_bar=True, log_every_n_steps=1)
    trainer.fit(model, _loader(), _loader())
    trainer.test(model, _loader(), verbose=False)
    trainer.predict(model, _loader())
    out = capsys.readouterr().out
    train = re.findall(r"^progress _Tiny train epoch (\d)/2 step (\d)/8 loss \d+\.\d{4} \| \d+\.\d\d it/s \| elapsed \d+:\d\d \| ETA (\d+):(\d\d)$",
                       out, flags=re.M)
    assert [(int(e), int(s)) for e, s, *_ in train] == [(e, s) for e in (1, 2) for s in range(1, 9)]  # every batch: 1 ns is always due
    assert len(re.findall(r"^validation _Tiny epoch \d: val/loss \d+\.\d{4} \(\d+:\d\d\)$", out, flags=re.M)) == 2  # not the sanity check
    assert len(re.findall(r"^progress _Tiny validate step \d/8 ", out, flags=re.M)) == 16
    assert re.findall(r"^progress _Tiny sanity check step (\d)/2 ", out, flags=re.M) == ["1", "2"]
    assert len(re.findall(r"^progress _Tiny test step \d/8 ", out, flags=re.M)) == 8
    assert len(re.findall(r"^progress _Tiny predict step \d/8 ", out, flags=re.M)) == 8


def test_eta_counts_the_remaining_epochs(monkeypatch, one_thread):
    """With a fake clock of 1 s per batch, the ETA after batch b of epoch e is the batches left
    in the whole fit, in seconds."""
    clock = iter(range(10_000))
    monkeypatch.setattr("genrec.progress.time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    trainer = quiet_trainer(max_epochs=3, callbacks=[LogProgress(every=1e-9)], enable_progress_bar=True, limit_val_batches=0)
    trainer.fit(_Tiny(), _loader(), _loader())
    etas = [int(m) * 60 + int(s) for m, s in re.findall(r"ETA (\d+):(\d\d)$", out.getvalue(), flags=re.M)]
    assert etas == [24 - done for done in range(1, 25)]


def test_interval_and_terminal_switch(monkeypatch):
    monkeypatch.delenv(ENV_EVERY, raising=False)
    assert progress_every() == 30.0
    monkeypatch.setenv(ENV_EVERY, "2.5")
    assert progress_every() == 2.5
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv(ENV_EVERY, bad)
        with pytest.raises(ValueError, match=f"{ENV_EVERY}='{bad}': expected a positive number of seconds"):
            progress_every()
    monkeypatch.setenv(ENV_EVERY, "7")

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdout", _Terminal())
    assert progress_callbacks() == []  # Lightning's own bar on a terminal
    monkeypatch.setattr("sys.stdout", io.StringIO())
    [callback] = progress_callbacks()
    assert isinstance(callback, LogProgress) and callback.every == 7.0
    assert (format_seconds(59.4), format_seconds(3725), format_seconds(float("nan"))) == ("0:59", "1:02:05", "?")
