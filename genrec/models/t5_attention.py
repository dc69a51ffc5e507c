"""T5 attention for beam search: the beams of a user share its encoder keys.

During TIGER's beam search the cross-attention cache stays at one row per user: the ``W`` beams
of a user attend to the same encoder keys, so the attention function (:func:`beam_attention`,
registered with ``transformers`` under ``genrec_sdpa`` / ``genrec_eager``) folds the beams into
the query length instead of copying the encoder keys ``W`` times (20x less memory at 20 beams,
and one ``[W, S]`` attention per user instead of ``W`` one-row ones).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor


def _fold_beams(inner: Callable[..., tuple[Tensor, Any]]) -> Callable[..., tuple[Tensor, Any]]:
    """Wrap a ``transformers`` attention function so that ``R = G * W`` one-token queries can
    attend to ``G`` rows of keys (beam ``w`` of group ``g`` is query row ``g * W + w``)."""

    def attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any):
        rows, groups = query.shape[0], key.shape[0]
        if rows == groups:
            return inner(module, query, key, value, attention_mask, **kwargs)
        _, heads, length, dim = query.shape
        if length != 1 or rows % groups:
            raise ValueError(f"cannot fold {rows} query rows of length {length} onto {groups} key rows")
        beams = rows // groups
        folded = query.view(groups, beams, heads, dim).transpose(1, 2)  # [G, h, W, d]: beams as query positions
        out, _ = inner(module, folded, key, value, attention_mask, **kwargs)  # [G, W, h, d]
        return out.reshape(rows, 1, heads, dim), None

    return attention


def beam_attention(name: str) -> str:
    """Register (once) and return the ``transformers`` attention implementation ``genrec_<name>``:
    ``name`` (``sdpa`` or ``eager``) with beams folded as in :func:`_fold_beams`. Same results as
    ``name`` whenever queries and keys have the same batch size."""
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        eager_mask,
        sdpa_mask,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
    from transformers.models.t5 import modeling_t5

    inner = {"sdpa": lambda: ALL_ATTENTION_FUNCTIONS["sdpa"], "eager": lambda: modeling_t5.eager_attention_forward}
    if name not in inner:
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {name!r}")
    key = f"genrec_{name}"
    if key not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(key, _fold_beams(inner[name]()))
        AttentionMaskInterface.register(key, sdpa_mask if name == "sdpa" else eager_mask)
    return key


@cache
def _cache_argument_of(forward: Callable[..., Any]) -> str:
    names = inspect.signature(forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword of the KV cache in ``model.forward``: ``cache`` in the transformers versions
    that deprecate ``past_key_values`` (a FutureWarning per call), ``past_key_values`` before."""
    return _cache_argument_of(type(model).forward)


__all__ = ["beam_attention", "cache_argument"]
