"""The prefix trie of item token sequences that constrained decoding walks (:mod:`genrec.decoding`).

:class:`PrefixTrie` stores the trie as tensors in CSR form. Node 0 is the root; the children of
node ``n`` are the edges ``child_ptr[n] : child_ptr[n + 1]``, sorted by token, with their tokens in
``child_token`` and their nodes in ``child_node``; ``leaf_item[n]`` is the item id a node ends
(``-1`` for inner nodes). Memory is ``O(nodes)``, independent of the vocabulary, so a 50k-token
vocabulary with 250k title nodes costs a few MB, where a dense node x vocab table would not fit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class PrefixTrie:
    """A prefix trie of item token sequences, as CSR tensors (see the module docstring).

    Build it with :meth:`from_sequences`. Nodes are numbered in depth-first pre-order (root 0);
    every non-root node is the target of exactly one edge.

    Attributes:
        child_ptr: ``[num_nodes + 1]`` int64, edges of node ``n`` are ``child_ptr[n]:child_ptr[n+1]``.
        child_token: ``[E]`` int64, the token of each edge, ascending within a node's slice.
        child_node: ``[E]`` int64, the node each edge leads to.
        edge_key: ``[E]`` int64, ``parent * vocab_size + token`` per edge, globally ascending
            (what :meth:`advance` searches).
        leaf_item: ``[num_nodes]`` int64, the item id a node completes, ``-1`` for inner nodes.
        depth: ``[num_nodes]`` int64, tokens from the root.
        items: ``[N]`` int64, item ids in the order the sequences were given.
        item_tokens: ``[N, max_depth]`` int64, each item's tokens, padded with ``-1``.
        item_lengths: ``[N]`` int64, each item's number of tokens.
        vocab_size: tokens are ``0 .. vocab_size - 1``.
        max_depth: the longest sequence.
        degree_by_depth: ``max_depth`` host ints, the largest out-degree among nodes at depth
            ``t``; the width of the child block beam search gathers at step ``t``.
    """

    child_ptr: Tensor
    child_token: Tensor
    child_node: Tensor
    edge_key: Tensor
    leaf_item: Tensor
    depth: Tensor
    items: Tensor
    item_tokens: Tensor
    item_lengths: Tensor
    vocab_size: int
    max_depth: int
    degree_by_depth: tuple[int, ...]

    @classmethod
    def from_sequences(
        cls,
        seqs: Sequence[Sequence[int]] | Tensor | np.ndarray,
        item_ids: Sequence[int] | Tensor | None = None,
        vocab_size: int | None = None,
    ) -> PrefixTrie:
        """Build the trie from one token sequence per item.

        Args:
            seqs: ``N`` non-empty sequences of token ids (lists, tuples, or an ``[N, L]`` tensor /
                array for fixed length). Lengths may differ, but no sequence may be a proper prefix
                of another: end variable-length sequences with an end token (EOS).
            item_ids: ``N`` item ids, one per sequence (default ``0 .. N-1``), returned by search.
            vocab_size: size of the model's vocabulary (default: largest token + 1); the width of
                :meth:`next_mask`.

        Raises:
            ValueError: no sequences, an empty sequence, a negative or out-of-vocabulary token, two
                items with the same sequence, or one item's sequence a proper prefix of another's.
        """
        if isinstance(seqs, (Tensor, np.ndarray)):
            seqs = seqs.tolist()
        tuples = [tuple(int(t) for t in s) for s in seqs]
        n = len(tuples)
        if n == 0:
            raise ValueError("PrefixTrie needs at least one sequence")
        ids = list(range(n)) if item_ids is None else [int(i) for i in (item_ids.tolist() if isinstance(item_ids, Tensor) else item_ids)]
        if len(ids) != n:
            raise ValueError(f"{len(ids)} item ids for {n} sequences")
        if len(set(ids)) != n:
            raise ValueError("item ids must be distinct")
        if min(ids) < 0:
            raise ValueError("item ids must be >= 0 (-1 marks an empty result slot)")
        for i, s in enumerate(tuples):
            if not s:
                raise ValueError(f"item {ids[i]} has an empty token sequence")
            if min(s) < 0:
                raise ValueError(f"item {ids[i]} has a negative token: {s}")
        max_token = max(max(s) for s in tuples)
        vocab = max_token + 1 if vocab_size is None else int(vocab_size)
        if max_token >= vocab:
            raise ValueError(f"token {max_token} outside the vocabulary of size {vocab}")

        # Lexicographic order: shared prefixes are adjacent, a prefix precedes its extensions, and
        # pre-order node creation lists every node's children in ascending token order.
        order = sorted(range(n), key=tuples.__getitem__)
        parent = [-1]
        token = [-1]
        depth = [0]
        leaf = [-1]
        path = [0]  # node ids along the previous sequence, path[d] at depth d
        prev: tuple[int, ...] = ()
        prev_item = -1
        for i in order:
            s = tuples[i]
            lcp = 0
            for a, b in zip(prev, s, strict=False):
                if a != b:
                    break
                lcp += 1
            if prev and lcp == len(prev):
                what = "the same token sequence as" if len(s) == len(prev) else "a proper prefix:"
                raise ValueError(
                    f"item {ids[prev_item]} has {what} item {ids[i]} ({list(prev)} vs {list(s)}); "
                    "disambiguate identical sequences and end variable-length ones with EOS"
                )
            del path[lcp + 1 :]
            for d in range(lcp, len(s)):
                parent.append(path[d])
                token.append(s[d])
                depth.append(d + 1)
                leaf.append(-1)
                path.append(len(parent) - 1)
            leaf[path[-1]] = ids[i]
            prev, prev_item = s, i

        parent_np = np.asarray(parent, dtype=np.int64)
        token_np = np.asarray(token, dtype=np.int64)
        depth_np = np.asarray(depth, dtype=np.int64)
        num_nodes = len(parent)
        # Edges grouped by parent (stable, so tokens stay ascending within each parent).
        edge_nodes = 1 + np.argsort(parent_np[1:], kind="stable")
        edge_parent = parent_np[edge_nodes]
        counts = np.bincount(edge_parent, minlength=num_nodes)
        child_ptr = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(counts, out=child_ptr[1:])
        max_depth = int(depth_np.max())
        degree = np.zeros(max_depth, dtype=np.int64)
        inner = depth_np < max_depth
        np.maximum.at(degree, depth_np[inner], counts[inner])

        lengths = np.asarray([len(s) for s in tuples], dtype=np.int64)
        padded = np.full((n, max_depth), -1, dtype=np.int64)
        for i, s in enumerate(tuples):
            padded[i, : len(s)] = s
        return cls(
            child_ptr=torch.from_numpy(child_ptr),
            child_token=torch.from_numpy(token_np[edge_nodes]),
            child_node=torch.from_numpy(edge_nodes),
            edge_key=torch.from_numpy(edge_parent * vocab + token_np[edge_nodes]),
            leaf_item=torch.tensor(leaf, dtype=torch.int64),
            depth=torch.from_numpy(depth_np),
            items=torch.tensor(ids, dtype=torch.int64),
            item_tokens=torch.from_numpy(padded),
            item_lengths=torch.from_numpy(lengths),
            vocab_size=vocab,
            max_depth=max_depth,
            degree_by_depth=tuple(int(d) for d in degree),
        )

    @property
    def num_nodes(self) -> int:
        return self.leaf_item.numel()

    @property
    def num_items(self) -> int:
        return self.items.numel()

    @property
    def device(self) -> torch.device:
        return self.child_ptr.device

    def to(self, device: torch.device | str) -> PrefixTrie:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)

    def num_children(self, nodes: Tensor) -> Tensor:
        """Out-degree of ``nodes`` ``[M]`` -> ``[M]`` int64 (0 for leaves)."""
        return self.child_ptr[nodes + 1] - self.child_ptr[nodes]

    def children(self, nodes: Tensor, width: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The first ``width`` children of each node, padded; no host sync.

        Args:
            nodes: ``[M]`` int64 node ids.
            width: ``D``, the block width (default: the largest out-degree of the trie). Children
                beyond ``width`` are left out.

        Returns:
            ``tokens [M, D]`` int64, ``child_nodes [M, D]`` int64 and ``valid [M, D]`` bool;
            ``tokens`` and ``child_nodes`` hold in-range placeholders where ``valid`` is False.
        """
        width = max(self.degree_by_depth, default=0) if width is None else width
        start = self.child_ptr[nodes]
        count = self.child_ptr[nodes + 1] - start
        offsets = torch.arange(width, device=nodes.device)
        valid = offsets < count[:, None]
        edge = (start[:, None] + offsets).clamp_(max=max(self.child_token.numel() - 1, 0))
        return self.child_token[edge], self.child_node[edge], valid

    def valid_tokens(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """All allowed next tokens of ``nodes`` ``[M]``, flat (one host sync for the total).

        Returns:
            ``rows [E']`` int64 (index into ``nodes``) and ``tokens [E']`` int64, where ``E'`` is
            the total out-degree of ``nodes``.
        """
        start = self.child_ptr[nodes]
        count = self.child_ptr[nodes + 1] - start
        rows = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), count)
        first = torch.cumsum(count, 0) - count
        edge = start[rows] + torch.arange(rows.numel(), device=nodes.device) - first[rows]
        return rows, self.child_token[edge]

    def next_mask(self, nodes: Tensor, vocab_size: int | None = None) -> Tensor:
        """Allowed next tokens as a dense mask: ``nodes [M]`` -> ``[M, vocab_size]`` bool.

        Add ``torch.where(mask, 0, -inf)`` to logits to constrain them. Memory ``M x V``; beam
        search itself never builds it.
        """
        vocab = self.vocab_size if vocab_size is None else vocab_size
        rows, tokens = self.valid_tokens(nodes)
        mask = torch.zeros(nodes.numel(), vocab, dtype=torch.bool, device=nodes.device)
        mask[rows, tokens] = True
        return mask

    def items_below(self) -> Tensor:
        """``[num_nodes]`` int64: how many items end in each node's subtree (the node included).

        A node with one item below it is *forced*: every path from it spells the rest of that one
        item's sequence, so beam search has a single choice per step until the item ends. Nodes
        are summed into their parents one depth at a time, deepest first."""
        all_nodes = torch.arange(self.num_nodes, device=self.device)
        parent = torch.zeros_like(all_nodes)
        parent[self.child_node] = torch.repeat_interleave(all_nodes, self.num_children(all_nodes))
        counts = (self.leaf_item >= 0).long()
        for d in range(self.max_depth, 0, -1):
            at = (self.depth == d).nonzero().squeeze(1)
            counts.index_add_(0, parent[at], counts[at])
        return counts

    @functools.cached_property
    def forced_row(self) -> Tensor:
        """``[num_nodes]`` int64: for a forced node (one item below it, :meth:`items_below`), the
        row of that item in :attr:`item_tokens` (its id is ``items[row]``); ``-1`` elsewhere.
        Computed once per trie (a copy made by :meth:`to` computes its own)."""
        below = self.items_below()
        out = torch.full((self.num_nodes,), -1, dtype=torch.int64, device=self.device)
        nodes = torch.zeros(self.num_items, dtype=torch.int64, device=self.device)
        rows = torch.arange(self.num_items, device=self.device)
        for t in range(self.max_depth):
            live = t < self.item_lengths
            nodes = torch.where(live, self.advance(nodes, self.item_tokens[:, t].clamp(min=0)), nodes)
            mark = live & (below[nodes] == 1)
            out[nodes[mark]] = rows[mark]
        return out

    def unique_depth(self) -> Tensor:
        """``[N]`` int64 (in the order of :attr:`items`): the length of each item's shortest
        prefix that no other item shares (its first forced node, :meth:`items_below`); the item's
        remaining ``item_lengths - unique_depth`` tokens have no alternative in the trie."""
        below = self.items_below()
        nodes = torch.zeros(self.num_items, dtype=torch.int64, device=self.device)
        depth = torch.full((self.num_items,), -1, dtype=torch.int64, device=self.device)
        for t in range(self.max_depth):
            live = t < self.item_lengths
            nodes = torch.where(live, self.advance(nodes, self.item_tokens[:, t].clamp(min=0)), nodes)
            first = live & (depth < 0) & (below[nodes] == 1)
            depth = torch.where(first, torch.full_like(depth, t + 1), depth)
        return depth

    def advance(self, nodes: Tensor, tokens: Tensor) -> Tensor:
        """Follow one edge per node: ``nodes [M]``, ``tokens [M]`` -> child nodes ``[M]`` int64.

        ``-1`` where the token is not a child of the node, or where the node is ``-1``.
        A binary search in the globally sorted ``edge_key``; no host sync.
        """
        key = nodes * self.vocab_size + tokens
        pos = torch.searchsorted(self.edge_key, key).clamp_(max=max(self.edge_key.numel() - 1, 0))
        found = (self.edge_key[pos] == key) & (nodes >= 0) & (tokens >= 0) & (tokens < self.vocab_size)
        return torch.where(found, self.child_node[pos], torch.full_like(nodes, -1))


__all__ = ["PrefixTrie"]
