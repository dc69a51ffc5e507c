"""The pipeline end to end on tiny synthetic data: every section of the report, skipping of
finished stages, and re-running exactly what a config change touches."""

import yaml

from genrec.cli import main
from tests.test_configs import ROOT, TINY_DATA


def _config(tmp_path, sasrec_epochs: int) -> str:
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    fast = ["--trainer.check_val_every_n_epoch", "1", "--trainer.accelerator", "cpu", "--data.init_args.batch_size", "32"]
    config = {
        "name": "tiny",
        "root": str(tmp_path / "runs"),
        "data": str(data),
        "encoder": str(ROOT / "configs/encode/minilm.yaml"),
        "tokenizer": str(ROOT / "configs/tokenizer/rqkmeans.yaml"),
        "models": {"tiger": str(ROOT / "configs/tiger/synthetic.yaml"), "sasrec": str(ROOT / "configs/sasrec/synthetic.yaml")},
        "overrides": {
            "tokenize": ["--tokenizer.init_args.codebook_size", "8", "--tokenize.accelerator", "cpu", "--encode.accelerator", "cpu"],
            "tiger": ["--trainer.max_epochs", "1", *fast],
            "sasrec": ["--trainer.max_epochs", str(sasrec_epochs), *fast],
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_pipeline_report_skip_and_rerun(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    main(["pipeline", "--config", _config(tmp_path, sasrec_epochs=1)])
    run = tmp_path / "runs" / "tiny"
    report = (run / "report.md").read_text()
    for section in ("## Data", "## Semantic IDs", "## Results", "| tiger (TigerModule) |", "| sasrec (SASRecModule) |", "| popularity |"):
        assert section in report, section
    assert (run / "recall_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    relocated = yaml.safe_load((run / "tiger" / "config.yaml").read_text())["trainer"]
    assert relocated["default_root_dir"] == str(run / "tiger")  # checkpoints and logs live in the run
    assert any((run / "tiger" / "checkpoints").glob("*.ckpt"))
    stamps = {m: (run / m / "result.json").stat().st_mtime_ns for m in ("tiger", "sasrec")}

    main(["pipeline", "--config", _config(tmp_path, sasrec_epochs=1)])  # nothing changed: all skipped
    assert {m: (run / m / "result.json").stat().st_mtime_ns for m in stamps} == stamps

    main(["pipeline", "--config", _config(tmp_path, sasrec_epochs=2)])  # only SASRec's config changed
    assert (run / "tiger" / "result.json").stat().st_mtime_ns == stamps["tiger"]
    assert (run / "sasrec" / "result.json").stat().st_mtime_ns != stamps["sasrec"]
    assert yaml.safe_load((run / "sasrec" / "result.json").read_text())["epochs"] == 2
