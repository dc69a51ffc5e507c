"""TIGER: a T5 encoder-decoder that reads a history of semantic IDs and generates the next one.

Token layout (one shared vocabulary, the T5 embedding tied with its output layer):

* ``0``: pad, also T5's decoder start token; ``1``: EOS, closing the encoder input;
* one block per SID position ``l`` (``levels`` code levels and the dedup digit): SID value ``c``
  at position ``l`` is token ``offset_l + c``, ``offset_l = 2 + sum(vocab_sizes[:l])``;
* with ``user_tokens = U > 0``, ``U`` hashed user buckets after the last block: user ``u`` is
  token ``user_offset + u % U``.

Encoder input: ``[user token] + SID tokens of the history, oldest first, flattened + EOS``,
right-padded with 0 (``[B, (user) + L * (levels + 1) + 1]``), attention mask = token != pad.
Decoder target: the target item's ``levels + 1`` SID tokens (fixed length, no EOS); the decoder
reads ``[0] + target[:-1]``. Item ids become tokens by a lookup in the buffer ``item_tokens``
(``[N, levels + 1]``), built in :meth:`TigerModule.setup` from the SID file, which is the
source of truth: only its path is a hyperparameter, and the vocabulary size is read from its
metadata when the module is built (so a checkpoint's state dict fits without loading data).

Evaluation is constrained beam search (:func:`genrec.decoding.constrained_beam_search`) over a
prefix trie of every item's SID tokens, so every recommendation is a real item, distinct per
user. The decoder runs with a KV cache: the first step runs once per batch row, later steps once
per beam, and only the self-attention cache is reordered by the beams' parents. The
cross-attention cache stays at one row per user: the ``W`` beams of a user attend to the same
encoder keys, so the attention function (:func:`beam_attention`, registered with ``transformers``
under ``genrec_sdpa`` / ``genrec_eager``) folds the beams into the query length instead of
copying the encoder keys ``W`` times (20x less memory at 20 beams, and one ``[W, S]`` attention
per user instead of ``W`` one-row ones).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.data.datamodule import SeqBatch
from genrec.decoding import BeamResult, PrefixTrie, Recommendations, constrained_beam_search
from genrec.errors import ArtifactError, at_least, positive
from genrec.metrics import RecEvaluation
from genrec.models.graphed_step import GraphedAdamW, GraphedTrainStep
from genrec.models.presets import TigerConfig
from genrec.quantize.semantic_ids import FORMAT, SemanticIDs

log = logging.getLogger(__name__)

PAD = 0
"""Padding token, also T5's decoder start token."""
EOS = 1
"""End of the encoder input."""
NUM_SPECIAL = 2
IGNORE = -100
"""Label of target tokens that carry no loss (padding rows of a static-shape batch)."""
GRAPH_LENGTH_STEP = 4
"""With ``cuda_graphs`` and no ``pad_history``, histories are padded to a multiple of this many
items: at most ``ceil(max_history / 4)`` captured graphs, little padding."""

Stage = Literal["train", "val", "test"]


