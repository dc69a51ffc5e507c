"""Issue 18, case 1: nothing runs from a file a run folder holds. A pickled payload in a
checkpoint is refused (``weights_only``) without running; a ``class_path`` outside genrec's models
in the run's config is refused before anything is imported; only ``<model>/config.yaml`` (what
``fit`` writes beside ``checkpoints/``) is read, never a config planted elsewhere in the folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genrec.cli import main
from genrec.errors import ArtifactError
from genrec.recommender import Recommender
from tests.reliability.helpers import data_yaml, error_line
from tests.test_configs import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A genuine SASRec run: one epoch of ``fit`` on tiny data, validated and checkpointed."""
    tmp = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(["fit", "--config", data_yaml(tmp), "--config", str(ROOT / "configs/sasrec/synthetic.yaml"),
              "--model.init_args.hidden_size", "16", "--model.init_args.num_layers", "1",
              "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp / "sasrec")])  # logs, checkpoints under it
    finally:
        torch.set_num_threads(threads)
    return tmp / "sasrec"


class Payload:
    """Unpickling this creates the folder ``marker``: what an attacker's checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    return copy


@pytest.fixture
def evil_module(tmp_path, monkeypatch) -> Path:
    """An importable module ``evil_genrec_probe`` whose import creates a marker folder; returns the marker."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_genrec_probe.py").write_text(f"import os\nos.mkdir({str(marker)!r})\nclass Model: pass\nclass Source: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_genrec_probe", raising=False)
    return marker


def test_genuine_checkpoint_loads_weights_only(model_folder):
    recommender = Recommender.load(model_folder, checkpoint="last")
    history = recommender.catalog.external_ids[:3]
    assert len({r.item for r in recommender.recommend(history, k=5)}) == 5
    assert Recommender.load(model_folder).module.__class__.__name__ == "SASRecModule"  # "best" via last.ckpt's record


@pytest.mark.parametrize("checkpoint", ["last", "best"])
def test_pickled_payload_in_checkpoint_is_not_run(model_folder, tmp_path, checkpoint):
    run = _copy(model_folder, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "callbacks": Payload(marker)}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(ArtifactError, match=r"last\.ckpt: not a readable checkpoint"):
        Recommender.load(run, checkpoint=checkpoint)
    assert not marker.exists()
    # the payload is real: unpickling it the old way runs it
    torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert marker.is_dir()


def test_recommend_command_refuses_pickled_checkpoint_in_one_line(model_folder, tmp_path, capsys):
    run = _copy(model_folder, tmp_path)
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), run / "checkpoints" / "last.ckpt")
    code, line = error_line(["recommend", "--run", str(run), "--history", '["I0001"]', "--checkpoint", "last"], capsys)
    assert code == 1 and "last.ckpt: not a readable checkpoint" in line
    assert not marker.exists()


@pytest.mark.parametrize("block", ["model", "data source"])
def test_foreign_class_path_is_refused_before_import(model_folder, tmp_path, evil_module, block):
    run = _copy(model_folder, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    if block == "model":
        config["model"]["class_path"] = "evil_genrec_probe.Model"
    else:
        config["data"]["init_args"]["source"]["class_path"] = "evil_genrec_probe.Source"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    expected = "is not a genrec model" if block == "model" else "lies outside genrec; refusing to import it"
    with pytest.raises(ArtifactError, match=expected):
        Recommender.load(run, checkpoint="last")
    assert not evil_module.exists() and "evil_genrec_probe" not in sys.modules


def test_config_planted_elsewhere_in_the_folder_is_not_read(model_folder, tmp_path, evil_module):
    run = _copy(model_folder, tmp_path)
    planted = run / "logs" / "version_99" / "config.yaml"  # newer than the real one, as the old rglob preferred
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["class_path"] = "evil_genrec_probe.Model"
    planted.parent.mkdir(parents=True)
    planted.write_text(yaml.safe_dump(config))
    assert Recommender.load(run, checkpoint="last").module.__class__.__name__ == "SASRecModule"
    (run / "config.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"run/config\.yaml not found"):
        Recommender.load(run, checkpoint="last")
    assert not evil_module.exists()


def test_checkpoint_naming_a_foreign_class_is_refused_by_test_command(model_folder, tmp_path, evil_module, capsys):
    checkpoint = torch.load(model_folder / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "evil_genrec_probe.Model"
    forged = tmp_path / "forged.ckpt"
    torch.save(checkpoint, forged)
    code, line = error_line(["test", "--config", str(model_folder / "config.yaml"), "--ckpt_path", str(forged)], capsys)
    assert code == 1 and "forged.ckpt: the checkpoint names the class 'evil_genrec_probe.Model'" in line
    assert not evil_module.exists()
