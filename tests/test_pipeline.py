"""The pipeline end to end on tiny synthetic data: every section of the report, skipping of
finished stages, re-running exactly what a config change touches, and resuming a killed model
stage from its last checkpoint."""

import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from genrec.artifacts import read_json
from genrec.cli import main
from genrec.data.catalog import Item
from genrec.data.formats.base import DataFormatError, DataSource, RawData, read_text
from genrec.models import SASRecModule
from genrec.pipeline import PipelineConfig, run_pipeline, unused_overrides, write_report
from tests.test_configs import ROOT, TINY_DATA

FAST = ["--trainer.check_val_every_n_epoch", "1", "--data.init_args.batch_size", "32"]
MODELS = {  # name -> (config, overrides besides FAST and the epochs)
    "tiger": ("configs/tiger/synthetic.yaml", []),
    "sasrec": ("configs/sasrec/synthetic.yaml", []),
    "lm": (  # the from-scratch LM shrunk to one narrow layer (the 49k-token vocabulary dominates)
        "configs/lm/tiny-scratch.yaml",
        ["--model.init_args.overrides", json.dumps({"num_layers": 1, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}),
         "--model.init_args.prompt.max_tokens", "96", "--model.init_args.evaluation.beam_width", "10", "--model.init_args.optimizer.warmup_steps", "0"],
    ),
}


