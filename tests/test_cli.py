"""The CLI's own behaviour: fit ends with a test on the best checkpoint, fit resumes from
`--ckpt_path last`, and the `presets` command reports parameter counts."""

from pathlib import Path

import torch

from genrec.cli import GenRecCLI, run_presets
from genrec.models import presets
from tests.test_configs import ROOT, TINY_DATA, tiny_sids


def _cli(tmp_path: Path, epochs: int, extra: list[str] = ()) -> GenRecCLI:
    import yaml

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    args = ["fit", "--config", str(data), "--config", str(ROOT / "configs/tiger/synthetic.yaml")]
    args += ["--model.init_args.sids", tiny_sids(tmp_path), "--trainer.accelerator", "cpu"]
    args += ["--trainer.max_epochs", str(epochs), "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false"]
    args += ["--data.init_args.batch_size", "64", *extra]
    return GenRecCLI(args=args)


def test_fit_tests_best_checkpoint_and_resumes_from_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's checkpoint folders are relative
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = _cli(tmp_path, epochs=1)
        assert "test/recall@10" in first.trainer.callback_metrics  # fit ended with a test pass
        assert first.trainer.checkpoint_callback.best_model_path
        steps = first.trainer.global_step
        last = Path(first.trainer.checkpoint_callback.dirpath) / "last.ckpt"
        assert last.is_file()
        resumed = _cli(tmp_path, epochs=2, extra=["--ckpt_path", "last"])
        assert resumed.trainer.current_epoch == 2
        assert resumed.trainer.global_step == 2 * steps  # continued, not restarted
    finally:
        torch.set_num_threads(threads)


def test_presets_command_reports_every_preset(capsys):
    rows = run_presets([])
    assert [r["preset"] for r in rows if r["model"] == "tiger"] == presets.names()
    counts = {r["preset"]: r["parameters"] for r in rows}
    assert counts["13m"] == presets.count_parameters(presets.TigerConfig.from_name("13m"))
    assert [r["preset"] for r in rows if r["model"] == "lm"] == presets.lm_names()
    assert counts["qwen3-0.6b"] == presets.count_lm_parameters(presets.LMRecConfig.from_name("qwen3-0.6b"))
    out = capsys.readouterr().out
    assert "12,979,584" in out and "596,049,920" in out


def test_ddp_test_metrics_equal_single_process(tmp_path):
    """Two DDP processes (CPU, gloo) give the same test metrics as one: every user counted once
    (uneven shards, no repeats) and the metric states summed across ranks."""
    import lightning as L

    from genrec.data import SequenceDataModule
    from genrec.data.synthetic import SyntheticSource
    from genrec.models import TigerModule
    from genrec.quantize import SemanticIDs

    init = TINY_DATA["data"]["init_args"]
    source = {**init["source"]["init_args"], "num_users": 39}  # same catalogue, an odd number of users
    datamodule = SequenceDataModule(SyntheticSource(**source), kcore=init["kcore"], eval_batch_size=16)
    assert len(datamodule.dataset("test")) % 2 == 1  # odd: the uneven-shard case
    catalog = datamodule.data.catalog
    codes = torch.randint(0, 8, (len(catalog), 3), generator=torch.Generator().manual_seed(0))
    sids = SemanticIDs.from_codes(codes, 8, fingerprint=catalog.fingerprint()).save(tmp_path / "sids.safetensors")
    torch.manual_seed(0)
    model = TigerModule(sids=str(sids), preset="336k", overrides={"dropout": 0.0})
    results = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
        results[devices] = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    for key in ("test/recall@10", "test/ndcg@10", "test/recall@5", "test/popularity/recall@10"):
        assert abs(results[1][key] - results[2][key]) < 1e-6, (key, results)


def test_ddp_fit_with_length_buckets(tmp_path):
    """Lightning wraps the bucket sampler for 2 DDP ranks (CPU, gloo); training runs on both."""
    import lightning as L

    from genrec.data import SequenceDataModule
    from genrec.data.synthetic import SyntheticSource
    from genrec.models import TigerModule

    init = TINY_DATA["data"]["init_args"]
    datamodule = SequenceDataModule(SyntheticSource(**init["source"]["init_args"]), kcore=init["kcore"], batch_size=16, bucket_by_length=True)
    model = TigerModule(sids=tiny_sids(tmp_path), preset="336k", overrides={"dropout": 0.0})
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    assert trainer.state.finished
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the weights trained in the ranks came back to this process


def _sasrec_run(tmp_path: Path, overrides: list[str] = (), model: str = "configs/sasrec/synthetic.yaml", values: dict | None = None):
    import yaml

    from genrec.stages.fit import build_model_run

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    return build_model_run([data, ROOT / model], ["--trainer.accelerator", "cpu", *overrides],
                           values={"trainer.default_root_dir": str(tmp_path / "run"), **(values or {})})


