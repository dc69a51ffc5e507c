"""Issue 18, case 6 (and issue 19's unknown-key message): every error a user can cause ends the
command with one line naming the file, key or flag and the value, exit 1 (2 when the command line
or a config does not parse), and no traceback unless ``--debug`` / ``GENREC_DEBUG=1`` asks for one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from genrec.cli import main
from genrec.errors import ConfigError, user_error
from genrec.quantize import SemanticIDs
from tests.reliability.helpers import data_yaml, error_line, run_cli
from tests.test_configs import ROOT, tiny_sids

pytestmark = pytest.mark.usefixtures("one_thread")

SASREC = str(ROOT / "configs/sasrec/synthetic.yaml")


def _fit(tmp_path, *extra: str) -> list[str]:
    return ["fit", "--config", data_yaml(tmp_path), "--config", SASREC, "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.logger", "false", *extra]  # checkpoints: <root>/checkpoints


def test_empty_data_file_names_the_file(tmp_path, capsys):
    (tmp_path / "meta.json").write_text('{"asin": "A1", "title": "x"}\n')
    (tmp_path / "reviews.json").write_text("")
    config = {"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": {"name": "empty", "source": {
        "class_path": "genrec.data.formats.Amazon2018Source",
        "init_args": {"reviews": str(tmp_path / "reviews.json"), "meta": str(tmp_path / "meta.json")}}}}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    code, line = error_line(["data", "--config", str(tmp_path / "data.yaml")], capsys)
    assert code == 1 and f"reviews={tmp_path / 'reviews.json'}" in line and "no interactions left" in line and "(0 events read)" in line


def test_min_length_below_three(tmp_path, capsys):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), "--data.init_args.min_length", "1"], capsys)
    assert (code, line) == (1, "error: SequenceDataModule: min_length must be >= 3, got 1")


def test_negative_batch_size_names_batch_size(tmp_path, capsys):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), "--data.init_args.batch_size", "-4"], capsys)
    assert (code, line) == (1, "error: SequenceDataModule: batch_size must be >= 1, got -4")


def test_negative_learning_rate(tmp_path, capsys):
    code, line = error_line(_fit(tmp_path, "--model.init_args.lr", "-1"), capsys)
    assert (code, line) == (1, "error: SASRecModule: lr must be > 0, got -1.0")


def test_negative_max_epochs(tmp_path, capsys):
    code, line = error_line(_fit(tmp_path, "--trainer.max_epochs", "-3"), capsys)
    assert code == 1 and line.startswith("error: trainer: `max_epochs` must be a non-negative integer or -1") and "-3" in line


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_given_to_test(tmp_path, capsys, damage):
    path = tmp_path / f"{damage}.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4096)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    code, line = error_line(["test", "--config", data_yaml(tmp_path), "--config", SASREC, "--trainer.accelerator", "cpu",
                             "--trainer.logger", "false", "--ckpt_path", str(path)], capsys)
    assert code == 1 and line.startswith(f"error: {path}: not a readable checkpoint")


def test_truncated_sid_file_given_to_fit(tmp_path, capsys):
    sids = tiny_sids(tmp_path)
    with open(sids, "r+b") as f:
        f.truncate(200)
    code, line = error_line(["fit", "--config", data_yaml(tmp_path), "--config", str(ROOT / "configs/tiger/synthetic.yaml"),
                             "--model.init_args.sids", sids, "--trainer.accelerator", "cpu"], capsys)
    assert code == 1 and line.startswith(f"error: {sids}: not a readable semantic-ID file, truncated or damaged")


def test_truncated_sid_file_at_the_tokenize_output_is_rebuilt(tmp_path, capsys, caplog):
    args = ["tokenize", "--config", data_yaml(tmp_path), "--config", str(ROOT / "configs/encode/cf.yaml"), "--encoder.cf_dim", "8",
            "--config", str(ROOT / "configs/tokenizer/rqkmeans.yaml"), "--tokenizer.init_args.codebook_size", "4",
            "--encode.output", str(tmp_path / "emb.safetensors"), "--tokenize.output", str(tmp_path / "sids.safetensors"),
            "--tokenize.accelerator", "cpu"]
    assert run_cli(args, capsys)[0] == 0
    expected = SemanticIDs.load(tmp_path / "sids.safetensors").table
    with open(tmp_path / "sids.safetensors", "r+b") as f:
        f.truncate(100)
    code, _ = run_cli(args, capsys)
    assert code == 0 and "rebuilding" in caplog.text and "truncated or damaged" in caplog.text
    assert torch.equal(SemanticIDs.load(tmp_path / "sids.safetensors").table, expected)  # rebuilt, same seed


def test_abbreviated_flag_is_not_taken_for_the_full_one(tmp_path, capsys):
    code, line = error_line(_fit(tmp_path, "--trainer.max_epoch", "3"), capsys)
    assert (code, line) == (2, "error: unknown flag --trainer.max_epoch; did you mean --trainer.max_epochs?")


def test_unknown_key_given_as_a_flag(tmp_path, capsys):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), "--data.kcor", "5"], capsys)
    assert (code, line) == (2, "error: unknown key data.kcor (flag --data.kcor); did you mean kcore?")


def test_unknown_key_inside_a_yaml(tmp_path, capsys):
    path = data_yaml(tmp_path)
    text = Path(path).read_text().replace("kcore: 0", "kcor: 0")
    Path(path).write_text(text)
    line_number = text.splitlines().index("    kcor: 0") + 1
    code, line = error_line(["data", "--config", path], capsys)
    assert (code, line) == (2, f"error: unknown key data.kcor ({path}:{line_number}); did you mean kcore?")


def test_unknown_key_of_a_nested_class(tmp_path, capsys):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), "--data.init_args.source.init_args.num_user", "5"], capsys)
    assert (code, line) == (2, "error: unknown key data.source.num_user (flag --data.init_args.source.init_args.num_user); did you mean num_users?")


def test_unknown_trainer_key_inside_a_model_yaml(tmp_path, capsys):
    model = tmp_path / "model.yaml"
    text = (ROOT / "configs/sasrec/synthetic.yaml").read_text().replace("max_epochs: 10", "max_epoch: 10")
    model.write_text(text)
    line_number = text.splitlines().index("  max_epoch: 10") + 1
    code, line = error_line(["fit", "--config", data_yaml(tmp_path), "--config", str(model)], capsys)
    assert (code, line) == (2, f"error: unknown key trainer.max_epoch ({model}:{line_number}); did you mean max_epochs?")


def test_wrong_type_names_the_key_and_the_value(tmp_path, capsys):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), "--data.init_args.kcore", "abc"], capsys)
    assert (code, line) == (2, "error: data.kcore (flag --data.init_args.kcore): expected int, got abc")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    """With --debug (or GENREC_DEBUG=1) the exception propagates, its chain holding the cause."""
    args = ["data", "--config", data_yaml(tmp_path), "--data.init_args.min_length", "1"]
    for debug_args, env in (([*args, "--debug"], None), (args, "1")):
        if env:
            monkeypatch.setenv("GENREC_DEBUG", env)
        with pytest.raises(Exception) as raised:  # noqa: PT011 - the chain is checked below
            main(debug_args)
        cause = user_error(raised.value, ())
        assert isinstance(cause, ConfigError) and str(cause) == "SequenceDataModule: min_length must be >= 3, got 1"


def test_truncated_last_checkpoint_given_to_fit_resume(tmp_path, capsys):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(4096)}}, last)
    last.write_bytes(last.read_bytes()[:1000])
    code, line = error_line(_fit(tmp_path, "--ckpt_path", "last"), capsys)
    assert code == 1 and line.startswith(f"error: {last}: not a readable checkpoint")
