"""Data layer: catalogue, sequences and split, format readers, the shared DataModules."""

from genrec.data.catalog import DEFAULT_TEMPLATE, Item, ItemCatalog
from genrec.data.datamodule import (
    PAD_ITEM,
    ItemEmbeddingDataModule,
    PrefixDataset,
    SeqBatch,
    SequenceDataModule,
)
from genrec.data.sequences import DataStats, SequenceData, build_sequences
from genrec.data.synthetic import SyntheticSource

__all__ = [
    "DEFAULT_TEMPLATE",
    "PAD_ITEM",
    "DataStats",
    "Item",
    "ItemCatalog",
    "ItemEmbeddingDataModule",
    "PrefixDataset",
    "SeqBatch",
    "SequenceData",
    "SequenceDataModule",
    "SyntheticSource",
    "build_sequences",
]
