"""Grouped hyperparameters of the recommenders, and the one preset-override convention.

Presets. Every configurable model takes ``preset`` (a name of its shape presets: TIGER's
:data:`~genrec.models.presets.TIGER_PRESETS`, the LM's :data:`~genrec.models.presets.LM_PRESETS`,
the RQ-VAE's :data:`~genrec.quantize.rqvae.RQVAE_PRESETS`) and ``overrides``, a mapping of single
fields of that preset's config dataclass (:class:`~genrec.models.presets.TigerConfig`,
:class:`~genrec.models.presets.LMRecConfig`, :class:`~genrec.quantize.rqvae.RQVAEConfig`), e.g.::

    model:
      class_path: genrec.models.TigerModule
      init_args:
        preset: 336k
        overrides: {dropout: 0.0, num_layers: 2}

An unknown field is an error naming it. On the command line: ``--model.init_args.overrides
'{num_layers: 1}'``.

Groups. Arguments that belong together are one dataclass each, a nested block in YAML
(``optimizer: {lr: 3e-4, warmup_steps: 100}``) or ``--model.init_args.optimizer.lr 3e-4`` on the
command line: :class:`~genrec.models.optim.OptimizerConfig` (the LM's defaults:
:class:`LMOptimizer`), :class:`EvalConfig`, :class:`LoraSettings` and :class:`PromptConfig`. A
module stores each group in its hyperparameters as a plain dict (what a ``weights_only``
checkpoint can hold) and :func:`as_settings` turns it back into the dataclass, so the
hyperparameters a checkpoint stores rebuild the model. Checkpoints written before this layout
(flat ``lr``, ``lora_r``, ``preset_overrides``, ...) do not load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, TypeVar

from genrec.errors import positive
from genrec.models.optim import OptimizerConfig

T = TypeVar("T")

DEFAULT_PROMPT = "A user bought these items, oldest first:\n{history}The next item the user buys is:"
"""Prompt around the history lines (``{history}`` once)."""
DEFAULT_ITEM_TEMPLATE = "-{title}\n"
"""One history line; ``{title}`` is the title with a leading space (so ``"- title"``)."""


def as_settings(cls: type[T], value: T | dict[str, Any] | None, where: str) -> T:
    """``value`` as the dataclass ``cls``: itself, a mapping of its fields (as a checkpoint
    stores it), or ``None`` for the defaults; an unknown field raises naming ``where``."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if is_dataclass(value):
        value = asdict(value)
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; {cls.__name__} has {sorted(known)}")
    return cls(**value)


def stored(value: Any) -> dict[str, Any]:
    """A settings dataclass as the plain dict a checkpoint's hyperparameters hold."""
    return asdict(value)


@dataclass(frozen=True)
class LMOptimizer(OptimizerConfig):
    """:class:`~genrec.models.optim.OptimizerConfig` with the LM recommender's defaults."""

    lr: float = 1e-4
    warmup_steps: int = 100


