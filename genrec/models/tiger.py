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
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.data.catalog import ItemCatalog
from genrec.data.datamodule import SeqBatch
from genrec.decoding import BeamResult, PrefixTrie, constrained_beam_search
from genrec.errors import ArtifactError, at_least, positive
from genrec.metrics import RecEvaluation
from genrec.models.base import RecommenderModule
from genrec.models.optim import OptimizerConfig
from genrec.models.presets import TigerConfig
from genrec.models.t5_attention import beam_attention, cache_argument
from genrec.quantize.semantic_ids import FORMAT, SemanticIDs

log = logging.getLogger(__name__)

PAD = 0
"""Padding token, also T5's decoder start token."""
EOS = 1
"""End of the encoder input."""
NUM_SPECIAL = 2
IGNORE = -100
"""Label of target tokens that carry no loss (padding rows of a static-shape batch)."""


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


class TigerModule(RecommenderModule):
    """TIGER generative recommender: T5 over semantic-ID tokens, constrained beam search.

    Args:
        sids: the semantic-ID artifact (``SemanticIDs.save``) of the data set's catalogue;
            its catalogue fingerprint must match the data module's catalogue.
        preset: size preset of the T5 (``genrec.models.presets.names()``: 336k, 6.7m, 13m,
            21m, 43m, 88m, 192m).
        overrides: fields of the preset's :class:`~genrec.models.presets.TigerConfig` to change,
            e.g. ``{num_layers: 2, dropout: 0.0}`` (the convention of :mod:`genrec.models.settings`):
            ``num_layers``, ``num_decoder_layers``, ``d_model``, ``d_ff``, ``num_heads``, ``d_kv``,
            ``ff_layers`` (1 = T5's feed-forward block, 2 = GRID's), ``dropout`` (the presets' 0.1),
            ``feed_forward_proj`` (e.g. ``relu``, ``gated-gelu``), ...
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

    needs_sids: ClassVar[bool] = True
    score_meaning: ClassVar[str] = "log-probability of the item's semantic ID (summed over its SID tokens, beam search); 0 is certain"

    def __init__(
        self,
        sids: str,
        preset: str = "13m",
        overrides: dict[str, Any] | None = None,
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
        self.config = TigerConfig.from_name(preset, **(overrides or {}))
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

        self.evaluation = RecEvaluation(self.ks, cold_start_max_count)

    # ---- items and tokens ---------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Load the SID file and attach it with the data module's catalogue (:meth:`attach`)."""
        # A spawned process (ddp_spawn) unpickles the model without running __init__: register
        # the attention function there too (idempotent).
        beam_attention(self.hparams.attn_implementation)
        super().setup(stage)
        if stage == "fit" and self.hparams.compile and self._train_forward is None:
            static = self.hparams.pad_history is not None
            compiled = torch.compile(self.model, dynamic=not static, mode=self.hparams.compile_mode)
            object.__setattr__(self, "_train_forward", compiled)

    def attach(self, catalog: ItemCatalog, sids: SemanticIDs | None = None, train_counts: Tensor | None = None) -> None:
        """Build the item -> token table and the trie from ``sids`` (what :meth:`setup` does
        with the data module's SIDs; call it directly to use the module without a trainer).

        Args:
            catalog: the items; the SIDs must have been made for it (catalogue fingerprint).
            sids: the catalogue's semantic IDs; their sizes must match the ones the model was
                built for (read from the ``sids`` file at construction).
            train_counts: ``[N]`` training interactions per item (cold-start slice, popularity
                baseline); default all zero.
        """
        if sids is None:
            raise ValueError("TigerModule.attach needs the catalogue's semantic IDs (sids)")
        expected = catalog.fingerprint()
        if sids.fingerprint is None:
            log.warning("%s records no catalogue fingerprint; cannot check it matches the data set", self.hparams.sids)
        elif sids.fingerprint != expected:
            raise ValueError(
                f"SID file {self.hparams.sids} was made for catalogue fingerprint {sids.fingerprint}, but the data set "
                f"has catalogue fingerprint {expected}: re-run the tokenize stage for this data"
            )
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
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach()")
        if self._trie.device != self.item_tokens.device:
            self._trie = self._trie.to(self.item_tokens.device)
        return self._trie

    def tokens_of(self, items: Tensor) -> Tensor:
        """Item ids ``[...]`` -> their SID tokens ``[..., levels + 1]`` (ids must be >= 0)."""
        if self.item_tokens.numel() == 0:
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach()")
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

    def step_loss(self, batch: SeqBatch) -> Tensor:
        """The teacher-forced training loss (through the compiled forward with ``compile``)."""
        return self.training_loss(batch, self._train_forward, self.hparams.pad_history)

    def masked_loss(self, batch: SeqBatch, valid: Tensor) -> Tensor:
        """The loss of the ``valid [B]`` rows (the CUDA-graph step's; see ``cuda_graphs``)."""
        return self.training_loss(batch, valid=valid)

    def evaluate(self, batch: SeqBatch) -> tuple[Tensor, Tensor]:
        """The teacher-forced loss (mean cross-entropy over the target SID tokens) and the beam
        search's ranking ``[B, max(ks)]``, from one encoder pass."""
        input_ids, mask = self.encoder_inputs(batch)
        labels = self.tokens_of(batch.targets)  # [B, T]
        encoder_out = self.encode(input_ids, mask)
        logits = self.model(
            encoder_outputs=(encoder_out,), attention_mask=self.model_mask(mask), decoder_input_ids=shift_right(labels), use_cache=False
        ).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        return loss, self.search(encoder_out, mask).items

    def optimizer_config(self) -> OptimizerConfig:
        hp = self.hparams
        return OptimizerConfig(hp.lr, hp.weight_decay, hp.warmup_steps, hp.scheduler, hp.min_lr_ratio, betas=(0.9, 0.98))

    # ---- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, batch: SeqBatch, k: int | None = None, beam_width: int | None = None) -> BeamResult:
        """The top items for each history of ``batch`` by constrained beam search.

        Args:
            k: items per row (default ``max(ks)``).
            beam_width: beams per row (default ``max(k, beam_width)``: every row ends with ``k`` items).

        Returns:
            :class:`~genrec.decoding.BeamResult`: ``items [B, k]`` and their ``scores [B, k]``, best first.
        """
        input_ids, mask = self.encoder_inputs(batch)
        k = k or self.num_results
        return self.search(self.encode(input_ids, mask), mask, k, beam_width or max(k, self.hparams.beam_width))

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
            **{cache_argument(self.model): state.cache},
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1), state

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



def shift_right(labels: Tensor) -> Tensor:
    """The decoder input of teacher forcing: ``[B, T]`` target tokens -> ``PAD`` (the decoder
    start) followed by all but the last target token, ``[B, T]``."""
    return torch.cat([labels.new_full((labels.shape[0], 1), PAD), labels[:, :-1]], dim=1)


__all__ = ["EOS", "PAD", "TigerModule", "shift_right", "sid_vocab_sizes", "table_digest"]