def sid_vocab_sizes(path: str | Path) -> list[int]:
    """Token values per SID position (``levels`` x codebook size, then the dedup size), read
    from a SID artifact's header only (no table load)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the tokenize stage first, or point model.init_args.sids at a SID file)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for a damaged file
        raise ArtifactError(f"{path}: not a readable semantic-ID file, truncated or damaged ({type(error).__name__}: {error})") from error
    if header.get("format") != json.dumps(FORMAT):
        raise ArtifactError(f"{path} is not a semantic-ID artifact (format {header.get('format')!r})")
    levels, codebook, dedup = (int(json.loads(header[key])) for key in ("levels", "codebook_size", "dedup_size"))
    return [codebook] * levels + [dedup]


def table_digest(table: Tensor) -> str:
    """sha256 of a SID table (``[N, levels + 1]`` int64), to tie a checkpoint to its SIDs."""
    return hashlib.sha256(table.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


@dataclass
class _BeamState:
    """Decoder state threaded through the beam-search step function."""

    encoder: Tensor  # [B, S, d] encoder output
    mask: Tensor  # [B, 1, 1, S] encoder attention mask as TigerModule.model_mask makes it
    cache: Any  # transformers EncoderDecoderCache: self attention [B*W rows], cross attention [B rows]


def _fold_beams(inner: Callable[..., tuple[Tensor, Any]]) -> Callable[..., tuple[Tensor, Any]]:
    """Wrap a ``transformers`` attention function so that ``R = G * W`` one-token queries can
    attend to ``G`` rows of keys (beam ``w`` of group ``g`` is query row ``g * W + w``)."""

    def attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any):
        rows, groups = query.shape[0], key.shape[0]
        if rows == groups:
            return inner(module, query, key, value, attention_mask, **kwargs)
        _, heads, length, dim = query.shape
        if length != 1 or rows % groups:
            raise ValueError(f"cannot fold {rows} query rows of length {length} onto {groups} key rows")
        beams = rows // groups
        folded = query.view(groups, beams, heads, dim).transpose(1, 2)  # [G, h, W, d]: beams as query positions
        out, _ = inner(module, folded, key, value, attention_mask, **kwargs)  # [G, W, h, d]
        return out.reshape(rows, 1, heads, dim), None

    return attention


def beam_attention(name: str) -> str:
    """Register (once) and return the ``transformers`` attention implementation ``genrec_<name>``:
    ``name`` (``sdpa`` or ``eager``) with beams folded as in :func:`_fold_beams`. Same results as
    ``name`` whenever queries and keys have the same batch size."""
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        eager_mask,
        sdpa_mask,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    from transformers.models.t5 import modeling_t5

    inner = {"sdpa": lambda: ALL_ATTENTION_FUNCTIONS["sdpa"], "eager": lambda: modeling_t5.eager_attention_forward}
    if name not in inner:
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}")
    key = f"genrec_{name}"
    if key not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(key, _fold_beams(inner[name]()))
        AttentionMaskInterface.register(key, sdpa_mask if name == "sdpa" else eager_mask)
    return key


class TigerModule(L.LightningModule):
    """TIGER generative recommender: T5 over semantic-ID tokens, constrained beam search.

    Args:
        sids: the semantic-ID artifact (``SemanticIDs.save``) of the data set's catalogue;
            its catalogue fingerprint must match the data module's catalogue.
        preset: size preset of the T5 (``genrec.models.presets.names()``: 336k, 6.7m, 13m,
            21m, 43m, 88m, 192m); the fields below override single values of it.
        num_layers: encoder layers (default: the preset's).
        num_decoder_layers: decoder layers (default: the preset's).
        d_model: hidden size (default: the preset's).
        d_ff: feed-forward hidden width (default: the preset's).
        num_heads: attention heads (default: the preset's).
        d_kv: size of each attention head (default: the preset's).
        ff_layers: hidden layers per feed-forward block, 1 = T5's, 2 = GRID's (default: the preset's).
        dropout: dropout rate (default: the preset's, 0.1).
        feed_forward_proj: T5 activation, e.g. ``relu`` or ``gated-gelu`` (default: the preset's).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay of matrices (not of norms).
        warmup_steps: optimizer steps of linear warmup from 0 to ``lr``.
        scheduler: decay after warmup: ``cosine`` (to ``min_lr_ratio * lr`` at the last step
            the trainer will run), ``inverse_sqrt`` (``lr * sqrt(warmup / step)``) or ``constant``.
        min_lr_ratio: floor of the cosine decay, as a fraction of ``lr``.
        beam_width: beams kept per user in constrained beam search (at least ``max(ks)``).
        ks: cut-offs K of Recall@K / NDCG@K; ``max(ks)`` items are recommended.
        cold_start_max_count: test targets seen at most this often in training form the
            cold-start slice (``test/cold/...``).
        user_tokens: hashed user-id buckets prepended to the encoder input as one token; 0: off.
        attn_implementation: ``sdpa`` (fused attention; T5's position bias goes in as an
            additive mask) or ``eager``.
        compile: ``torch.compile`` the training forward (dynamic shapes unless ``pad_history``).
        compile_mode: ``torch.compile``'s ``mode``, e.g. ``reduce-overhead`` (CUDA graphs: one
            launch per graph instead of one per kernel; with dynamic shapes one graph is recorded
            per distinct batch shape, at most ``max_history`` of them with ``bucket_by_length``) or
            ``max-autotune-no-cudagraphs``; ``None``: the default.
        pad_history: pad every training batch's history to this many items (at least the data
            module's ``max_history``), so every batch has the same shape: what CUDA graphs need.
            ``None``: the batch's longest history (least padding; with ``cuda_graphs`` rounded up
            to a multiple of ``GRAPH_LENGTH_STEP`` items, one graph per length).
        cuda_graphs: on a CUDA device, run each training step (forward, backward, clipping to
            ``max_grad_norm``, fused AdamW) as one replayed CUDA graph
            (:mod:`genrec.models.graphed_step`): the host issues one launch per step instead of
            ~1,300, what makes small batches fast. Lightning's own clipping cannot be used with it
            (leave ``trainer.gradient_clip_val`` unset); ignored on a CPU.
        max_grad_norm: clip the global gradient norm to this (``None``: no clipping by the
            module): inside the graph with ``cuda_graphs``, else before each optimizer step when
            ``trainer.gradient_clip_val`` is unset (the module's clipping, or Lightning's: not both).
    """

    def __init__(
        self,
        sids: str,
        preset: str = "13m",
        num_layers: int | None = None,
        num_decoder_layers: int | None = None,
        d_model: int | None = None,
        d_ff: int | None = None,
        num_heads: int | None = None,
        d_kv: int | None = None,
        ff_layers: int | None = None,
        dropout: float | None = None,
        feed_forward_proj: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.035,
        warmup_steps: int = 1000,
        scheduler: Literal["cosine", "inverse_sqrt", "constant"] = "cosine",
        min_lr_ratio: float = 0.0,
        beam_width: int = 20,
        ks: tuple[int, ...] = (5, 10),
        cold_start_max_count: int = 5,
        user_tokens: int = 0,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        compile: bool = False,
        compile_mode: str | None = None,
        pad_history: int | None = None,
        cuda_graphs: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__()
        positive("TigerModule", lr=lr, beam_width=beam_width)
        at_least("TigerModule", 0, weight_decay=weight_decay, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, user_tokens=user_tokens)
        self.save_hyperparameters()
        overrides = {
            "num_layers": num_layers,
            "num_decoder_layers": num_decoder_layers,
            "d_model": d_model,
            "d_ff": d_ff,
            "num_heads": num_heads,
            "d_kv": d_kv,
            "ff_layers": ff_layers,
            "dropout": dropout,
            "feed_forward_proj": feed_forward_proj,
        }
        self.config = TigerConfig.from_name(preset, **{k: v for k, v in overrides.items() if v is not None})
        if pad_history is not None and pad_history < 1:
            raise ValueError(f"pad_history must be >= 1 or None, got {pad_history}")
        if cuda_graphs and compile:
            raise ValueError("cuda_graphs and compile are two ways to the same end: choose one")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm}")
        if beam_width < 1 or not ks or min(ks) < 1 or user_tokens < 0:
            raise ValueError(f"need beam_width >= 1, ks >= 1 and user_tokens >= 0; got {beam_width}, {ks}, {user_tokens}")
        self.ks = tuple(int(k) for k in ks)
        self.num_results = max(self.ks)
        if beam_width < self.num_results:
            # With W >= K every row gets K items: each live beam of the last step ends >= 1 item.
            raise ValueError(f"beam_width ({beam_width}) must be at least max(ks) ({self.num_results})")

        self.sid_vocab_sizes = sid_vocab_sizes(sids)
        self.tokens_per_item = len(self.sid_vocab_sizes)
        offsets = [NUM_SPECIAL]
        for size in self.sid_vocab_sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self.user_offset = NUM_SPECIAL + sum(self.sid_vocab_sizes)
        self.vocab_size = self.user_offset + user_tokens
        self.model = self.config.build(self.vocab_size, beam_attention(attn_implementation))

        self.register_buffer("position_offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("item_tokens", torch.zeros(0, self.tokens_per_item, dtype=torch.long), persistent=False)
        self._trie: PrefixTrie | None = None
        self._sid_digest: str | None = None
        self._checkpoint_digest: str | None = None
        self._train_forward = None
        self._graph_step: GraphedTrainStep | None = None
        self._graph_rows = 0

        self.evaluation = RecEvaluation(self.ks, cold_start_max_count)

    @property
    def automatic_optimization(self) -> bool:
        """False while training with ``cuda_graphs`` on a GPU: the step is replayed from a graph."""
        return self._automatic_optimization and not self.uses_cuda_graphs()

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    def uses_cuda_graphs(self) -> bool:
        """Whether training steps run as CUDA graphs: ``cuda_graphs`` on and a trainer on a CUDA device."""
        if not self.hparams.get("cuda_graphs") or self._trainer is None:
            return False
        try:
            return self.trainer.strategy.root_device.type == "cuda"
        except (AttributeError, RuntimeError):
            return False

    # ---- items and tokens ---------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Load the SID file, check it against the data module's catalogue, build the lookups."""
        # A spawned process (ddp_spawn) unpickles the model without running __init__: register
        # the attention function there too (idempotent).
        beam_attention(self.hparams.attn_implementation)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = getattr(datamodule, "data", None)
        if data is None:
            raise RuntimeError("TigerModule needs a data module with a .data (SequenceData), e.g. genrec.data.SequenceDataModule")
        expected = data.catalog.fingerprint()
        sids = SemanticIDs.load(self.hparams.sids)
        if sids.fingerprint is None:
            log.warning("%s records no catalogue fingerprint; cannot check it matches the data set", self.hparams.sids)
        elif sids.fingerprint != expected:
            raise ValueError(
                f"SID file {self.hparams.sids} was made for catalogue fingerprint {sids.fingerprint}, but the data set "
                f"{getattr(datamodule, 'name', '?')!r} has catalogue fingerprint {expected}: re-run the tokenize stage for this data"
            )
        self.attach_items(sids, data.train_item_counts())
        if stage == "fit" and self.hparams.compile and self._train_forward is None:
            static = self.hparams.pad_history is not None
            compiled = torch.compile(self.model, dynamic=not static, mode=self.hparams.compile_mode)
            object.__setattr__(self, "_train_forward", compiled)

    def attach_items(self, sids: SemanticIDs, train_counts: Tensor | None = None) -> None:
        """Build the item -> token table and the trie from ``sids`` (what :meth:`setup` does
        with the data module's SIDs; call it directly to use the module without a trainer).

        Args:
            sids: the catalogue's semantic IDs; their sizes must match the ones the model was
                built for (read from the ``sids`` file at construction).
            train_counts: ``[N]`` training interactions per item (cold-start slice, popularity
                baseline); default all zero.
        """
        if sids.vocab_sizes != self.sid_vocab_sizes:
            raise ValueError(
                f"SID sizes per position {sids.vocab_sizes} differ from the ones the model was built for "
                f"{self.sid_vocab_sizes} (the SID file changed after the model was built?)"
            )
        self._sid_digest = table_digest(sids.table)
        self._check_digest()
        device = self.position_offsets.device
        tokens = sids.table.to(device) + self.position_offsets
        self.item_tokens = tokens
        self.evaluation.attach(train_counts, sids.num_items)
        self._trie = PrefixTrie.from_sequences(tokens.cpu(), vocab_size=self.vocab_size)

    def trie(self) -> PrefixTrie:
        """The prefix trie of every item's SID tokens, on the module's device."""
        if self._trie is None:
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach_items()")
        if self._trie.device != self.item_tokens.device:
            self._trie = self._trie.to(self.item_tokens.device)
        return self._trie

    def tokens_of(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> their SID tokens ``[..., levels + 1]`` (ids must be >= 0)."""
        if self.item_tokens.numel() == 0:
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach_items()")
        return self.item_tokens[items]

    def encoder_inputs(self, batch: SeqBatch, pad_history: int | None = None) -> tuple[Tensor, Tensor]:
        """The encoder input of a batch (see the module docstring for the layout).

        Args:
            pad_history: pad the history ``[B, L]`` to this many items first (static shapes).

        Returns:
            ``input_ids [B, S]`` int64 and ``attention_mask [B, S]`` bool, with
            ``S = (1 if user_tokens) + L * (levels + 1) + 1``.
        """
        history = batch.history
        if pad_history is not None:
            if history.shape[1] > pad_history:
                raise ValueError(f"a history of {history.shape[1]} items does not fit pad_history={pad_history}")
            history = F.pad(history, (0, pad_history - history.shape[1]), value=-1)
        valid = history >= 0
        tokens = self.tokens_of(history.clamp(min=0)).masked_fill(~valid[..., None], PAD).flatten(1)  # [B, L*T]
        B = history.shape[0]
        parts = [tokens, tokens.new_full((B, 1), PAD)]
        start = 0
        if self.hparams.user_tokens:
            parts.insert(0, (self.user_offset + batch.users % self.hparams.user_tokens)[:, None])
            start = 1
        input_ids = torch.cat(parts, dim=1)
        eos_at = start + valid.sum(dim=1) * self.tokens_per_item
        input_ids.scatter_(1, eos_at[:, None], EOS)
        return input_ids, input_ids != PAD

    # ---- forward ------------------------------------------------------------------------------

    def model_mask(self, mask: Tensor) -> Tensor:
        """``[B, S]`` bool key mask -> the ``[B, 1, 1, S]`` mask T5's attention takes as it is.

        Given a 2-D mask, transformers builds this itself but first asks ``mask.all()`` on the
        host (to drop a mask without padding): a device sync in every call, two per training
        step, so the host cannot queue work ahead of the GPU. A prepared 4-D mask skips that.
        ``sdpa`` takes it as bool; ``eager`` adds it to the scores, so there it is 0 where a key
        is attended and the float32 minimum where not.
        """
        mask = mask.bool()[:, None, None, :]
        if self.hparams.attn_implementation == "eager":
            return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        return mask

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, S]`` tokens and mask -> ``[B, S, d_model]`` encoder output."""
        return self.model.encoder(input_ids=input_ids, attention_mask=self.model_mask(attention_mask)).last_hidden_state

    def training_loss(
        self, batch: SeqBatch, forward: Callable[..., Any] | None = None, pad_history: int | None = None, valid: Tensor | None = None
    ) -> Tensor:
        """Teacher-forced training loss of the batch through ``forward`` (default ``self.model``,
        e.g. a compiled copy), the history padded to ``pad_history`` items if given.

        Args:
            valid: ``[B]`` bool, the rows that count (padding rows of a static-shape batch do not).

        Returns:
            the mean cross-entropy over the (valid rows') target SID tokens (float32 scalar).
        """
        input_ids, mask = self.encoder_inputs(batch, pad_history)
        labels = self.tokens_of(batch.targets)  # [B, T]
        logits = (self.model if forward is None else forward)(
            input_ids=input_ids, attention_mask=self.model_mask(mask), decoder_input_ids=shift_right(labels), use_cache=False
        ).logits
        if valid is not None:
            labels = labels.masked_fill(~valid[:, None], IGNORE)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def _graphed_step(self, batch: SeqBatch) -> Tensor:
        """One training step replayed from a CUDA graph (see ``cuda_graphs``); the loss.

        The batch is padded to static shapes: rows to the largest batch seen (padding rows do not
        count in the loss), history to ``pad_history`` or the next multiple of ``GRAPH_LENGTH_STEP``.
        """
        opt = self.optimizers()
        optimizer = opt.optimizer
        if self._graph_step is None:
            if self.trainer.gradient_clip_val:
                raise ValueError("cuda_graphs clips inside the graph (model max_grad_norm); set trainer.gradient_clip_val to null")
            precision = str(self.trainer.precision)
            dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16 if precision == "16-mixed" else None
            params = [p for p in self.parameters() if p.requires_grad]
            self._graph_step = GraphedTrainStep(self._static_loss, params, optimizer, self.hparams.max_grad_norm, dtype)
        B, longest = batch.history.shape
        self._graph_rows = rows = max(self._graph_rows, B)
        length = self.hparams.pad_history or -(-longest // GRAPH_LENGTH_STEP) * GRAPH_LENGTH_STEP
        if longest > length:
            raise ValueError(f"a history of {longest} items does not fit pad_history={length}")
        history = F.pad(batch.history, (0, length - longest, 0, rows - B), value=-1)
        users = F.pad(batch.users, (0, rows - B))
        targets = F.pad(batch.targets, (0, rows - B))
        valid = torch.arange(rows, device=targets.device) < B
        optimizer.replaying = True
        try:
            loss = opt.step(closure=lambda: self._graph_step(users, history, targets, valid))
        finally:
            optimizer.replaying = False
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss

    def _static_loss(self, users: Tensor, history: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """The loss a captured step computes from its static input buffers."""
        lengths = (history >= 0).sum(dim=1)
        return self.training_loss(SeqBatch(users, history, lengths, targets), valid=valid)

    def model_step(self, batch: SeqBatch, stage: Stage) -> Tensor:
        """Loss of the batch (teacher forcing); on val/test also beam search and metric updates.

        Returns:
            the mean cross-entropy over the target SID tokens (float32 scalar).
        """
        B = batch.targets.shape[0]
        if stage == "train":
            if self.uses_cuda_graphs():
                loss = self._graphed_step(batch)
            else:
                loss = self.training_loss(batch, self._train_forward, self.hparams.pad_history)
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=B)
            return loss
        input_ids, mask = self.encoder_inputs(batch)
        labels = self.tokens_of(batch.targets)  # [B, T]
        encoder_out = self.encode(input_ids, mask)
        logits = self.model(
            encoder_outputs=(encoder_out,), attention_mask=self.model_mask(mask), decoder_input_ids=shift_right(labels), use_cache=False
        ).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        self.log(f"{stage}/loss", loss, prog_bar=False, on_step=False, on_epoch=True, batch_size=B)
        ranked = self.search(encoder_out, mask).items
        for metrics in self.evaluation.update(stage, ranked, batch.targets):
            self.log_dict(metrics, on_epoch=True, batch_size=B)
        return loss

    def training_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        return self.model_step(batch, "train")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``max_grad_norm`` in eager training (the graphed step clips inside its graph)."""
        norm = self.hparams.get("max_grad_norm")
        if norm and self.automatic_optimization and not self.trainer.gradient_clip_val:
            if str(self.trainer.precision) == "16-mixed" and getattr(optimizer, "_step_supports_amp_scaling", False):
                raise ValueError("max_grad_norm with 16-mixed and a fused AdamW would clip scaled gradients: use bf16-mixed or trainer.gradient_clip_val")
            torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], norm, foreach=True)

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        return self.model_step(batch, "val")

    def test_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        return self.model_step(batch, "test")

    def predict_step(self, batch: SeqBatch, batch_idx: int = 0) -> Recommendations:
        result = self.recommend(batch)
        return Recommendations(users=batch.users, items=result.items, scores=result.scores)

    # ---- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, batch: SeqBatch, num_results: int | None = None, beam_width: int | None = None) -> BeamResult:
        """The top items for each history of ``batch`` by constrained beam search.

        Returns:
            :class:`~genrec.decoding.BeamResult`: ``items [B, K]`` (``K = num_results``,
            default ``max(ks)``) and their ``scores [B, K]``, best first.
        """
        input_ids, mask = self.encoder_inputs(batch)
        return self.search(self.encode(input_ids, mask), mask, num_results, beam_width)

    @torch.no_grad()
    def search(self, encoder_out: Tensor, mask: Tensor, num_results: int | None = None, beam_width: int | None = None) -> BeamResult:
        """Constrained beam search from encoder outputs ``[B, S, d]`` and their mask ``[B, S]``."""
        return constrained_beam_search(
            self.beam_step,
            self.trie(),
            batch_size=encoder_out.shape[0],
            beam_width=beam_width or self.hparams.beam_width,
            num_results=num_results or self.num_results,
            state=self.initial_state(encoder_out, mask),
        )

    def initial_state(self, encoder_out: Tensor, mask: Tensor) -> _BeamState:
        """The decoder state of :meth:`beam_step` before the first token: an empty KV cache."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        return _BeamState(encoder=encoder_out, mask=self.model_mask(mask), cache=cache)

    def beam_step(self, tokens: Tensor | None, parents: Tensor | None, state: _BeamState) -> tuple[Tensor, _BeamState]:
        """The :class:`genrec.decoding.StepFn` of T5 with a KV cache.

        First call (``tokens is None``): one decoder step from the start token per batch row,
        ``[B, V]`` log-probs. Later calls: reorder the self-attention cache by ``parents``
        ``[B*W]`` (which also expands it from ``B`` rows to ``B*W`` after the first call) and feed
        ``tokens`` ``[B*W]``; ``[B*W, V]`` float32 log-probs. The cross-attention cache keeps
        one row per batch row (see the module docstring).
        """
        if tokens is None:
            decoder_input = torch.full((state.encoder.shape[0], 1), PAD, dtype=torch.long, device=state.encoder.device)
        else:
            state.cache.self_attention_cache.reorder_cache(parents)
            decoder_input = tokens[:, None]
        out = self.model(
            encoder_outputs=(state.encoder,),
            attention_mask=state.mask,
            decoder_input_ids=decoder_input,
            use_cache=True,
            **{_cache_argument(self.model): state.cache},
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1), state

    # ---- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (betas 0.9, 0.98; no decay on norms) and the per-step schedule of :func:`lr_schedule`."""
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.uses_cuda_graphs():
            optimizer = GraphedAdamW(groups, lr=self.hparams.lr, fused=True, capturable=True, betas=(0.9, 0.98))
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, fused=fused_adamw(self), betas=(0.9, 0.98))
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
        schedule = lr_schedule(self.hparams.scheduler, self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["semantic_ids"] = {"path": str(self.hparams.sids), "vocab_sizes": self.sid_vocab_sizes, "table_sha256": self._sid_digest}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # load_from_checkpoint: before setup; Trainer(ckpt_path=...): after setup. Check either way.
        self._checkpoint_digest = (checkpoint.get("semantic_ids") or {}).get("table_sha256")
        self._check_digest()

    def _check_digest(self) -> None:
        """A checkpoint's weights only mean something with the SIDs it was trained on."""
        saved, current = self._checkpoint_digest, self._sid_digest
        if saved is not None and current is not None and saved != current:
            raise ValueError(
                f"the checkpoint was trained on other semantic IDs than {self.hparams.sids} (SID table sha256 "
                f"{saved[:12]}... vs {current[:12]}...)"
            )



@cache
def _cache_argument_of(forward: Callable[..., Any]) -> str:
    names = inspect.signature(forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _cache_argument(model: torch.nn.Module) -> str:
    """The keyword of the KV cache in ``model.forward``: ``cache`` in the transformers versions
    that deprecate ``past_key_values`` (a FutureWarning per call), ``past_key_values`` before."""
    return _cache_argument_of(type(model).forward)

def shift_right(labels: Tensor) -> Tensor:
    """The decoder input of teacher forcing: ``[B, T]`` target tokens -> ``PAD`` (the decoder
    start) followed by all but the last target token, ``[B, T]``."""
    return torch.cat([labels.new_full((labels.shape[0], 1), PAD), labels[:, :-1]], dim=1)


def fused_adamw(module: L.LightningModule) -> bool:
    """Whether ``module``'s AdamW may be ``fused`` (one kernel per step instead of a launch per tensor group).

    Only on CUDA, and only without gradient clipping: Lightning's mixed-precision plugin refuses to
    clip the gradients of an optimizer that unscales them itself, which a fused one declares.
    """
    if module.device.type != "cuda":
        return False
    trainer = module._trainer
    return trainer is None or not trainer.gradient_clip_val


def lr_schedule(kind: str, warmup_steps: int, total_steps: float, min_ratio: float = 0.0):
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


__all__ = ["EOS", "PAD", "TigerModule", "beam_attention", "lr_schedule", "sid_vocab_sizes", "table_digest"]
