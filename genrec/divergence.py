"""Stop a training run whose loss stopped being a number.

A run that diverges (the loss NaN or infinite) trains on for the rest of its budget with NaN
weights: on the H200, a popularity-weighted SmolLM2 LoRA went NaN early in its second epoch and
spent its last minutes and a validation pass on NaN (docs/benchmarks.md, "LM recommender").
:class:`StopOnNonFiniteLoss` looks at the training loss every ``every`` steps (one host sync
each time, so a CUDA-graph step pays it once in ``every``) and, at the first non-finite one,
stops training with one line that says where. Weights once NaN stay NaN, so a periodic look
misses no divergence; the checkpoints saved before it (the best by val among them) are kept, and
``fit`` goes on to test the best one as usual. The step and epoch are kept in
:attr:`StopOnNonFiniteLoss.stopped_at` (not in checkpoints: testing the best checkpoint after
the stop must not restore an earlier, empty record), and ``result.json`` of a pipeline or scaling
run records them as ``diverged``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("genrec")


class StopOnNonFiniteLoss(Callback):
    """Stop training at the first non-finite training loss seen (module docstring).

    Args:
        every: look at the loss of every ``every``-th training batch (and of the first).
    """

    def __init__(self, every: int = 50) -> None:
        if every < 1:
            raise ValueError(f"StopOnNonFiniteLoss.every must be >= 1, got {every}")
        self.every = every
        self.stopped_at: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.stopped_at is not None or (batch_idx % self.every and step % self.every):
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach())
        if math.isfinite(value):
            return
        self.stopped_at = {"step": int(step), "epoch": int(trainer.current_epoch), "loss": str(value)}  # "nan" / "inf": JSON has no such numbers
        trainer.should_stop = True
        log.error("training stopped: the loss is %s at step %d (epoch %d); the checkpoints saved before it are kept "
                  "and the best of them is what is tested (lower the lr, or check the data of this run)",
                  value, step, trainer.current_epoch)


__all__ = ["StopOnNonFiniteLoss"]
