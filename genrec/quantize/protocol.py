"""The tokenizer protocol: THE extension point of the tokenize stage.

A tokenizer turns item embeddings ``[N, D]`` into codes ``[N, levels]`` of one codebook size;
the stage (:func:`genrec.quantize.stage.tokenize`) adds the dedup digit, writes the SID artifact
and its quality report. Any class with the members of :class:`Tokenizer` can be given as
``--tokenizer`` (``class_path`` / ``init_args`` in ``configs/tokenizer/*.yaml``), nothing under
genrec/ edited: the stage only calls these members, never ``isinstance``.

* ``fit(embeddings, settings)`` trains it (:class:`FitSettings`: seed, epochs, device...;
  a tokenizer reads what it needs of them);
* ``encode_codes``, ``reconstruction_error`` and ``describe`` build the artifact;
* ``save(path)`` writes the trained tokenizer beside the SID file as
  ``<sids stem>`` + :attr:`Tokenizer.file_suffix` (atomically), and ``load(path)`` reads it back
  (with safetensors or ``torch.load(weights_only=True)``, never by unpickling).

genrec's implementations: :class:`~genrec.quantize.rqkmeans.RQKMeans` (residual k-means) and
:class:`~genrec.quantize.rqvae.RQVAEModule` (RQ-VAE, trained by a Lightning ``Trainer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class FitSettings:
    """What the tokenize stage tells a tokenizer's ``fit``.

    Attributes:
        seed: seed of initialisation and shuffling.
        max_epochs: training epochs over the items (trained tokenizers).
        batch_size: items per batch (trained tokenizers).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``); ``gpu``/``auto`` may use a GPU.
        devices: Lightning devices.
        precision: Lightning precision.
        fast_dev_run: one batch of training (tests, smoke runs).
        embeddings_path: the embedding file ``embeddings`` was read from (for a data module).
    """

    seed: int = 0
    max_epochs: int = 100
    batch_size: int = 1024
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None
    fast_dev_run: bool = False
    embeddings_path: Path | None = None

    def may_use_cuda(self) -> bool:
        """Whether a GPU is there and the accelerator allows it."""
        import torch

        return torch.cuda.is_available() and self.accelerator in ("gpu", "cuda", "auto")


@runtime_checkable
class Tokenizer(Protocol):
    """A quantizer of item embeddings into semantic-ID codes (see the module docstring).

    The annotations are ``Any`` so that an implementation may type its arguments as it likes
    (``jsonargparse`` matches a ``--tokenizer`` class against these signatures exactly
    otherwise); the types meant are in each docstring.
    """

    file_suffix: ClassVar[str]
    """Suffix of the trained tokenizer's file beside the SID artifact, e.g. ``.tokenizer.safetensors``."""

    @property
    def codebook_size(self) -> int:
        """Values per code level."""
        ...

    def fit(self, embeddings: Any, settings: Any) -> Any:
        """Train on ``embeddings`` (``[N, D]`` float Tensor, row = item id) as :class:`FitSettings` ``settings`` say."""
        ...

    def encode_codes(self, embeddings: Any) -> Any:
        """``[N, D]`` embeddings -> ``[N, levels]`` int64 codes (Tensor) in ``0 .. codebook_size - 1``."""
        ...

    def reconstruction_error(self, embeddings: Any) -> Any:
        """Mean squared error per element (a float) of ``embeddings`` ``[N, D]`` rebuilt from their codes (``nan`` if it has no decoder)."""
        ...

    def describe(self) -> Any:
        """The tokenizer's settings (a dict of JSON values), recorded in the SID artifact."""
        ...

    def save(self, path: Any) -> Any:
        """Write the trained tokenizer to ``path`` (a path) atomically; returns it as a :class:`~pathlib.Path`."""
        ...

    @classmethod
    def load(cls, path: Any, device: Any = None) -> Any:
        """Read a file written by :meth:`save`."""
        ...


__all__ = ["FitSettings", "Tokenizer"]