@dataclass(frozen=True)
class DecodingSettings:
    """How the LM recommender decodes its title-constrained beam search (the switches of
    :mod:`genrec.models.lm_graphs`; measured on the H200 in docs/benchmarks.md). The results do not
    depend on them beyond floating-point rounding (tested against the reference decoder).

    Attributes:
        static: the static-shape decoder when the model is one it runs (Llama / Qwen3 layers,
            plain or LoRA float weights), else the eager slot decoder.
        graphs: each static step one CUDA-graph replay (on a GPU).
        padded: static shapes without graphs too (``null``: as ``graphs``, on the module's device).
        compile: ``torch.compile`` each layer's two halves and the head's normaliser (fuses the
            elementwise work; compiles on the first decode, some 10-25 s). ``null`` (the
            default): on a CUDA device, where it is measured faster (on the H200 the trained
            SmolLM2 LoRA decoded Beauty's test set at 977.6 users/s compiled), off on a CPU, where
            compiling costs more than a short decode saves.
        forced: users whose live beams are all in forced title suffixes finish in one eager pass
            (fewer steps, but measured slower on the H200).
        rows_per_octave: graphed steps' row buckets per power of two above 1,024 rows (``null``:
            :attr:`~genrec.models.lm_graphs.GraphDecoder.ROWS_PER_OCTAVE`, 1). 4 was the fastest
            measured, with more graphs and memory (90 GiB at 2,048 users a batch).
        prompt_bucket: padded steps attend from a multiple of this many prompt columns, a
            multiple of 8 (``null``: :attr:`~genrec.models.lm_graphs.GraphDecoder.PROMPT_BUCKET`,
            128); at least the prompt width, one set of graphs serves every prompt length.
        capture_after: graphed steps capture a shape at its N-th use, eagerly before (``null``:
            :attr:`~genrec.models.lm_graphs.GraphDecoder.CAPTURE_AFTER`, 1).
        causal_prefill: prefill right-padded prompts under plain causal attention rather than
            left-padded ones under a mask (``null``:
            :attr:`~genrec.models.lm_graphs.GraphDecoder.CAUSAL_PREFILL`, on).
        prefill_elements: prefill users in chunks whose widest activation stays below this many
            elements (``null``: :attr:`~genrec.models.lm_graphs.GraphDecoder.PREFILL_ELEMENTS`,
            2^31 - 1, where Inductor's 32-bit indexing holds).
        fused_head: steps return the logits and each row's log-normaliser instead of float32
            log-probs (``null``: :attr:`~genrec.models.lm_graphs.GraphDecoder.FUSED_HEAD`, on;
            +7 % users/s compiled on the H200).
        cudnn_attention: the steps' attention through cuDNN's fused kernel first (``null``:
            :attr:`~genrec.models.lm_graphs.GraphDecoder.CUDNN_ATTENTION`, on; +8 % users/s on
            the H200; a new GPU or PyTorch should pass its CUDA tests first).
        rows_only_dynamic: with ``compile``, only the row dimensions dynamic, the feature widths
            static (``null``: :attr:`~genrec.models.lm_weights.DecoderWeights.ROWS_ONLY_DYNAMIC`,
            on; +29 % users/s on the H200 over every dimension symbolic).
    """

    static: bool = True
    graphs: bool = True
    padded: bool | None = None
    compile: bool | None = None
    forced: bool = False
    rows_per_octave: int | None = None
    prompt_bucket: int | None = None
    capture_after: int | None = None
    causal_prefill: bool | None = None
    prefill_elements: int | None = None
    fused_head: bool | None = None
    cudnn_attention: bool | None = None
    rows_only_dynamic: bool | None = None

    def __post_init__(self) -> None:
        for name in ("rows_per_octave", "capture_after", "prefill_elements"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"decoding.{name} must be >= 1 (or null for the default), got {value}")
        if self.prompt_bucket is not None and (self.prompt_bucket < 8 or self.prompt_bucket % 8):
            raise ValueError(f"decoding.prompt_bucket must be a positive multiple of 8 (or null for the default), got {self.prompt_bucket}")


ENGINE_SETTINGS = ("rows_per_octave", "prompt_bucket", "capture_after", "causal_prefill", "prefill_elements")
"""The :class:`DecodingSettings` fields that set a :class:`~genrec.models.lm_graphs.GraphDecoder`
attribute of the same name in capitals, each engine's own (``LMRecModule.decode_<name>``; ``null``:
the class's value)."""

BUILD_SETTINGS = ("fused_head", "cudnn_attention", "rows_only_dynamic")
"""The :class:`DecodingSettings` fields that decide how an engine is built (its buffers, kernels
and compilation; :func:`~genrec.models.lm_graphs.decoder_for` builds a new one when they change),
each the module's own (``LMRecModule.decode_<name>``; ``null``: the class attribute of the same
name in capitals, :class:`~genrec.models.lm_graphs.GraphDecoder`'s or for ``rows_only_dynamic``
:class:`~genrec.models.lm_weights.DecoderWeights`')."""


