"""Per-sweep SIDs of the ``scaling`` command (issue 21's encoder and codebook axes): a sweep names
its own encoder / tokenizer / tokenize overrides, its encode + tokenize stages run for real (on
the tiny synthetic data), its runs read its SIDs, its law inputs (N_LLM, N_QT) are counted from
them, and the report's axes table shows it beside the ladder at its size; ``--collect_only``
re-reads the same report. Training is replaced by a stand-in that writes each run's
``result.json`` (the real training path is covered by test_configs.py's sweep of every scaling
config, the axes sweeps of configs/scaling/*.yaml included)."""

import pytest
import yaml

from genrec.artifacts import read_json, write_json
from genrec.cli import main
from genrec.errors import ConfigError
from genrec.quantize import SemanticIDs
from genrec.scaling import ScalingConfig, count_encoder_parameters, run_scaling
from tests.test_configs import ROOT, TINY_DATA

MINILM = 22_713_216
RECALL = {"tiger": 0.05, "enc-minilm-cf3": 0.07, "codebook-16": 0.06}  # the stand-in's recall per sweep (+ 0.001 x seed)


def _study(tmp_path) -> dict:
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    return {
        "name": "axes",
        "data": str(data),
        "encoder": str(ROOT / "configs/encode/cf.yaml"),
        "tokenizer": str(ROOT / "configs/tokenizer/rqkmeans.yaml"),
        "seeds": [0, 1],
        "root": str(tmp_path / "runs"),
        "accelerator": "cpu",
        # the tiny catalogue has 60 items: small cf embeddings and codebooks
        "overrides": {"tokenize": ["--encoder.cf_dim", "8", "--tokenizer.init_args.codebook_size", "8", "--tokenizer.init_args.iters", "5"]},
        "sweeps": {
            "tiger": {"model": str(ROOT / "configs/tiger/synthetic.yaml"), "presets": ["336k", "6.7m"], "lrs": [0.001, 0.002]},
            "enc-minilm-cf3": {"model": str(ROOT / "configs/tiger/synthetic.yaml"), "presets": ["336k"], "axis": "encoder",
                               "encoder": str(ROOT / "configs/encode/minilm-cf.yaml"), "tokenize_overrides": ["--encoder.cf_weight", "3"]},
            "codebook-16": {"model": str(ROOT / "configs/tiger/synthetic.yaml"), "presets": ["336k"], "axis": "codebook",
                            "tokenize_overrides": ["--tokenizer.init_args.codebook_size", "16"], "description": "cf, RQ-KMeans 3 x 16"},
        },
    }


@pytest.fixture
def fake_training(monkeypatch):
    """Training replaced by a result.json (recall by sweep, a val curve peaking at epoch 6 of 10,
    the lr 0.002 better on val); records each run's SID file."""
    calls: dict[str, str] = {}

    def run_model(pipeline, name, path, sids, values):
        calls[name] = str(sids)
        sweep, seed = name.split("-" + values["model.init_args.preset"])[0], values["seed_everything"]
        val = 0.04 + 0.01 * (values.get("model.init_args.lr") == 0.002)
        recall = RECALL[sweep] + 0.001 * seed
        result = {"parameters": 400_000, "epochs": 10, "best_epoch": 6, "device": "FakeGPU", "train_seconds": 1.0,
                  "val_curve": {"monitor": "val/ndcg@10", "points": [[e, val * min(e, 6) / 6] for e in range(10)]},
                  "metrics": {"test/recall@10": recall, "test/ndcg@10": recall / 2}}
        write_json(pipeline.run_dir / name / "result.json", result)
        return result

    monkeypatch.setattr("genrec.scaling.run_model", run_model)
    return calls


