"""RQ-VAE tokenizer (TIGER): MLP encoder -> residual quantizer -> MLP decoder, as a LightningModule.

Sizes live in :class:`RQVAEConfig` presets (``RQVAEConfig.from_name("tiger", codebook_size=512)``);
:class:`RQVAEModule` takes a preset name plus ``overrides``, a mapping of single fields (the
convention of every configurable model, :mod:`genrec.models.settings`), so a YAML config or a
scaling sweep names a preset and changes only what differs. At the end of every validation epoch the module
encodes the whole embedding table of the datamodule and logs, per level, the fraction of codes
used and the code perplexity, and the collision rate of the full code tuple (the share of items
that will need a dedup digit > 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.artifacts import atomic_path
from genrec.errors import positive
from genrec.quantize.protocol import FitSettings
from genrec.quantize.residual import ResidualQuantizer
from genrec.quantize.semantic_ids import quality_report

ReconstructionLoss = Literal["mse", "cosine"]


@dataclass(frozen=True)
class RQVAEConfig:
    """Architecture, quantizer and loss of an RQ-VAE (see :class:`RQVAEModule` for each field)."""

    hidden_dims: tuple[int, ...] = (512, 256, 128)
    latent_dim: int = 32
    levels: int = 3
    codebook_size: int = 256
    commitment_weight: float = 0.25
    reconstruction: ReconstructionLoss = "mse"
    dropout: float = 0.0
    kmeans_init: bool = True
    kmeans_iters: int = 20
    kmeans_init_size: int = 65536
    threshold_ema_dead_code: float = 2.0
    decay: float = 0.8
    use_cosine_sim: bool = False
    rotation_trick: bool = False

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> RQVAEConfig:
        """The preset ``name`` with ``overrides`` applied (unknown keys raise ``TypeError``)."""
        if name not in RQVAE_PRESETS:
            raise ValueError(f"unknown RQ-VAE preset {name!r}; choose from {sorted(RQVAE_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown RQVAEConfig fields {sorted(unknown)}")
        if "hidden_dims" in overrides:
            overrides["hidden_dims"] = tuple(overrides["hidden_dims"])
        return replace(RQVAE_PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists)."""
        out = asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return out


RQVAE_PRESETS: dict[str, RQVAEConfig] = {
    # TIGER (Rajput et al. 2023), as GRID reproduces it: encoder 512-256-128, latent 32,
    # 3 levels x 256 codes, commitment 0.25, k-means init.
    "tiger": RQVAEConfig(),
    "grid-default": RQVAEConfig(),
    # codebook-size ladder of the scaling study (bigger codebooks add almost nothing)
    "tiger-cb512": RQVAEConfig(codebook_size=512),
    "tiger-cb1024": RQVAEConfig(codebook_size=1024),
    # a wider quantizer, for N_QT sweeps
    "large": RQVAEConfig(hidden_dims=(1024, 512, 256), latent_dim=64),
    # tests and CI
    "tiny": RQVAEConfig(hidden_dims=(64,), latent_dim=16, codebook_size=16, kmeans_iters=10),
}


@dataclass
class RQVAEOutput:
    """What :meth:`RQVAEModule.forward` returns.

    Attributes:
        reconstruction: ``[B, input_dim]`` decoder output.
        latent: ``[B, latent_dim]`` encoder output.
        quantized: ``[B, latent_dim]`` sum of the chosen code vectors.
        codes: ``[B, levels]`` int64.
        recon_loss: scalar reconstruction loss (MSE or 1 - cosine, per the config).
        commit_loss: scalar weighted commitment loss.
        loss: scalar ``recon_loss + commit_loss``.
        level_losses: ``[levels]`` unweighted per-level commitment terms (detached).
    """

    reconstruction: Tensor
    latent: Tensor
    quantized: Tensor
    codes: Tensor
    recon_loss: Tensor
    commit_loss: Tensor
    loss: Tensor
    level_losses: Tensor


