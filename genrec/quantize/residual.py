"""The one adapter around ``vector_quantize_pytorch.ResidualVQ``.

``ResidualVQ`` returns a tuple whose length depends on flags, returns zero losses in eval mode,
turns the rotation trick on by default, and (with its per-level straight-through estimator)
scales the gradient reaching its input by the number of levels. This module keeps all of that
in one place and hands back a :class:`QuantizerOutput` with the same meaning in train and eval
mode:

* the library does what it is good at: nearest-code assignment, k-means initialisation of every
  level from data, the EMA codebook update and dead-code replacement (both in training mode
  only);
* the adapter computes the commitment loss itself, from a snapshot of the codebooks taken
  before the library's EMA update, so the value is defined (and identical) in eval mode; and it
  builds the gradient path from the input to the quantized vector itself (straight-through with
  an identity Jacobian, or one rotation-trick rotation of the whole vector), as TIGER does.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualVQ


class QuantizerOutput(NamedTuple):
    """What :class:`ResidualQuantizer` returns.

    Attributes:
        quantized: ``[B, D]`` sum of the chosen code vectors; in training mode it carries the
            gradient to the input (straight-through or rotation trick).
        codes: ``[B, levels]`` int64 code index of each level.
        commit_loss: scalar, ``commitment_weight * sum over levels of mean((r_l - sg(e_l))^2)``,
            where ``r_l`` is the residual entering level ``l`` and ``e_l`` its code vector.
        level_losses: ``[levels]`` the unweighted per-level terms of ``commit_loss`` (detached).
    """

    quantized: Tensor
    codes: Tensor
    commit_loss: Tensor
    level_losses: Tensor


class ResidualQuantizer(nn.Module):
    """Residual vector quantization with EMA codebooks, k-means init and dead-code replacement.

    Args:
        dim: size of the vectors to quantize (the RQ-VAE latent size).
        levels: number of residual levels (code digits per item).
        codebook_size: codes per level.
        commitment_weight: weight of the commitment loss (TIGER: 0.25).
        kmeans_init: initialise each level's codebook by k-means on the first data it sees (call
            :meth:`init_from_data` to choose that data).
        kmeans_iters: Lloyd iterations of that k-means.
        threshold_ema_dead_code: a code whose EMA usage count (per batch) falls below this is
            replaced by a random vector of the current batch; 0 disables.
        decay: EMA decay of the codebook update.
        use_cosine_sim: assign codes by cosine similarity; the library then L2-normalises each
            level's input and the codes.
        rotation_trick: pass the gradient through the quantizer with the rotation trick
            (arXiv 2410.06424) instead of the straight-through estimator.
    """

    def __init__(
        self,
        dim: int,
        levels: int = 3,
        codebook_size: int = 256,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 20,
        threshold_ema_dead_code: float = 2.0,
        decay: float = 0.8,
        use_cosine_sim: bool = False,
        rotation_trick: bool = False,
    ) -> None:
        super().__init__()
        if levels < 1 or codebook_size < 2:
            raise ValueError(f"need levels >= 1 and codebook_size >= 2, got {levels} and {codebook_size}")
        self.dim = dim
        self.levels = levels
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.use_cosine_sim = use_cosine_sim
        self.rotation_trick = rotation_trick
        self.rvq = ResidualVQ(
            dim=dim,
            num_quantizers=levels,
            codebook_size=codebook_size,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
            decay=decay,
            use_cosine_sim=use_cosine_sim,
            commitment_weight=0.0,  # computed here, in train and eval mode alike
            rotation_trick=False,  # the gradient path is built here, not per level
        )

    @property
    def codebooks(self) -> Tensor:
        """``[levels, codebook_size, dim]`` the current code vectors."""
        return self.rvq.codebooks

    @property
    def initialised(self) -> bool:
        """Whether every level's codebook has been initialised (always, without k-means init)."""
        return all(bool(layer._codebook.initted) for layer in self.rvq.layers)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, batch_size: int | None = None) -> None:
        """Run the library's k-means initialisation of every level on ``x`` (``[N, dim]``).

        Level ``l`` is initialised on the residuals left by levels ``< l``. No effect on levels
        already initialised (e.g. loaded from a checkpoint) or without k-means init.

        Args:
            x: ``[N, dim]`` vectors to initialise on (e.g. the encoded embedding table).
            batch_size: the training batch size. The library seeds each code's EMA usage count
                with its k-means cluster size over ``x``; dead codes are those whose count per
                *batch* falls below the threshold, so with ``N`` much larger than a batch no code
                would count as dead for hundreds of steps. Given ``batch_size``, the counts (and
                the EMA sums) are rescaled by ``batch_size / N``.
        """
        was_training = self.training
        fresh = [not bool(layer._codebook.initted) for layer in self.rvq.layers]
        self.eval()  # no EMA update or dead-code replacement from this pass
        try:
            self.rvq(x.float())
        finally:
            self.train(was_training)
        if batch_size is None or x.shape[0] == 0:
            return
        scale = batch_size / x.shape[0]
        for layer, is_fresh in zip(self.rvq.layers, fresh, strict=True):
            if is_fresh:
                layer._codebook.cluster_size.mul_(scale)
                layer._codebook.embed_avg.mul_(scale)

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Quantize ``x`` (``[B, dim]``); see :class:`QuantizerOutput`.

        In training mode the library also updates the codebooks (EMA) and replaces dead codes;
        the output and the loss use the codebooks as they were before that update.
        """
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"expected [B, {self.dim}] vectors, got {tuple(x.shape)}")
        x = x.float()
        books = self.codebooks.detach().clone()  # [levels, K, dim], before the EMA update
        _, codes, _ = self.rvq(x.detach())
        codes = codes.long()
        vectors = books[torch.arange(self.levels, device=codes.device), codes]  # [B, levels, dim]
        before = torch.cat([torch.zeros_like(vectors[:, :1]), vectors[:, :-1]], dim=1).cumsum(dim=1)
        residuals = x[:, None, :] - before  # input of each level; gradient flows to x
        if self.use_cosine_sim:
            residuals = F.normalize(residuals, dim=-1, eps=1e-6)
        level_losses = (residuals - vectors).pow(2).mean(dim=(0, 2))
        commit_loss = self.commitment_weight * level_losses.sum()
        quantized = vectors.sum(dim=1)
        if self.training and x.requires_grad:
            quantized = _rotate_to(x, quantized) if self.rotation_trick else x + (quantized - x).detach()
        return QuantizerOutput(quantized, codes, commit_loss, level_losses.detach())

    def codes_to_vectors(self, codes: Tensor) -> Tensor:
        """``[B, levels]`` int64 codes -> ``[B, dim]`` the sum of their code vectors."""
        books = self.codebooks
        return books[torch.arange(self.levels, device=codes.device), codes.long()].sum(dim=1)


def _rotate_to(x: Tensor, q: Tensor) -> Tensor:
    """``q`` in value; its gradient is the gradient of ``q`` rotated (and scaled) back onto ``x``.

    The rotation trick (arXiv 2410.06424, eq. 4.2): ``q = s * R x`` with ``R`` the rotation of
    ``x``'s direction onto ``q``'s and ``s = |q| / |x|``, both treated as constants.
    """
    eps = 1e-6
    x_norm = x.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (x / x_norm).detach()
    v = (q / q_norm).detach()
    w = F.normalize(u + v, dim=-1, eps=eps).detach()
    rotated = x - 2 * (x * w).sum(-1, keepdim=True) * w + 2 * (x * u).sum(-1, keepdim=True) * v
    return rotated * (q_norm / x_norm).detach()