def test_sweeps_with_their_own_sids_make_them_and_report_the_axes(tmp_path, fake_training, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = ScalingConfig(**_study(tmp_path))
    report = run_scaling(config, command="cmd").read_text()
    study = tmp_path / "runs" / "axes"

    # each sweep's runs read its own SIDs, made by its stages with its settings
    assert {fake_training[f"tiger-336k-lr0.001-s{s}"] for s in (0, 1)} == {str(study / "sids" / "rqkmeans.safetensors")}
    assert fake_training["enc-minilm-cf3-336k-s1"] == str(study / "sids" / "enc-minilm-cf3.safetensors")
    assert fake_training["codebook-16-336k-s0"] == str(study / "sids" / "codebook-16.safetensors")
    sids = {name: SemanticIDs.load(study / "sids" / f"{name}.safetensors") for name in ("rqkmeans", "enc-minilm-cf3", "codebook-16")}
    assert [s.codebook_size for s in sids.values()] == [8, 8, 16] and len({s.num_items for s in sids.values()}) == 1
    embeddings = sorted(p.name for p in (study / "embeddings").glob("*.safetensors"))
    assert any(name.startswith("minilm+cf-") for name in embeddings)  # the encoder sweep's hybrid, cf_weight 3
    from genrec.encode import embedding_metadata

    hybrid = next(study / "embeddings" / n for n in embeddings if n.startswith("minilm+cf-") and n.count(".") == 1)
    assert embedding_metadata(hybrid)["cf_weight"] == "3.0"

    # law inputs per sweep: the cf encoder has no parameters, MiniLM's are counted; N_QT from each tokenizer
    summary = read_json(study / "scaling.json")
    sweeps = summary["sweeps"]
    assert sweeps["tiger"]["n_llm"] == 0 and sweeps["enc-minilm-cf3"]["n_llm"] == MINILM and sweeps["codebook-16"]["n_llm"] == 0
    assert sweeps["codebook-16"]["n_qt"] == 2 * sweeps["tiger"]["n_qt"] > 0  # 3 x 16 centroids against 3 x 8, same dimension
    assert all(p["n_llm"] == MINILM for p in sweeps["enc-minilm-cf3"]["points"])
    assert sweeps["codebook-16"]["axis"] == "codebook" and "axis" not in sweeps["tiger"]

    # the axes table: the ladder's row at 336k (its lr chosen on val) then the axis's sweep, mean ± std over seeds
    axes = summary["axes"]
    assert [(axis, r["sweep"]) for axis, rows in axes.items() for r in rows] == [
        ("encoder", "tiger"), ("encoder", "enc-minilm-cf3"), ("codebook", "tiger"), ("codebook", "codebook-16")]
    tiger, encoder = axes["encoder"]
    assert tiger["lr"] == 0.002 and tiger["seeds"] == 2 and abs(tiger["recall_mean"] - 0.0505) < 1e-9
    assert abs(encoder["recall_mean"] - 0.0705) < 1e-9 and abs(encoder["recall_std"] - 0.000707107) < 1e-6
    assert encoder["best_last"] == [[6, 10], [6, 10]] and encoder["n_llm"] == MINILM
    assert "| encoder | 336k | tiger | cf + rqkmeans (--encoder.cf_dim 8 --tokenizer.init_args.codebook_size 8 --tokenizer.init_args.iters 5), the study's | 0.002 | 0 |" in report
    assert "| encoder | 336k | enc-minilm-cf3 | minilm-cf + rqkmeans (--encoder.cf_weight 3) | config | 22,713,216 |" in report
    assert "| 2/2 | 0.0705 ± 0.0007 | 0.0353 ± 0.0004 | 6 / 10, 6 / 10 |" in report
    assert "| codebook | 336k | codebook-16 | cf, RQ-KMeans 3 x 16 | config | 0 |" in report
    assert "- enc-minilm-cf3: 2 points, fewer than the 7 the law needs: not fitted (axis encoder: in the axes table)." in report

    # --collect_only re-reads the same report from the result.json files and the SIDs, training nothing
    fake_training.clear()
    (study / "scaling.md").unlink()
    again = run_scaling(ScalingConfig(**_study(tmp_path)), command="cmd", collect_only=True).read_text()
    assert fake_training == {} and again == report
    assert read_json(study / "scaling.json") == summary


def test_a_sweep_source_falls_back_to_the_study_and_never_inherits_its_counts(tmp_path):
    settings = _study(tmp_path)
    settings.update(encoder_parameters=5, tokenizer_parameters=7)
    config = ScalingConfig(**settings)
    study = config.source("tiger")
    assert study.encoder_parameters == 5 and study.tokenizer_parameters == 7 and study.overrides[:2] == ("--encoder.cf_dim", "8")
    codebook = config.source("codebook-16")
    assert codebook.encoder == study.encoder and codebook.tokenizer == study.tokenizer
    assert codebook.overrides == (*study.overrides, "--tokenizer.init_args.codebook_size", "16")  # the sweep's come last: they win
    assert codebook.encoder_parameters is None and codebook.tokenizer_parameters is None
    assert count_encoder_parameters(str(ROOT / "configs/encode/minilm.yaml"), ["--encoder.model", "cf"]) == 0
    assert count_encoder_parameters(str(ROOT / "configs/encode/cf.yaml"), ["--encoder.model=minilm"]) == MINILM


def _cli_error(tmp_path, capsys, sweep_settings: dict) -> tuple[int, str]:
    settings = _study(tmp_path)
    settings["sweeps"]["codebook-16"].update(sweep_settings)
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit) as exit_:
        main(["scaling", "--config", str(path)])
    return exit_.value.code, capsys.readouterr().err.strip()