def pipeline_config(tmp_path, epochs: dict[str, int]) -> str:
    """A pipeline YAML in ``tmp_path`` over TINY_DATA: the models of ``MODELS`` named in ``epochs``,
    in that order, each trained that many epochs, validated and checkpointed every epoch, every
    stage on the CPU (the pipeline's one ``accelerator`` switch); outputs under
    ``tmp_path / "runs" / "tiny"``."""
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    config = {
        "name": "tiny",
        "root": str(tmp_path / "runs"),
        "data": str(data),
        "encoder": str(ROOT / "configs/encode/minilm.yaml"),
        "tokenizer": str(ROOT / "configs/tokenizer/rqkmeans.yaml"),
        "models": {name: str(ROOT / MODELS[name][0]) for name in epochs},
        "accelerator": "cpu",
        "overrides": {
            "tokenize": ["--tokenizer.init_args.codebook_size", "8"],
            **{name: ["--trainer.max_epochs", str(n), *FAST, *MODELS[name][1]] for name, n in epochs.items()},
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_pipeline_report_skip_and_rerun(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    main(["pipeline", "--config", pipeline_config(tmp_path, {"tiger": 1, "sasrec": 1})])
    run = tmp_path / "runs" / "tiny"
    report = (run / "report.md").read_text()
    for section in ("## Data", "## Semantic IDs", "## Results", "| tiger (TigerModule) |", "| sasrec (SASRecModule) |", "| popularity |"):
        assert section in report, section
    for plot in ("recall_vs_params.png", "sid_usage.png"):
        assert (run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot})" in report, plot
    assert report.index("](sid_usage.png)") < report.index("## Results")  # in the SID section
    level0 = next(line for line in report.splitlines() if line.startswith("| 0 |"))
    assert re.search(r"\| \d+\.\d\d% \(\d+\.\d\d%\) \|$", level0), level0  # next item shares the prefix (chance)
    relocated = yaml.safe_load((run / "tiger" / "config.yaml").read_text())["trainer"]
    assert relocated["default_root_dir"] == str(run / "tiger")  # checkpoints and logs live in the run
    assert any((run / "tiger" / "checkpoints").glob("*.ckpt"))
    stamps = {m: (run / m / "result.json").stat().st_mtime_ns for m in ("tiger", "sasrec")}

    main(["pipeline", "--config", pipeline_config(tmp_path, {"tiger": 1, "sasrec": 1})])  # nothing changed: all skipped
    assert {m: (run / m / "result.json").stat().st_mtime_ns for m in stamps} == stamps

    main(["pipeline", "--config", pipeline_config(tmp_path, {"tiger": 1, "sasrec": 2})])  # only SASRec's config changed
    assert (run / "tiger" / "result.json").stat().st_mtime_ns == stamps["tiger"]
    assert (run / "sasrec" / "result.json").stat().st_mtime_ns != stamps["sasrec"]
    assert yaml.safe_load((run / "sasrec" / "result.json").read_text())["epochs"] == 2

    # The SID file's bytes, not its path or time, key TIGER's result: a copy on another machine
    # (a new modification time) reuses it, as a scaling study split over machines needs.
    sids = run / "sids" / "rqkmeans.safetensors"
    later = sids.stat().st_mtime_ns + 10**10
    os.utime(sids, ns=(later, later))
    main(["pipeline", "--config", pipeline_config(tmp_path, {"tiger": 1, "sasrec": 2})])
    assert (run / "tiger" / "result.json").stat().st_mtime_ns == stamps["tiger"]
    assert sids.stat().st_mtime_ns == later  # the tokenize stage reused the file too


def test_killed_model_stage_resumes_from_last_checkpoint(tmp_path, monkeypatch, caplog, one_thread):
    """A crash in epoch 2 of 3 leaves ``last.ckpt`` of epoch 1 and no result; the re-run trains
    epoch 2 only, from that checkpoint, and finishes the stage."""
    monkeypatch.chdir(tmp_path)
    config = pipeline_config(tmp_path, {"sasrec": 3})
    folder = tmp_path / "runs" / "tiny" / "sasrec"
    started: list[int] = []

    def killed_in_epoch_2(module):
        started.append(module.current_epoch)
        if module.current_epoch == 2:
            raise RuntimeError("killed")
        time.sleep(0.6)  # epochs 0 and 1 take >= 1.2 s: time the resumed run must still report

    monkeypatch.setattr(SASRecModule, "on_train_epoch_start", killed_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed"):
        main(["pipeline", "--config", config])
    assert started == [0, 1, 2] and not (folder / "result.json").exists()
    killed = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert killed["epoch"] == 1 and killed["global_step"] > 0

    started.clear()
    monkeypatch.setattr(SASRecModule, "on_train_epoch_start", lambda module: started.append(module.current_epoch))
    with caplog.at_level(logging.INFO, logger="genrec.pipeline"):
        main(["pipeline", "--config", config])
    assert started == [2]  # resumed, not started over
    assert "sasrec: resuming from" in caplog.text
    final = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == killed["global_step"] * 3 // 2  # the steps of one more epoch
    result = read_json(folder / "result.json")
    assert result["epochs"] == 3 and result["resumed"] is True
    # the training time of the killed segment (up to its last checkpoint) is counted too
    assert result["train_seconds"] >= 1.2


def test_pipeline_output_without_a_terminal(tiny_run):
    """With stdout redirected (a file, a pipe, a cluster log; here a buffer), every stage prints
    a header and its wall time, training prints plain progress lines instead of Rich's bar
    (one per millisecond asked for here), and the report lists the stage times."""
    run, out = tiny_run
    stages = ["data", "tokenize", "lm", "sasrec", "tiger", "report"]  # models in the YAML's (sorted) order
    headers = re.findall(r"^== stage (\d)/(\d): (\w+)", out, flags=re.M)
    assert [name for _, _, name in headers] == stages
    assert all(total == "6" for _, total, _ in headers) and [int(i) for i, _, _ in headers] == list(range(1, 7))
    for name in stages:
        assert re.search(rf"^== {name}: \d+\.\d s ==$", out, flags=re.M), name
    progress = re.findall(r"^progress (\w+) train epoch 1/1 step (\d+)/(\d+) loss (\d+\.\d+) \| (\d+\.\d+) it/s \| "
                          r"elapsed \d+:\d\d \| ETA \d+:\d\d$", out, flags=re.M)
    assert {cls for cls, *_ in progress} >= {"TigerModule", "SASRecModule", "LMRecModule"}
    assert all(int(step) <= int(total) for _, step, total, *_ in progress)
    assert re.search(r"^progress \w+ test step \d+/\d+ \|", out, flags=re.M)
    assert re.search(r"^validation TigerModule epoch 1: val/loss \d\.\d{4}  val/ndcg@10 ", out, flags=re.M)
    assert not re.search(r"\d+/\d+ \d+:\d\d:\d\d • ", out)  # no Rich progress bar ("6/6 0:00:13 • 0:00:00 ...") in a log
    report = (run / "report.md").read_text()
    section = report[report.index("## Stage times"):]
    for name in stages[:-1]:
        assert re.search(rf"^\| {name} \| \d+\.\d s \|", section, flags=re.M), name
    cold = re.search(r"Cold start: test users whose target item occurs at most 5 times in training: (\d+) of (\d+) test users", report)
    assert cold and int(cold.group(2)) == read_json(run / "data.json")["split"]["test"]
    assert int(cold.group(1)) == read_json(run / "tiger" / "result.json")["cold_test_users"]
    for name in stages[2:5]:  # each result records its val curve (one validation per epoch here) and its best epoch
        result = read_json(run / name / "result.json")
        curve = result["val_curve"]
        assert curve["monitor"] == "val/ndcg@10" and [epoch for epoch, _ in curve["points"]] == list(range(result["epochs"]))
        assert result["best_epoch"] == max(curve["points"], key=lambda point: point[1])[0]


def test_report_lists_only_the_runs_overrides(tiny_run, tmp_path, monkeypatch, caplog):
    """An override for a stage the run does not have (here a SASRec-only run whose YAML still
    carries TIGER and tokenize overrides) is left out of the report's config line, named as
    ignored, and warned about; the config's notes end the report."""
    run, _ = tiny_run
    config = PipelineConfig(
        name="sasrec-only", root=str(tmp_path), data=str(run.parent.parent / "data.yaml"),
        models={"sasrec": str(ROOT / MODELS["sasrec"][0])},
        overrides={"sasrec": ["--trainer.max_epochs", "1"], "tiger": ["--trainer.max_epochs", "9"], "tokenize": ["--tokenize.accelerator", "cpu"]},
        notes=["SASRec trains one epoch here."],
    )
    assert unused_overrides(config) == ["tiger", "tokenize"]
    results = {"sasrec": read_json(run / "sasrec" / "result.json")}
    report = write_report(config, read_json(run / "data.json"), None, results, "test").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- config:"))
    assert "sasrec: [" in line and "tiger: [" not in line and "tokenize: [" not in line, line
    assert "- ignored overrides (no such stage in this run): tiger, tokenize" in report
    assert report.endswith("## Notes\n\n- SASRec trains one epoch here.\n") and "notes" not in line
    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the checks")

    monkeypatch.setattr("genrec.pipeline.load_data", stop)
    with caplog.at_level(logging.WARNING, logger="genrec.pipeline"), pytest.raises(RuntimeError, match="stopped"):
        run_pipeline(config)
    assert "overrides for stages this run does not have are ignored: tiger, tokenize" in caplog.text


def test_report_states_an_evaluated_subset_and_a_diverged_run(tmp_path):
    """A model tested on a subset of the test users (LMRecModule's max_eval_users) gets a line
    saying how many of how many; a model tested on everyone gets none. A run stopped at a NaN
    loss says so beside its epochs."""
    from genrec.pipeline import PipelineConfig, write_report

    stats = {"data": {"name": "tiny"}, "split": {"train": 10, "val": 5, "test": 5},
             "stats": {"users": 5, "items": 9, "interactions": 30, "length_min": 3, "length_mean": 6.0, "length_max": 9}}
    metrics = {"test/recall@10": 0.1}
    results = {
        "lm": {"class": "LMRecModule", "parameters": 10, "train_seconds": 1, "epochs": 1,
               "metrics": {**metrics, "test/users": 2000.0, "test/users_total": 8317.0}},
        "sasrec": {"class": "SASRecModule", "parameters": 20, "train_seconds": 1, "epochs": 1, "metrics": metrics},
    }
    report = write_report(PipelineConfig(name="r", data="d.yaml", root=str(tmp_path)), stats, None, results, "cmd").read_text()
    assert "- lm: evaluated 2,000 of 8,317 test users (a seeded random subset, max_eval_users)." in report
    assert "sasrec: evaluated" not in report
    results["lm"]["diverged"] = {"step": 1149, "epoch": 1, "loss": "nan"}  # StopOnNonFiniteLoss stopped it
    report = write_report(PipelineConfig(name="r", data="d.yaml", root=str(tmp_path)), stats, None, results, "cmd").read_text()
    assert "| 1 | 1 (stopped: loss nan at step 1149) |" in report and report.count("stopped: loss") == 1


def test_one_accelerator_reaches_every_stage(tmp_path, monkeypatch):
    """The pipeline's ``accelerator`` is the encoder's, the tokenizer's training's and every
    model trainer's (each YAML says ``auto``); the stages are called as functions, with the
    run's output paths set on their typed inputs."""
    import genrec.pipeline as pipeline

    seen = {}

    def tokenize_stage(inputs):
        seen["encode"], seen["tokenize"] = inputs.encode["accelerator"], inputs.settings.accelerator
        seen["outputs"] = inputs.encode["output"], inputs.settings.output
        path = tmp_path / "runs" / "tiny" / "sids" / "rqkmeans.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"sids")
        return path

    def build_model_run(files, overrides, values):
        seen["model"] = values
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(pipeline, "tokenize_stage", tokenize_stage)
    monkeypatch.setattr(pipeline, "build_model_run", build_model_run)
    config = PipelineConfig(**yaml.safe_load(Path(pipeline_config(tmp_path, {"tiger": 1})).read_text()))
    assert config.accelerator == "cpu"
    with pytest.raises(RuntimeError, match="stopped before training"):
        run_pipeline(config)
    run = tmp_path / "runs" / "tiny"
    assert seen["encode"] == seen["tokenize"] == seen["model"]["trainer.accelerator"] == "cpu"
    assert seen["outputs"] == (str(run / "embeddings" / "minilm.safetensors"), str(run / "sids" / "rqkmeans.safetensors"))
    assert seen["model"]["trainer.default_root_dir"] == str(run / "tiger")
    assert read_json(run / "data.json")["split"]["test"] == 40


class TsvSource(DataSource):
    """A data format defined here, outside genrec (docs/extending.md's example): ``items.tsv``
    (``item<TAB>title``) and ``events.tsv`` (``user<TAB>item<TAB>time``) in one folder."""

    def __init__(self, path: str, skip_bad_lines: bool = False, missing_items: str = "error") -> None:
        super().__init__(skip_bad_lines, missing_items)
        self.path = Path(path)

    def read(self) -> RawData:
        raw = RawData(items={})
        for number, line in enumerate(read_text(self.path / "items.tsv", raw.report).splitlines(), 1):
            fields = self.parse_line(self.path / "items.tsv", number, line, lambda s: s.split("\t"), raw.report)
            if fields is not None:
                raw.items[fields[0]] = Item.from_raw(fields[0], title=fields[1])
        events = self.path / "events.tsv"
        for number, line in enumerate(read_text(events, raw.report).splitlines(), 1):
            fields = self.parse_line(events, number, line, lambda s: s.split("\t"), raw.report)
            if fields is not None and len(fields) != 3:
                self.bad_record(events, number, f"expected 3 fields, got {len(fields)}", raw.report)
            elif fields is not None and self.keep_event(raw, fields[1], f"{events}:{number}"):
                raw.add(fields[0], fields[1], float(fields[2]))
        return raw


def test_a_data_format_defined_outside_genrec_runs_through_the_pipeline(tmp_path, monkeypatch, one_thread):
    """A reader subclassing DataSource in this test file, named by class_path, feeds the pipeline
    (SASRec, one epoch) with no edit under genrec/; a malformed line is one error naming file:line."""
    import random

    folder = tmp_path / "tsv"
    folder.mkdir()
    (folder / "items.tsv").write_text("".join(f"i{i}\tItem {i}\n" for i in range(30)))
    rng = random.Random(0)
    (folder / "events.tsv").write_text("".join(f"u{u}\ti{rng.randrange(30)}\t{1_600_000_000 + t}\n" for u in range(30) for t in range(8)))
    data = tmp_path / "tsv.yaml"
    data.write_text(yaml.safe_dump({"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": {
        "name": "tsv", "kcore": 0, "source": {"class_path": "tests.test_pipeline.TsvSource", "init_args": {"path": str(folder)}}}}}))
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig(name="tsv", data=str(data), root=str(tmp_path / "runs"), accelerator="cpu",
                            models={"sasrec": str(ROOT / MODELS["sasrec"][0])}, overrides={"sasrec": ["--trainer.max_epochs", "1", *FAST]})
    report = run_pipeline(config).read_text()
    assert "tsv: 30 users, 30 items, 240 interactions" in report and "| sasrec (SASRecModule) |" in report
    assert read_json(tmp_path / "runs" / "tsv" / "sasrec" / "result.json")["test_users"] == 30

    with (folder / "events.tsv").open("a") as f:
        f.write("u1\ti2\n")
    with pytest.raises(DataFormatError, match=r"events.tsv:241: expected 3 fields, got 2"):
        run_pipeline(config)
