"""The text encoder kind: item text -> one embedding per item with an HF model (a
sentence-transformers model, a plain encoder such as BERT or T5's encoder, or a decoder LLM such
as the SmolLM2 GGUF: :mod:`genrec.encode.gguf`).

Items are rendered through the catalogue's template, sorted by length (longest first, so a
batch pads little and an out-of-memory error shows at once), and encoded by Lightning
``predict``, which shards them over devices and applies ``precision`` (``bf16-mixed`` on a GPU).
Finished batches are flushed to ``<output>.parts/`` every ``chunk_size`` items, so a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from genrec.artifacts import atomic_path
from genrec.data.catalog import DEFAULT_TEMPLATE, ItemCatalog
from genrec.encode.config import EncoderConfig
from genrec.encode.files import check_table, default_output, reusable
from genrec.encode.gguf import is_decoder_only, resolve_model
from genrec.errors import Interrupted, at_least
from genrec.progress import progress_callbacks

log = logging.getLogger("genrec.encode")

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
        self.is_decoder = is_decoder_only(hf_config)
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
    """Flushes finished embeddings to ``parts/chunk-<rank>-<n>.safetensors`` every ``chunk_size``
    rows, and stops the run after flushing when the process got SIGTERM (Lightning's handler
    notes the signal, but its predict loop never acts on it: a ``timeout`` did not stop an
    encode), with :class:`~genrec.errors.Interrupted` saying how many items are kept."""

    def __init__(self, parts: Path, chunk_size: int, done: int = 0, total: int = 0) -> None:
        super().__init__(write_interval="batch")
        self.parts, self.chunk_size = parts, chunk_size
        self.done, self.total = done, total  # items encoded before this run, items in the catalogue
        self.ids: list[torch.Tensor] = []
        self.rows: list[torch.Tensor] = []
        self.count = 0
        self.flushed = 0  # items this run wrote

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:  # noqa: ANN001
        self.ids.append(prediction["ids"].cpu())
        self.rows.append(prediction["embeddings"].cpu())
        if sum(len(i) for i in self.ids) >= self.chunk_size:
            self.flush(trainer.global_rank)
        if getattr(trainer, "received_sigterm", False):
            self.flush(trainer.global_rank)
            kept = self.done + self.flushed if trainer.world_size == 1 else f"{self.done} + this process's {self.flushed}"
            raise Interrupted(f"encode: stopped by SIGTERM; {kept} of {self.total} items are encoded in {self.parts}: "
                              "the same command resumes from there")

    def on_predict_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        if not self.ids:
            return
        path = self.parts / f"chunk-{rank}-{self.count:05d}.safetensors"
        while path.exists():  # a resumed run: the chunks of the earlier ones stay (they once were overwritten)
            self.count += 1
            path = self.parts / f"chunk-{rank}-{self.count:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"ids": torch.cat(self.ids), "embeddings": torch.cat(self.rows)}, str(tmp))
        self.count += 1
        self.flushed += sum(len(i) for i in self.ids)
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
    if reusable(output, settings):
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
            callbacks=[_ChunkWriter(parts, chunk_size, done=done_ids.numel(), total=len(catalog)), *progress_callbacks()],
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


def _merge(output: Path, parts: Path, catalog: ItemCatalog, settings: dict[str, str], seconds: float, encoded: int, dtype: str) -> None:
    """Gather the flushed chunks into the final file (atomically), check it, drop the chunks."""
    ids, rows = _load_parts(parts)
    table = torch.full((len(catalog), rows.shape[1]), float("nan"))
    table[ids] = rows
    check_table(table, catalog)
    metadata = {**settings, "dim": str(table.shape[1]), "encode_seconds": f"{seconds:.2f}", "items_encoded": str(encoded)}
    with atomic_path(output) as tmp:
        save_file({"embeddings": table.to(getattr(torch, dtype)).contiguous()}, str(tmp), metadata=metadata)
    shutil.rmtree(parts)
    log.info("wrote %s: %d x %d in %.1fs", output, table.shape[0], table.shape[1], seconds)


__all__ = ["EncoderModule", "TextEncoder", "encode_catalog"]
