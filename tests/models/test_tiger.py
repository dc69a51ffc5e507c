"""TigerModule: token layout, SID checks, exact beam search, Lightning fit/test, checkpoints,
and a tiny end-to-end run that must beat the popularity baseline."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from genrec.data import SeqBatch, SequenceDataModule, SyntheticSource
from genrec.data.catalog import Item, ItemCatalog
from genrec.decoding import Recommendations, score_all_items
from genrec.models import TigerModule
from genrec.models.optim import fused_adamw, lr_schedule
from genrec.models.tiger import EOS, PAD, shift_right, sid_vocab_sizes
from genrec.quantize import RQKMeans, SemanticIDs
from tests.trainer import quiet_trainer


# A T5 small enough for 2 CPU cores: one layer each side, d_model 64 (the 336k preset's width).
def tiny(**fields) -> dict:
    """TigerModule arguments of the 336k preset shrunk (``fields`` change more of its shape)."""
    return {"preset": "336k", "overrides": {"d_ff": 128, "ff_layers": 1, "num_heads": 2, "d_kv": 32, "dropout": 0.0, **fields}}


TINY = tiny()


def category_sids(datamodule: SequenceDataModule, levels: int = 2, codebook_size: int = 16, noise: float = 0.3) -> SemanticIDs:
    """SIDs by RQ-KMeans on embeddings where items of one category are close (one-hot + noise)."""
    data = datamodule.data
    category = torch.as_tensor(datamodule.source.truth.category_of(data.catalog))
    generator = torch.Generator().manual_seed(0)
    num_categories = int(category.max()) + 1
    embeddings = torch.nn.functional.one_hot(category, num_categories).float()
    embeddings += noise * torch.randn(embeddings.shape, generator=generator)
    quantizer = RQKMeans(levels=levels, codebook_size=codebook_size, seed=0).fit(embeddings)
    return SemanticIDs.from_codes(quantizer.encode(embeddings), codebook_size, fingerprint=data.catalog.fingerprint())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small synthetic data set (200 users, 120 items) and its SID file."""
    datamodule = SequenceDataModule(
        SyntheticSource(num_users=200, num_items=120, num_categories=4, max_length=10, seed=1),
        name="small",
        kcore=0,
        max_history=10,
        batch_size=64,
        eval_batch_size=100,
    )
    sids = category_sids(datamodule, levels=2, codebook_size=8)
    path = tmp_path_factory.mktemp("sids") / "small.safetensors"
    sids.save(path)
    return datamodule, sids, str(path)


# ---- token layout ---------------------------------------------------------------------------


@pytest.fixture
def hand_made(tmp_path):
    """Three items (and their catalogue), codes [[0,1],[0,1],[2,3]] of a 4-code book: SIDs [[0,1,0],[0,1,1],[2,3,0]]."""
    catalog = ItemCatalog([Item("a"), Item("b"), Item("c")])
    sids = SemanticIDs.from_codes(torch.tensor([[0, 1], [0, 1], [2, 3]]), codebook_size=4, fingerprint=catalog.fingerprint())
    path = tmp_path / "hand.safetensors"
    sids.save(path)
    return sids, str(path), catalog


def test_vocabulary_comes_from_the_sid_header(hand_made):
    sids, path, catalog = hand_made
    assert sid_vocab_sizes(path) == sids.vocab_sizes == [4, 4, 2]
    module = TigerModule(path, **TINY, user_tokens=3)
    assert module.vocab_size == 2 + 4 + 4 + 2 + 3 == 15
    assert module.model.shared.num_embeddings == 15
    assert module.position_offsets.tolist() == [2, 6, 10] and module.user_offset == 12
    assert "sids" in module.hparams and "vocab_sizes" not in module.hparams


def test_item_tokens_are_offset_per_position(hand_made):
    sids, path, catalog = hand_made
    module = TigerModule(path, **TINY)
    module.attach(catalog, sids)
    assert module.item_tokens.tolist() == [[2, 7, 10], [2, 7, 11], [4, 9, 10]]
    assert module.tokens_of(torch.tensor([2, 0])).tolist() == [[4, 9, 10], [2, 7, 10]]


