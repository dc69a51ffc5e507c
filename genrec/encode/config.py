"""What an item encoder is: :class:`EncoderConfig` (a text model, or ``cf``: embeddings from
the interactions, :mod:`genrec.collaborative`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from genrec.errors import ConfigError, at_least

Pooling = Literal["auto", "mean", "cls", "last"]


@dataclass
class EncoderConfig:
    """What to encode with.

    Args:
        model: ``minilm`` / ``smollm2`` (offline aliases), a local directory or a hub name.
        pooling: ``mean``, ``cls`` (first token), ``last`` (last real token, for decoder LLMs),
            or ``auto``: the sentence-transformers pooling config when present, ``last`` for
            decoder-only models, else ``mean``.
        normalize: L2-normalise the embeddings; ``None``: as the sentence-transformers config
            says (its ``Normalize`` module), else no.
        max_length: tokens per item text (longer texts are truncated).
        gguf_file: GGUF file name inside ``model`` (set automatically for ``smollm2``).
        cf_dim: embedding size of the ``cf`` encoder (``model: cf`` embeds items from the
            training interactions instead of text: :mod:`genrec.collaborative`).
        cf_window: positions within which two items of a sequence co-occur (``cf``, or a
            text model with ``cf_weight``).
        cf_weight: for a text model, > 0 makes *hybrid* embeddings: the L2-normalised text
            embedding followed by ``sqrt(cf_weight)`` x the L2-normalised ``cf`` one, so a squared
            distance is the text one plus ``cf_weight`` x the collaborative one (the tokenizer
            quantizes both at once). 0: text only.
    """

    model: str = "minilm"
    pooling: Pooling = "auto"
    normalize: bool | None = None
    max_length: int = 128
    gguf_file: str | None = None
    cf_dim: int = 64
    cf_window: int = 3
    cf_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.cf_weight < 0:
            raise ConfigError(f"encoder: cf_weight must be >= 0, got {self.cf_weight}")
        at_least("encoder", 1, max_length=self.max_length, cf_dim=self.cf_dim, cf_window=self.cf_window)

    @property
    def hybrid(self) -> bool:
        """Text embeddings with collaborative ones appended (``cf_weight > 0``)."""
        return self.model != CF_MODEL and self.cf_weight > 0

    def settings(self) -> dict[str, Any]:
        """The fields that change the embeddings: the ``cf_*`` ones only for ``model: cf`` or a
        hybrid, the text ones only for a text model (so adding an option of one kind renames no
        file of the other)."""
        fields = asdict(self)
        if self.model == CF_MODEL:
            return {k: v for k, v in fields.items() if k in ("model", "cf_dim", "cf_window")}
        return {k: v for k, v in fields.items() if not k.startswith("cf_") or self.hybrid}

    def metadata(self) -> dict[str, str]:
        """:meth:`settings` as the strings an embedding file records (``None`` -> ``""``)."""
        return {k: "" if v is None else str(v) for k, v in self.settings().items()}


CF_MODEL = "cf"
"""The encoder name of collaborative embeddings (from interactions, not text)."""


__all__ = ["CF_MODEL", "EncoderConfig", "Pooling"]
