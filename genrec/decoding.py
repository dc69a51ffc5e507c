"""Constrained beam search over a prefix trie of item token sequences, batched on the device.

Both recommenders decode an item as a token sequence: TIGER its semantic ID (fixed length, one
code per level), the LM recommender its title tokens (variable length, ending with EOS). Only
real items may come out, so every step masks the continuations that leave the trie.

:class:`~genrec.prefix_trie.PrefixTrie` (:mod:`genrec.prefix_trie`) holds the item token
sequences as tensors.

:func:`constrained_beam_search` keeps ``W`` live beams per batch row, all at the same depth, and a
separate pool of the ``K`` best finished items per row. At step ``t`` each live beam's children are
gathered as a padded ``[B*W, D_t]`` block (``D_t``: the largest out-degree at depth ``t``, known
when the trie is built, so shapes are static and nothing syncs with the host), scored with the
model's log-probs, and split: children that end an item compete for the pool, the others for the
``W`` live beams. Items of different lengths therefore compete by score, and a finished item does
not take a live beam's place.

The model is a callback (see :class:`StepFn`): it receives the tokens just chosen and, for every
new beam, the row of its previous output that the beam extends, so it can reorder its KV cache
or decoder state with ``index_select(0, parents)``.

:func:`pruned_beam_search` is the same search, with the same results, that asks the model only
for the beams that can still matter (see :class:`LiveStepFn`): once ``K`` items are finished in a
row, a live beam scoring at most the ``K``-th can only lose score (log-probs are ``<= 0``), so
neither it nor any descendant can enter the result; such beams are dropped, and so are rows
whose beams are all dropped. Its model sees ``R <= B * W`` rows per step, fewer as the search
goes on, at one host sync per step (the number of rows).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, TypeVar

import torch
from torch import Tensor

from genrec.prefix_trie import PrefixTrie

S = TypeVar("S")


class StepFn(Protocol[S]):
    """The model callback of :func:`constrained_beam_search` and :func:`score_all_items`.

    ``step(tokens, parents, state) -> (log_probs, new_state)``

    * First call: ``tokens is None`` and ``parents is None``. Return the log-probs of the first
      item token, ``[R0, V]``, where ``R0`` is a multiple of the batch size ``B``: either ``B``
      (one row per batch row, so a long prompt is prefilled once; recommended) or ``B * W``
      (rows ``b * W .. b * W + W - 1`` for batch row ``b``, as when the state was built with
      ``repeat_interleave(W, dim=0)``; only the first row of each batch row is read).
    * Every later call: ``tokens`` ``[B * W]`` int64 is the token just chosen for each beam, and
      ``parents`` ``[B * W]`` int64 is, for each beam, the row of the *previous call's* output
      (hence of the state as the previous call left it) that the beam extends. Beam ``w`` of
      batch row ``b`` is row ``b * W + w``, and its parent is always a row of the same batch row.
      The model must first reorder or expand its state, e.g. ``cache.reorder_cache(parents)`` or
      ``h = h.index_select(0, parents)`` (this also expands ``B`` rows to ``B * W`` after the
      first call), then feed ``tokens`` and return the next-token log-probs ``[B * W, V]``.
    * Rows of dead beams (score ``-inf``, when a row has fewer than ``W`` live prefixes) carry an
      arbitrary valid token; their outputs are ignored but must not raise.
    * Log-probs must be normalised (``<= 0``, e.g. ``log_softmax``) when ``early_stop`` is on:
      the search stops once no live beam can beat the ``K``-th finished item, which holds only
      if scores never increase. Any float dtype; scores accumulate in at least float32.
    """

    def __call__(self, tokens: Tensor | None, parents: Tensor | None, state: S) -> tuple[Tensor, S]: ...


class Recommendations(NamedTuple):
    """What a recommender's ``predict_step`` returns (TIGER's and the LM recommender's alike).

    Attributes:
        users: ``[B]`` int64 dense user ids.
        items: ``[B, K]`` int64 recommended item ids, best first, distinct per row (``-1``: none).
        scores: ``[B, K]`` float their sequence log-probs (SID tokens or title tokens).
    """

    users: Tensor
    items: Tensor
    scores: Tensor


class BeamResult(NamedTuple):
    """The best items of each batch row, best first.

    Attributes:
        items: ``[B, K]`` int64 item ids, distinct per row; ``-1`` in slots with no item.
        scores: ``[B, K]`` float, each item's summed token log-probs; ``-inf`` where no item.
    """

    items: Tensor
    scores: Tensor


def _search_sizes(trie: PrefixTrie, batch_size: int, beam_width: int, num_results: int, max_steps: int | None) -> tuple[int, int, int, int]:
    """Checked ``(B, W, K, steps)`` of a beam search: steps is ``trie.max_depth`` capped by ``max_steps``."""
    if batch_size < 1 or beam_width < 1 or num_results < 1:
        raise ValueError("batch_size, beam_width and num_results must be >= 1")
    steps = trie.max_depth if max_steps is None else min(max_steps, trie.max_depth)
    return batch_size, beam_width, num_results, steps

def constrained_beam_search(
    step: StepFn[Any],
    trie: PrefixTrie,
    batch_size: int,
    beam_width: int,
    num_results: int,
    state: Any = None,
    max_steps: int | None = None,
    early_stop: bool = True,
) -> BeamResult:
    """Beam search that can only produce items of ``trie``, for a batch of ``B`` queries at once.

    Step 0 starts every batch row from the root with one live beam. At step ``t`` the children of
    the ``W`` live beams are scored ``beam score + log p(token)``; those that complete an item
    compete (by score) with the finished items found so far for the ``K`` result slots, the
    others for the ``W`` live beams of step ``t + 1``. Every hypothesis is a distinct trie path,
    so an item is produced at most once per row. With ``W`` at least the number of distinct
    prefixes at every depth (e.g. ``W >= trie.num_items``) the result is exact: the ``K`` items of
    highest sequence log-prob (see :func:`score_all_items`).

    Runs on ``trie.device``; the model's log-probs must be there too. The loop has no host sync
    except, with ``early_stop``, one boolean per step.

    Args:
        step: the model callback; its contract is in :class:`StepFn`.
        trie: the items, on the device the model runs on.
        batch_size: ``B``.
        beam_width: ``W`` live beams per row (may exceed the number of items).
        num_results: ``K`` items per row.
        state: the model's initial state, passed to the first ``step`` call.
        max_steps: stop after this many tokens (default ``trie.max_depth``); longer items are
            never produced.
        early_stop: stop once, in every row, ``K`` items are found and no live beam scores above
            the ``K``-th (exact for normalised log-probs; costs one host sync per step).

    Returns:
        :class:`BeamResult` with ``items [B, K]`` and ``scores [B, K]``, best first.
    """
    B, W, K, steps = _search_sizes(trie, batch_size, beam_width, num_results, max_steps)
    device = trie.device
    neg_inf = float("-inf")

    log_probs, state = step(None, None, state)
    rows0 = log_probs.shape[0]
    if rows0 % B:
        raise ValueError(f"the first step returned {rows0} rows, not a multiple of batch_size {B}")
    width = rows0 // B  # live beams per row in the current step (1 or W at step 0)
    score_dtype = torch.promote_types(log_probs.dtype, torch.float32)
    scores = torch.full((B, width), neg_inf, dtype=score_dtype, device=device)
    scores[:, 0] = 0.0
    nodes = torch.zeros(B * width, dtype=torch.int64, device=device)
    pool_scores = torch.full((B, K), neg_inf, dtype=score_dtype, device=device)
    pool_items = torch.full((B, K), -1, dtype=torch.int64, device=device)
    row_base = torch.arange(B, device=device)[:, None]

    for t in range(steps):
        D = trie.degree_by_depth[t]
        tokens, child, valid = trie.children(nodes, D)  # [B*width, D]
        cand = scores.reshape(-1, 1) + log_probs.gather(1, tokens).to(score_dtype)
        cand = cand.masked_fill(~valid, neg_inf)
        is_leaf = trie.leaf_item[child] >= 0
        cand = cand.view(B, width * D)
        is_leaf = is_leaf.view(B, width * D)
        tokens = tokens.view(B, width * D)
        child = child.view(B, width * D)

        # Finished items compete with the pool for the K result slots.
        k_fin = min(K, width * D)
        fin_scores, fin_idx = cand.masked_fill(~is_leaf, neg_inf).topk(k_fin, dim=1)
        fin_items = trie.leaf_item[child.gather(1, fin_idx)]
        fin_items = fin_items.masked_fill(fin_scores == neg_inf, -1)
        pool_scores, pick = torch.cat([pool_scores, fin_scores], 1).topk(K, dim=1)
        pool_items = torch.cat([pool_items, fin_items], 1).gather(1, pick)
        if t + 1 == steps:
            break

        # Unfinished children compete for the W live beams.
        k_live = min(W, width * D)
        live_scores, live_idx = cand.masked_fill(is_leaf, neg_inf).topk(k_live, dim=1)
        parents = row_base * width + live_idx // D  # flat row of the previous step
        next_tokens = tokens.gather(1, live_idx)
        nodes = child.gather(1, live_idx)
        if k_live < W:  # pad with dead beams
            pad = W - k_live
            live_scores = torch.cat([live_scores, live_scores.new_full((B, pad), neg_inf)], 1)
            parents = torch.cat([parents, parents[:, :1].expand(B, pad)], 1)
            next_tokens = torch.cat([next_tokens, next_tokens[:, :1].expand(B, pad)], 1)
            nodes = torch.cat([nodes, nodes[:, :1].expand(B, pad)], 1)
        if early_stop and not bool((live_scores[:, 0] > pool_scores[:, -1]).any()):
            break
        scores, width = live_scores, W
        nodes = nodes.reshape(-1)
        log_probs, state = step(next_tokens.reshape(-1), parents.reshape(-1), state)

    pool_items = pool_items.masked_fill(pool_scores == neg_inf, -1)
    return BeamResult(items=pool_items, scores=pool_scores)


class HeadScores(NamedTuple):
    """Next-token log-probs of ``R`` rows kept as logits and one log-normaliser a row, which a
    :class:`LiveStepFn` may return instead of a dense ``[R, V]`` tensor: ``log_prob[r, v] =
    logits[r, v] - lse[r]``. The search reads only the trie's children of each row
    (:meth:`gather`), so no float32 ``[R, V]`` array is written (on SmolLM2's 49,152-token
    vocabulary, the cast and the log-softmax were 9 % of a decoding step, docs/benchmarks.md).

    Attributes:
        logits: ``[R, V]`` in any float dtype.
        lse: ``[R]``, ``logsumexp`` of each row of ``logits`` computed in float32 (or wider: the
            log-probs come out in this dtype).
    """

    logits: Tensor
    lse: Tensor

    @property
    def shape(self) -> torch.Size:
        """``(R, V)``, as the dense log-probs' shape."""
        return self.logits.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of what :meth:`gather` returns (``lse``'s)."""
        return self.lse.dtype

    def gather(self, dim: int, index: Tensor) -> Tensor:
        """``[R, D]`` log-probs of the tokens ``index [R, D]`` (``dim`` must be 1, as in
        ``Tensor.gather``)."""
        if dim != 1:
            raise ValueError(f"HeadScores.gather reads tokens along dim 1, got {dim}")
        return self.logits.gather(1, index).to(self.lse.dtype) - self.lse[:, None]

    def head(self, rows: int) -> HeadScores:
        """The first ``rows`` rows."""
        return HeadScores(self.logits[:rows], self.lse[:rows])

    def dense(self) -> Tensor:
        """``[R, V]`` log-probs (for tests and callers that need every token)."""
        return self.logits.to(self.lse.dtype) - self.lse[:, None]


class LiveBeams(NamedTuple):
    """The beams one step of :func:`pruned_beam_search` asks the model to extend.

    Attributes:
        tokens: ``[R]`` int64, the token just chosen for each beam.
        rows: ``[R]`` int64, each beam's slot ``b * width + w`` (ascending): batch row
            ``rows // width``, slot ``w = rows % width``. A slot holds one beam per step;
            slots missing from ``rows`` hold none (dropped or dead).
        parents: ``[R]`` int64, for each beam the row of the *previous call's output* that it
            extends (at the first step after the prefill: the batch row).
        parent_slots: ``[R]`` int64, the slot ``w'`` of that parent within its batch row (0 at
            the first step).
        active: ``[A]`` int64, the batch rows that have beams, ascending: the model may drop
            the state of every other batch row, which never comes back.
        width: ``W``, slots per batch row.
    """

    tokens: Tensor
    rows: Tensor
    parents: Tensor
    parent_slots: Tensor
    active: Tensor
    width: int


class LiveStepFn(Protocol[S]):
    """The model callback of :func:`pruned_beam_search`.

    ``step(beams, state) -> (log_probs, new_state)``

    * First call: ``beams is None``. Return the log-probs of the first item token, ``[B, V]``,
      one row per batch row (here and at every later call a tensor or a :class:`HeadScores`).
    * Every later call: ``beams`` (:class:`LiveBeams`) lists the ``R`` beams to extend. Reorder
      or expand the state by ``beams.parents`` (rows of the previous output), feed
      ``beams.tokens`` and return the next-token log-probs ``[R, V]``, row ``i`` for beam ``i``.
    * Log-probs must be normalised (``<= 0``): beams are dropped once they cannot beat the
      ``K``-th finished item of their row.
    """

    def __call__(self, beams: LiveBeams | None, state: S) -> tuple[Tensor, S]: ...


class FinishFn(Protocol[S]):
    """The optional second model callback of :func:`pruned_beam_search`: score forced suffixes.

    ``finish(beams, chains, state) -> (log_probs, new_state)``

    * ``beams`` (:class:`LiveBeams`): beams of the step about to be fed, every one of them in a
      batch row whose live beams are all *forced* (one item below their trie node,
      :attr:`~genrec.prefix_trie.PrefixTrie.forced_row`). ``parents`` / ``parent_slots`` are as
      for ``step``; these beams never reach ``step``, and their rows leave the search.
    * ``chains``: ``[n, L]`` int64, the tokens each beam's item has after ``beams.tokens``,
      padded with ``-1``.
    * Return ``[n, L]`` float32 log-probs: ``[i, j]`` that of ``chains[i, j]`` after the beam's
      history, ``beams.tokens[i]`` and ``chains[i, :j]`` (what ``step`` would have returned at
      each of the next steps), any value at padding.
    """

    def __call__(self, beams: LiveBeams, chains: Tensor, state: S) -> tuple[Tensor, S]: ...


def pruned_beam_search(
    step: LiveStepFn[Any],
    trie: PrefixTrie,
    batch_size: int,
    beam_width: int,
    num_results: int,
    state: Any = None,
    max_steps: int | None = None,
    finish: FinishFn[Any] | None = None,
) -> BeamResult:
    """:func:`constrained_beam_search` (with ``early_stop``) that runs the model on the beams
    that can still enter the result only (module docstring). Same items and scores.

    At step ``t`` the candidates of the live beams are laid out per batch row exactly as
    :func:`constrained_beam_search` lays them out (``W`` slots x ``D_t`` children), finished
    ones go to the pool of the ``K`` best and unfinished ones compete for the ``W`` slots; then
    every new beam scoring at most the pool's ``K``-th (which is ``-inf`` until ``K`` items are
    found) is dropped. A dropped beam and its descendants score no higher, so they could
    never have entered the pool; the beams kept are those of the full search above that
    score. The search ends when no beam is left, or after ``max_steps`` tokens.

    With ``finish``, a batch row whose live beams are all forced (each has one item below it)
    leaves the search at once: from there on each of its beams has one child per step, so no
    beam competes for a slot and each simply ends its item (or is pruned, which only saves
    work). ``finish`` scores the rest of every such beam's item in one call; the scores are
    summed in step order (the same float additions as step by step) and the items enter the
    pool. Same items and scores as without it, up to the model's own rounding of the two ways
    of computing the suffix's log-probs.

    Args:
        step: the model callback; its contract is in :class:`LiveStepFn`.
        trie: the items, on the device the model runs on.
        batch_size: ``B``.
        beam_width: ``W`` beam slots per row.
        num_results: ``K`` items per row.
        state: the model's initial state, passed to the first ``step`` call.
        max_steps: stop after this many tokens (default ``trie.max_depth``).
        finish: the forced-suffix callback (:class:`FinishFn`); ``None``: every token is a step.

    Returns:
        :class:`BeamResult` with ``items [B, K]`` and ``scores [B, K]``, best first.
    """
    B, W, K, steps = _search_sizes(trie, batch_size, beam_width, num_results, max_steps)
    forced_row = trie.forced_row if finish is not None else None
    device = trie.device
    neg_inf = float("-inf")

    log_probs, state = step(None, state)
    if log_probs.shape[0] != B:
        raise ValueError(f"the first step returned {log_probs.shape[0]} rows, not batch_size {B}")
    score_dtype = torch.promote_types(log_probs.dtype, torch.float32)
    width = 1  # slots per row of the current step: the root alone at step 0
    rows = torch.arange(B, device=device)  # [R] slots of the live beams, b * width + w
    scores = torch.zeros(B, dtype=score_dtype, device=device)  # [R]
    nodes = torch.zeros(B, dtype=torch.int64, device=device)  # [R]
    pool_scores = torch.full((B, K), neg_inf, dtype=score_dtype, device=device)
    pool_items = torch.full((B, K), -1, dtype=torch.int64, device=device)
    row_base = torch.arange(B, device=device)[:, None]

    for t in range(steps):
        D = trie.degree_by_depth[t]
        tokens, child, valid = trie.children(nodes, D)  # [R, D]
        cand = (scores[:, None] + log_probs.gather(1, tokens).to(score_dtype)).masked_fill(~valid, neg_inf)
        # Scattered into the [B, width * D] layout of the full search; slots without a beam: -inf.
        cand = cand.new_full((B * width, D), neg_inf).index_copy_(0, rows, cand).view(B, width * D)
        child = child.new_zeros(B * width, D).index_copy_(0, rows, child).view(B, width * D)
        tokens = tokens.new_zeros(B * width, D).index_copy_(0, rows, tokens).view(B, width * D)
        is_leaf = trie.leaf_item[child] >= 0

        k_fin = min(K, width * D)
        fin_scores, fin_idx = cand.masked_fill(~is_leaf, neg_inf).topk(k_fin, dim=1)
        fin_items = trie.leaf_item[child.gather(1, fin_idx)].masked_fill(fin_scores == neg_inf, -1)
        pool_scores, pick = torch.cat([pool_scores, fin_scores], 1).topk(K, dim=1)
        pool_items = torch.cat([pool_items, fin_items], 1).gather(1, pick)
        if t + 1 == steps:
            break

        k_live = min(W, width * D)
        live_scores, live_idx = cand.masked_fill(is_leaf, neg_inf).topk(k_live, dim=1)  # [B, k_live]
        keep = live_scores > pool_scores[:, -1:]  # finite, and above the K-th finished item
        kept = keep.flatten().nonzero().squeeze(1)  # the one host sync of a step
        if kept.numel() == 0:
            break
        parent_flat = (row_base * width + live_idx // D).flatten()[kept]  # slot of the parent, previous layout
        index_of_slot = torch.full((B * width,), -1, dtype=torch.int64, device=device)
        index_of_slot[rows] = torch.arange(rows.numel(), device=device)
        beams = LiveBeams(
            tokens=tokens.gather(1, live_idx).flatten()[kept],
            rows=kept // k_live * W + kept % k_live,
            parents=index_of_slot[parent_flat],
            parent_slots=parent_flat % width,
            active=keep.any(1).nonzero().squeeze(1),
            width=W,
        )
        nodes = child.gather(1, live_idx).flatten()[kept]
        scores = live_scores.flatten()[kept]
        if finish is not None:
            beams, nodes, scores, pool_scores, pool_items, state = _finish_forced(
                finish, trie, forced_row, beams, nodes, scores, pool_scores, pool_items, state, B, K, steps)
            if beams.rows.numel() == 0:
                break
        rows, width = beams.rows, W
        log_probs, state = step(beams, state)

    pool_items = pool_items.masked_fill(pool_scores == neg_inf, -1)
    return BeamResult(items=pool_items, scores=pool_scores)


def _select(beams: LiveBeams, index: Tensor) -> LiveBeams:
    """The beams at ``index`` (``[n]``, ascending), their ``active`` rows recomputed."""
    rows = beams.rows[index]
    return LiveBeams(tokens=beams.tokens[index], rows=rows, parents=beams.parents[index], parent_slots=beams.parent_slots[index],
                     active=torch.unique_consecutive(rows // beams.width), width=beams.width)


def _finish_forced(finish: FinishFn[Any], trie: PrefixTrie, forced_row: Tensor, beams: LiveBeams, nodes: Tensor, scores: Tensor,
                   pool_scores: Tensor, pool_items: Tensor, state: Any, B: int, K: int, steps: int
                   ) -> tuple[LiveBeams, Tensor, Tensor, Tensor, Tensor, Any]:
    """One step of :func:`pruned_beam_search` with ``finish``: the beams of rows whose live beams
    are all forced are scored to the end of their items by ``finish`` and go to the pool; the
    others are returned (with their ``nodes`` and ``scores``) for ``step``. One host sync."""
    W = beams.width
    row = beams.rows // W
    forced = forced_row[nodes]  # [R] the item row below each beam, -1 where several items are
    open_rows = torch.zeros(B, dtype=torch.bool, device=row.device)
    open_rows[row[forced < 0]] = True
    done = ~open_rows[row]
    index = done.nonzero().squeeze(1)
    if index.numel() == 0:
        return beams, nodes, scores, pool_scores, pool_items, state
    item_row = forced[index]
    depth = trie.depth[nodes[index]]
    left = trie.item_lengths[item_row] - depth  # [n] tokens after the beam's own, >= 1
    L = int(left.max())
    j = torch.arange(L, device=row.device)
    chains = trie.item_tokens[item_row[:, None], (depth[:, None] + j).clamp(max=trie.max_depth - 1)].masked_fill(j >= left[:, None], -1)
    log_probs, state = finish(_select(beams, index), chains, state)
    final = scores[index]
    for k in range(L):  # step order: the additions of the step-by-step search
        final = torch.where(k < left, final + log_probs[:, k].to(final.dtype), final)
    final = final.masked_fill(depth + left > steps, float("-inf"))  # items longer than max_steps never end
    slots = beams.rows[index]
    fin_scores = pool_scores.new_full((B * W,), float("-inf")).index_copy_(0, slots, final).view(B, W)
    fin_items = pool_items.new_full((B * W,), -1).index_copy_(0, slots, trie.items[item_row]).view(B, W)
    pool_scores, pick = torch.cat([pool_scores, fin_scores], 1).topk(K, dim=1)
    pool_items = torch.cat([pool_items, fin_items], 1).gather(1, pick)
    rest = (~done).nonzero().squeeze(1)
    return _select(beams, rest), nodes[rest], scores[rest], pool_scores, pool_items, state


def score_all_items(step: StepFn[Any], trie: PrefixTrie, batch_size: int, state: Any = None) -> Tensor:
    """Every item's sequence log-prob under the model, by teacher forcing (the exact reference).

    Runs ``B * N`` rows through ``step`` (same contract as beam search: after the first call,
    row ``b * N + j`` scores item ``trie.items[j]`` for batch row ``b``), so it is for tests and
    small catalogues.

    Returns:
        ``[B, N]`` float, column ``j`` the summed token log-probs of ``trie.items[j]``.
    """
    B, N = batch_size, trie.num_items
    device = trie.device
    seqs, lengths = trie.item_tokens, trie.item_lengths  # [N, L], [N]
    log_probs, state = step(None, None, state)
    per_row = log_probs.shape[0] // B
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    first = log_probs.view(B, per_row, -1)[:, 0].to(dtype)  # [B, V]
    total = first.gather(1, seqs[:, 0].expand(B, N)).clone()
    parents = (torch.arange(B, device=device) * per_row).repeat_interleave(N)
    for t in range(1, trie.max_depth):
        prev_tokens = seqs[:, t - 1].clamp(min=0).repeat(B)
        log_probs, state = step(prev_tokens, parents, state)
        parents = torch.arange(B * N, device=device)
        lp = log_probs.to(dtype).gather(1, seqs[:, t].clamp(min=0).repeat(B)[:, None]).view(B, N)
        total += lp.masked_fill(~(lengths > t).expand(B, N), 0.0)
    return total