def batch_of(history, users=None, targets=None) -> SeqBatch:
    history = torch.tensor(history)
    n = history.shape[0]
    return SeqBatch(
        users=torch.tensor(users if users is not None else list(range(n))),
        history=history,
        lengths=(history >= 0).sum(1),
        targets=torch.tensor(targets if targets is not None else [0] * n),
    )


def test_encoder_input_layout(hand_made):
    sids, path, catalog = hand_made
    module = TigerModule(path, **TINY)
    module.attach(catalog, sids)
    ids, mask = module.encoder_inputs(batch_of([[0, 2], [1, -1]]))
    assert ids.tolist() == [
        [2, 7, 10, 4, 9, 10, EOS],
        [2, 7, 11, EOS, PAD, PAD, PAD],
    ]
    assert mask.tolist() == [[True] * 7, [True] * 4 + [False] * 3]


def test_encoder_input_with_user_tokens(hand_made):
    sids, path, catalog = hand_made
    module = TigerModule(path, **TINY, user_tokens=3)
    module.attach(catalog, sids)
    ids, mask = module.encoder_inputs(batch_of([[2, -1], [0, 1]], users=[7, 3]))
    assert ids.tolist() == [
        [12 + 7 % 3, 4, 9, 10, EOS, PAD, PAD, PAD],
        [12 + 3 % 3, 2, 7, 10, 2, 7, 11, EOS],
    ]
    assert mask.sum(1).tolist() == [5, 8]


def test_sid_sizes_must_match_the_built_model(hand_made, tmp_path):
    _, path, catalog = hand_made
    module = TigerModule(path, **TINY)
    other = SemanticIDs.from_codes(torch.tensor([[0, 1], [2, 3], [3, 3]]), codebook_size=4)  # dedup size 1, not 2
    with pytest.raises(ValueError, match=r"SID sizes per position \[4, 4, 1\] differ .* \[4, 4, 2\]"):
        module.attach(catalog, other)


def test_missing_sid_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors not found"):
        TigerModule(str(tmp_path / "nope.safetensors"), **TINY)


def test_fingerprint_mismatch_is_an_error_naming_both(small, tmp_path):
    datamodule, sids, _ = small
    wrong = SemanticIDs.from_codes(sids.codes, sids.codebook_size, fingerprint="0123abcd")
    path = tmp_path / "wrong.safetensors"
    wrong.save(path)
    module = TigerModule(str(path), **TINY)
    expected = datamodule.data.catalog.fingerprint()
    with pytest.raises(ValueError, match=f"fingerprint 0123abcd.*data set has catalogue fingerprint {expected}"):
        quiet_trainer(fast_dev_run=True).fit(module, datamodule)


# ---- beam search ----------------------------------------------------------------------------


def teacher_forced_scores(module: TigerModule, batch: SeqBatch) -> torch.Tensor:
    """``[B, N]`` every item's sequence log-prob by one full decoder pass per item (no cache)."""
    ids, mask = module.encoder_inputs(batch)
    encoder_out = module.encode(ids, mask)
    tokens = module.item_tokens  # [N, T]
    B, N = ids.shape[0], tokens.shape[0]
    decoder_input = torch.cat([torch.full((N, 1), PAD), tokens[:, :-1]], 1).repeat(B, 1)
    logits = module.model(
        encoder_outputs=(encoder_out.repeat_interleave(N, 0),),
        attention_mask=mask.repeat_interleave(N, 0),
        decoder_input_ids=decoder_input,
    ).logits
    token_lp = torch.log_softmax(logits.float(), -1).gather(2, tokens.repeat(B, 1)[..., None])[..., 0]
    return token_lp.sum(1).view(B, N)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_beam_search_with_full_beam_is_exact(small, attn):
    """Beam = number of items: the top-K equal brute-force scoring of every item, both through
    the cached step function (score_all_items) and by plain teacher forcing without a cache."""
    datamodule, sids, path = small
    torch.manual_seed(0)
    module = TigerModule(path, **tiny(num_layers=2, num_decoder_layers=2), user_tokens=5, attn_implementation=attn).eval()
    module.attach(datamodule.data.catalog, sids, datamodule.data.train_item_counts())
    batch = datamodule.dataset("test").__getitems__(list(range(6)))
    N, K = sids.num_items, 10
    with torch.no_grad():
        result = module.recommend(batch, k=K, beam_width=N)
        ids, mask = module.encoder_inputs(batch)
        encoder_out = module.encode(ids, mask)
        cached = score_all_items(module.beam_step, module.trie(), len(batch), state=module.initial_state(encoder_out, mask))
        forced = teacher_forced_scores(module, batch)
    items_in_trie_order = module.trie().items
    forced_by_trie = forced[:, items_in_trie_order]
    torch.testing.assert_close(cached, forced_by_trie, atol=1e-4, rtol=1e-4)
    top = forced.topk(K, dim=1)
    assert torch.equal(result.items, top.indices)
    torch.testing.assert_close(result.scores, top.values, atol=1e-4, rtol=1e-4)


