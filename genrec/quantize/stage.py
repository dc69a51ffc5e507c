"""The tokenize stage: item embeddings -> a trained quantizer -> the semantic-ID artifact.

Chains the encode stage (reused when its file exists), trains the tokenizer (any
:class:`~genrec.quantize.protocol.Tokenizer`: its own ``fit``, e.g. an
:class:`~genrec.quantize.rqvae.RQVAEModule` through a Lightning ``Trainer``, or
:class:`~genrec.quantize.rqkmeans.RQKMeans`), writes it with its own ``save``, assigns every item its SID with the dedup digit and
writes the artifact with its quality report. The artifact records a digest of everything that
made it (tokenizer config, training settings, embedding file and catalogue); re-running with the
same settings reuses it, a changed setting (or a damaged file) rebuilds it.

The embeddings must be the catalogue's: their recorded fingerprint and row count are checked
before anything is trained. Two runs writing one output take turns (:func:`output_lock`), and the
file set is written so that a reader never takes parts of two runs for one: the trained
tokenizer first, then the SID file, which records the tokenizer file's digest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from genrec.artifacts import config_digest, file_digest, output_lock
from genrec.data.datamodule import load_embeddings
from genrec.errors import ArtifactError, at_least
from genrec.quantize.protocol import FitSettings, Tokenizer
from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)


@dataclass
class TokenizeConfig:
    """How the tokenizer is trained and where its artifact goes.

    Args:
        name: artifact name; the default output is ``checkpoints/<data>/sids/<name>.safetensors``.
        output: explicit artifact path (overrides ``name``).
        embeddings: explicit embedding file; default: the encode stage's output for the given
            data and encoder (computed first if missing).
        max_epochs: RQ-VAE training epochs over the items.
        batch_size: RQ-VAE items per batch.
        accelerator: Lightning accelerator for RQ-VAE training (``auto``, ``cpu``, ``gpu``); RQ-KMeans
            runs on the GPU when ``gpu``/``auto`` finds one.
        devices: Lightning devices for RQ-VAE training.
        precision: Lightning precision for RQ-VAE training.
        seed: seed of initialisation and shuffling.
        fast_dev_run: one batch of RQ-VAE training (tests, smoke runs).
    """

    name: str = "rqvae"
    output: str | None = None
    embeddings: str | None = None
    max_epochs: int = 100
    batch_size: int = 1024
    accelerator: str = "auto"
    devices: int | str = 1
    precision: str | None = None
    seed: int = 0
    fast_dev_run: bool = False

    def __post_init__(self) -> None:
        at_least("tokenize", 1, max_epochs=self.max_epochs, batch_size=self.batch_size)

    def fit_settings(self, embeddings: Path) -> FitSettings:
        """What a tokenizer's ``fit`` is told, training on the file ``embeddings``."""
        return FitSettings(self.seed, self.max_epochs, self.batch_size, self.accelerator, self.devices, self.precision,
                           self.fast_dev_run, embeddings)


def sids_path(data_name: str, config: TokenizeConfig) -> Path:
    """Where the artifact of ``config`` goes for data set ``data_name``."""
    if config.output:
        return Path(config.output)
    return Path("checkpoints") / (data_name or "data") / "sids" / f"{config.name}.safetensors"


def tokenize(
    tokenizer: Tokenizer,
    tokenizer_config: dict[str, Any],
    embeddings: Path,
    fingerprint: str,
    config: TokenizeConfig,
    data_name: str = "",
    transitions: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_items: int | None = None,
) -> tuple[Path, SemanticIDs]:
    """Train ``tokenizer`` on ``embeddings`` and write (or reuse) the SID artifact.

    Args:
        tokenizer: an untrained tokenizer (the protocol of :mod:`genrec.quantize.protocol`).
        tokenizer_config: its ``class_path``/``init_args`` as configured (recorded, hashed).
        embeddings: the encode stage's safetensors file.
        fingerprint: the catalogue fingerprint the embeddings were made for.
        config: training settings and output.
        data_name: the data set's name (default output folder).
        transitions: ``(earlier [P], later [P])`` item ids of consecutive training interactions,
            for the report's ``next_item_prefix_match`` (the ``tokenize`` command passes them).
        num_items: the catalogue's item count, checked against the embedding rows.

    Returns:
        The artifact path and the loaded :class:`SemanticIDs`.

    Raises:
        ArtifactError: the embeddings were made for another catalogue (fingerprint or row count),
            record no catalogue, or have non-finite rows.
    """
    output = sids_path(data_name, config)
    check_embeddings(embeddings, fingerprint, num_items)
    with output_lock(output):
        return _tokenize_locked(tokenizer, tokenizer_config, embeddings, fingerprint, config, output, transitions)


