"""The LM adapter file (genrec.models.lm_adapter, bench.lm_adapter): only the trained parameters,
put back exactly on the same base weights, and refused with one line on anything else."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from bench.lm_adapter import main as adapter_main
from genrec.errors import ArtifactError
from genrec.models import LMRecModule
from genrec.models.lm_adapter import base_digest, load_adapter, save_adapter, trained_parameters
from tests.models.test_lm_rec import tiny_datamodule, tiny_module


def trained_lora(**lora) -> LMRecModule:
    m = tiny_module(lora={"enabled": True, "r": 4, **lora})
    torch.manual_seed(3)
    for p in m.parameters():
        if p.requires_grad:  # as if trained: B starts at zero
            p.data.normal_(0, 0.5)
    return m.eval()


def test_adapter_round_trip_holds_only_the_trained_parameters_and_decodes_the_same(tmp_path):
    dm = tiny_datamodule()
    batch = next(iter(dm.val_dataloader()))
    trained = trained_lora()
    path = tmp_path / "a.safetensors"
    meta = save_adapter(trained, path, source="run-7")
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())  # noqa: SIM118
        assert f.metadata()["source"] == "run-7" and f.metadata()["base_digest"] == base_digest(trained)
    assert names == set(trained_parameters(trained)) and names and all("lora_" in n for n in names)
    assert int(meta["parameters"]) == sum(p.numel() for p in trained_parameters(trained).values())
    assert int(meta["parameters"]) < sum(p.numel() for p in trained.parameters()) // 10  # the base stays out
    fresh = tiny_module(lora={"enabled": True, "r": 4}).eval()  # the same base (same seed), untrained adapters
    assert not all(torch.equal(p, trained_parameters(trained)[n]) for n, p in trained_parameters(fresh).items())
    assert load_adapter(fresh, path)["source"] == "run-7"
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fresh.state_dict().items())
    for m in (trained, fresh):
        m.attach(dm.data.catalog)
    a, b = trained.recommend(batch, k=5, beam_width=8), fresh.recommend(batch, k=5, beam_width=8)
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)


def test_adapter_is_refused_on_another_model_with_one_line(tmp_path):
    path = tmp_path / "a.safetensors"
    save_adapter(trained_lora(), path)
    with pytest.raises(ArtifactError, match=r"a.safetensors: .*lora_A.default.weight is torch.float32 \(4, 32\), the model's is torch.float32 \(8, 32\)"):
        load_adapter(tiny_module(lora={"enabled": True, "r": 8}), path)  # another rank: other shapes
    with pytest.raises(ArtifactError, match=r"a.safetensors: its parameters are not this model's trained ones \(\d+ missing"):
        load_adapter(tiny_module(lora={"enabled": True, "r": 4, "target_modules": ["q_proj"]}), path)
    other_base = tiny_module(lora={"enabled": True, "r": 4})
    with torch.no_grad():
        next(p for p in other_base.parameters() if not p.requires_grad).add_(1e-3)
    untouched = {k: v.clone() for k, v in other_base.state_dict().items()}
    with pytest.raises(ArtifactError, match="trained on other base weights"):
        load_adapter(other_base, path)
    assert all(torch.equal(v, untouched[k]) for k, v in other_base.state_dict().items())  # nothing copied
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something"})
    with pytest.raises(ArtifactError, match="other.safetensors: not a genrec LM adapter"):
        load_adapter(other_base, tmp_path / "other.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match="broken.safetensors: not a readable adapter file"):
        load_adapter(other_base, tmp_path / "broken.safetensors")
    frozen = tiny_module()  # no LoRA, and nothing set to train? a full model trains everything
    assert set(trained_parameters(frozen)) == {n for n, _ in frozen.named_parameters()}


def test_bench_lm_adapter_writes_the_adapter_of_a_checkpoint(tmp_path, capsys):
    trained = trained_lora()
    ckpt = tmp_path / "m.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    out = tmp_path / "m.safetensors"
    assert adapter_main([str(ckpt), str(out)]) == 0
    assert "trained parameters of" in capsys.readouterr().out
    fresh = tiny_module(lora={"enabled": True, "r": 4})
    load_adapter(fresh, out)
    assert all(torch.equal(p, trained_parameters(trained)[n]) for n, p in trained_parameters(fresh).items())
    assert adapter_main([str(tmp_path / "missing.ckpt"), str(out)]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    torch.save({"state_dict": {}, "hyper_parameters": {"sids": "x"}}, tmp_path / "other.ckpt")  # another module's
    assert adapter_main([str(tmp_path / "other.ckpt"), str(out)]) == 2
    assert "other.ckpt: not an LMRecModule checkpoint" in capsys.readouterr().err


def test_the_adapter_setting_puts_the_file_on_at_attach_and_tests_as_the_trained_model(tmp_path, caplog):
    """``adapter=FILE`` (``model.init_args.adapter`` in YAML): the trainer's test of a fresh module
    with the file gives the trained module's metrics; a file that does not fit stops with its line."""
    from tests.trainer import quiet_trainer

    path = tmp_path / "a.safetensors"
    trained = trained_lora()
    save_adapter(trained, path, source="run-7")
    fresh = tiny_module(lora={"enabled": True, "r": 4}, adapter=str(path))
    assert not all(torch.equal(p, trained_parameters(trained)[n]) for n, p in trained_parameters(fresh).items())
    dm = tiny_datamodule()
    with caplog.at_level("INFO", logger="genrec.models.lm_rec"):
        got = quiet_trainer().test(fresh, datamodule=dm, verbose=False)[0]
    assert f"adapter {path}: " in caplog.text and "made from run-7" in caplog.text
    assert all(torch.equal(p, trained_parameters(trained)[n]) for n, p in trained_parameters(fresh).items())
    want = quiet_trainer().test(trained, datamodule=dm, verbose=False)[0]
    assert got == want and got["test/recall@10"] != quiet_trainer().test(
        tiny_module(lora={"enabled": True, "r": 4}), datamodule=dm, verbose=False)[0]["test/recall@10"]
    wrong = tiny_module(lora={"enabled": True, "r": 8}, adapter=str(path))
    with pytest.raises(ArtifactError, match=r"a.safetensors: .*lora_A.default.weight is torch.float32 \(4, 32\)"):
        wrong.attach(dm.data.catalog)


def test_a_checkpoint_of_a_run_started_from_an_adapter_keeps_its_own_weights(tmp_path):
    """A module restored from a checkpoint whose settings name an adapter has the checkpoint's
    weights: attaching its items does not put the adapter back over them."""
    path = tmp_path / "a.safetensors"
    save_adapter(trained_lora(), path)
    run = tiny_module(lora={"enabled": True, "r": 4}, adapter=str(path))
    dm = tiny_datamodule()
    run.attach(dm.data.catalog)  # starts from the adapter ...
    with torch.no_grad():
        for p in trained_parameters(run).values():
            p.add_(0.25)  # ... and trains on
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": run.state_dict(), "hyper_parameters": dict(run.hparams),
                "pytorch-lightning_version": L.__version__}, ckpt)
    restored = LMRecModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert restored.hparams.adapter == str(path)
    restored.attach(dm.data.catalog)
    assert all(torch.equal(v, run.state_dict()[k]) for k, v in restored.state_dict().items())