def test_pad_history_gives_static_shapes_and_the_same_loss(small):
    """Padding the history to a fixed length (for CUDA graphs) changes the shape, not the loss."""
    datamodule, sids, path = small
    batch = datamodule.dataset("train").__getitems__(list(range(16)))
    assert batch.history.shape[1] < 12
    torch.manual_seed(0)
    module = TigerModule(path, **TINY, pad_history=12)
    module.attach(datamodule.data.catalog, sids)
    ids, mask = module.encoder_inputs(batch, pad_history=12)
    plain_ids, plain_mask = module.encoder_inputs(batch)
    assert ids.shape == (16, 12 * module.tokens_per_item + 1)
    assert torch.equal(ids[:, : plain_ids.shape[1]], plain_ids) and not mask[:, plain_ids.shape[1] :].any()
    padded = module.model_step(batch, "train")  # the training step pads (pad_history)
    labels = module.tokens_of(batch.targets)
    decoder_input = torch.cat([labels.new_full((16, 1), PAD), labels[:, :-1]], dim=1)
    logits = module.model(input_ids=plain_ids, attention_mask=plain_mask, decoder_input_ids=decoder_input).logits
    torch.testing.assert_close(padded, F.cross_entropy(logits.flatten(0, 1), labels.flatten()), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="does not fit pad_history=4"):
        module.encoder_inputs(batch, pad_history=4)
    with pytest.raises(ValueError, match="pad_history must be >= 1"):
        TigerModule(path, **TINY, pad_history=0)


def test_sdpa_and_eager_agree(small):
    datamodule, sids, path = small
    batch = datamodule.dataset("test").__getitems__(list(range(8)))
    results = []
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        module = TigerModule(path, **TINY, attn_implementation=attn).eval()
        module.attach(datamodule.data.catalog, sids)
        results.append(module.recommend(batch, k=10, beam_width=10))
    assert torch.equal(results[0].items, results[1].items)
    torch.testing.assert_close(results[0].scores, results[1].scores, atol=1e-4, rtol=1e-4)


def test_recommendations_are_real_and_distinct(small):
    datamodule, sids, path = small
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="beam_width .5. must be at least max.ks. .20."):
        TigerModule(path, **TINY, beam_width=5, ks=(5, 10, 20))
    module = TigerModule(path, **TINY, beam_width=20, ks=(5, 10, 20)).eval()
    module.attach(datamodule.data.catalog, sids)
    batch = next(iter(datamodule.test_dataloader()))
    prediction = module.predict_step(batch)
    assert isinstance(prediction, Recommendations)
    items = prediction.items
    assert items.shape == (len(batch), 20)
    assert ((items >= 0) & (items < sids.num_items)).all()
    assert all(len(set(row)) == len(row) for row in items.tolist())
    assert (prediction.scores[:, :-1] >= prediction.scores[:, 1:]).all()  # best first
    assert torch.equal(prediction.users, batch.users)


