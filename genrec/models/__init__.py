"""Recommenders: TIGER (T5 over semantic IDs) and their size presets."""

from genrec.models.presets import (
    DEFAULT_VOCAB_SIZE,
    TIGER_PRESETS,
    TigerConfig,
    count_parameters,
    names,
)
from genrec.models.tiger import TigerModule, TigerPrediction

__all__ = ["DEFAULT_VOCAB_SIZE", "TIGER_PRESETS", "TigerConfig", "TigerModule", "TigerPrediction", "count_parameters", "names"]
