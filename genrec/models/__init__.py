"""Recommenders: TIGER (T5 over semantic IDs), the LM recommender (titles), and their size presets."""

from genrec.models.lm_rec import LMRecModule
from genrec.models.presets import (
    DEFAULT_VOCAB_SIZE,
    LM_PRESETS,
    TIGER_PRESETS,
    LMRecConfig,
    TigerConfig,
    count_lm_parameters,
    count_parameters,
    lm_names,
    names,
)
from genrec.models.tiger import TigerModule

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "LM_PRESETS",
    "TIGER_PRESETS",
    "LMRecConfig",
    "LMRecModule",
    "TigerConfig",
    "TigerModule",
    "count_lm_parameters",
    "count_parameters",
    "lm_names",
    "names",
]
