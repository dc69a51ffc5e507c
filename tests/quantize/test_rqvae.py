import lightning as L
import pytest
import torch

from genrec.data.datamodule import ItemEmbeddingDataModule
from genrec.quantize import (
    RQVAEConfig,
    RQVAEModule,
    RQVAEOutput,
    build_semantic_ids,
    quality_report,
)
from tests.quantize.conftest import planted_clusters, same_code_rates, write_embeddings


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


def _train(module: RQVAEModule, x: torch.Tensor, steps: int, batch_size: int) -> RQVAEModule:
    """A plain loop: k-means init on all of ``x``, then AdamW steps on random batches."""
    module.quantizer.init_from_data(module._encode_latents(x), batch_size=batch_size)
    optimizer = module.configure_optimizers()
    module.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        out = module(x[torch.randint(len(x), (batch_size,), generator=g)])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return module


def test_presets_and_overrides():
    assert RQVAEConfig.from_name("tiger") == RQVAEConfig(hidden_dims=(512, 256, 128), latent_dim=32, levels=3, codebook_size=256)
    assert RQVAEConfig.from_name("grid-default", codebook_size=512, hidden_dims=[64]).hidden_dims == (64,)
    with pytest.raises(ValueError, match="unknown RQ-VAE preset"):
        RQVAEConfig.from_name("nope")
    with pytest.raises(TypeError, match="latent"):
        RQVAEConfig.from_name("tiger", latent=3)
    module = RQVAEModule(preset="tiny", input_dim=12, overrides={"codebook_size": 32})
    assert module.config.codebook_size == 32 and module.config.latent_dim == 16
    assert module.hparams["overrides"] == {"codebook_size": 32} and module.hparams["preset"] == "tiny"


def test_fast_dev_run_on_the_embedding_datamodule(tmp_path):
    x, _ = planted_clusters()
    dm = ItemEmbeddingDataModule(str(write_embeddings(tmp_path / "emb.safetensors", x)), batch_size=64)
    module = RQVAEModule(preset="tiny")  # input_dim read from the table
    _trainer(fast_dev_run=True).fit(module, dm)
    assert module.input_dim == 32 and module.hparams["input_dim"] == 32
    assert module.quantizer.initialised


def test_planted_clusters_with_the_trainer(tmp_path):
    L.seed_everything(0, verbose=False)
    x, labels = planted_clusters()
    dm = ItemEmbeddingDataModule(str(write_embeddings(tmp_path / "emb.safetensors", x)), batch_size=64)
    module = RQVAEModule(preset="tiny", overrides={"levels": 2, "codebook_size": 8})
    trainer = _trainer(max_steps=300, num_sanity_val_steps=0, check_val_every_n_epoch=100, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    codes = module.encode_codes(x)
    within, across = same_code_rates(codes[:, 0], labels)
    assert within >= 0.8 and across <= 0.2, (within, across)
    # the validation-end pass logs usage and collisions over the whole table
    trainer.validate(module, dm, verbose=False)
    metrics = trainer.callback_metrics
    assert {"val/used_l0", "val/perplexity_l1", "val/collision_rate", "val/table_recon", "val/recon", "val/commit"} <= set(metrics)
    assert metrics["val/used_l0"] >= 0.5
    # a checkpoint loads without the datamodule (input_dim is in the hyperparameters)
    trainer.save_checkpoint(tmp_path / "rqvae.ckpt")
    loaded = RQVAEModule.load_from_checkpoint(tmp_path / "rqvae.ckpt")
    assert torch.equal(loaded.encode_codes(x), codes)
    sids = build_semantic_ids(loaded, x, fingerprint="fp")
    assert sids.quantizer["class"] == "RQVAEModule" and sids.quantizer["input_dim"] == 32
    assert torch.unique(sids.table, dim=0).shape[0] == len(x)


def test_planted_clusters_with_a_plain_loop():
    L.seed_everything(1, verbose=False)
    x, labels = planted_clusters(seed=1)
    module = _train(RQVAEModule(preset="tiny", input_dim=32, overrides={"levels": 2, "codebook_size": 8}), x, steps=300, batch_size=64)
    within, across = same_code_rates(module.encode_codes(x)[:, 0], labels)
    assert within >= 0.8 and across <= 0.2, (within, across)


def test_no_collapse_on_gaussian_points():
    L.seed_everything(0, verbose=False)
    x = torch.randn(2000, 32)
    module = _train(RQVAEModule(preset="tiny", input_dim=32, overrides={"levels": 3, "codebook_size": 16}), x, steps=200, batch_size=256)
    report = quality_report(module.encode_codes(x), 16, module.reconstruction_error(x))
    assert all(level["fraction_used"] >= 0.5 for level in report["per_level"]), report["per_level"]
    assert report["warnings"] == []


def test_collapse_without_the_remedies_is_reported():
    # data with a large common offset and a small spread (like normalised text embeddings):
    # the latents move away from a random codebook and every item lands on one code
    L.seed_everything(0, verbose=False)
    x = torch.randn(2000, 32) * 0.05 + 3
    module = RQVAEModule(preset="tiny", input_dim=32, overrides={"levels": 3, "codebook_size": 16, "kmeans_init": False, "threshold_ema_dead_code": 0.0})
    module = _train(module, x, steps=100, batch_size=256)
    report = quality_report(module.encode_codes(x), 16)
    assert report["per_level"][0]["fraction_used"] <= 2 / 16
    assert report["collision_rate"] > 0.9
    assert any("collapse" in w for w in report["warnings"])


def test_forward_output_and_inference_helpers():
    module = RQVAEModule(preset="tiny", input_dim=12, overrides={"reconstruction": "cosine"})
    x = torch.randn(40, 12)
    module.quantizer.init_from_data(module._encode_latents(x))
    out = module(x)
    assert isinstance(out, RQVAEOutput)
    assert out.reconstruction.shape == (40, 12) and out.latent.shape == (40, 16) and out.codes.shape == (40, 3)
    assert torch.allclose(out.loss, out.recon_loss + out.commit_loss)
    module.train()
    codes = module.encode_codes(x)
    assert module.training  # restored
    assert codes.dtype == torch.int64 and codes.shape == (40, 3)
    assert module.decode_codes(codes).shape == (40, 12)
    assert module.num_parameters() > 3 * 16 * 16