def check_embeddings(path: Path, fingerprint: str, num_items: int | None = None) -> None:
    """The embedding file ``path`` was made for the catalogue of ``fingerprint`` (and ``num_items``
    items): its recorded ``catalog_fingerprint`` and ``num_items`` and its row count agree.

    Raises:
        FileNotFoundError: no such file.
        ArtifactError: naming both fingerprints, or the row counts, or what is unreadable.
    """
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the encode stage first)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            rows = handle.get_slice("embeddings").get_shape()[0] if "embeddings" in handle.keys() else None  # noqa: SIM118
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise ArtifactError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error
    if rows is None:
        raise ArtifactError(f"{path} has no 'embeddings' tensor")
    recorded = meta.get("catalog_fingerprint")
    if not recorded:
        raise ArtifactError(f"{path} records no catalog_fingerprint, so it cannot be checked against the catalogue (fingerprint {fingerprint}); make it with the encode stage")
    if recorded != fingerprint:
        raise ArtifactError(f"{path} was made for catalogue fingerprint {recorded}, but the catalogue in use has fingerprint {fingerprint}; re-run encode for this data set")
    counts = {"rows": rows, "recorded num_items": meta.get("num_items"), "catalogue items": num_items}
    if len({int(v) for v in counts.values() if v is not None}) > 1:
        raise ArtifactError(f"{path}: item counts disagree ({', '.join(f'{k} {v}' for k, v in counts.items() if v is not None)})")


def _tokenize_locked(
    tokenizer: Tokenizer,
    tokenizer_config: dict[str, Any],
    embeddings: Path,
    fingerprint: str,
    config: TokenizeConfig,
    output: Path,
    transitions: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[Path, SemanticIDs]:
    """:func:`tokenize` once the output's lock is held."""
    stage = {
        "tokenizer": tokenizer_config,
        "train": {k: v for k, v in asdict(config).items() if k not in ("output", "name", "embeddings")},
        "embeddings": str(embeddings),
        "embeddings_mtime_ns": embeddings.stat().st_mtime_ns,
        "fingerprint": fingerprint,
    }
    digest = config_digest(stage)
    if output.is_file():
        try:
            existing = SemanticIDs.load(output, expected_fingerprint=fingerprint)
            if existing.quantizer.get("stage_digest") == digest and _companion_matches(output, existing):
                log.info("semantic IDs %s exist with the same settings: reused", output)
                return output, existing
            log.info("semantic IDs %s exist with other settings: rebuilding", output)
        except ValueError as error:  # ArtifactError: truncated, damaged, another catalogue
            log.warning("rebuilding %s: %s", output, error)

    table = load_embeddings(embeddings)
    started = time.perf_counter()
    tokenizer.fit(table, config.fit_settings(embeddings))
    seconds = time.perf_counter() - started

    codes = tokenizer.encode_codes(table)
    # The trained tokenizer itself (to give SIDs to items added later) first; the SID file, which
    # records its digest, last: a reader that finds the SID file can check it has its tokenizer.
    companion = tokenizer.save(output.with_suffix(tokenizer.file_suffix))
    sids = SemanticIDs.from_codes(
        codes.cpu(),
        tokenizer.codebook_size,
        quantizer={**tokenizer.describe(), "config": tokenizer_config, "stage": stage, "stage_digest": digest, "train_seconds": round(seconds, 2),
                   "tokenizer_file": companion.name, "tokenizer_digest": file_digest(companion)},
        embeddings=embeddings,
        fingerprint=fingerprint,
        reconstruction_error=tokenizer.reconstruction_error(table),
        transitions=transitions,
    )
    sids.save(output)
    log.info("wrote %s (%d items, trained in %.1fs)", output, sids.num_items, seconds)
    return output, sids


def _companion_matches(output: Path, sids: SemanticIDs) -> bool:
    """Whether the tokenizer file beside ``output`` is the one the SID file records (artifacts
    written before the digest was recorded count as matching)."""
    name, digest = sids.quantizer.get("tokenizer_file"), sids.quantizer.get("tokenizer_digest")
    if not name or not digest:
        return True
    companion = output.with_name(name)
    return companion.is_file() and file_digest(companion) == digest


def format_quality(quality: dict[str, Any]) -> str:
    """The quality report as lines of text (code usage per level, collisions, error)."""
    lines = []
    size = quality.get("codebook_size", "?")
    for stats in quality.get("per_level", []):
        lines.append(
            f"level {stats['level']}: {stats['codes_used']}/{size} codes used ({100 * stats['fraction_used']:.1f} %), "
            f"perplexity {stats['perplexity']:.1f}, {stats['unique_prefixes']} distinct prefixes"
        )
    for key in ("collision_rate", "items_with_dedup", "max_dedup_digit", "reconstruction_error"):  # in this order
        if key in quality and quality[key] is not None:
            value = quality[key]
            lines.append(f"{key.replace('_', ' ')}: {value:.4g}" if isinstance(value, float) else f"{key.replace('_', ' ')}: {value}")
    for match in quality.get("next_item_prefix_match", []):
        lines.append(
            f"next item shares the level-{match['level']} prefix: {100 * match['share']:.2f} % of "
            f"{quality.get('training_transitions', '?')} training transitions (chance {100 * match['chance']:.2f} %)"
        )
    for warning in quality.get("warnings", []):
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
