"""Semantic IDs: codes per item, the dedup digit, quality statistics, and the on-disk artifact.

Row ``i`` of every table here is item id ``i`` of the catalogue. An item's SID is its
``levels`` codes plus a *dedup digit*: 0 for the first item (lowest item id) with a given code
tuple, 1, 2, ... for the later ones, so every item has a unique SID. The dedup digit is not
bounded by the codebook size: when more than ``codebook_size`` items share a code tuple it goes
beyond it, so the artifact records ``dedup_size`` (largest dedup digit + 1) separately, and a
recommender sizes the vocabulary of the last position from it (:attr:`SemanticIDs.vocab_sizes`).

The artifact is one safetensors file (``sids``: ``[num_items, levels + 1]`` int64) whose
metadata holds the quantizer config, the embedding file it came from, the catalogue fingerprint,
the sizes and the quality report; a JSON sidecar repeats the metadata for people to read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genrec.artifacts import atomic_path, write_json
from genrec.errors import ArtifactError

if TYPE_CHECKING:
    from genrec.quantize.protocol import Tokenizer

FORMAT = "genrec.semantic_ids"
FORMAT_VERSION = 1


def dedup_digits(codes: Tensor) -> Tensor:
    """The dedup digit of every item: its rank among the items with the same code tuple.

    Args:
        codes: ``[N, levels]`` integer codes; row ``i`` is item ``i``.

    Returns:
        ``[N]`` int64; 0 for the lowest item id of each code tuple, then 1, 2, ... in item-id
        order. Example: codes ``[[1,2],[1,2],[0,0],[1,2]]`` -> ``[0, 1, 0, 2]``.
    """
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, levels], got {tuple(codes.shape)}")
    n = codes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=codes.device)
    _, group = torch.unique(codes, dim=0, return_inverse=True)  # [N] id of each item's tuple
    order = torch.sort(group, stable=True).indices  # by tuple, item ids ascending inside
    sorted_group = group[order]
    counts = torch.bincount(sorted_group)
    starts = counts.cumsum(0) - counts
    digits = torch.empty(n, dtype=torch.long, device=codes.device)
    digits[order] = torch.arange(n, device=codes.device) - starts[sorted_group]
    return digits


def assign_dedup(codes: Tensor) -> Tensor:
    """``[N, levels]`` codes -> ``[N, levels + 1]`` int64 SIDs with the dedup digit appended."""
    return torch.cat([codes.long(), dedup_digits(codes)[:, None]], dim=1)


def next_item_prefix_match(codes: Tensor, earlier: Tensor, later: Tensor) -> list[dict[str, float]]:
    """How often a user's next item shares the previous item's SID prefix: a cheap measure of
    how much behaviour the codes carry (TIGER learns faster and better from SIDs where it is high).

    Args:
        codes: ``[N, levels]`` the items' codes.
        earlier: ``[P]`` item ids of training interactions, ``later``: ``[P]`` the item each one
            was followed by (:meth:`genrec.data.sequences.SequenceData.training_pairs`).

    Returns:
        One dict per level ``l``: ``share`` of the pairs whose items agree on the first ``l + 1``
        codes, and ``chance``, the share expected if ``later`` were drawn independently of
        ``earlier`` from its own distribution (``sum_p P_earlier(p) * P_later(p)`` over prefixes).
    """
    codes = codes.long().cpu()
    earlier, later = earlier.long().cpu(), later.long().cpu()
    pairs = len(earlier)
    out = []
    for level in range(codes.shape[1]):
        _, prefix = torch.unique(codes[:, : level + 1], dim=0, return_inverse=True)  # [N] prefix id per item
        a, b = prefix[earlier], prefix[later]
        size = int(prefix.max()) + 1 if len(prefix) else 1
        chance = float((torch.bincount(a, minlength=size).double() * torch.bincount(b, minlength=size).double()).sum() / max(pairs, 1) ** 2)
        out.append({"level": level, "share": float((a == b).double().mean()) if pairs else 0.0, "chance": chance})
    return out


def quality_report(
    codes: Tensor,
    codebook_size: int,
    reconstruction_error: float | None = None,
    transitions: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Any]:
    """Code usage and collisions of ``codes`` (``[N, levels]``), as a JSON-able dict.

    Keys: ``num_items``, ``levels``, ``codebook_size``; ``per_level``: one dict per level with
    ``codes_used``, ``fraction_used`` (of ``codebook_size``), ``perplexity`` (exp of the entropy
    of the code distribution; ``codebook_size`` when uniform, 1 when collapsed) and
    ``unique_prefixes`` (distinct code tuples up to this level); ``collision_rate``: share of
    items whose full code tuple is shared with an earlier item (= items that get a dedup digit
    > 0); ``items_with_dedup``; ``max_dedup_digit``; ``dedup_size`` (max digit + 1 = the most
    items sharing one code tuple); ``reconstruction_error`` (as given); with ``transitions``
    (``(earlier, later)`` item ids of consecutive training interactions),
    ``next_item_prefix_match`` (:func:`next_item_prefix_match`, with the pair count); ``warnings``:
    collapse symptoms in words.
    """
    codes = codes.long().cpu()
    n, levels = codes.shape
    per_level = []
    for level in range(levels):
        counts = torch.bincount(codes[:, level], minlength=codebook_size).double()
        used = int((counts > 0).sum())
        p = counts[counts > 0] / max(n, 1)
        entropy = float(-(p * p.log()).sum()) if n else 0.0
        prefixes = int(torch.unique(codes[:, : level + 1], dim=0).shape[0]) if n else 0
        per_level.append(
            {
                "level": level,
                "codes_used": used,
                "fraction_used": used / codebook_size,
                "perplexity": math.exp(entropy),
                "unique_prefixes": prefixes,
            }
        )
    digits = dedup_digits(codes)
    with_dedup = int((digits > 0).sum())
    max_digit = int(digits.max()) if n else 0
    report: dict[str, Any] = {
        "num_items": n,
        "levels": levels,
        "codebook_size": codebook_size,
        "per_level": per_level,
        "collision_rate": with_dedup / n if n else 0.0,
        "items_with_dedup": with_dedup,
        "max_dedup_digit": max_digit,
        "dedup_size": max_digit + 1,
        "reconstruction_error": None if reconstruction_error is None else float(reconstruction_error),
    }
    if transitions is not None:
        report["next_item_prefix_match"] = next_item_prefix_match(codes, *transitions)
        report["training_transitions"] = len(transitions[0])
    warnings = []
    for level in per_level:
        # with at least 2 items per code on average, using under half the codes is a collapse
        if n >= 2 * codebook_size and level["fraction_used"] < 0.5:
            warnings.append(
                f"level {level['level']} uses {level['codes_used']} of {codebook_size} codes "
                f"(perplexity {level['perplexity']:.1f}): codebook collapse"
            )
    if report["collision_rate"] > 0.5:
        warnings.append(f"{report['collision_rate']:.0%} of items share their code tuple with an earlier item")
    if report["dedup_size"] > codebook_size:
        warnings.append(f"dedup digit reaches {max_digit}, beyond the codebook size {codebook_size}")
    report["warnings"] = warnings
    return report


@dataclass(eq=False)
class SemanticIDs:
    """The semantic IDs of a catalogue, with where they came from.

    Attributes:
        codes: ``[N, levels]`` int64 quantizer codes, row ``i`` = item ``i``.
        codebook_size: codes per level.
        quantizer: the quantizer config (JSON-able dict) that produced ``codes``.
        embeddings: the embedding file the quantizer encoded.
        fingerprint: the catalogue fingerprint (``ItemCatalog.fingerprint()``).
        quality: the :func:`quality_report` of ``codes``.
        table: ``[N, levels + 1]`` int64 SIDs (codes + dedup digit); computed when not given.
    """

    codes: Tensor
    codebook_size: int
    quantizer: dict[str, Any] = field(default_factory=dict)
    embeddings: str | None = None
    fingerprint: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    table: Tensor | None = None

    assign_dedup = staticmethod(assign_dedup)
    quality_report = staticmethod(quality_report)

    def __post_init__(self) -> None:
        self.codes = self.codes.long().cpu()
        if self.codes.ndim != 2:
            raise ValueError(f"codes must be [N, levels], got {tuple(self.codes.shape)}")
        if self.codes.numel() and (int(self.codes.min()) < 0 or int(self.codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(self.codes.min())}, {int(self.codes.max())}]")
        table = assign_dedup(self.codes)
        if self.table is not None and not torch.equal(self.table.long().cpu(), table):
            raise ValueError("the SID table does not match its codes with dedup digits (corrupted file?)")
        self.table = table
        self._index: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_codes(
        cls,
        codes: Tensor,
        codebook_size: int,
        *,
        quantizer: dict[str, Any] | None = None,
        embeddings: str | os.PathLike[str] | None = None,
        fingerprint: str | None = None,
        reconstruction_error: float | None = None,
        transitions: tuple[Tensor, Tensor] | None = None,
    ) -> SemanticIDs:
        """SIDs of ``codes`` (``[N, levels]``) with their quality report computed
        (``transitions``: see :func:`quality_report`)."""
        return cls(
            codes=codes,
            codebook_size=codebook_size,
            quantizer=dict(quantizer or {}),
            embeddings=None if embeddings is None else str(embeddings),
            fingerprint=fingerprint,
            quality=quality_report(codes, codebook_size, reconstruction_error, transitions),
        )

    # ---- sizes --------------------------------------------------------------------------------

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    @property
    def levels(self) -> int:
        """Code levels, not counting the dedup digit."""
        return self.codes.shape[1]

    @property
    def dedup_size(self) -> int:
        """Largest dedup digit + 1 (may exceed ``codebook_size``)."""
        return int(self.table[:, -1].max()) + 1 if self.num_items else 1

    @property
    def vocab_sizes(self) -> list[int]:
        """Number of token values at each of the ``levels + 1`` SID positions."""
        return [self.codebook_size] * self.levels + [self.dedup_size]

    # ---- lookups ------------------------------------------------------------------------------

    def sid_of(self, item: int) -> tuple[int, ...]:
        """The SID (``levels + 1`` ints) of item id ``item``."""
        return tuple(int(v) for v in self.table[item].tolist())

    def _lookup(self) -> tuple[Tensor, Tensor, Tensor]:
        """(radix weights ``[levels+1]``, sorted SID keys ``[N]``, their item ids ``[N]``)."""
        if self._index is None:
            sizes = self.vocab_sizes
            if math.prod(sizes) >= 2**62:
                raise ValueError(f"SID space {sizes} too large for int64 keys")
            weights = torch.tensor([math.prod(sizes[i + 1 :]) for i in range(len(sizes))], dtype=torch.long)
            keys, items = torch.sort(self.table @ weights)
            self._index = (weights, keys, items)
        return self._index

    def items_of(self, sids: Tensor) -> Tensor:
        """``[..., levels + 1]`` SIDs -> ``[...]`` int64 item ids, -1 where no item has the SID."""
        weights, keys, items = self._lookup()
        sids = sids.long().cpu()
        sizes = torch.tensor(self.vocab_sizes, dtype=torch.long)
        valid = ((sids >= 0) & (sids < sizes)).all(dim=-1)
        missing = torch.full(sids.shape[:-1], -1, dtype=torch.long)
        if len(keys) == 0:
            return missing
        query = sids.clamp(min=0) @ weights
        pos = torch.searchsorted(keys, query).clamp(max=len(keys) - 1)
        return torch.where(valid & (keys[pos] == query), items[pos], missing)

    def item_of(self, sid: tuple[int, ...] | list[int] | Tensor) -> int:
        """The item id of ``sid`` (``levels + 1`` ints); ``KeyError`` if no item has it."""
        sid_t = torch.as_tensor(sid, dtype=torch.long)
        if sid_t.shape != (self.levels + 1,):
            raise ValueError(f"a SID has {self.levels + 1} digits, got {tuple(sid_t.tolist())}")
        item = int(self.items_of(sid_t[None])[0])
        if item < 0:
            raise KeyError(f"no item has SID {tuple(sid_t.tolist())}")
        return item

    # ---- artifact -----------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """Everything recorded beside the table."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "num_items": self.num_items,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "dedup_size": self.dedup_size,
            "quantizer": self.quantizer,
            "embeddings": self.embeddings,
            "fingerprint": self.fingerprint,
            "quality": self.quality,
        }

    def save(self, path: str | os.PathLike[str], sidecar: bool = True) -> Path:
        """Write the artifact atomically to ``path`` (and ``path`` with ``.json``, for people).

        Returns:
            ``path`` as a ``Path``.
        """
        from safetensors.torch import save_file

        path = Path(path)
        meta = self.metadata()
        if sidecar:
            write_json(path.with_suffix(".json"), meta)
        header = {key: json.dumps(value) for key, value in meta.items()}
        with atomic_path(path) as tmp:
            save_file({"sids": self.table.contiguous()}, str(tmp), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_fingerprint: str | None = None) -> SemanticIDs:
        """Read an artifact written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            ArtifactError: (a ``ValueError``) when ``expected_fingerprint`` is given and differs
                from the recorded one, or the file is unreadable (truncated) or not a SID artifact.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run the tokenize stage first)")
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if header.get("format") != json.dumps(FORMAT) or "sids" not in handle.keys():  # noqa: SIM118
                    raise ArtifactError(f"{path} is not a semantic-ID artifact (format {header.get('format')!r})")
                table = handle.get_tensor("sids")
            meta = {key: json.loads(value) for key, value in header.items()}
        except ArtifactError:
            raise
        except Exception as error:  # noqa: BLE001 - safetensors and json raise their own types for damaged files
            raise ArtifactError(f"{path}: not a readable semantic-ID file, truncated or damaged ({type(error).__name__}: {error})") from error
        if meta["version"] > FORMAT_VERSION:
            raise ArtifactError(f"{path} has format version {meta['version']}; this genrec reads <= {FORMAT_VERSION}")
        if table.dim() != 2 or table.shape[0] != meta.get("num_items") or table.shape[1] != meta.get("levels", 0) + 1:
            raise ArtifactError(f"{path}: the table is {list(table.shape)}, the header says {meta.get('num_items')} items x {meta.get('levels')} levels + dedup")
        if expected_fingerprint is not None and meta.get("fingerprint") != expected_fingerprint:
            raise ArtifactError(
                f"{path} was made for catalogue fingerprint {meta.get('fingerprint')!r}, "
                f"but the catalogue in use has fingerprint {expected_fingerprint!r}"
            )
        return cls(
            codes=table[:, :-1],
            codebook_size=int(meta["codebook_size"]),
            quantizer=meta.get("quantizer") or {},
            embeddings=meta.get("embeddings"),
            fingerprint=meta.get("fingerprint"),
            quality=meta.get("quality") or {},
            table=table,
        )


def build_semantic_ids(
    tokenizer: Tokenizer,
    embeddings: Tensor | str | os.PathLike[str],
    *,
    embeddings_path: str | os.PathLike[str] | None = None,
    fingerprint: str | None = None,
    output: str | os.PathLike[str] | None = None,
) -> SemanticIDs:
    """Encode every item with a trained ``tokenizer`` and build (and optionally save) its SIDs.

    Args:
        tokenizer: a trained tokenizer (:class:`~genrec.quantize.protocol.Tokenizer`).
        embeddings: ``[N, D]`` item embeddings (row = item id), or the safetensors file the
            encode stage wrote (then ``embeddings_path`` defaults to it and ``fingerprint`` to
            its ``catalog_fingerprint`` metadata).
        embeddings_path: the embedding file to record.
        fingerprint: the catalogue fingerprint to record.
        output: when given, the artifact is saved there.
    """
    if not isinstance(embeddings, Tensor):
        from safetensors import safe_open

        from genrec.data.datamodule import load_embeddings

        source = Path(embeddings)
        table = load_embeddings(source)
        embeddings_path = embeddings_path or source
        if fingerprint is None:
            with safe_open(str(source), framework="pt") as handle:
                fingerprint = (handle.metadata() or {}).get("catalog_fingerprint")
    else:
        table = embeddings
    codes = tokenizer.encode_codes(table)
    sids = SemanticIDs.from_codes(
        codes,
        tokenizer.codebook_size,
        quantizer=tokenizer.describe(),
        embeddings=embeddings_path,
        fingerprint=fingerprint,
        reconstruction_error=tokenizer.reconstruction_error(table),
    )
    if output is not None:
        sids.save(output)
    return sids
