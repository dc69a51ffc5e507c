"""Issue 18, case 4: a run killed after epoch k and resumed is the uninterrupted run, bit for bit
on the CPU (weights, every logged loss, test metrics), for ``fit --ckpt_path last`` and for the
pipeline's automatic resume. The kill is simulated in-process after epoch k's checkpoint (see
:class:`~tests.reliability.helpers.KillAfterEpoch`); the resumed run is the ordinary command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from genrec.artifacts import read_json
from genrec.cli import GenRecCLI, main
from tests.reliability.helpers import KillAfterEpoch, Killed, data_yaml
from tests.test_configs import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

EPOCHS, KILLED_AFTER = 2, 0
SASREC = [  # a tiny SASRec with dropout (so the global generator matters), validated and checkpointed every epoch
    "--model.init_args.hidden_size", "16", "--model.init_args.num_layers", "1", "--model.init_args.dropout", "0.3",
    "--trainer.max_epochs", str(EPOCHS), "--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]


@pytest.fixture
def kill_after():
    """Every GenRecCLI trainer built until ``.undo()`` dies after epoch ``KILLED_AFTER``."""
    build = GenRecCLI.instantiate_trainer

    def with_kill(self, **kwargs):
        trainer = build(self, **kwargs)
        trainer.callbacks.insert(0, KillAfterEpoch(KILLED_AFTER))
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GenRecCLI, "instantiate_trainer", with_kill)
        yield patch


def _logged(folder: Path) -> list[dict[str, str]]:
    """Every row of every metrics.csv under ``folder`` (the resumed run logs to a new version),
    sorted by step and keeping only filled values."""
    rows = []
    for path in sorted(folder.rglob("metrics.csv")):
        with path.open() as f:
            rows += [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]
    return sorted(rows, key=lambda row: (int(row["step"]), json.dumps(row, sort_keys=True)))


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    """Same weights at the end, the same losses and metrics logged at every step and epoch."""
    a, b = _weights(resumed / "checkpoints" / "last.ckpt"), _weights(uninterrupted / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    logged, expected = _logged(resumed), _logged(uninterrupted)
    assert any("train/loss_step" in row for row in expected) and any("val/loss" in row for row in expected)
    assert {int(row["epoch"]) for row in expected if "train/loss_step" in row} == set(range(EPOCHS))
    assert logged == expected


def _fit(folder: Path, data: str, extra: list[str] = ()) -> None:
    main(["fit", "--config", data, "--config", str(ROOT / "configs/sasrec/synthetic.yaml"), *SASREC,
          "--trainer.default_root_dir", str(folder), *extra])  # logs and checkpoints go under the run folder


def test_fit_ckpt_path_last_resumes_bit_exact(tmp_path, kill_after):
    data = data_yaml(tmp_path, users=200, items=80, batch_size=64)
    with pytest.raises(Killed):
        _fit(tmp_path / "resumed", data)
    kill_after.undo()
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").is_file()
    _fit(tmp_path / "resumed", data, ["--ckpt_path", "last"])
    _fit(tmp_path / "uninterrupted", data)
    _assert_same_run(tmp_path / "resumed", tmp_path / "uninterrupted")


def _pipeline(tmp_path: Path, root: str) -> str:
    config = {
        "name": "tiny", "root": str(tmp_path / root), "data": data_yaml(tmp_path, users=200, items=80, batch_size=64),
        "models": {"sasrec": str(ROOT / "configs/sasrec/synthetic.yaml")}, "overrides": {"sasrec": SASREC},
    }
    path = tmp_path / f"{root}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_pipeline_automatic_resume_bit_exact(tmp_path, kill_after):
    with pytest.raises(Killed):
        main(["pipeline", "--config", _pipeline(tmp_path, "resumed")])
    kill_after.undo()
    main(["pipeline", "--config", _pipeline(tmp_path, "resumed")])  # the pipeline resumes on its own
    main(["pipeline", "--config", _pipeline(tmp_path, "uninterrupted")])
    resumed, uninterrupted = tmp_path / "resumed" / "tiny" / "sasrec", tmp_path / "uninterrupted" / "tiny" / "sasrec"
    assert read_json(resumed / "result.json")["resumed"] and not read_json(uninterrupted / "result.json")["resumed"]
    assert read_json(resumed / "result.json")["metrics"] == read_json(uninterrupted / "result.json")["metrics"]
    _assert_same_run(resumed, uninterrupted)
