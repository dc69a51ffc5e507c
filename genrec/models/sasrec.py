"""SASRec with full cross-entropy: the ID-based baseline the generative models must beat.

A causal Transformer over item-id embeddings (Kang & McAuley 2018) whose last position scores
every item of the catalogue; trained with softmax cross-entropy over all items (which beats the
sampled-negative loss of the original, see ../shared/datasets/README.md). Items are ranked by
score over the full catalogue, so Recall/NDCG are comparable with TIGER's and the LM's; with
``mask_history`` the user's history items are excluded from the ranking (the other protocol).

Histories come right-padded (``SeqBatch``); with a causal mask the output at position
``length - 1`` only sees real items, so no key-padding mask is needed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.data.catalog import ItemCatalog
from genrec.data.datamodule import PAD_ITEM, SeqBatch
from genrec.decoding import BeamResult
from genrec.errors import at_least, check, positive
from genrec.metrics import RecEvaluation
from genrec.models.base import RecommenderModule
from genrec.quantize.semantic_ids import SemanticIDs


class SASRecModule(RecommenderModule):
    """SASRec trained with full softmax cross-entropy.

    Args:
        hidden_size: embedding and model width.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        dropout: dropout on embeddings, attention and feed-forward.
        max_length: longest history (positions); histories are cut to their most recent items.
        num_items: catalogue size; ``None``: read from the data module at setup (and recorded,
            so checkpoints load without data).
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        mask_history: exclude the history's items from the ranking.
        ks: cut-offs K of Recall@K / NDCG@K.
        cold_start_max_count: test targets seen at most this often in training form the
            cold-start slice.
    """

    score_meaning: ClassVar[str] = "logit: dot product of the history's state with the item's embedding (unbounded, higher is better)"

    def __init__(
        self,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.5,
        max_length: int = 50,
        num_items: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        mask_history: bool = False,
        ks: tuple[int, ...] = (5, 10),
        cold_start_max_count: int = 5,
    ) -> None:
        super().__init__()
        positive("SASRecModule", hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, max_length=max_length, num_items=num_items, lr=lr)
        at_least("SASRecModule", 0, weight_decay=weight_decay)
        check("SASRecModule", "dropout", dropout, 0 <= dropout < 1, "in [0, 1)")
        self.save_hyperparameters()
        self.ks = tuple(int(k) for k in ks)
        self.evaluation = RecEvaluation(self.ks, cold_start_max_count)
        self.positions = nn.Embedding(max_length, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, dim_feedforward=hidden_size, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.items: nn.Embedding | None = None
        if num_items is not None:
            self._build(num_items)

    def _build(self, num_items: int) -> None:
        # row num_items is the padding item
        self.items = nn.Embedding(num_items + 1, self.hparams.hidden_size, padding_idx=num_items)
        nn.init.normal_(self.items.weight, std=self.hparams.hidden_size**-0.5)
        with torch.no_grad():
            self.items.weight[num_items].zero_()
        self.hparams["num_items"] = num_items

    def attach(self, catalog: ItemCatalog, sids: SemanticIDs | None = None, train_counts: Tensor | None = None) -> None:
        """Size the item embedding by the catalogue (built here unless ``num_items`` was given or
        a checkpoint was loaded, then checked); ``sids`` is not read."""
        if self.items is None:
            self._build(len(catalog))
        elif self.items.num_embeddings != len(catalog) + 1:
            raise ValueError(f"the model has {self.items.num_embeddings - 1} items, the catalogue {len(catalog)}")
        self.evaluation.attach(train_counts, len(catalog))

    def forward(self, history: Tensor, lengths: Tensor) -> Tensor:
        """User states from histories.

        Args:
            history: ``[B, L]`` item ids, right-padded with -1.
            lengths: ``[B]`` real items per history.

        Returns:
            ``[B, hidden_size]`` the state after each history's last item.
        """
        if self.items is None:
            raise RuntimeError("no catalogue yet: run inside a Trainer with a data module or pass num_items")
        max_length = self.hparams.max_length
        if history.shape[1] > max_length:  # keep the most recent items
            shift = (lengths - max_length).clamp(min=0)
            index = (shift[:, None] + torch.arange(max_length, device=history.device)).clamp(max=history.shape[1] - 1)
            history = history.gather(1, index)
            lengths = lengths.clamp(max=max_length)
        pad = self.items.num_embeddings - 1
        tokens = history.masked_fill(history == PAD_ITEM, pad)
        steps = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.items(tokens) * self.hparams.hidden_size**0.5 + self.positions(steps)[None]
        causal = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], device=tokens.device, dtype=x.dtype)
        h = self.norm(self.encoder(self.dropout(x), mask=causal, is_causal=True))
        return h[torch.arange(h.shape[0], device=h.device), lengths - 1]

    def scores(self, batch: SeqBatch) -> Tensor:
        """``[B, num_items]`` scores of every item as the next one."""
        state = self(batch.history, batch.lengths)
        return state @ self.items.weight[:-1].T

    def step_loss(self, batch: SeqBatch) -> Tensor:
        """Full cross-entropy of the next item over the catalogue."""
        return F.cross_entropy(self.scores(batch).float(), batch.targets)

    def evaluate(self, batch: SeqBatch) -> tuple[Tensor, Tensor]:
        """The cross-entropy and the full ranking's top ``max(ks)``, from one forward pass."""
        scores = self.scores(batch)
        return F.cross_entropy(scores.float(), batch.targets), self.rank(scores, batch)

    def rank(self, scores: Tensor, batch: SeqBatch, k: int | None = None) -> Tensor:
        """``[B, k]`` top item ids (default ``max(ks)``), history items excluded with ``mask_history``."""
        if self.hparams.mask_history:
            scores = scores.clone()
            rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(batch.history)
            valid = batch.history != PAD_ITEM
            scores[rows[valid], batch.history[valid]] = float("-inf")
        return scores.topk(min(k or max(self.ks), scores.shape[1]), dim=1).indices

    @torch.no_grad()
    def recommend(self, batch: SeqBatch, k: int | None = None) -> BeamResult:
        """The ``k`` best-scored items of the full catalogue (default ``max(ks)``), history items
        left out with ``mask_history``: ``items [B, k]`` and their logits ``scores [B, k]``."""
        scores = self.scores(batch)
        top = self.rank(scores, batch, k)
        return BeamResult(items=top, scores=scores.gather(1, top))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with weight decay on every parameter (SASRec's own optimizer, no schedule)."""
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.items is None:  # Trainer(ckpt_path=...) after a lazily built model: build it first
            self._build(int(checkpoint["hyper_parameters"]["num_items"]))