def _mlp(dims: list[int], dropout: float) -> nn.Sequential:
    """Linear layers through ``dims`` with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAEModule(L.LightningModule):
    """RQ-VAE tokenizer: learns semantic IDs from item embeddings.

    Args:
        preset: name of an :class:`RQVAEConfig` preset (``tiger``, ``grid-default``,
            ``tiger-cb512``, ``tiger-cb1024``, ``large``, ``tiny``).
        input_dim: embedding size; ``None``: read from the datamodule's ``table`` at setup (and
            then recorded in the hyperparameters, so checkpoints load without a datamodule).
        overrides: fields of the preset's :class:`RQVAEConfig` to change, e.g.
            ``{codebook_size: 512, levels: 4}``; an unknown field raises. The fields:
            hidden_dims: encoder hidden sizes (the decoder mirrors them).
            latent_dim: size of the quantized latent.
            levels: residual levels (SID digits before the dedup digit).
            codebook_size: codes per level.
            commitment_weight: weight of the commitment loss.
            reconstruction: reconstruction loss, ``mse`` or ``cosine`` (1 - cosine similarity).
            dropout: dropout between MLP layers.
            kmeans_init: initialise every level's codebook by k-means on encoded data at fit start.
            kmeans_iters: Lloyd iterations of that k-means.
            kmeans_init_size: at most this many items (random) of the table feed the k-means init.
            threshold_ema_dead_code: replace codes whose EMA usage per batch falls below this; 0: off.
            decay: EMA decay of the codebook update.
            use_cosine_sim: assign codes by cosine similarity.
            rotation_trick: rotation-trick gradient through the quantizer instead of straight-through.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        encode_batch_size: rows per batch in :meth:`encode_codes` and the validation-end pass.

    Checkpoints written before ``overrides`` (flat size fields) do not load.
    """

    def __init__(
        self,
        preset: str = "tiger",
        input_dim: int | None = None,
        overrides: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        encode_batch_size: int = 4096,
    ) -> None:
        super().__init__()
        positive("RQVAEModule", lr=lr, encode_batch_size=encode_batch_size)
        self.save_hyperparameters()
        self.config = RQVAEConfig.from_name(preset, **dict(overrides or {}))
        positive("RQVAEModule", levels=self.config.levels, codebook_size=self.config.codebook_size, latent_dim=self.config.latent_dim)
        if self.config.reconstruction not in ("mse", "cosine"):
            raise ValueError(f"reconstruction must be 'mse' or 'cosine', got {self.config.reconstruction!r}")
        self.lr = lr
        self.weight_decay = weight_decay
        self.encode_batch_size = encode_batch_size
        self.input_dim = input_dim
        if input_dim is not None:
            self._build(input_dim)

    # ---- construction -------------------------------------------------------------------------

    def _build(self, input_dim: int) -> None:
        c = self.config
        self.input_dim = input_dim
        self.encoder = _mlp([input_dim, *c.hidden_dims, c.latent_dim], c.dropout)
        self.decoder = _mlp([c.latent_dim, *reversed(c.hidden_dims), input_dim], c.dropout)
        self.quantizer = ResidualQuantizer(
            c.latent_dim,
            levels=c.levels,
            codebook_size=c.codebook_size,
            commitment_weight=c.commitment_weight,
            kmeans_init=c.kmeans_init,
            kmeans_iters=c.kmeans_iters,
            threshold_ema_dead_code=c.threshold_ema_dead_code,
            decay=c.decay,
            use_cosine_sim=c.use_cosine_sim,
            rotation_trick=c.rotation_trick,
        )

    def _table(self) -> Tensor | None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "table", None)

    def setup(self, stage: str) -> None:
        if self.input_dim is None:
            table = self._table()
            if table is None:
                raise ValueError("input_dim is not set and the datamodule has no `table` to read it from")
            self._build(int(table.shape[1]))
            self.hparams["input_dim"] = self.input_dim

    def on_fit_start(self) -> None:
        """k-means-initialise the codebooks on (a sample of) the whole table, not one batch."""
        table = self._table()
        if table is None or self.quantizer.initialised:
            return  # without a table the library initialises on the first batch it sees
        n = table.shape[0]
        take = torch.randperm(n)[: self.config.kmeans_init_size] if n > self.config.kmeans_init_size else torch.arange(n)
        latents = self._encode_latents(table[take])
        batch_size = getattr(self.trainer.datamodule, "batch_size", None)
        self.quantizer.init_from_data(latents, batch_size=batch_size if isinstance(batch_size, int) else None)

    # ---- model --------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> RQVAEOutput:
        """Encode, quantize and decode ``x`` (``[B, input_dim]``)."""
        latent = self.encoder(x)
        q = self.quantizer(latent)
        reconstruction = self.decoder(q.quantized)
        if self.config.reconstruction == "cosine":
            recon_loss = (1 - F.cosine_similarity(reconstruction, x, dim=-1)).mean()
        else:
            recon_loss = F.mse_loss(reconstruction, x)
        return RQVAEOutput(
            reconstruction=reconstruction,
            latent=latent,
            quantized=q.quantized,
            codes=q.codes,
            recon_loss=recon_loss,
            commit_loss=q.commit_loss,
            loss=recon_loss + q.commit_loss,
            level_losses=q.level_losses,
        )

    def model_step(self, batch: Tensor | list[Tensor] | tuple[Tensor, ...], stage: str) -> RQVAEOutput:
        """One step on ``batch`` (a ``TensorDataset`` batch ``[x]`` or ``x`` ``[B, input_dim]``)."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        out = self(x)
        size = x.shape[0]
        self.log(f"{stage}/loss", out.loss, prog_bar=True, batch_size=size)
        self.log(f"{stage}/recon", out.recon_loss, batch_size=size)
        self.log(f"{stage}/commit", out.commit_loss, batch_size=size)
        for level, value in enumerate(out.level_losses):
            self.log(f"{stage}/commit_l{level}", value, batch_size=size)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.model_step(batch, "train").loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.model_step(batch, "val").loss

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.model_step(batch, "test").loss

    def on_validation_epoch_end(self) -> None:
        """Code usage per level and collision rate over the whole table."""
        table = self._table()
        if table is None or self.trainer.sanity_checking:
            return
        codes = self.encode_codes(table)
        report = quality_report(codes, self.config.codebook_size, self.reconstruction_error(table))
        for level in report["per_level"]:
            self.log(f"val/used_l{level['level']}", level["fraction_used"])
            self.log(f"val/perplexity_l{level['level']}", level["perplexity"])
        self.log("val/collision_rate", report["collision_rate"], prog_bar=True)
        self.log("val/max_dedup_digit", float(report["max_dedup_digit"]))
        self.log("val/table_recon", report["reconstruction_error"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # ---- the tokenizer protocol ---------------------------------------------------------------

    file_suffix: ClassVar[str] = ".tokenizer.ckpt"
    """The file :meth:`save` writes beside a SID artifact (a Lightning checkpoint)."""

    def fit(self, embeddings: Tensor, settings: FitSettings) -> RQVAEModule:
        """Train with a Lightning ``Trainer`` as ``settings`` say, on the embedding file
        ``settings.embeddings_path`` (``embeddings`` are its rows, ``[N, D]``); then eval mode,
        on the GPU when ``settings`` allow one. Returns ``self``."""
        from genrec.data.datamodule import ItemEmbeddingDataModule
        from genrec.progress import progress_callbacks

        if settings.embeddings_path is None:
            raise ValueError("RQVAEModule.fit reads its batches from the embedding file: settings.embeddings_path is not set")
        L.seed_everything(settings.seed, workers=True, verbose=False)
        datamodule = ItemEmbeddingDataModule(str(settings.embeddings_path), batch_size=settings.batch_size, seed=settings.seed)
        trainer = L.Trainer(
            max_epochs=settings.max_epochs,
            accelerator=settings.accelerator,
            devices=settings.devices,
            precision=settings.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=progress_callbacks(),
            fast_dev_run=settings.fast_dev_run,
            check_val_every_n_epoch=max(1, settings.max_epochs // 10),
        )
        trainer.fit(self, datamodule=datamodule)
        self.eval()
        if settings.may_use_cuda():
            self.cuda()
        return self

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the full training state (a Lightning checkpoint) of the trainer that ran :meth:`fit`, atomically."""
        if self._trainer is None:
            raise RuntimeError("RQVAEModule.save writes its trainer's checkpoint: call fit() first")
        path = Path(path)
        with atomic_path(path) as tmp:
            self.trainer.save_checkpoint(tmp, weights_only=False)  # the full state, said (Lightning notes a default otherwise)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> RQVAEModule:
        """Read a file written by :meth:`save` (``weights_only=True``: tensors and plain values only)."""
        module = cls.load_from_checkpoint(path, map_location=device or "cpu", weights_only=True)
        return module.eval()

    # ---- inference ----------------------------------------------------------------------------

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def levels(self) -> int:
        return self.config.levels

    def _batched(self, fn: Any, rows: Tensor) -> Tensor:
        """``fn`` over ``rows`` in eval mode, without gradients, in batches; result on ``rows``' device."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                outs = [fn(chunk.to(self.device)).cpu() for chunk in rows.split(self.encode_batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(outs).to(rows.device)

    def _encode_latents(self, embeddings: Tensor) -> Tensor:
        return self._batched(lambda x: self.encoder(x.float()), embeddings).to(self.device)

    def encode_codes(self, embeddings: Tensor) -> Tensor:
        """``[N, input_dim]`` embeddings -> ``[N, levels]`` int64 codes (eval mode, no grad, batched)."""
        return self._batched(lambda x: self.quantizer(self.encoder(x.float())).codes, embeddings)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """``[N, levels]`` codes -> ``[N, input_dim]`` reconstructed embeddings."""
        return self._batched(lambda c: self.decoder(self.quantizer.codes_to_vectors(c)), codes)

    def reconstruction_error(self, embeddings: Tensor) -> float:
        """Mean squared error (per element) of ``embeddings`` ``[N, input_dim]`` decoded from their codes."""
        recon = self._batched(lambda x: self(x.float()).reconstruction, embeddings)
        return float(F.mse_loss(recon, embeddings.float()))

    def describe(self) -> dict[str, Any]:
        """The quantizer config, for the SID artifact."""
        return {"class": type(self).__name__, "preset": self.hparams.get("preset"), "input_dim": self.input_dim, **self.config.to_dict()}

    def num_parameters(self) -> int:
        """Trainable parameters plus codebook entries (``N_QT`` of the scaling law)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable + math.prod(self.quantizer.codebooks.shape)
