"""Recommenders: TIGER (T5 over semantic IDs), the LM recommender (titles), the SASRec baseline, and size presets."""

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
from genrec.models.sasrec import SASRecModule
from genrec.models.tiger import TigerModule

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "LM_PRESETS",
    "TIGER_PRESETS",
    "LMRecConfig",
    "LMRecModule",
    "SASRecModule",
    "TigerConfig",
    "TigerModule",
    "count_lm_parameters",
    "count_parameters",
    "lm_names",
    "names",
]
