"""SkipNonFiniteSteps: a step with a NaN gradient leaves weights and optimizer state untouched,
training goes on, the skip is counted; many in a row stop training; settings it cannot serve
are one-line errors; StopOnNonFiniteLoss does not stop a run at a step that was skipped."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from genrec.divergence import SkipNonFiniteSteps, StopOnNonFiniteLoss
from genrec.errors import ConfigError
from tests.trainer import quiet_trainer


class Linear(L.LightningModule):
    """y = w x by AdamW; records the weights before every optimizer step."""

    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.fused = fused
        self.before: list[torch.Tensor] = []
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.before.append(self.layer.weight.detach().clone())
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05, fused=self.fused)


def _data(nan_batches: set[int], batches: int = 8) -> DataLoader:
    """``batches`` batches of 4 rows; the inputs of the batches in ``nan_batches`` hold a NaN."""
    torch.manual_seed(1)
    x, y = torch.randn(batches * 4, 4), torch.randn(batches * 4, 1)
    for b in nan_batches:
        x[b * 4, 0] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


@pytest.mark.parametrize("fused", [False, True])
def test_a_nan_batch_is_skipped_and_training_goes_on(fused, caplog):
    import logging

    model, skip, stop = Linear(fused), SkipNonFiniteSteps(), StopOnNonFiniteLoss(every=1)
    with caplog.at_level(logging.WARNING, logger="genrec"):
        quiet_trainer(max_epochs=1, callbacks=[skip, stop]).fit(model, _data({3}))
    assert skip.skipped == [{"step": 3, "epoch": 0}] and skip.stopped_at is None
    assert stop.stopped_at is None  # the NaN loss of the skipped step did not stop the run
    assert not torch.isfinite(torch.tensor(model.losses[3])) and len(model.losses) == 8  # all 8 batches trained
    assert torch.equal(model.before[4], model.before[3])  # the skipped step changed no weight
    assert not torch.equal(model.before[3], model.before[2]) and not torch.equal(model.before[5], model.before[4])
    assert torch.isfinite(model.layer.weight).all()
    state = model.trainer.optimizers[0].state[model.layer.weight]
    assert int(state["step"]) == 7  # AdamW counted 7 steps, not 8: its moments skipped the step too
    assert "step 3 (epoch 0) skipped: non-finite gradients (1 skipped so far)" in caplog.text


def test_without_the_guard_one_nan_batch_ruins_the_weights():
    """The control: the same data without the callback leaves NaN weights."""
    model = Linear()
    quiet_trainer(max_epochs=1).fit(model, _data({3}))
    assert not torch.isfinite(model.layer.weight).all()


def test_many_skips_in_a_row_stop_training():
    model, skip = Linear(), SkipNonFiniteSteps(max_consecutive=3)
    trainer = quiet_trainer(max_epochs=1, callbacks=[skip])
    trainer.fit(model, _data({2, 3, 4, 5, 6}))
    assert [s["step"] for s in skip.skipped] == [2, 3, 4]
    assert skip.stopped_at == {"step": 4, "epoch": 0, "loss": "non-finite gradients in 3 steps in a row"}
    assert len(model.losses) == 5  # stopped after the third skip
    assert torch.isfinite(model.layer.weight).all()


def test_a_finite_step_resets_the_run_of_skips():
    model, skip = Linear(), SkipNonFiniteSteps(max_consecutive=2)
    quiet_trainer(max_epochs=1, callbacks=[skip]).fit(model, _data({1, 3, 5}))
    assert [s["step"] for s in skip.skipped] == [1, 3, 5] and skip.stopped_at is None


class Manual(Linear):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_settings_it_cannot_serve_are_one_line_errors():
    with pytest.raises(ConfigError, match="max_consecutive must be >= 1"):
        SkipNonFiniteSteps(max_consecutive=0)
    with pytest.raises(ConfigError, match="needs Lightning's automatic optimization"):
        quiet_trainer(max_epochs=1, callbacks=[SkipNonFiniteSteps()]).fit(Manual(), _data(set()))
    from types import SimpleNamespace

    fp16 = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler("cpu")))  # 16-mixed needs a GPU
    with pytest.raises(ConfigError, match="GradScaler already skips"):
        SkipNonFiniteSteps().setup(fp16, Linear(), "fit")
    SkipNonFiniteSteps().setup(fp16, Linear(), "test")  # checked for fit only