def test_trainer_defaults_come_from_the_run_folder(tmp_path):
    """A model YAML without logger or callbacks gets, from ``trainer.default_root_dir``, a
    CSVLogger at <root>/logs, a ModelCheckpoint at <root>/checkpoints keeping the best
    val/ndcg@10 and last.ckpt, and a per-step LearningRateMonitor; ``values`` are set on the
    parsed config after the overrides (here the model's width)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    cli = _sasrec_run(tmp_path, ["--model.init_args.hidden_size", "16"], values={"model.init_args.hidden_size": 8})
    root = tmp_path / "run"
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert Path(cli.trainer.logger.save_dir) == root and cli.trainer.logger.name == "logs"
    checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint) and Path(checkpoint.dirpath) == root / "checkpoints"
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/ndcg@10", "max", True)
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, LearningRateMonitor)]
    assert len(monitors) == 1 and monitors[0].logging_interval == "step"
    assert cli.model.hparams.hidden_size == 8  # the value, set after the override's 16

    quiet = _sasrec_run(tmp_path, ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"])
    assert quiet.trainer.logger is None and quiet.trainer.checkpoint_callback is None
    assert not any(isinstance(c, (LearningRateMonitor, ModelCheckpoint)) for c in quiet.trainer.callbacks)


def test_a_configured_checkpoint_is_kept(tmp_path):
    """A ModelCheckpoint the YAML lists replaces the default one (no second one is added)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = tmp_path / "sasrec.yaml"
    text = (ROOT / "configs/sasrec/synthetic.yaml").read_text()
    model.write_text(text + "  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                            f"      init_args: {{dirpath: {tmp_path / 'mine'}, monitor: val/recall@10, mode: max}}\n")
    cli = _sasrec_run(tmp_path, model=str(model))
    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 1 and Path(checkpoints[0].dirpath) == tmp_path / "mine" and checkpoints[0].monitor == "val/recall@10"


def test_no_model_yaml_repeats_the_run_folder_defaults():
    """The logger and checkpoint block lives in the CLI: no model YAML sets them again (a YAML
    may add a callback of its own, e.g. SkipNonFiniteSteps, not one the CLI derives)."""
    import yaml

    derived = ("ModelCheckpoint", "LearningRateMonitor", "StopOnNonFiniteLoss")
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer") or {}
        assert "logger" not in trainer, path
        for callback in trainer.get("callbacks") or []:
            assert not callback["class_path"].endswith(derived), (path, callback)


def test_tokenize_reads_one_accelerator_for_encoder_and_tokenizer(tmp_path):
    """``--accelerator`` of the tokenize command sets the encoder's and the tokenizer's training's
    at once; without it each keeps its own flag."""
    import yaml

    from genrec.stages.tokenize import read_tokenize

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    files = [data, ROOT / "configs/encode/minilm.yaml", ROOT / "configs/tokenizer/rqkmeans.yaml"]
    inputs = read_tokenize(files, ["--accelerator", "cpu"])
    assert inputs.encode["accelerator"] == inputs.settings.accelerator == "cpu"
    own = read_tokenize(files, ["--encode.accelerator", "cpu"])
    assert (own.encode["accelerator"], own.settings.accelerator) == ("cpu", "auto")
    assert own.recorded["class_path"] == "genrec.quantize.RQKMeans" and own.datamodule.name == "tiny"


def test_a_diverged_run_stops_in_one_line_and_tests_its_best_checkpoint(tmp_path, monkeypatch, caplog):
    """The loss turns NaN from the 5th training step on: training stops at the first look at the
    loss after it (every 50 steps and each epoch's first batch), long before the 8 epochs asked
    for, says where in one log line, and ``fit`` still tests the best checkpoint saved before it."""
    import logging

    from genrec.divergence import StopOnNonFiniteLoss
    from genrec.models import TigerModule

    monkeypatch.chdir(tmp_path)
    step_loss = TigerModule.step_loss

    def diverging(self, batch):
        loss = step_loss(self, batch)
        return loss * float("nan") if self.trainer.global_step >= 4 else loss

    monkeypatch.setattr(TigerModule, "step_loss", diverging)
    with caplog.at_level(logging.ERROR, logger="genrec"):
        cli = _cli(tmp_path, epochs=8)
    stop = next(c for c in cli.trainer.callbacks if isinstance(c, StopOnNonFiniteLoss))
    steps_per_epoch = cli.trainer.num_training_batches
    at = stop.stopped_at
    assert at is not None and at["loss"] == "nan" and at["step"] >= 5
    assert at["epoch"] == (at["step"] - 1) // steps_per_epoch < 7  # stopped at the first batch of the next epoch
    assert cli.trainer.global_step == at["step"]  # not one step after it
    lines = [r.getMessage() for r in caplog.records if "training stopped" in r.getMessage()]
    assert lines == [f"training stopped: the loss is nan at step {at['step']} (epoch {at['epoch']}); the checkpoints saved before "
                     "it are kept and the best of them is what is tested (lower the lr, or check the data of this run)"]
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and int(best.rsplit("step=", 1)[1].split(".")[0]) <= 4  # a checkpoint from before the NaN
    assert "test/recall@10" in cli.trainer.callback_metrics  # fit ended with its test pass


def test_the_loss_is_looked_at_every_n_steps_only():
    from types import SimpleNamespace

    from genrec.divergence import StopOnNonFiniteLoss

    stop = StopOnNonFiniteLoss(every=10)
    trainer = SimpleNamespace(global_step=3, current_epoch=1, should_stop=False)
    stop.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, batch_idx=3)
    assert not trainer.should_stop and stop.stopped_at is None  # step 3 of 10: not looked at
    trainer.global_step = 10
    stop.on_train_batch_end(trainer, None, torch.tensor(1.5), None, batch_idx=10)
    assert not trainer.should_stop  # finite
    stop.on_train_batch_end(trainer, None, {"loss": torch.tensor(float("inf"))}, None, batch_idx=10)
    assert trainer.should_stop and stop.stopped_at == {"step": 10, "epoch": 1, "loss": "inf"}
