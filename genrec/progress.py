"""Progress as plain log lines, for output that is not a terminal.

Rich's progress bar redraws one line in place; written to a file, a pipe or a cluster job's log
it shows only its final state, so a stage that trains for minutes prints nothing until it ends.
:class:`LogProgress` replaces it there: one plain line every ``every`` seconds (stage, epoch,
step / total, loss, batches per second, ETA) and one line with the validation metrics after
each validation pass. :func:`progress_callbacks` gives it when ``sys.stdout`` is not a terminal
(and nothing when it is, leaving Lightning's own bar); the interval comes from the environment
variable ``GENREC_PROGRESS_EVERY`` (seconds, default 30).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

ENV_EVERY = "GENREC_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def progress_every() -> float:
    """Seconds between progress lines: ``$GENREC_PROGRESS_EVERY`` or 30.

    Raises:
        ValueError: the variable is set to something that is not a positive number.
    """
    raw = os.environ.get(ENV_EVERY, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = math.nan
    if not every > 0:
        raise ValueError(f"{ENV_EVERY}={raw!r}: expected a positive number of seconds")
    return every


def progress_callbacks() -> list[Callback]:
    """``[LogProgress()]`` when stdout is not a terminal, else ``[]`` (Lightning's own bar)."""
    isatty = getattr(sys.stdout, "isatty", None)
    if callable(isatty) and isatty():
        return []
    return [LogProgress(every=progress_every())]


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LogProgress(ProgressBar):
    """A progress "bar" that prints plain lines, for logs.

    During training, validation, testing and prediction, a line at most every ``every`` seconds::

        progress TigerModule train epoch 1/2 step 120/190 loss 3.2140 | 41.30 it/s | elapsed 0:03 | ETA 0:06

    (rate, elapsed time and ETA over the fit so far, validation passes included, so the ETA of
    the remaining training batches counts their share of validation too), and after every
    validation pass (not the sanity check) one line with the validation metrics. Printed on global rank 0 only, to ``sys.stdout`` as it is at print time.

    Args:
        every: seconds between two progress lines.
    """

    def __init__(self, every: float = DEFAULT_EVERY) -> None:
        super().__init__()
        if not every > 0:
            raise ValueError(f"every must be a positive number of seconds, got {every}")
        self.every = float(every)
        self._enabled = True
        self._last_line = 0.0
        self._stage_start = 0.0
        self._stage_batches = 0
        self._fit_start = 0.0
        self._fit_batches = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            print(*args, **kwargs, file=sys.stdout, flush=True)

    # -- one stage (train epoch, validation, test, predict) --------------------------------

    def _start(self) -> None:
        now = time.perf_counter()
        self._stage_start = now
        self._stage_batches = 0
        if self._last_line == 0.0:
            self._last_line = now

    def _step(self, pl_module: L.LightningModule, stage: str, done: int, total: int | float, after: str = "",
              remaining: int | float | None = None, fit: bool = False) -> None:
        """Count one batch of ``stage`` (``done`` of ``total`` in this pass) and print a line when due.

        ``after`` follows the step count (e.g. the loss); ``remaining`` is the number of batches
        left for the ETA (default ``total - done``); ``fit``: rate and elapsed time over the whole
        fit so far (validation included), not this pass."""
        if fit:
            self._fit_batches += 1
            start, batches = self._fit_start, self._fit_batches
        else:
            self._stage_batches += 1
            start, batches = self._stage_start, self._stage_batches
        now = time.perf_counter()
        if now - self._last_line < self.every:
            return
        self._last_line = now
        elapsed = now - start
        rate = batches / elapsed if elapsed > 0 else math.nan
        left = (total - done) if remaining is None else remaining
        eta = left / rate if rate > 0 and math.isfinite(left) else math.nan
        of = f"/{int(total)}" if math.isfinite(total) else ""
        self.print(f"progress {type(pl_module).__name__} {stage} step {done}{of}{after} | {rate:.2f} it/s | "
                   f"elapsed {format_seconds(elapsed)} | ETA {format_seconds(eta)}")

    # -- training --------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()
        self._fit_start, self._fit_batches = self._stage_start, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        total = self.total_train_batches
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        remaining = total - (batch_idx + 1)
        if epochs is not None and math.isfinite(total):
            remaining += (epochs - trainer.current_epoch - 1) * total
        if trainer.max_steps is not None and trainer.max_steps > 0:
            remaining = min(remaining, (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches)
        loss = _loss(trainer.progress_bar_metrics)
        stage = f"train epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs is not None else "")
        self._step(pl_module, stage, batch_idx + 1, total, "" if loss is None else f" loss {loss:.4f}", remaining=remaining, fit=True)

    # -- evaluation ------------------------------------------------------------------------

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        stage = "sanity check" if trainer.sanity_checking else "validate"
        self._step(pl_module, stage, batch_idx + 1, _total(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches, dataloader_idx))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # the overall metrics only (``val/recall@10``), not the slices (``val/cold/...``)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and k.count("/") == 1 and v.numel() == 1}
        if metrics:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            self.print(f"validation {type(pl_module).__name__} epoch {trainer.current_epoch + 1}: {shown} "
                       f"({format_seconds(time.perf_counter() - self._stage_start)})")
        self._last_line = time.perf_counter()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(pl_module, "test", batch_idx + 1, _total(trainer.num_test_batches, dataloader_idx))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start()

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(pl_module, "predict", batch_idx + 1, _total(trainer.num_predict_batches, dataloader_idx))


def _total(counts: list[int | float], dataloader_idx: int) -> int | float:
    """The batch count of one evaluation dataloader (``inf`` when unknown)."""
    return counts[dataloader_idx] if dataloader_idx < len(counts) else math.inf


def _loss(metrics: dict[str, Any]) -> float | None:
    """The training loss among the progress-bar metrics (``train/loss_step`` before ``train/loss``)."""
    for key in sorted((k for k in metrics if "loss" in k), key=lambda k: (not k.endswith("_step"), k)):
        try:
            return float(metrics[key])
        except (TypeError, ValueError):
            continue
    return None


__all__ = ["DEFAULT_EVERY", "ENV_EVERY", "LogProgress", "format_seconds", "progress_callbacks", "progress_every"]