def test_bad_per_sweep_settings_are_one_line(tmp_path, fake_training, capsys):
    code, err = _cli_error(tmp_path, capsys, {"tokenize_overrides": ["--tokenizer.init_args.codebok_size", "16"]})
    assert code == 2 and "\n" not in err and err.startswith("error: scaling config: sweep 'codebook-16' (its SIDs:")
    assert "codebok_size" in err
    code, err = _cli_error(tmp_path, capsys, {"tokenize_overrides": ["--data.init_args.kcore", "5"]})
    assert code == 1 and err == ("error: sweep 'codebook-16': tokenize_overrides may only set --encoder.*, --encode.*, --tokenizer.*, "
                                 "--tokenize.*, got '--data.init_args.kcore'")
    code, err = _cli_error(tmp_path, capsys, {"tokenize_overrides": [], "sids": str(tmp_path / "none.safetensors")})
    assert code == 1 and err == f"error: scaling config: sweep 'codebook-16': sids file {tmp_path / 'none.safetensors'} does not exist"
    code, err = _cli_error(tmp_path, capsys, {"model": str(ROOT / "configs/lm/tiny-scratch.yaml"), "paradigm": "llm"})
    assert code == 1 and "sweep 'codebook-16': its model" in err and "reads no semantic IDs" in err and "\n" not in err
    assert fake_training == {}  # nothing trained after a bad setting
    with pytest.raises(ConfigError, match=r"sweep 's': sids .* is a finished artifact, so tokenizer / tokenize_overrides"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"s": {"model": "m.yaml", "presets": ["1m"], "sids": "a.safetensors",
                                                             "tokenize_overrides": ["--tokenizer.init_args.codebook_size", "16"]}})


