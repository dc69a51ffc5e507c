"""Tokenize stage: quantizers that turn item embeddings into semantic IDs, and the SID artifact."""

from genrec.quantize.protocol import FitSettings, Tokenizer
from genrec.quantize.residual import QuantizerOutput, ResidualQuantizer
from genrec.quantize.rqkmeans import KMeansResult, RQKMeans, kmeans, kmeans_plusplus, nearest
from genrec.quantize.rqvae import RQVAE_PRESETS, RQVAEConfig, RQVAEModule, RQVAEOutput
from genrec.quantize.semantic_ids import (
    SemanticIDs,
    assign_dedup,
    build_semantic_ids,
    dedup_digits,
    next_item_prefix_match,
    quality_report,
)

__all__ = [
    "RQVAE_PRESETS",
    "FitSettings",
    "KMeansResult",
    "QuantizerOutput",
    "RQKMeans",
    "RQVAEConfig",
    "RQVAEModule",
    "RQVAEOutput",
    "ResidualQuantizer",
    "SemanticIDs",
    "Tokenizer",
    "assign_dedup",
    "build_semantic_ids",
    "dedup_digits",
    "kmeans",
    "kmeans_plusplus",
    "nearest",
    "next_item_prefix_match",
    "quality_report",
]
