"""The LM recommender's training objective: cross-entropy over the target title's tokens,
optionally weighted against the popularity of the target item.

Fine-tuning on next-title prediction over data where a few items take most interactions teaches
the LM to name popular titles: on Beauty the pretrained SmolLM2 (zero-shot, title-constrained)
has cold-start R@10 0.0184, after one epoch of LoRA fine-tuning 0.0008 (docs/benchmarks.md).
``popularity_alpha`` weights each training row by ``(1 + count of its target)^-alpha``
(inverse-propensity weighting, alpha = 0 is the plain loss, 1 the full inverse), the weights
normalised to mean 1 over the batch's target tokens so that the loss scale and the learning
rate keep their meaning.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

LOSS_CHUNK_ROWS = 4096
"""Target tokens per float32 chunk of the LM loss (4,096 x 49,152 logits = 0.8 GB)."""


def popularity_weights(counts: Tensor, targets: Tensor, alpha: float) -> Tensor:
    """``[B]`` weights ``(1 + counts[targets])^-alpha`` of a batch's rows (not normalised).

    Args:
        counts: ``[N]`` training interactions per item.
        targets: ``[B]`` the rows' target items.
        alpha: the exponent; 0 gives ones.
    """
    return (1.0 + counts[targets].float()).pow(-alpha)


def target_cross_entropy(logits: Tensor, labels: Tensor, row_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy of the target tokens, their mean (float32 scalar).

    Args:
        logits: ``[B, T, V]`` the logits predicting each label position.
        labels: ``[B, T]`` target token ids, ``-100`` where no target token is.
        row_weights: ``[B]`` a weight per row, each of its tokens weighted by it (the mean is
            then ``sum(w * ce) / sum(w)`` over the target tokens); ``None``: all 1.

    The float32 copy of the logits is made a chunk of :data:`LOSS_CHUNK_ROWS` tokens at a time:
    without a backward pass (val/test, whose batches are large) one chunk is alive at once.
    """
    keep = labels != -100
    picked, targets = logits[keep], labels[keep]  # [T, V], [T]: padding positions never reach float32
    if row_weights is None:
        total = sum(F.cross_entropy(picked[i : i + LOSS_CHUNK_ROWS].float(), targets[i : i + LOSS_CHUNK_ROWS], reduction="sum")
                    for i in range(0, len(targets), LOSS_CHUNK_ROWS))
        return total / len(targets)
    weights = row_weights[:, None].expand_as(labels)[keep].float()  # [T]
    total = sum((F.cross_entropy(picked[i : i + LOSS_CHUNK_ROWS].float(), targets[i : i + LOSS_CHUNK_ROWS], reduction="none")
                 * weights[i : i + LOSS_CHUNK_ROWS]).sum() for i in range(0, len(targets), LOSS_CHUNK_ROWS))
    return total / weights.sum()


__all__ = ["LOSS_CHUNK_ROWS", "popularity_weights", "target_cross_entropy"]
