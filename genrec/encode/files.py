"""Embedding files: their metadata, default path, reuse check and row check, and the lock
two runs writing one file take turns on."""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from safetensors import safe_open

from genrec.artifacts import config_digest, output_lock
from genrec.data.catalog import ItemCatalog
from genrec.encode.config import CF_MODEL, EncoderConfig

log = logging.getLogger("genrec.encode")

def embedding_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an embedding file (encoder, pooling, template, fingerprint, ...)."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def embedding_label(path: str | Path) -> str:
    """A short name of what an embedding file holds: ``minilm``, ``cf``, ``minilm+cf (cf_weight 0.5)``."""
    meta = embedding_metadata(path)
    name = Path(meta.get("model", "?").rstrip("/")).name
    weight = float(meta.get("cf_weight") or 0)
    return f"{name}+cf (cf_weight {weight:g})" if name != CF_MODEL and weight > 0 else name


def default_output(data_name: str, encoder: EncoderConfig, template: str) -> Path:
    """``checkpoints/<data>/embeddings/<model>-<digest>.safetensors``: one file per setting."""
    short = Path(encoder.model.rstrip("/")).name + ("+cf" if encoder.hybrid else "")
    digest = config_digest({**encoder.settings(), "template": template})
    return Path("checkpoints") / (data_name or "data") / "embeddings" / f"{short}-{digest}.safetensors"


def encode_lock(path: Path) -> AbstractContextManager[None]:
    """The output's lock in the launching process; none in the other ranks of a multi-device
    encode, which Lightning starts from inside the launching process's locked section."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return output_lock(path) if rank == "0" else nullcontext()


def reusable(output: Path, settings: dict[str, str]) -> bool:
    """Whether ``output`` exists and its metadata records every one of ``settings`` (logged either way)."""
    if not output.is_file():
        return False
    if all(embedding_metadata(output).get(k) == v for k, v in settings.items()):
        log.info("embeddings %s exist with the same settings: reused", output)
        return True
    log.warning("embeddings %s exist with other settings: recomputing", output)
    return False


def check_table(table: torch.Tensor, catalog: ItemCatalog) -> None:
    """NaN or zero-norm rows are an error naming the items."""
    bad = torch.isnan(table).any(1) | (table.norm(dim=1) == 0)
    if bad.any():
        items = bad.nonzero().flatten().tolist()
        names = ", ".join(f"{i} ({catalog[i].external_id})" for i in items[:10])
        raise ValueError(f"{len(items)} item embeddings are NaN or zero (item id (external id)): {names}{' ...' if len(items) > 10 else ''}")


__all__ = ["check_table", "default_output", "embedding_label", "embedding_metadata", "encode_lock", "reusable"]
