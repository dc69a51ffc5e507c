"""The LM recommender's prompt pieces: a batch of token ids (:class:`LMInputs`), and the
unique title tokens of a catalogue (layout in :mod:`genrec.models.lm_rec`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from genrec.data.catalog import ItemCatalog

log = logging.getLogger(__name__)

ROLE_PAD, ROLE_PROMPT, ROLE_TARGET = 0, 1, 2


class LMInputs(NamedTuple):
    """A left-padded batch of prompts (and targets) as token ids.

    Attributes:
        input_ids: ``[B, S]`` int64, pad token id in padding.
        attention_mask: ``[B, S]`` int64, 1 at real tokens.
        position_ids: ``[B, S]`` int64, ``0 ..`` over the real tokens of each row.
        labels: ``[B, S]`` int64, the target tokens, ``-100`` elsewhere (all ``-100`` without targets).
        items: ``[B, S]`` int64, the history item a token's line belongs to, ``-1`` elsewhere.
        target_width: the longest target in the batch (the last ``target_width`` columns hold
            every target token); 0 without targets.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    labels: Tensor
    items: Tensor
    target_width: int


def padded(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Lists of token ids -> ``[N, T]`` padded table and ``[N]`` lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    table = torch.full((len(seqs), max(int(lengths.max()), 1) if seqs else 1), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        table[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return table, lengths


def title_token_ids(catalog: ItemCatalog, encode: Callable[[list[str]], Any], limit: int) -> tuple[list[list[int]], dict[str, int]]:
    """Each item's title tokens (``tok(" " + title)``, cut to ``limit`` tokens, without EOS),
    unique: empty titles become ``"item <external id>"``, repeated ones get
    ``" (item <external id>)"``.

    Args:
        encode: the tokenizer without special tokens (texts -> ``.input_ids``).

    Returns:
        the token ids per item, and the counts of ``empty``, ``duplicate`` and ``truncated`` titles.
    """
    catalog.require_text("{title}", "the LM recommender (it reads item titles)")
    ext = catalog.external_ids
    titles = [t.strip() for t in catalog.titles]
    empty = [i for i, t in enumerate(titles) if not t]
    for i in empty:
        titles[i] = f"item {ext[i]}"
    ids = encode([" " + t for t in titles]).input_ids
    truncated = sum(len(s) > limit for s in ids)
    ids = [s[:limit] for s in ids]
    seen: set[tuple[int, ...]] = set()
    duplicates = [i for i, s in enumerate(ids) if tuple(s) in seen or seen.add(tuple(s))]
    if duplicates:
        tags = encode([f" (item {ext[i]})" for i in duplicates]).input_ids
        for i, tag in zip(duplicates, tags, strict=True):
            ids[i] = ids[i] + tag
    if len({tuple(s) for s in ids}) != len(ids):
        raise ValueError("titles are still not unique after appending external ids (an external id inside a title?)")
    fixes = {"empty": len(empty), "duplicate": len(duplicates), "truncated": truncated}
    if empty or duplicates:
        log.warning(
            "%d empty and %d repeated titles (of %d) disambiguated with their external ids", len(empty), len(duplicates), len(ids)
        )
    return ids, fixes


__all__ = ["ROLE_PAD", "ROLE_PROMPT", "ROLE_TARGET", "LMInputs", "padded", "title_token_ids"]


def detail_token_ids(catalog: ItemCatalog, encode: Callable[[list[str]], Any], template: str, max_tokens: int) -> list[list[int]]:
    """Every item's history-line details (``template`` rendered over its fields, see
    :func:`genrec.data.catalog.render`) as at most ``max_tokens`` token ids; ``[]`` for every item
    when ``template`` is empty, and for an item whose fields render empty.

    Raises:
        ValueError: the template names a field the catalogue does not have (one line).
        NoItemTextError: no item has text in the fields it names.
    """
    if not template:
        return [[] for _ in range(len(catalog))]
    try:
        texts = catalog.texts(template)
    except KeyError as error:
        raise ValueError(f"prompt.item_details: {error.args[0]}") from None
    if not any(texts):
        catalog.require_text(template, "prompt.item_details")  # raises: no item has these fields
    ids = encode(texts).input_ids
    return [list(t[:max_tokens]) for t in ids]
