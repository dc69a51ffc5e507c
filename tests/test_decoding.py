import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.decoding import (
    BeamResult,
    HeadScores,
    LiveBeams,
    PrefixTrie,
    constrained_beam_search,
    pruned_beam_search,
    score_all_items,
)

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Models following the step contract


class TableModel:
    """Log-probs given by a {prefix tuple: {token: prob}} table; state = one prefix per row.

    Checks the contract: first call with None, later calls with [rows] tokens and parents that
    stay within their batch row.
    """

    def __init__(self, vocab: int, probs: dict[tuple[int, ...], dict[int, float]], batch_size: int = 1):
        self.vocab, self.probs, self.batch_size = vocab, probs, batch_size
        self.calls = 0

    def initial_state(self, rows_per_batch: int = 1) -> list[tuple[int, ...]]:
        return [()] * (self.batch_size * rows_per_batch)

    def _log_probs(self, prefix):
        table = self.probs.get(prefix, {})
        rest = 1.0 - sum(table.values())
        free = self.vocab - len(table)
        p = [table.get(v, rest / free if free else 0.0) for v in range(self.vocab)]
        return [math.log(x) if x > 0 else NEG_INF for x in p]

    def __call__(self, tokens, parents, state):
        self.calls += 1
        if tokens is not None:
            _check_parents(parents, len(state), self.batch_size)
            state = [state[p] + (t,) for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
        return torch.tensor([self._log_probs(s) for s in state], dtype=torch.float64), state


def _check_parents(parents, prev_rows, batch_size):
    rows = parents.numel()
    assert parents.dtype == torch.int64 and rows % batch_size == 0
    assert int(parents.min()) >= 0 and int(parents.max()) < prev_rows
    same_row = parents // (prev_rows // batch_size) == torch.arange(rows) // (rows // batch_size)
    assert bool(same_row.all()), "a beam's parent belongs to another batch row"


class HashModel:
    """A deterministic random 'model': the next-token distribution is a random row chosen by a
    hash of (batch row, prefix). State: [rows] int64 prefix hashes, reordered by parents."""

    def __init__(self, vocab: int, batch_size: int, seed: int, table_size: int = 97):
        g = torch.Generator().manual_seed(seed)
        logits = 3.0 * torch.randn(table_size, vocab, generator=g, dtype=torch.float64)
        self.table = torch.log_softmax(logits, dim=-1)
        self.batch_size = batch_size

    def initial_state(self, rows_per_batch: int = 1) -> torch.Tensor:
        return (torch.arange(self.batch_size) * 7919 + 13).repeat_interleave(rows_per_batch)

    def __call__(self, tokens, parents, state):
        if tokens is not None:
            _check_parents(parents, state.numel(), self.batch_size)
            state = (state.index_select(0, parents) * 1_000_003 + tokens + 1) % 2_147_483_647
        return self.table[state % self.table.shape[0]], state


class GRUModel(torch.nn.Module):
    """A tiny recurrent LM: the state is the hidden vector per row, reordered by parents."""

    def __init__(self, vocab: int, hidden: int = 16, batch_size: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.cell = torch.nn.GRUCell(hidden, hidden)
        self.out = torch.nn.Linear(hidden, vocab)
        self.h0 = torch.nn.Parameter(torch.randn(batch_size, hidden))

    def initial_state(self, rows_per_batch: int = 1) -> torch.Tensor:
        return self.h0.repeat_interleave(rows_per_batch, dim=0)

    @torch.no_grad()
    def forward(self, tokens, parents, state):
        if tokens is not None:
            state = self.cell(self.embed(tokens), state.index_select(0, parents))
        return torch.log_softmax(self.out(state), dim=-1), state


class Pruned:
    """Any model above run under :func:`pruned_beam_search`'s contract: the beams asked for sit at
    their slots of the full ``B * W`` layout, every other slot extends slot 0 of its batch row
    with token 0 (a dead beam's arbitrary token), so the model computes exactly what it computes
    in the full search. Checks the :class:`LiveBeams` it is given and counts the rows asked for."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size
        self.prev_rows, self.prev_width = torch.arange(batch_size), 1
        self.asked: list[int] = []

    def __call__(self, beams: LiveBeams | None, state):
        B = self.batch_size
        if beams is None:
            log_probs, state = self.model(None, None, state)
            assert log_probs.shape[0] == B
            return log_probs, state
        W, rows = beams.width, beams.rows
        assert bool((rows[1:] > rows[:-1]).all()) and beams.tokens.shape == beams.parents.shape == rows.shape
        assert torch.equal(beams.parent_slots, self.prev_rows[beams.parents] % self.prev_width)
        assert torch.equal(self.prev_rows[beams.parents] // self.prev_width, rows // W)  # a parent of the same batch row
        assert torch.equal(beams.active, torch.unique(rows // W))
        tokens = torch.zeros(B * W, dtype=torch.long).index_copy_(0, rows, beams.tokens)
        parents = torch.arange(B * W) // W * self.prev_width
        parents[rows] = self.prev_rows[beams.parents]
        log_probs, state = self.model(tokens, parents, state)
        self.prev_rows, self.prev_width = rows, W
        self.asked.append(rows.numel())
        return log_probs[rows], state


# ---------------------------------------------------------------------------------------------
# The trie


def test_trie_csr_fixed_length():
    trie = PrefixTrie.from_sequences([[1, 2], [1, 3], [0, 3]], item_ids=[10, 11, 12])
    # pre-order over sorted sequences: 0 root, 1 '0', 2 '0 3', 3 '1', 4 '1 2', 5 '1 3'
    assert trie.child_ptr.tolist() == [0, 2, 3, 3, 5, 5, 5]
    assert trie.child_token.tolist() == [0, 1, 3, 2, 3]
    assert trie.child_node.tolist() == [1, 3, 2, 4, 5]
    assert trie.leaf_item.tolist() == [-1, -1, 12, -1, 10, 11]
    assert trie.depth.tolist() == [0, 1, 2, 1, 2, 2]
    assert (trie.num_nodes, trie.num_items, trie.vocab_size, trie.max_depth) == (6, 3, 4, 2)
    assert trie.degree_by_depth == (2, 2)
    assert trie.items.tolist() == [10, 11, 12]
    assert trie.item_tokens.tolist() == [[1, 2], [1, 3], [0, 3]]

    nodes = torch.tensor([0, 3, 3, 3, -1, 2, 0])
    tokens = torch.tensor([1, 3, 2, 0, 0, 0, 7])
    assert trie.advance(nodes, tokens).tolist() == [3, 5, 4, -1, -1, -1, -1]

    mask = trie.next_mask(torch.tensor([0, 3, 2, 1]))
    assert mask.tolist() == [
        [True, True, False, False],
        [False, False, True, True],
        [False, False, False, False],
        [False, False, False, True],
    ]
    assert trie.next_mask(torch.tensor([1]), vocab_size=6).shape == (1, 6)
    rows, toks = trie.valid_tokens(torch.tensor([3, 2, 0]))
    assert rows.tolist() == [0, 0, 2, 2] and toks.tolist() == [2, 3, 0, 1]
    tok, child, valid = trie.children(torch.tensor([0, 1, 2]))
    assert valid.tolist() == [[True, True], [True, False], [False, False]]
    assert tok[valid].tolist() == [0, 1, 3] and child[valid].tolist() == [1, 3, 2]
    assert trie.num_children(torch.tensor([0, 1, 2, 3])).tolist() == [2, 1, 0, 2]


def test_trie_from_tensor_and_walk_every_item():
    g = torch.Generator().manual_seed(1)
    codes = torch.unique(torch.randint(0, 5, (40, 3), generator=g), dim=0)
    codes = codes[torch.randperm(codes.shape[0], generator=g)]
    trie = PrefixTrie.from_sequences(codes, vocab_size=8)
    assert trie.vocab_size == 8
    nodes = torch.zeros(codes.shape[0], dtype=torch.long)
    for level in range(3):
        assert bool(trie.next_mask(nodes)[torch.arange(len(nodes)), codes[:, level]].all())
        nodes = trie.advance(nodes, codes[:, level])
    assert trie.leaf_item[nodes].tolist() == list(range(codes.shape[0]))
    # sorted within each node's slice, and edge_key globally sorted
    assert bool((trie.edge_key[1:] > trie.edge_key[:-1]).all())


def test_trie_variable_length_with_eos_prefix():
    EOS = 3
    seqs = [[5, 7, EOS], [5, 7, 9, EOS], [5, 8, EOS], [EOS]]
    trie = PrefixTrie.from_sequences(seqs, vocab_size=12)
    assert trie.max_depth == 4 and trie.item_lengths.tolist() == [3, 4, 3, 1]
    for item, seq in enumerate(seqs):
        node = torch.tensor([0])
        for tok in seq:
            assert trie.leaf_item[node].item() == -1
            node = trie.advance(node, torch.tensor([tok]))
        assert trie.leaf_item[node].tolist() == [item]
    after_57 = trie.advance(trie.advance(torch.tensor([0]), torch.tensor([5])), torch.tensor([7]))
    assert trie.next_mask(after_57)[0].nonzero().flatten().tolist() == [EOS, 9]


def test_items_below_and_unique_depth_match_brute_force():
    """Random variable-length sequences (EOS-terminated): each node's item count and each item's
    shortest unshared prefix, against counting the prefixes of every sequence."""
    from collections import Counter

    gen = torch.Generator().manual_seed(3)
    EOS = 0
    seqs = sorted({tuple(torch.randint(1, 4, (int(n),), generator=gen).tolist()) + (EOS,)
                   for n in torch.randint(1, 7, (60,), generator=gen)})
    trie = PrefixTrie.from_sequences(seqs, item_ids=[100 + i for i in range(len(seqs))], vocab_size=5)
    shared = Counter(s[:d] for s in seqs for d in range(1, len(s) + 1))
    below = trie.items_below()
    assert below[0].item() == len(seqs)
    for s in seqs:
        node = torch.tensor([0])
        for d in range(1, len(s) + 1):
            node = trie.advance(node, torch.tensor([s[d - 1]]))
            assert below[node].item() == shared[s[:d]]
    expected = [next(d for d in range(1, len(s) + 1) if shared[s[:d]] == 1) for s in seqs]
    assert trie.unique_depth().tolist() == expected
    assert len(set(expected)) >= 3  # items unique at several depths


@pytest.mark.parametrize(
    ("seqs", "ids", "message"),
    [
        ([[1, 2], [3, 4], [1, 2]], [7, 8, 9], "item 7 has the same token sequence as item 9"),
        ([[1, 2, 3], [1, 2]], None, "proper prefix"),
        ([[1], []], None, "empty"),
        ([[1, -2]], None, "negative"),
        ([], None, "at least one"),
        ([[1], [2]], [4, 4], "distinct"),
    ],
)
def test_trie_rejects_bad_input(seqs, ids, message):
    with pytest.raises(ValueError, match=message):
        PrefixTrie.from_sequences(seqs, item_ids=ids)
    with pytest.raises(ValueError, match="vocabulary"):
        PrefixTrie.from_sequences([[1, 5]], vocab_size=5)


# ---------------------------------------------------------------------------------------------
# Beam search, hand-computed


def _greedy_trap():
    # A=[0,0]: .6*.55=.33, B=[0,1]: .6*.45=.27, C=[1,0]: .4*.9=.36 (C also allows token 1, p=.1,
    # but [1,1] is no item). Greedy (W=1) follows 0 and misses the best item C.
    model = TableModel(vocab=2, probs={(): {0: 0.6, 1: 0.4}, (0,): {0: 0.55, 1: 0.45}, (1,): {0: 0.9, 1: 0.1}})
    trie = PrefixTrie.from_sequences([[0, 0], [0, 1], [1, 0]], item_ids=[100, 101, 102])
    return model, trie


def test_beam_search_hand_computed():
    model, trie = _greedy_trap()
    res = constrained_beam_search(model, trie, batch_size=1, beam_width=2, num_results=3, state=model.initial_state())
    assert isinstance(res, BeamResult)
    assert res.items.tolist() == [[102, 100, 101]]
    assert res.scores[0].exp().tolist() == pytest.approx([0.36, 0.33, 0.27])

    greedy = constrained_beam_search(model, trie, 1, beam_width=1, num_results=3, state=model.initial_state())
    assert greedy.items.tolist() == [[100, 101, -1]]  # both children of the greedy prefix finish
    assert greedy.scores[0, :2].exp().tolist() == pytest.approx([0.33, 0.27])
    assert greedy.scores[0, 2].item() == NEG_INF

    top1 = constrained_beam_search(model, trie, 1, beam_width=3, num_results=1, state=model.initial_state())
    assert top1.items.tolist() == [[102]]


def test_beam_search_titles_of_different_lengths():
    EOS = 3
    titles = [[5, 7, EOS], [5, 7, 9, EOS], [5, 8, EOS], [6, EOS]]
    probs = {
        (): {5: 0.7, 6: 0.1},
        (5,): {7: 0.8, 8: 0.15},
        (5, 7): {EOS: 0.3, 9: 0.6},
        (5, 7, 9): {EOS: 0.9},
        (5, 8): {EOS: 0.5},
        (6,): {EOS: 0.2},
    }
    expected = {  # item: probability
        1: 0.7 * 0.8 * 0.6 * 0.9,  # 0.3024
        0: 0.7 * 0.8 * 0.3,  # 0.168
        2: 0.7 * 0.15 * 0.5,  # 0.0525
        3: 0.1 * 0.2,  # 0.02
    }
    trie = PrefixTrie.from_sequences(titles, vocab_size=10)
    for width in (1, 2, 4, 9):
        model = TableModel(vocab=10, probs=probs)
        res = constrained_beam_search(model, trie, 1, beam_width=width, num_results=4, state=model.initial_state())
        found = [i for i in res.items[0].tolist() if i >= 0]
        for item, score in zip(found, res.scores[0].tolist(), strict=False):
            assert math.exp(score) == pytest.approx(expected[item])
        if width >= 2:
            assert found == [1, 0, 2, 3]
    # [5, 7, EOS] finishes at step 3, its extension [5, 7, 9, EOS] at step 4: both come out.
    model = TableModel(vocab=10, probs=probs)
    res = constrained_beam_search(model, trie, 1, beam_width=1, num_results=2, state=model.initial_state())
    assert res.items.tolist() == [[1, 0]]
    brute = score_all_items(TableModel(vocab=10, probs=probs), trie, 1, state=[()])
    assert brute.exp()[0].tolist() == pytest.approx([expected[i] for i in range(4)])


def test_early_stop_skips_hopeless_steps():
    EOS = 0
    titles = [[1, EOS], [2, 2, 2, 2, 2, EOS]]
    probs = {(): {1: 0.9, 2: 0.1}, (1,): {EOS: 0.9}}
    model = TableModel(vocab=3, probs=probs)
    trie = PrefixTrie.from_sequences(titles)
    res = constrained_beam_search(model, trie, 1, beam_width=2, num_results=1, state=model.initial_state())
    assert res.items.tolist() == [[0]] and model.calls == 2
    model = TableModel(vocab=3, probs=probs)
    res = constrained_beam_search(
        model, trie, 1, beam_width=2, num_results=1, state=model.initial_state(), early_stop=False
    )
    assert res.items.tolist() == [[0]] and model.calls == 6


def test_pruned_search_drops_beams_that_cannot_enter_the_result():
    """K = 1: once item 0 is finished (log 0.81), the beam '2' (log 0.1) cannot beat it and is
    dropped, which ends the search; with W = 3 and K = 2, two beams live on after step 0 and the
    one below the second finished item is dropped at step 1."""
    EOS = 0
    titles = [[1, EOS], [2, 2, 2, 2, 2, EOS]]
    probs = {(): {1: 0.9, 2: 0.1}, (1,): {EOS: 0.9}}
    model = TableModel(vocab=3, probs=probs)
    pruned = Pruned(model, 1)
    res = pruned_beam_search(pruned, PrefixTrie.from_sequences(titles), 1, beam_width=2, num_results=1, state=model.initial_state())
    assert res.items.tolist() == [[0]] and model.calls == 2 and pruned.asked == [2]

    # W = 3, K = 1: item 0 finishes at step 1 (0.27); beam '3 3' (0.05) is dropped there, and
    # '2 2' (0.54) goes on alone: the full search runs 3 rows per step, the pruned one 3, 1, 1.
    titles = [[1, EOS], [2, 2, 2, EOS], [3, 3, 3, EOS]]
    probs = {(): {1: 0.3, 2: 0.6, 3: 0.1}, (1,): {EOS: 0.9}, (2,): {2: 0.9}, (3,): {3: 0.5}, (2, 2): {2: 0.9}, (2, 2, 2): {EOS: 0.9}}
    trie = PrefixTrie.from_sequences(titles)
    full = constrained_beam_search(TableModel(4, probs), trie, 1, beam_width=3, num_results=1, state=[()])
    pruned = Pruned(TableModel(4, probs), 1)
    res = pruned_beam_search(pruned, trie, 1, beam_width=3, num_results=1, state=[()])
    assert res.items.tolist() == full.items.tolist() == [[1]]
    torch.testing.assert_close(res.scores, full.scores)
    assert pruned.asked == [3, 1, 1]


def test_max_steps_limits_item_length():
    EOS = 0
    model = TableModel(vocab=3, probs={(): {2: 0.9, 1: 0.1}})
    trie = PrefixTrie.from_sequences([[1, EOS], [2, 2, 2, EOS]])
    res = constrained_beam_search(model, trie, 1, 2, 2, state=model.initial_state(), max_steps=2)
    assert res.items.tolist() == [[0, -1]]


def test_batch_rows_are_independent_and_first_step_may_return_b_or_bw_rows():
    model = GRUModel(vocab=12, batch_size=3, seed=3)
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(0, 12, (30, 3), generator=g), dim=0)
    trie = PrefixTrie.from_sequences(codes)
    B, W, K = 3, 5, 4
    once = constrained_beam_search(model, trie, B, W, K, state=model.initial_state(1))
    per_beam = constrained_beam_search(model, trie, B, W, K, state=model.initial_state(W))
    assert torch.equal(once.items, per_beam.items)
    torch.testing.assert_close(once.scores, per_beam.scores)
    for b in range(B):  # row b alone gives the same answer
        single = GRUModel(vocab=12, batch_size=3, seed=3)
        single.h0.data = single.h0.data[b : b + 1]
        alone = constrained_beam_search(single, trie, 1, W, K, state=single.initial_state())
        assert torch.equal(alone.items[0], once.items[b])


def test_gru_exhaustive_beam_equals_brute_force():
    model = GRUModel(vocab=10, batch_size=2, seed=5)
    g = torch.Generator().manual_seed(2)
    codes = torch.unique(torch.randint(0, 10, (25, 4), generator=g), dim=0)
    trie = PrefixTrie.from_sequences(codes, item_ids=torch.arange(codes.shape[0]) + 1000)
    K = 6
    brute = score_all_items(model, trie, 2, state=model.initial_state())
    res = constrained_beam_search(model, trie, 2, trie.num_items, K, state=model.initial_state())
    best = brute.topk(K, dim=1)
    torch.testing.assert_close(res.scores, best.values, atol=1e-5, rtol=0)
    assert res.items.tolist() == trie.items[best.indices].tolist()


def test_causal_lm_with_kv_cache_matches_full_forward():
    """The LM recommender's use: prompt prefilled once, KV cache reordered by parents."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(config).eval()
    EOS = 2
    titles = [[5, 7, EOS], [5, 7, 9, EOS], [5, 8, EOS], [6, 11, 12, 13, EOS], [9, EOS], [6, 11, EOS]]
    trie = PrefixTrie.from_sequences(titles, vocab_size=32)
    prompts = torch.tensor([[1, 20, 21, 22], [1, 23, 24, 25]])

    @torch.no_grad()
    def step(tokens, parents, cache):
        if tokens is None:
            out = lm(input_ids=prompts, use_cache=True)
        else:
            cache.reorder_cache(parents)
            out = lm(input_ids=tokens[:, None], past_key_values=cache, use_cache=True)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1), out.past_key_values

    res = constrained_beam_search(step, trie, batch_size=2, beam_width=3, num_results=6)
    with torch.no_grad():  # reference: full forward of prompt + title, no cache
        ref = torch.zeros(2, len(titles))
        for b in range(2):
            for j, title in enumerate(titles):
                ids = torch.cat([prompts[b], torch.tensor(title)])[None]
                lp = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)
                ref[b, j] = sum(lp[prompts.shape[1] - 1 + i, t] for i, t in enumerate(title))
    for b in range(2):
        found = res.items[b][res.items[b] >= 0]
        assert len(found) == len(titles)  # W=3 >= K' for this tiny trie
        torch.testing.assert_close(res.scores[b, : len(found)], ref[b, found], atol=1e-4, rtol=0)
        assert bool((res.scores[b, :-1] >= res.scores[b, 1:]).all())


