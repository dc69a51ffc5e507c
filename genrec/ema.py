"""An exponential moving average (EMA) of the trained weights, for validation, checkpoints and test.

Averaging the weights over the last few thousand steps is a common lever for a small recommender
whose val curve flattens while training goes on (issue 16: TIGER's val R@10 is flat from about
epoch 47 of 80). :class:`EMAWeights` is a Lightning callback, so any genrec model takes it from
the command line or a YAML, with no change to the model:

    python train.py fit --config configs/data/amazon-beauty.yaml --config configs/tiger/amazon-beauty.yaml \\
        --trainer.callbacks+=genrec.ema.EMAWeights --trainer.callbacks.decay=0.999

or in a YAML, ``trainer: {callbacks: [{class_path: genrec.ema.EMAWeights, init_args: {decay:
0.999}}]}`` (genrec's own callbacks are kept either way).

What it does, after every optimizer step from ``start_step`` on: ``average = decay * average +
(1 - decay) * weight`` for each trained parameter (``requires_grad``; a LoRA run averages only its
adapters), in one ``foreach`` kernel group on the parameters' device, starting from a copy of the
weights. Buffers are not averaged. A CUDA-graph training step (``cuda_graphs``) is unaffected:
weights are swapped by in-place copies, so their addresses never change.

* **Validation** runs on the average (so ``ModelCheckpoint`` picks the best average); training
  resumes from the trained weights afterwards. :meth:`EMAWeights.applied` puts the average in for
  any other evaluation during training (``bench.tiger_train``'s test-at-every-validation uses it).
* **Checkpoints** hold the average as their ``state_dict`` (what ``test``, ``Recommender.load`` and
  ``--ckpt_path`` read, unchanged) and the trained weights under ``checkpoint["ema"]["trained"]``,
  so a resumed fit continues both exactly. A checkpoint saved before the first update holds the
  trained weights only.
* **At the end of training** the module keeps the average.

Every saved value is a tensor or a plain number: checkpoints still load with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from genrec.errors import ArtifactError, ConfigError


class EMAWeights(Callback):
    """Keep an exponential moving average of the trained parameters (module docstring).

    Args:
        decay: weight of the old average at each update, ``0 < decay < 1`` (0.999: a horizon of
            about 1,000 optimizer steps).
        start_step: the first optimizer step (count of steps taken) that updates the average; the
            average starts as a copy of the weights then.
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMAWeights.decay must be in (0, 1), got {decay}")
        if start_step < 0:
            raise ConfigError(f"EMAWeights.start_step must be >= 0, got {start_step}")
        self.decay = float(decay)
        self.start_step = int(start_step)
        self.updates = 0  # averaging steps taken
        self._last_step = -1  # trainer.global_step at the last update
        self._names: list[str] = []
        self._average: list[Tensor] | None = None  # one per name, on the parameter's device
        self._swapped = False  # the module holds the average (during validation)

    # ---- state --------------------------------------------------------------------------------

    @staticmethod
    def _trained(module: L.LightningModule) -> list[tuple[str, torch.nn.Parameter]]:
        return [(name, p) for name, p in module.named_parameters() if p.requires_grad]

    def _params(self, module: L.LightningModule) -> list[torch.nn.Parameter]:
        """The module's trained parameters in the order of :attr:`_names` (checked)."""
        named = self._trained(module)
        if [name for name, _ in named] != self._names:
            raise RuntimeError("EMAWeights: the module's trained parameters changed since the average was started "
                               f"({len(named)} now, {len(self._names)} averaged)")
        return [p for _, p in named]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        strategy = type(trainer.strategy).__name__
        if stage == "fit" and ("FSDP" in strategy or "DeepSpeed" in strategy):
            raise ConfigError(f"EMAWeights averages whole parameters; it does not support the sharded strategy {strategy}")

    # ---- averaging ----------------------------------------------------------------------------

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps taken (gradient accumulation: not every batch)
        if step == self._last_step or step < max(self.start_step, 1):
            return
        self._last_step = step
        if self._average is None:
            named = self._trained(pl_module)
            self._names = [name for name, _ in named]
            self._average = [p.detach().clone() for _, p in named]
        else:
            torch._foreach_lerp_(self._average, [p.detach() for p in self._params(pl_module)], 1.0 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def _swap(self, module: L.LightningModule) -> None:
        assert self._average is not None
        for p, average in zip(self._params(module), self._average, strict=True):
            held = p.detach().clone()
            p.copy_(average)
            average.copy_(held)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def applied(self, module: L.LightningModule) -> Iterator[None]:
        """The average in ``module`` for the ``with`` block (what validation sees), the trained
        weights back after it; nothing changes before the first update or when it is already in."""
        swap = self._average is not None and not self._swapped
        if swap:
            self._swap(module)
        try:
            yield
        finally:
            if swap:
                self._swap(module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average is not None and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(pl_module)

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average is None:
            return
        if not self._swapped:
            for p, average in zip(self._params(pl_module), self._average, strict=True):
                p.copy_(average)
        self._average, self._names, self._swapped = None, [], False

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "start_step": self.start_step, "updates": self.updates, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if float(state_dict.get("decay", self.decay)) != self.decay:
            raise ArtifactError(f"EMAWeights: the checkpoint's average has decay {state_dict['decay']}, this run {self.decay}")
        self.updates = int(state_dict.get("updates", 0))
        self._last_step = int(state_dict.get("last_step", -1))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average is None:
            return
        params = self._params(pl_module)
        # The module holds the average while validating, the trained weights otherwise.
        averaged, trained = (params, self._average) if self._swapped else (self._average, params)
        state = checkpoint["state_dict"]
        # Every name of a parameter: a tied one (TIGER's shared embedding and output layer) is in
        # the state_dict under each of them, and the last one loaded wins.
        index = {id(p): i for i, p in enumerate(params)}
        aliases = [(name, index[id(p)]) for name, p in pl_module.named_parameters(remove_duplicate=False) if id(p) in index]
        missing = [name for name, _ in aliases if name not in state]
        if missing:
            raise RuntimeError(f"EMAWeights: {len(missing)} trained parameters are not in the checkpoint's state_dict (e.g. {missing[0]})")
        copies = [t.detach().clone() for t in averaged]
        for name, i in aliases:
            state[name] = copies[i]
        checkpoint["ema"] = {"trained": {name: t.detach().clone() for name, t in zip(self._names, trained, strict=True)}}

    @torch.no_grad()
    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Resuming a fit: Lightning has loaded ``state_dict`` (the average) into the module by now;
        the average moves here and the trained weights go back into the module. Any other stage
        (``test`` of the best checkpoint, ``validate``) keeps the average in the module."""
        trained = (checkpoint.get("ema") or {}).get("trained")
        if trained is None or trainer.state.fn != TrainerFn.FITTING:
            return  # before the first update (or without this callback) / test, validate, predict: the average is the model
        named = self._trained(pl_module)
        names = [name for name, _ in named]
        if sorted(trained) != sorted(names):
            raise ArtifactError(f"EMAWeights: the checkpoint averages {len(trained)} parameters, the module trains {len(names)}")
        self._names = names
        self._average = [p.detach().clone() for _, p in named]
        for name, p in named:
            p.copy_(trained[name])
        self._swapped = False


__all__ = ["EMAWeights"]
