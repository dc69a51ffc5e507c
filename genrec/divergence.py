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

:class:`SkipNonFiniteSteps` is the gentler guard, opt-in (``--trainer.callbacks+=
genrec.divergence.SkipNonFiniteSteps``, or a YAML's ``trainer.callbacks``): after each backward
it checks the gradients (one ``foreach`` norm and one host sync a step) and, where one is NaN or
infinite, drops them all, so the optimizer skips that step (AdamW leaves a parameter without a
gradient untouched: no weight, moment or step-count change). One bad batch then costs one step,
not the run. Skips are counted and logged (step, epoch), ``result.json`` records them as
``skipped_steps``, and ``max_consecutive`` skips in a row stop training like a NaN loss (the
weights no longer learn). A skipped step's non-finite loss does not trigger
:class:`StopOnNonFiniteLoss` (its weights are untouched). Not for a CUDA-graph training step (its
optimizer runs inside the graph) nor for ``16-mixed`` (the GradScaler skips such steps already).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from genrec.errors import ConfigError

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
        if math.isfinite(value) or any(isinstance(c, SkipNonFiniteSteps) and c.last_skipped == step - 1 for c in getattr(trainer, "callbacks", ())):
            return  # finite, or its step was skipped (the weights are untouched; global_step already counts it)
        self.stopped_at = {"step": int(step), "epoch": int(trainer.current_epoch), "loss": str(value)}  # "nan" / "inf": JSON has no such numbers
        trainer.should_stop = True
        log.error("training stopped: the loss is %s at step %d (epoch %d); the checkpoints saved before it are kept "
                  "and the best of them is what is tested (lower the lr, or check the data of this run)",
                  value, step, trainer.current_epoch)


class SkipNonFiniteSteps(Callback):
    """Skip every optimizer step whose gradients are not all finite (module docstring).

    Args:
        max_consecutive: stop training after this many skipped steps in a row.
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        if max_consecutive < 1:
            raise ConfigError(f"SkipNonFiniteSteps.max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = int(max_consecutive)
        self.skipped: list[dict[str, int]] = []  # {"step", "epoch"} of each skipped step
        self.last_skipped = -1  # trainer.global_step of the last skipped step (before the trainer counts it)
        self._in_a_row = 0
        self.stopped_at: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise ConfigError("SkipNonFiniteSteps needs Lightning's automatic optimization: this model steps its optimizer "
                              "itself (a CUDA-graph step: set model.init_args.cuda_graphs=false, or drop the callback)")
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            raise ConfigError("SkipNonFiniteSteps with 16-mixed: its GradScaler already skips non-finite steps (drop the "
                              "callback, or train in bf16-mixed)")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        norms = torch._foreach_norm(grads)  # NaN or inf wherever a gradient has a non-finite element
        finite = bool(torch.isfinite(torch.stack([n.float().to(norms[0].device) for n in norms])).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):  # sharded (FSDP): every rank skips, or none
            self._in_a_row = 0
            return
        for p in params:
            p.grad = None
        step, epoch = int(trainer.global_step), int(trainer.current_epoch)
        self.skipped.append({"step": step, "epoch": epoch})
        self.last_skipped = step
        self._in_a_row += 1
        log.warning("step %d (epoch %d) skipped: non-finite gradients (%d skipped so far)", step, epoch, len(self.skipped))
        if self._in_a_row >= self.max_consecutive and self.stopped_at is None:
            self.stopped_at = {"step": step, "epoch": epoch, "loss": f"non-finite gradients in {self._in_a_row} steps in a row"}
            trainer.should_stop = True
            log.error("training stopped: %d steps in a row had non-finite gradients (at step %d, epoch %d); the checkpoints "
                      "saved before are kept and the best of them is what is tested", self._in_a_row, step, epoch)


__all__ = ["SkipNonFiniteSteps", "StopOnNonFiniteLoss"]