# ---------------------------------------------------------------------------------------------
# Properties on random tries


@st.composite
def tries(draw):
    vocab = draw(st.integers(2, 6))
    variable = draw(st.booleans())
    if variable:  # EOS = vocab, appended to each title: prefix-free, different lengths
        raw = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=0, max_size=4), min_size=1, max_size=20))
        seqs = [tuple(s) + (vocab,) for s in raw]
        vocab += 1
    else:
        length = draw(st.integers(1, 4))
        seqs = draw(st.lists(st.tuples(*[st.integers(0, vocab - 1)] * length), min_size=1, max_size=20))
    seqs = list(dict.fromkeys(seqs))
    ids = draw(st.permutations(range(len(seqs))))
    return PrefixTrie.from_sequences(seqs, item_ids=[3 * i + 1 for i in ids], vocab_size=vocab)


@settings(max_examples=80, deadline=None)
@given(
    trie=tries(),
    batch_size=st.integers(1, 3),
    beam_width=st.integers(1, 8),
    num_results=st.integers(1, 8),
    first_rows_per_batch=st.sampled_from(["one", "beam"]),
    early_stop=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_beam_search_properties(trie, batch_size, beam_width, num_results, first_rows_per_batch, early_stop, seed):
    model = HashModel(trie.vocab_size, batch_size, seed)
    rows = 1 if first_rows_per_batch == "one" else beam_width
    res = constrained_beam_search(
        model, trie, batch_size, beam_width, num_results, state=model.initial_state(rows), early_stop=early_stop
    )
    assert res.items.shape == res.scores.shape == (batch_size, num_results)
    brute = score_all_items(model, trie, batch_size, state=model.initial_state())
    column = {item: j for j, item in enumerate(trie.items.tolist())}
    n = trie.num_items
    for b in range(batch_size):
        items, scores = res.items[b].tolist(), res.scores[b].tolist()
        found = [i for i in items if i >= 0]
        assert items == found + [-1] * (num_results - len(found))  # empty slots at the end
        assert all(s == NEG_INF for s in scores[len(found) :])
        assert all(i in column for i in found)  # only real items
        assert len(set(found)) == len(found)  # distinct
        assert all(scores[i] >= scores[i + 1] for i in range(len(found) - 1))
        for item, score in zip(found, scores, strict=False):  # each score is the item's log-prob
            assert score == pytest.approx(brute[b, column[item]].item(), abs=1e-9)
        if beam_width >= num_results:
            assert len(found) == min(num_results, n)
        if beam_width >= n:  # exhaustive: the exact top K
            best = brute[b].topk(min(num_results, n)).values.tolist()
            assert scores[: len(best)] == pytest.approx(best, abs=1e-9)
    # The pruned search gives the same result, asking for at most the full search's rows.
    pruned = Pruned(HashModel(trie.vocab_size, batch_size, seed), batch_size)
    fewer = pruned_beam_search(pruned, trie, batch_size, beam_width, num_results, state=model.initial_state())
    full = constrained_beam_search(model, trie, batch_size, beam_width, num_results, state=model.initial_state())
    assert torch.equal(fewer.items, full.items) and torch.equal(fewer.scores, full.scores)
    assert all(r <= batch_size * beam_width for r in pruned.asked)


class AsHeadScores:
    """A :class:`Pruned` model whose steps return :class:`HeadScores`: the log-probs shifted by a
    random amount a row as the "logits", that amount as the row's log-normaliser (or, ``dense``,
    the same scores as a tensor: ``logits - lse`` for every token)."""

    def __init__(self, pruned: Pruned, seed: int, dense: bool = False):
        self.pruned, self.generator, self.dense = pruned, torch.Generator().manual_seed(seed), dense

    def __call__(self, beams, state):
        log_probs, state = self.pruned(beams, state)
        shift = torch.rand(log_probs.shape[0], generator=self.generator, dtype=log_probs.dtype) * 20 - 10
        scores = HeadScores(log_probs + shift[:, None], shift)
        return (scores.dense() if self.dense else scores), state


@settings(max_examples=40, deadline=None)
@given(trie=tries(), batch_size=st.integers(1, 3), beam_width=st.integers(1, 6), num_results=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_pruned_search_reads_head_scores_as_the_log_probs_they_stand_for(trie, batch_size, beam_width, num_results, seed):
    """A step may return logits and row log-normalisers instead of log-probs: the search gathers
    ``logits - lse`` for the trie's children and finds what it finds on those log-probs as one
    ``[R, V]`` tensor (the same items, the same scores to the bit), and the scores of the model's
    own log-probs to rounding."""
    model = HashModel(trie.vocab_size, batch_size, seed)
    runs = {}
    for name, dense in (("lazy", False), ("dense", True)):
        step = AsHeadScores(Pruned(HashModel(trie.vocab_size, batch_size, seed), batch_size), seed, dense=dense)
        runs[name] = pruned_beam_search(step, trie, batch_size, beam_width, num_results, state=model.initial_state())
    assert torch.equal(runs["lazy"].items, runs["dense"].items) and torch.equal(runs["lazy"].scores, runs["dense"].scores)
    plain = pruned_beam_search(Pruned(model, batch_size), trie, batch_size, beam_width, num_results, state=model.initial_state())
    found = plain.items >= 0
    assert torch.equal(found, runs["lazy"].items >= 0)
    torch.testing.assert_close(runs["lazy"].scores[found], plain.scores[found], atol=1e-9, rtol=0)


def test_head_scores_are_the_log_softmax_of_their_logits():
    logits = torch.randn(5, 11, dtype=torch.bfloat16)
    scores = HeadScores(logits, torch.logsumexp(logits.float(), -1))
    expected = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(scores.dense(), expected)
    tokens = torch.tensor([[0, 3], [10, 1], [2, 2], [5, 6], [9, 0]])
    torch.testing.assert_close(scores.gather(1, tokens), expected.gather(1, tokens))
    assert scores.shape == (5, 11) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.head(2).dense(), expected[:2])
    with pytest.raises(ValueError, match="dim 1"):
        scores.gather(0, tokens)
