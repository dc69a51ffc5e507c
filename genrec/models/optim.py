"""The optimizer and learning-rate schedule the recommenders share: AdamW without weight decay on
vectors (norms, biases), linear warmup, then a cosine, inverse-square-root or constant schedule,
stepped once per optimizer step.

:class:`OptimizerConfig` is the grouped hyperparameter block (``optimizer:`` in a model YAML's
``init_args``); :func:`adamw` builds the optimizer and its scheduler from it, as
:meth:`genrec.models.base.RecommenderModule.configure_optimizers` returns them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch

from genrec.errors import at_least, positive

Schedule = Literal["cosine", "inverse_sqrt", "constant"]


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its schedule.

    Attributes:
        lr: peak learning rate.
        weight_decay: weight decay of matrices (never of vectors: norms, biases).
        warmup_steps: optimizer steps of linear warmup from 0 to ``lr``.
        scheduler: decay after warmup: ``cosine`` (to ``min_lr_ratio * lr`` at the last step the
            trainer will run), ``inverse_sqrt`` (``lr * sqrt(warmup / step)``) or ``constant``.
        min_lr_ratio: floor of the cosine decay, as a fraction of ``lr``.
        betas: AdamW's ``(beta1, beta2)``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    scheduler: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        positive("optimizer", lr=self.lr)
        at_least("optimizer", 0, weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio)
        if self.scheduler not in ("cosine", "inverse_sqrt", "constant"):
            raise ValueError(f"optimizer.scheduler: unknown scheduler {self.scheduler!r}; expected cosine, inverse_sqrt or constant")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))


def fused_adamw(module: L.LightningModule) -> bool:
    """Whether ``module``'s AdamW may be ``fused`` (one kernel per step instead of a launch per tensor group).

    Only on CUDA, and only without gradient clipping: Lightning's mixed-precision plugin refuses to
    clip the gradients of an optimizer that unscales them itself, which a fused one declares.
    """
    if module.device.type != "cuda":
        return False
    trainer = module._trainer
    return trainer is None or not trainer.gradient_clip_val


def lr_schedule(kind: str, warmup_steps: int, total_steps: float, min_ratio: float = 0.0) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at optimizer step ``s`` (for ``LambdaLR``).

    Linear warmup over ``warmup_steps``, then ``cosine`` (to ``min_ratio`` at ``total_steps``;
    constant if the total is unknown), ``inverse_sqrt`` or ``constant``.
    """
    if kind not in ("cosine", "inverse_sqrt", "constant"):
        raise ValueError(f"unknown scheduler {kind!r}; expected cosine, inverse_sqrt or constant")
    warmup = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / (step + 1))
        if kind == "constant" or not math.isfinite(total_steps):
            return 1.0
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def adamw(
    params: Iterable[torch.nn.Parameter],
    config: OptimizerConfig,
    total_steps: float,
    optimizer_class: type[torch.optim.AdamW] = torch.optim.AdamW,
    **kwargs: Any,
) -> dict[str, Any]:
    """AdamW over the trainable ``params`` (two groups: matrices with ``weight_decay``, vectors
    without) and the per-step :func:`lr_schedule`, in the form ``configure_optimizers`` returns.

    Args:
        total_steps: the optimizer steps of the run (``inf`` when unknown: cosine stays flat).
        optimizer_class: ``torch.optim.AdamW`` or a subclass (the CUDA-graph step's).
        kwargs: more ``optimizer_class`` arguments (``fused``, ``capturable``).
    """
    trainable = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = optimizer_class(groups, lr=config.lr, betas=config.betas, **kwargs)
    schedule = lr_schedule(config.scheduler, config.warmup_steps, total_steps, config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["OptimizerConfig", "Schedule", "adamw", "fused_adamw", "lr_schedule"]