def test_bf16_autocast_search_gives_real_items(small):
    datamodule, sids, path = small
    module = TigerModule(path, **TINY).eval()
    module.attach(datamodule.data.catalog, sids)
    batch = datamodule.dataset("test").__getitems__(list(range(8)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = module.recommend(batch)
    assert result.scores.dtype == torch.float32 and torch.isfinite(result.scores).all()
    assert ((result.items >= 0) & (result.items < sids.num_items)).all()


# ---- training -------------------------------------------------------------------------------


def test_lr_schedule():
    cosine = lr_schedule("cosine", warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.1 + 0.9 * 0.5) and cosine(110) == pytest.approx(0.1)
    inverse = lr_schedule("inverse_sqrt", warmup_steps=4, total_steps=math.inf)
    assert inverse(3) == pytest.approx(1.0) and inverse(15) == pytest.approx(0.5)
    assert lr_schedule("cosine", 0, math.inf)(1000) == 1.0
    with pytest.raises(ValueError, match="unknown scheduler"):
        lr_schedule("linear", 1, 10)


def test_fused_adamw_only_on_cuda_without_gradient_clipping(hand_made):
    # Lightning's precision plugins refuse to clip the gradients of a fused AdamW (found on an H100).
    module = TigerModule(sids=hand_made[1], preset="336k")
    assert not fused_adamw(module)  # CPU
    module._device = torch.device("cuda", 0)  # the decision only; nothing runs on the device
    assert fused_adamw(module)  # no trainer: nothing clips
    module._trainer = L.Trainer(gradient_clip_val=1.0, accelerator="cpu", logger=False)
    assert not fused_adamw(module)
    module._trainer = L.Trainer(accelerator="cpu", logger=False)
    assert fused_adamw(module)


def test_fast_dev_run_fit_and_test_log_every_metric(small):
    datamodule, _, path = small
    module = TigerModule(path, **TINY, beam_width=10)
    trainer = quiet_trainer(fast_dev_run=True)
    trainer.fit(module, datamodule)
    assert {"train/loss_step", "val/loss", "val/recall@5", "val/recall@10", "val/ndcg@5", "val/ndcg@10"} <= set(trainer.callback_metrics)
    result = trainer.test(module, datamodule, verbose=False)[0]
    for name in ("test/recall@10", "test/ndcg@5", "test/cold/recall@10", "test/popularity/recall@10", "test/loss"):
        assert name in result
    for name, value in result.items():
        if "recall" in name or "ndcg" in name:
            assert math.isnan(value) or 0.0 <= value <= 1.0, name


@pytest.mark.slow  # torch.compile takes about a minute on 2 CPU cores
def test_compiled_static_training_matches_eager(small):
    """compile=True with pad_history (the CUDA-graph set-up, without graphs on a CPU) trains to the
    same losses as the eager module from the same initialisation."""
    datamodule, _, path = small
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        module = TigerModule(path, **TINY, lr=3e-3, warmup_steps=1, compile=compiled, pad_history=10)
        trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
        trainer.fit(module, datamodule)
        assert (module._train_forward is not None) == compiled
        losses.append(float(trainer.callback_metrics["train/loss_step"]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)


def test_checkpoint_reload_gives_the_same_predictions(small, tmp_path):
    datamodule, sids, path = small
    module = TigerModule(path, **TINY, beam_width=12, lr=3e-3, warmup_steps=1)
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(module, datamodule)
    checkpoint = tmp_path / "tiger.ckpt"
    trainer.save_checkpoint(checkpoint)

    before = quiet_trainer().predict(module, datamodule)
    reloaded = TigerModule.load_from_checkpoint(checkpoint)
    after = quiet_trainer().predict(reloaded, datamodule)
    assert reloaded.hparams.beam_width == 12 and reloaded.config == module.config
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a.items, b.items)
        torch.testing.assert_close(a.scores, b.scores)

    # Same sizes and catalogue, other SIDs: the checkpoint does not fit them.
    shuffled = SemanticIDs.from_codes(sids.codes.flip(0), sids.codebook_size, fingerprint=sids.fingerprint)
    assert shuffled.vocab_sizes == sids.vocab_sizes
    other = tmp_path / "other.safetensors"
    shuffled.save(other)
    with pytest.raises(ValueError, match="trained on other semantic IDs"):
        quiet_trainer().predict(TigerModule.load_from_checkpoint(checkpoint, sids=str(other)), datamodule)
    with pytest.raises(ValueError, match="trained on other semantic IDs"):  # weights restored after setup
        quiet_trainer().predict(TigerModule(str(other), **TINY, beam_width=12), datamodule, ckpt_path=checkpoint)


class EpochLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss_epoch"]))


def end_to_end(tmp_path, epochs: int, max_history: int) -> tuple[dict[str, float], list[float]]:
    """Synthetic data (1,000 users, 500 items in 10 categories), SIDs by RQ-KMeans on
    category-structured embeddings, a tiny T5 trained for ``epochs`` and tested."""
    L.seed_everything(0)
    datamodule = SequenceDataModule(
        SyntheticSource(num_users=1000, num_items=500, num_categories=10, seed=0),
        name="synthetic",
        kcore=0,
        max_history=max_history,
        batch_size=256,
        eval_batch_size=1000,
    )
    sids = category_sids(datamodule, levels=2, codebook_size=16)
    path = tmp_path / "synthetic.safetensors"
    sids.save(path)
    module = TigerModule(str(path), **tiny(d_ff=256), lr=1e-2, warmup_steps=10)
    losses = EpochLosses()
    trainer = quiet_trainer(max_epochs=epochs, limit_val_batches=0, callbacks=[losses])
    trainer.fit(module, datamodule)
    return trainer.test(module, datamodule, verbose=False)[0], losses.losses


def test_end_to_end_beats_popularity(tmp_path):
    result, losses = end_to_end(tmp_path, epochs=4, max_history=8)
    print("end-to-end 4 epochs:", losses, {k: round(v, 4) for k, v in result.items()})
    assert losses[-1] < losses[0] - 0.1, losses
    assert result["test/recall@10"] > 2 * result["test/popularity/recall@10"], result
    assert result["test/ndcg@10"] > 2 * result["test/popularity/ndcg@10"], result


@pytest.mark.slow
def test_end_to_end_longer_run_beats_popularity_more(tmp_path):
    result, losses = end_to_end(tmp_path, epochs=15, max_history=20)
    print("end-to-end 15 epochs:", losses, {k: round(v, 4) for k, v in result.items()})
    assert losses[-1] < losses[0] - 0.3, losses
    assert result["test/recall@10"] > 2.5 * result["test/popularity/recall@10"], result


def host_reads(fn) -> int:
    """How often ``fn()`` read a tensor value back to the host (``.item()``, ``bool(t)``,
    ``if t.all()``): on a GPU each such read waits for every queued kernel."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key == "aten::_local_scalar_dense")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_training_step_never_reads_back_to_the_host(small, attn):
    datamodule, sids, path = small
    batch = next(iter(datamodule.train_dataloader()))
    module = TigerModule(path, **TINY, attn_implementation=attn)
    module.attach(datamodule.data.catalog, sids)
    assert host_reads(lambda: module.training_loss(batch).backward()) == 0
    # the check sees such reads: the same model given the 2-D mask (transformers asks mask.all())
    ids, mask = module.encoder_inputs(batch)
    assert host_reads(lambda: module.model(input_ids=ids, attention_mask=mask, decoder_input_ids=shift_right(module.tokens_of(batch.targets)))) > 0


def test_beam_benchmark_exact_overlap_is_full_at_full_beam_and_partial_below(small):
    """bench.tiger_beams' exhaustive comparison: a beam as wide as the catalogue finds all of the
    exact top 10; a narrow beam on an untrained model finds fewer, never more."""
    from bench.tiger_beams import exact_overlap

    datamodule, sids, path = small
    torch.manual_seed(0)
    module = TigerModule(path, **TINY).eval()
    module.attach(datamodule.data.catalog, sids, datamodule.data.train_item_counts())
    batches = [datamodule.dataset("val").__getitems__(list(range(i, i + 8))) for i in (0, 8)]
    recall, found = exact_overlap(module, batches, [10, sids.num_items])
    assert found[sids.num_items] == 1.0
    assert 0.0 < found[10] < 1.0
    targets = torch.cat([b.targets for b in batches])
    with torch.no_grad():
        full = torch.cat([module.recommend(b, k=10, beam_width=sids.num_items).items for b in batches])
    assert recall == (full == targets[:, None]).any(1).float().mean().item()


def test_padding_rows_do_not_count_in_the_loss(small):
    """A static-shape batch (rows padded for a CUDA graph, history padded to a multiple of 4) has
    the loss of the batch itself when the padding rows are marked invalid."""
    datamodule, sids, path = small
    batch = datamodule.dataset("train").__getitems__(list(range(10)))
    torch.manual_seed(0)
    module = TigerModule(path, **TINY)
    module.attach(datamodule.data.catalog, sids)
    plain = module.training_loss(batch)
    rows, length = 16, 12
    history = F.pad(batch.history, (0, length - batch.history.shape[1], 0, rows - 10), value=-1)
    users, targets = F.pad(batch.users, (0, rows - 10)), F.pad(batch.targets, (0, rows - 10))
    valid = torch.arange(rows) < 10
    padded = module._static_loss(users, history, targets, valid)
    torch.testing.assert_close(padded, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(module._static_loss(users, history, targets, torch.ones(rows, dtype=torch.bool)), plain)
    with pytest.raises(ValueError, match="choose one"):
        TigerModule(path, **TINY, compile=True, cuda_graphs=True)


def test_cuda_graphs_are_off_without_a_gpu(small):
    """On a CPU trainer cuda_graphs is ignored: automatic optimisation, a plain AdamW."""
    datamodule, _, path = small
    module = TigerModule(path, **TINY, cuda_graphs=True)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule)
    assert module.automatic_optimization and module._graph_step is None
    assert type(trainer.optimizers[0]) is torch.optim.AdamW


@pytest.mark.gpu
def test_cuda_graph_steps_train_like_eager_steps(small):
    """Training steps replayed from CUDA graphs (float32, no dropout) give the losses and weights
    of eager steps with the same fused AdamW and clipping, on a full and a partial last batch."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    _, _, path = small
    datamodule = SequenceDataModule(
        SyntheticSource(num_users=200, num_items=120, num_categories=4, max_length=10, seed=1),
        name="small", kcore=0, max_history=10, batch_size=64, eval_batch_size=100, bucket_by_length=True,
    )
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        module = TigerModule(path, **TINY, lr=3e-3, warmup_steps=2, cuda_graphs=graphs, max_grad_norm=0.5)
        losses: list[float] = []

        class Record(L.Callback):
            def __init__(self, into: list[float]) -> None:
                self.into = into

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
                self.into.append(float(outputs["loss"]))

        trainer = L.Trainer(accelerator="gpu", devices=1, precision="32-true", max_epochs=2, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Record(losses)],
                            gradient_clip_val=None if graphs else 0.5)
        trainer.fit(module, datamodule)
        assert (module._graph_step is not None) == graphs
        if graphs:
            assert len(module._graph_step.graphs) >= 2  # several history lengths were captured
            assert trainer.global_step == len(losses)
        results.append((losses, [p.detach().cpu() for p in module.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = results
    assert graph_losses == pytest.approx(eager_losses, rel=2e-4, abs=2e-5)
    for a, b in zip(eager_params, graph_params, strict=True):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-3)


def test_max_grad_norm_clips_eager_steps_like_lightning(small):
    """The module's max_grad_norm (what cuda_graphs clips with) gives the same eager training as
    Lightning's gradient_clip_val at the same norm, and differs from no clipping."""
    _, _, path = small
    weights = []
    for module_norm, trainer_norm in ((0.05, None), (None, 0.05), (None, None)):
        datamodule = SequenceDataModule(  # a fresh one each time: the shuffle's state travels with a data module
            SyntheticSource(num_users=200, num_items=120, num_categories=4, max_length=10, seed=1),
            name="small", kcore=0, max_history=10, batch_size=64, eval_batch_size=100,
        )
        torch.manual_seed(0)
        module = TigerModule(path, **TINY, lr=3e-3, warmup_steps=1, max_grad_norm=module_norm)
        quiet_trainer(max_steps=3, limit_val_batches=0, gradient_clip_val=trainer_norm).fit(module, datamodule)
        weights.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    torch.testing.assert_close(weights[0], weights[1])
    assert not torch.allclose(weights[0], weights[2])
