"""Recommenders: the contract (:class:`RecommenderModule`), TIGER (T5 over semantic IDs), the LM
recommender (titles), the SASRec baseline, and size presets."""

from genrec.models.base import RecommenderModule, recommender_class
from genrec.models.lm_rec import LMRecModule
from genrec.models.optim import OptimizerConfig
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
    "OptimizerConfig",
    "RecommenderModule",
    "SASRecModule",
    "TigerConfig",
    "TigerModule",
    "count_lm_parameters",
    "count_parameters",
    "lm_names",
    "names",
    "recommender_class",
]