def test_a_job_training_some_sweeps_runs_only_their_sid_stages(tmp_path, fake_training, monkeypatch):
    """``--only [codebook-16]``: the job makes the SIDs that sweep reads and no other sweep's (the
    MiniLM encoder sweep's stages are not run: a GPU machine without that encoder can train the
    rest), trains only its runs, and still writes the report; a later ``--only`` of the other
    sweeps makes theirs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = tmp_path / "runs" / "axes"
    run_scaling(ScalingConfig(**_study(tmp_path)), command="cmd", only=["codebook-16"])
    assert set(fake_training) == {"codebook-16-336k-s0", "codebook-16-336k-s1"}
    assert (study / "sids" / "codebook-16.safetensors").is_file()
    assert not (study / "sids" / "enc-minilm-cf3.safetensors").exists() and not (study / "sids" / "rqkmeans.safetensors").exists()
    assert not any(p.name.startswith("minilm") for p in (study / "embeddings").glob("*"))
    assert (study / "scaling.md").is_file()
    fake_training.clear()
    run_scaling(ScalingConfig(**_study(tmp_path)), command="cmd", only=["enc-minilm-cf3"])
    assert set(fake_training) == {"enc-minilm-cf3-336k-s0", "enc-minilm-cf3-336k-s1"}
    assert (study / "sids" / "enc-minilm-cf3.safetensors").is_file() and not (study / "sids" / "rqkmeans.safetensors").exists()


def test_collect_only_makes_no_sids(tmp_path, fake_training, monkeypatch):
    """``--collect_only`` writes the report from the result.json files it finds and runs no encode
    or tokenize stage, of the study or of a sweep: a missing SID artifact stays missing (a real
    study's SmolLM2 sweep would otherwise encode for an hour on a CPU just to write a report)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = tmp_path / "runs" / "axes"
    run_scaling(ScalingConfig(**_study(tmp_path)), command="cmd", only=["codebook-16"])
    made = sorted(p.name for p in (study / "sids").glob("*.safetensors"))
    fake_training.clear()
    report = run_scaling(ScalingConfig(**_study(tmp_path)), command="cmd", collect_only=True).read_text()
    assert fake_training == {}
    assert sorted(p.name for p in (study / "sids").glob("*.safetensors")) == made
    assert not (study / "sids" / "rqkmeans.safetensors").exists() and not (study / "sids" / "enc-minilm-cf3.safetensors").exists()
    assert "| codebook-16 |" in report and "tiger-336k-lr0.001-s0" in report  # its runs shown, the others listed as not run


def test_a_fresh_checkout_with_only_the_archive_reports_without_sids(tmp_path, fake_training, monkeypatch):
    """No run folders and no SIDs, only the archive's results (a fresh checkout of the repo):
    ``--collect_only`` reports them and lists the rest as missing, making no SIDs; without the
    SID files the law's N_QT is unknown unless the config gives ``tokenizer_parameters``, which
    the report says in a line (no traceback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = {**_study(tmp_path), "archive": str(tmp_path / "docs" / "runs")}
    archive, study = tmp_path / "docs" / "runs" / "axes", tmp_path / "runs" / "axes"
    for run, recall in (("tiger-336k-lr0.001-s0", 0.05), ("tiger-336k-lr0.002-s0", 0.06), ("codebook-16-336k-s1", 0.07)):
        write_json(archive / f"{run}.json", {"parameters": 400_000, "epochs": 10, "best_epoch": 6, "device": "FakeGPU",
                                              "val_curve": {"monitor": "val/ndcg@10", "points": [[6, recall]]},
                                              "metrics": {"test/recall@10": recall, "test/ndcg@10": recall / 2}})
    report = run_scaling(ScalingConfig(**settings), collect_only=True).read_text()
    assert fake_training == {} and not (study / "sids").exists() and not list(study.glob("*/result.json"))
    assert "| tiger | sid | 336k | 400,000 (400,000) | 1/2 | 0.0600 ± 0.0000 |" in report  # lr 0.002 chosen on the archived val curves
    assert "| tiger | 336k | 0.002 | 0.0600 | 1 | yes |" in report
    assert "| codebook | 336k | codebook-16 | cf, RQ-KMeans 3 x 16 | config | 0 | ? | 1/2 | 0.0700 ± 0.0000 |" in report
    assert "- tiger: not fitted: tokenizer parameter count unknown: its SIDs are not here (set tokenizer_parameters)." in report
    assert "Not run yet (9): tiger-336k-lr0.001-s1, tiger-336k-lr0.002-s1, tiger-6.7m-lr0.001-s0," in report
    assert "read from it alone (3): tiger-336k-lr0.001-s0, tiger-336k-lr0.002-s0, codebook-16-336k-s1." in report
    assert read_json(study / "scaling.json")["sweeps"]["codebook-16"]["n_qt"] is None

    settings["tokenizer_parameters"] = 1234
    settings["sweeps"]["codebook-16"]["tokenizer_parameters"] = 5678
    report = run_scaling(ScalingConfig(**settings), collect_only=True).read_text()
    assert "| codebook | 336k | codebook-16 | cf, RQ-KMeans 3 x 16 | config | 0 | 5,678 | 1/2 |" in report
    assert "- tiger: 1 points, fewer than the 7 the law needs: not fitted." in report and "tokenizer parameter count unknown" in report  # enc-minilm-cf3's
    assert read_json(study / "scaling.json")["sweeps"]["tiger"]["n_qt"] == 1234