@dataclass(frozen=True)
class EvalConfig:
    """How a recommender is evaluated.

    Attributes:
        beam_width: beams per user in constrained beam search (at least ``max(ks)``).
        ks: cut-offs K of Recall@K / NDCG@K; ``max(ks)`` items are recommended.
        cold_start_max_count: test targets seen at most this often in training form the
            cold-start slice (``test/cold/...``).
        max_users: validate and test on at most this many users each, a random subset drawn
            with ``seed`` (the same users every epoch and run): bounds the CPU time of decoding
            on large data. The counts are logged as ``val|test/users`` and
            ``val|test/users_total``, and the pipeline report states the subset.
        seed: seed of the ``max_users`` subset.
    """

    beam_width: int = 20
    ks: tuple[int, ...] = (5, 10)
    cold_start_max_count: int = 5
    max_users: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(int(k) for k in self.ks))
        if not self.ks or min(self.ks) < 1 or self.beam_width < max(self.ks):
            raise ValueError(f"evaluation: need ks >= 1 and beam_width >= max(ks); got ks={self.ks}, beam_width={self.beam_width}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"evaluation.max_users must be >= 1 (or null for every user), got {self.max_users}")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (peft) and 4-bit base weights (QLoRA).

    Attributes:
        enabled: train LoRA adapters instead of every weight.
        r: LoRA rank.
        alpha: LoRA scaling numerator (scale ``alpha / r``).
        dropout: dropout on the LoRA input.
        target_modules: the linear layers that get adapters (names of modules; default the
            attention and MLP projections).
        load_in_4bit: load the pretrained base weights as 4-bit nf4 (bitsandbytes; bf16
            compute) and prepare them for k-bit training (QLoRA); needs ``enabled``.
        decode_scale: the adapters' weight when recommending (beam search: val/test metrics,
            predict, serving; the losses and training keep 1): 1 as trained, 0 the pretrained
            model, between them an interpolation of the pretrained and fine-tuned weights (as
            WiSE-FT does for full weights), which keeps more of what pretraining knew, e.g. the
            cold items that fine-tuning stops recommending (docs/benchmarks.md).
    """

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None
    load_in_4bit: bool = False
    decode_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.decode_scale >= 0:
            raise ValueError(f"lora.decode_scale must be >= 0, got {self.decode_scale}")
        if self.load_in_4bit and not self.enabled:
            raise ValueError("lora.load_in_4bit needs lora.enabled: 4-bit base weights cannot be fine-tuned themselves")


@dataclass(frozen=True)
class PromptConfig:
    """The LM recommender's prompt (layout in :mod:`genrec.models.lm_rec`).

    Attributes:
        template: the prompt, with ``{history}`` once where the history lines go.
        item_template: one history line, with ``{title}`` once (the title gets a leading space).
        max_tokens: token budget of the prompt; the oldest history lines are dropped first.
        max_title_tokens: titles are cut to this many tokens (before disambiguation).
        max_history_title_tokens: titles in the prompt's history lines are cut to this many
            tokens (default: as the targets): on data with long titles, more history items fit
            ``max_tokens``. The target, which decoding produces, stays whole.
        item_details: more item text after the (cut) title in the history lines only, an item
            text template over the catalogue's fields with ``[...]`` optional parts, e.g.
            ``"[ (brand: {brand})][. Categories: {categories}][. Price: ${price}]"``; empty: none.
            Targets stay titles, so decoding and the trie are unchanged.
        max_detail_tokens: the details of one history line are cut to this many tokens.
    """

    template: str = DEFAULT_PROMPT
    item_template: str = DEFAULT_ITEM_TEMPLATE
    max_tokens: int = 512
    max_title_tokens: int = 32
    max_history_title_tokens: int | None = None
    item_details: str = ""
    max_detail_tokens: int = 32

    def __post_init__(self) -> None:
        positive("prompt", max_tokens=self.max_tokens, max_title_tokens=self.max_title_tokens, max_detail_tokens=self.max_detail_tokens)
        if self.template.count("{history}") != 1 or self.item_template.count("{title}") != 1:
            raise ValueError("prompt.template needs {history} once and prompt.item_template {title} once")
        if self.max_history_title_tokens is not None and self.max_history_title_tokens < 1:
            raise ValueError(f"prompt.max_history_title_tokens must be >= 1 (or null), got {self.max_history_title_tokens}")


__all__ = ["BUILD_SETTINGS", "DEFAULT_ITEM_TEMPLATE", "DEFAULT_PROMPT", "DecodingSettings", "ENGINE_SETTINGS", "EvalConfig", "LMOptimizer", "LoraSettings", "PromptConfig", "as_settings", "stored"]
