import torch
from safetensors.torch import save_file

from genrec.data.datamodule import load_embeddings
from genrec.quantize import RQKMeans, RQVAEModule, SemanticIDs
from genrec.quantize.stage import TokenizeConfig, format_quality, sids_path, tokenize


def _embeddings(tmp_path, n=64, d=16):
    path = tmp_path / "emb.safetensors"
    table = torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)
    save_file({"embeddings": table}, str(path), metadata={"catalog_fingerprint": "fp"})
    return path


def test_tokenize_reuses_and_rebuilds_on_change(tmp_path):
    emb = _embeddings(tmp_path)
    config = TokenizeConfig(output=str(tmp_path / "sids.safetensors"), accelerator="cpu")
    spec = {"class_path": "genrec.quantize.RQKMeans", "init_args": {"codebook_size": 4}}
    path, sids = tokenize(RQKMeans(codebook_size=4, iters=5), spec, emb, "fp", config)
    assert sids.quantizer["config"] == spec and sids.fingerprint == "fp" and sids.embeddings == str(emb)
    assert path.with_suffix(".tokenizer.safetensors").is_file()  # the fitted tokenizer itself
    mtime = path.stat().st_mtime_ns
    tokenize(RQKMeans(codebook_size=4, iters=5), spec, emb, "fp", config)
    assert path.stat().st_mtime_ns == mtime  # reused
    config.seed = 1
    _, rebuilt = tokenize(RQKMeans(codebook_size=4, iters=5), spec, emb, "fp", config)
    assert path.stat().st_mtime_ns != mtime and rebuilt.quantizer["stage"]["train"]["seed"] == 1
    assert "level 0: " in format_quality(rebuilt.quality)


def test_tokenize_rqvae_writes_artifact_and_checkpoint(tmp_path):
    emb = _embeddings(tmp_path)
    config = TokenizeConfig(output=str(tmp_path / "v.safetensors"), accelerator="cpu", max_epochs=2, batch_size=32)
    module = RQVAEModule(preset="tiny", overrides={"codebook_size": 4})
    path, sids = tokenize(module, {"class_path": "genrec.quantize.RQVAEModule"}, emb, "fp", config)
    loaded = SemanticIDs.load(path, expected_fingerprint="fp")
    assert torch.equal(loaded.table, sids.table) and loaded.table.shape == (64, loaded.levels + 1)
    assert path.with_suffix(".tokenizer.ckpt").is_file()
    restored = RQVAEModule.load_from_checkpoint(path.with_suffix(".tokenizer.ckpt"))
    assert torch.equal(restored.encode_codes(load_embeddings(emb)), sids.codes)


def test_default_output_path():
    assert sids_path("beauty", TokenizeConfig(name="rqvae")).as_posix() == "checkpoints/beauty/sids/rqvae.safetensors"
    assert sids_path("beauty", TokenizeConfig(output="/x/y.safetensors")).as_posix() == "/x/y.safetensors"
