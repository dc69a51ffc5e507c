"""Size presets of the recommenders, as data: a scaling sweep is a list of names.

:class:`TigerConfig` is the shape of TIGER's T5 encoder-decoder. ``TigerConfig.from_name("13m")``
gives a named preset, ``TigerConfig.from_name("13m", num_layers=1)`` a preset with overrides (how
tests shrink a model). :meth:`TigerConfig.build` turns a config and a vocabulary size into a
``transformers`` ``T5ForConditionalGeneration``, built from the config and never downloaded;
:func:`count_parameters` builds it on the meta device and counts. :class:`LMRecConfig` does the
same for the causal LMs of the LM recommender (Llama / Qwen3 shapes, :func:`count_lm_parameters`).

The feed-forward block. HF's T5 has one hidden layer per feed-forward block
(``d_model -> d_ff -> d_model``). GRID (snap-research/GRID, the paper group's TIGER code) can
replace it with an MLP of ``mlp_layers`` hidden layers of width ``d_ff``, ReLU and dropout. With
two (``d_model -> d_ff -> d_ff -> d_model``) GRID's default shape (4 + 4 layers, d_model 128,
d_ff 1024) has 13.0M parameters, the paper's "13M"; plain T5 blocks give 4.6M at that shape. So
the presets use two; :attr:`TigerConfig.ff_layers` is that number (1 = HF's own block).

Names and the vocabulary they assume. Parameter counts depend on the vocabulary (the embedding,
tied with the output layer, has ``vocab_size x d_model`` weights). The names are the counts at
:data:`DEFAULT_VOCAB_SIZE` = 1,026 tokens: 2 specials (pad, eos) + 3 levels x 256 codes + a dedup
digit of 256 values, without user tokens. A catalogue whose dedup digit needs fewer values gives
fewer parameters (Beauty with RQ-KMeans 3 x 256 + dedup 15: 30,848 = 0.2 % fewer for 13m).

The ladder (paper, Table 2: 336K, 6.7M, 13M, 21M, 43M, 88M, 192M): the stated shapes are kept
(336K: one layer, d_model 64; 13M: GRID's default above; 192M: d_model 384, 20 layers) and the
others are filled in so that every count lands within a few percent of its name, all with GRID's
two-hidden-layer feed-forward block so that the sweep varies size, not architecture. 192M is
read as 10 encoder + 10 decoder layers with d_ff 2432: with a two-layer block, d_ff 3072 gives
more than 230M at 20 layers (the other reading, plain T5 blocks, 20 + 20 layers, 16 heads and
d_ff 3072, is ``from_name("192m", ff_layers=1, num_layers=20, num_decoder_layers=20,
num_heads=16, d_ff=3072)``, 189M).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import nn

DEFAULT_VOCAB_SIZE = 2 + 3 * 256 + 256
"""The vocabulary the preset names assume: pad + eos + 3 x 256 codes + 256 dedup values."""


@dataclass(frozen=True)
class TigerConfig:
    """The shape of TIGER's T5 encoder-decoder.

    Attributes:
        num_layers: encoder layers.
        num_decoder_layers: decoder layers.
        d_model: hidden size (and token-embedding size).
        d_ff: width of each hidden layer of the feed-forward blocks.
        num_heads: attention heads.
        d_kv: size of each head (``num_heads * d_kv`` need not equal ``d_model``).
        ff_layers: hidden layers per feed-forward block; 1 is HF's T5 block, 2 is GRID's.
        dropout: dropout rate everywhere (T5's ``dropout_rate``).
        feed_forward_proj: T5's activation, ``"relu"`` (T5 v1.0), ``"gelu"``, or a gated one
            such as ``"gated-gelu"`` (T5 v1.1; only with ``ff_layers = 1``).
        relative_attention_num_buckets: T5's relative-position buckets.
        relative_attention_max_distance: distance beyond which positions share a bucket.
    """

    num_layers: int = 4
    num_decoder_layers: int = 4
    d_model: int = 128
    d_ff: int = 1024
    num_heads: int = 6
    d_kv: int = 64
    ff_layers: int = 2
    dropout: float = 0.1
    feed_forward_proj: str = "relu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_decoder_layers", "d_model", "d_ff", "num_heads", "d_kv", "ff_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"TigerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TigerConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.ff_layers > 1 and self.feed_forward_proj.startswith("gated"):
            raise ValueError(f"ff_layers={self.ff_layers} needs a plain activation, not {self.feed_forward_proj!r}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TigerConfig:
        """The preset ``name`` (see :func:`names`) with ``overrides`` of its fields.

        Raises:
            ValueError: an unknown name (the message lists the known ones) or field.
        """
        return _from_preset(TIGER_PRESETS, "TIGER", name, overrides)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def t5_config(self, vocab_size: int, attn_implementation: str = "sdpa"):
        """The ``transformers`` ``T5Config`` of this shape over ``vocab_size`` tokens.

        Token 0 is the pad token and T5's decoder start token, token 1 is EOS.
        """
        from transformers import T5Config

        config = T5Config(
            vocab_size=vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.relative_attention_num_buckets,
            relative_attention_max_distance=self.relative_attention_max_distance,
            dropout_rate=self.dropout,
            feed_forward_proj=self.feed_forward_proj,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        config._attn_implementation = attn_implementation
        return config

    def build(self, vocab_size: int, attn_implementation: str = "sdpa") -> nn.Module:
        """A freshly initialised ``T5ForConditionalGeneration`` of this shape (no download).

        Args:
            vocab_size: tokens of the shared (tied) input/output embedding.
            attn_implementation: ``"sdpa"`` (fused attention; T5 supports it with its relative
                position bias as an additive mask) or ``"eager"``.
        """
        from transformers import T5ForConditionalGeneration

        model = T5ForConditionalGeneration(self.t5_config(vocab_size, attn_implementation))
        if self.ff_layers > 1:
            for stack in (model.encoder, model.decoder):
                for block in stack.block:
                    ff = block.layer[-1]
                    ff.DenseReluDense = DeepFeedForward(self.d_model, self.d_ff, self.ff_layers, self.dropout, self.feed_forward_proj)
        return model


class DeepFeedForward(nn.Module):
    """GRID's feed-forward block inside T5's pre-norm residual: ``d_model -> d_ff (x layers) -> d_model``.

    Replaces ``T5LayerFF.DenseReluDense``; T5's layer norm, dropout and residual stay around it.
    Bias-free like the rest of T5. ``[..., d_model] -> [..., d_model]``.
    """

    def __init__(self, d_model: int, d_ff: int, layers: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        widths = [d_model] + [d_ff] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.out = nn.Linear(d_ff, d_model, bias=False)
        self.act = ACT2FN[activation]
        self.dropout = nn.Dropout(dropout)
        for layer in self.hidden:  # T5's init: std = fan_in ** -0.5
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
        nn.init.normal_(self.out.weight, std=d_ff**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = self.dropout(self.act(layer(x)))
        return self.out(x)


TIGER_PRESETS: dict[str, TigerConfig] = {
    # name: shape; count at DEFAULT_VOCAB_SIZE (pinned in tests/models/test_presets.py for two)
    "336k": TigerConfig(num_layers=1, num_decoder_layers=1, d_model=64, d_ff=272, num_heads=4, d_kv=16),
    "6.7m": TigerConfig(num_layers=2, num_decoder_layers=2, d_model=128, d_ff=1024, num_heads=6, d_kv=64),
    "13m": TigerConfig(num_layers=4, num_decoder_layers=4, d_model=128, d_ff=1024, num_heads=6, d_kv=64),
    "21m": TigerConfig(num_layers=4, num_decoder_layers=4, d_model=192, d_ff=1280, num_heads=6, d_kv=64),
    "43m": TigerConfig(num_layers=6, num_decoder_layers=6, d_model=256, d_ff=1408, num_heads=8, d_kv=64),
    "88m": TigerConfig(num_layers=8, num_decoder_layers=8, d_model=320, d_ff=1824, num_heads=8, d_kv=64),
    "192m": TigerConfig(num_layers=10, num_decoder_layers=10, d_model=384, d_ff=2432, num_heads=12, d_kv=64),
}
"""The paper's T5 ladder; names are parameter counts at :data:`DEFAULT_VOCAB_SIZE`."""


def _from_preset(table: dict[str, Any], kind: str, name: str, overrides: dict[str, Any]) -> Any:
    """``table[name]`` with ``overrides`` of its fields; clear errors for unknown names or fields."""
    key = name.lower()
    if key not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(table)}")
    preset = table[key]
    known = {f.name for f in fields(preset)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {type(preset).__name__} field(s) {unknown}; fields: {sorted(known)}")
    return replace(preset, **overrides)


def names() -> list[str]:
    """The preset names, smallest first."""
    return list(TIGER_PRESETS)


def nominal_size(name: str) -> float:
    """The parameter count a preset's name states: ``"6.7m"`` -> 6.7e6, ``"336k"`` -> 3.36e5."""
    scale = {"k": 1e3, "m": 1e6, "b": 1e9}[name[-1].lower()]
    return float(name[:-1]) * scale


def count_parameters(config: TigerConfig, vocab_size: int = DEFAULT_VOCAB_SIZE) -> int:
    """Trainable parameters of ``config`` over ``vocab_size`` tokens (tied embedding counted once).

    Builds the model on the meta device: no memory, no initialisation cost.
    """
    with torch.device("meta"):
        model = config.build(vocab_size, attn_implementation="eager")
    return sum(p.numel() for p in model.parameters())


SMOLLM2_VOCAB_SIZE = 49_152
"""Vocabulary of the SmolLM2 tokenizer, the default tokenizer of from-scratch LM recommenders."""


@dataclass(frozen=True)
class LMRecConfig:
    """The shape of a decoder-only causal LM built from scratch for :class:`~genrec.models.LMRecModule`.

    ``LMRecConfig.from_name("10m", num_layers=2)`` gives a preset with overrides;
    :meth:`build` a freshly initialised ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` (no download);
    :func:`count_lm_parameters` counts on the meta device.

    Names. The ladder ``1m``, ``3m``, ``10m``, ``25m``, ``50m`` is named by *non-embedding* parameters (Kaplan et
    al.'s convention: the embedding of a 49k vocabulary alone is 6M at width 128, so a total
    count would say nothing about depth and width). ``smollm2-135m`` and ``qwen3-0.6b`` are the
    published models' shapes, named by their total (tied-embedding) count at their own vocabulary
    (SmolLM2-135M: 134.5M at 49,152 tokens; Qwen3-0.6B: 596.0M at 151,936 tokens).

    Attributes:
        arch: ``"llama"`` (LlamaForCausalLM) or ``"qwen3"`` (Qwen3ForCausalLM, q/k norms).
        num_layers: decoder layers.
        hidden_size: residual width (and embedding size).
        num_heads: query heads.
        num_kv_heads: key/value heads (grouped-query attention; divides ``num_heads``).
        head_dim: size of each head; ``None``: ``hidden_size // num_heads``.
        intermediate_size: width of the SwiGLU feed-forward block.
        vocab_size: the vocabulary the preset's stated count assumes; the module builds the
            model over its tokenizer's vocabulary instead.
        tie_embeddings: share the input embedding with the output layer.
        rope_theta: RoPE base.
        max_position_embeddings: longest sequence (RoPE table).
        dropout: attention dropout.
    """

    arch: str = "llama"
    num_layers: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int = 512
    vocab_size: int = SMOLLM2_VOCAB_SIZE
    tie_embeddings: bool = True
    rope_theta: float = 10_000.0
    max_position_embeddings: int = 2048
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "qwen3"):
            raise ValueError(f"LMRecConfig.arch must be 'llama' or 'qwen3', got {self.arch!r}")
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads}), or give head_dim")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> LMRecConfig:
        """The preset ``name`` (see :func:`lm_names`) with ``overrides`` of its fields.

        Raises:
            ValueError: an unknown name (the message lists the known ones) or field.
        """
        return _from_preset(LM_PRESETS, "LM", name, overrides)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hf_config(self, vocab_size: int | None = None, pad_token_id: int | None = None, eos_token_id: int | None = None):
        """The ``transformers`` ``LlamaConfig`` / ``Qwen3Config`` of this shape over ``vocab_size``
        tokens (default :attr:`vocab_size`)."""
        from transformers import LlamaConfig, Qwen3Config

        kwargs = {
            "vocab_size": vocab_size or self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim or self.hidden_size // self.num_heads,
            "intermediate_size": self.intermediate_size,
            "tie_word_embeddings": self.tie_embeddings,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_dropout": self.dropout,
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
            "bos_token_id": None,
        }
        return (LlamaConfig if self.arch == "llama" else Qwen3Config)(**kwargs)

    def build(self, vocab_size: int | None = None, pad_token_id: int | None = None, eos_token_id: int | None = None) -> nn.Module:
        """A freshly initialised causal LM of this shape (no download)."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(self.hf_config(vocab_size, pad_token_id, eos_token_id))


LM_PRESETS: dict[str, LMRecConfig] = {
    # name: shape; non-embedding count for the ladder, total count for the published shapes
    "1m": LMRecConfig(num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=512),  # 0.98M
    "3m": LMRecConfig(num_layers=6, hidden_size=192, num_heads=6, num_kv_heads=3, intermediate_size=640),  # 2.88M
    "10m": LMRecConfig(num_layers=8, hidden_size=320, num_heads=5, num_kv_heads=5, intermediate_size=864),  # 9.92M
    "25m": LMRecConfig(num_layers=12, hidden_size=416, num_heads=8, num_kv_heads=4, intermediate_size=1280),  # 25.4M
    "50m": LMRecConfig(num_layers=16, hidden_size=512, num_heads=8, num_kv_heads=4, intermediate_size=1536),  # 50.3M
    "smollm2-135m": LMRecConfig(
        num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, intermediate_size=1536, rope_theta=100_000.0, max_position_embeddings=8192
    ),  # 134.5M total
    "qwen3-0.6b": LMRecConfig(
        arch="qwen3", num_layers=28, hidden_size=1024, num_heads=16, num_kv_heads=8, head_dim=128, intermediate_size=3072,
        vocab_size=151_936, rope_theta=1_000_000.0, max_position_embeddings=40_960,
    ),  # 596.0M total
}
"""Causal-LM shapes for LM-as-recommender runs from scratch (see :class:`LMRecConfig` for the names)."""


def lm_names() -> list[str]:
    """The LM preset names, smallest first."""
    return list(LM_PRESETS)


def count_lm_parameters(config: LMRecConfig, vocab_size: int | None = None, embeddings: bool = True) -> int:
    """Parameters of ``config`` over ``vocab_size`` tokens (default its own; tied embedding counted
    once); ``embeddings=False`` leaves out the input embedding (and an untied output layer).

    Builds the model on the meta device: no memory, no initialisation cost.
    """
    with torch.device("meta"):
        model = config.build(vocab_size)
    total = sum(p.numel() for p in model.parameters())
    if not embeddings:
        total -= model.get_input_embeddings().weight.numel()
        if not config.tie_embeddings:
            total -= model.get_output_embeddings().weight.numel()
    return total


__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "LM_PRESETS",
    "SMOLLM2_VOCAB_SIZE",
    "TIGER_PRESETS",
    "DeepFeedForward",
    "LMRecConfig",
    "TigerConfig",
    "count_lm_parameters",
    "count_parameters",
    "lm_names",
    "names",
    "nominal_size",
]
