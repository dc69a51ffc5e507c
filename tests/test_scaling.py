"""The ``scaling`` command's orchestration: shards, skipping, collection of the points with the
right parameter counts per paradigm, the law fit, held-out check, table and plot. Training is
replaced by a stand-in that writes each run's ``result.json`` from a known law (the real training
path is ``genrec.pipeline.run_model``, tested in test_pipeline.py and by test_configs.py's sweep
of every scaling config)."""

from pathlib import Path

import numpy as np
import pytest

from genrec.artifacts import read_json, write_json
from genrec.cli import main
from genrec.models.presets import nominal_size
from genrec.scaling import ScalingConfig, run_scaling

TRUTH = {"r0": 0.08, "a": 0.02, "alpha": 0.5}  # Recall = R0 - A / N^a, N in millions (both terms share N here)
ENCODER, TOKENIZER = 22_713_216, 200_000


def _config(tmp_path, seeds=(0, 1, 2)) -> ScalingConfig:
    return ScalingConfig(
        name="study",
        data="configs/data/synthetic.yaml",
        sids=str(tmp_path / "sids.safetensors"),
        encoder_parameters=ENCODER,
        tokenizer_parameters=TOKENIZER,
        seeds=list(seeds),
        root=str(tmp_path / "runs"),
        sweeps={
            "tiger": {"model": "configs/tiger/synthetic.yaml", "paradigm": "sid", "presets": ["336k", "6.7m", "13m", "21m", "43m"]},
            "lm": {"model": "configs/lm/tiny-scratch.yaml", "paradigm": "llm", "presets": ["1m", "10m"]},
        },
    )


class _Calls(list):
    """The runs trained, in order; ``overrides``: run -> its command-line overrides; ``values``:
    run -> the settings put on its parsed config (preset, seed)."""

    def __init__(self):
        super().__init__()
        self.overrides: dict[str, list[str]] = {}
        self.values: dict[str, dict] = {}


@pytest.fixture
def fake_training(tmp_path, monkeypatch):
    """Replace training by a result.json whose recall follows TRUTH (plus seeded noise); record the calls."""
    (tmp_path / "sids.safetensors").write_bytes(b"")
    calls = _Calls()
    overrides = calls.overrides

    def run_model(pipeline, name, path, sids, values):
        calls.append(name)
        overrides[name] = pipeline.overrides[name]
        calls.values[name] = values
        preset, seed = name.split("-")[1], int(name.rsplit("-s", 1)[1])
        params = nominal_size(preset) if name.startswith("tiger") else {"1m": 7.3e6, "10m": 25.6e6}[preset]
        recall = TRUTH["r0"] - TRUTH["a"] / (params / 1e6) ** TRUTH["alpha"] + np.random.default_rng(seed).normal(0, 2e-4)
        result = {"parameters": int(params), "trainable_parameters": int(params), "epochs": 30, "best_epoch": 20 + seed,
                  "metrics": {"test/recall@10": recall, "test/ndcg@10": recall / 2}, "train_seconds": 1.0, "device": "FakeGPU"}
        write_json(pipeline.run_dir / name / "result.json", result)
        return result

    monkeypatch.setattr("genrec.scaling.run_model", run_model)
    return calls


def test_shards_then_fit_and_report(tmp_path, fake_training):
    config = _config(tmp_path)
    runs = [r[0] for r in config.runs()]
    assert len(runs) == 7 * 3 and runs[0] == "tiger-336k-s0" and runs[-1] == "lm-10m-s2"

    report = run_scaling(config, shard=(0, 2)).read_text()
    assert fake_training == runs[0::2]
    assert "Not run yet (10)" in report and runs[1] in report

    fake_training.clear()
    report = run_scaling(config, shard=(1, 2)).read_text()
    assert fake_training == runs[1::2]
    assert "Not run yet" not in report
    assert "trained on FakeGPU (21 runs); report written on" in report  # the runs' device, not the reporting machine's
    assert "| tiger | sid | 13m |" in report and "3/3" in report
    assert "| best / last epoch |" in report and "| 20 / 30, 21 / 30, 22 / 30 | ?, ?, ? |" in report  # each seed's plateau check (no val curves here)
    assert not (tmp_path / "runs" / "study" / "val_curves.png").exists()

    summary = read_json(tmp_path / "runs" / "study" / "scaling.json")
    tiger = summary["sweeps"]["tiger"]
    assert len(tiger["points"]) == 15
    assert all(p["n_llm"] == ENCODER and p["n_qt"] == TOKENIZER and p["n_lora"] == 0 for p in tiger["points"])
    assert tiger["fit"]["r2"] > 0.95 and abs(tiger["fit"]["r0"] - TRUTH["r0"]) < 0.01
    assert tiger["held_out"]["abs_error"] < 0.005  # extrapolation to 43m from the four smaller sizes
    lm = summary["sweeps"]["lm"]
    assert len(lm["points"]) == 6 and all(p["n_lora"] > 0 and p["n_llm"] == 0 for p in lm["points"])
    assert "fit" not in lm and "lm: 6 points, fewer than the 7" in report
    assert (tmp_path / "runs" / "study" / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_collect_only_trains_nothing(tmp_path, fake_training):
    config = _config(tmp_path, seeds=(0,))
    (tmp_path / "runs" / "study" / "tiger-13m-s0").mkdir(parents=True)  # killed before its result.json
    run_scaling(config, collect_only=True)
    assert fake_training == []
    report = (tmp_path / "runs" / "study" / "scaling.md").read_text()
    assert "Not run yet (7)" in report and "trained on no runs yet" in report
    assert "tiger-13m-s0 started without finishing and resume from their last.ckpt" in report


def test_an_archived_result_is_a_finished_run_read_by_collect_only_and_not_retrained(tmp_path, fake_training, caplog):
    """``archive``: the report copies each run's result.json to ``<archive>/<name>/<run>.json``; once
    the run folders are gone (the GPU machine given back), ``--collect_only`` reports from those
    copies, and a training job counts them finished: it trains nothing and says where it found them."""
    import logging
    import shutil

    config = _config(tmp_path, seeds=(0,))
    config.archive = str(tmp_path / "docs" / "runs")
    run_scaling(config, only=["lm"])
    archive, runs = tmp_path / "docs" / "runs" / "study", tmp_path / "runs" / "study"
    assert sorted(p.name for p in archive.iterdir()) == ["lm-10m-s0.json", "lm-1m-s0.json"]
    first = (runs / "scaling.md").read_text()
    shutil.rmtree(runs)  # a fresh machine: no run folders, only the archive

    fake_training.clear()
    report = run_scaling(config, collect_only=True).read_text()
    assert fake_training == []
    assert "| lm | llm | 1m | 7,300,000 (7,300,000) | 1/1 |" in report and "| lm | llm | 10m | 25,600,000 (25,600,000) | 1/1 |" in report
    lm_rows = [line for line in report.splitlines() if line.startswith("| lm |")]
    assert len(lm_rows) == 2 and lm_rows == [line for line in first.splitlines() if line.startswith("| lm |")]  # as from the run folders
    assert "Not run yet (5): tiger-336k-s0," in report and "lm-1m-s0" not in report.split("Not run yet")[1].split("\n")[0]
    assert "0 run results copied in by this report; read from it alone (2): lm-1m-s0, lm-10m-s0." in report
    assert not any(runs.glob("*/result.json"))  # nothing copied back: the archive is read where it is

    with caplog.at_level(logging.INFO, logger="genrec.scaling"):
        run_scaling(config, only=["lm"])
    assert fake_training == []  # not re-trained
    assert f"lm-1m-s0: finished, its result taken from the archive {archive / 'lm-1m-s0.json'} (not re-trained)" in caplog.text


def test_a_report_archives_results_atomically_byte_for_byte_and_the_run_folder_wins(tmp_path, fake_training, monkeypatch, caplog):
    import logging

    import genrec.scaling as scaling

    written = []
    original = scaling.atomic_path

    def recording(path):
        written.append(Path(path))
        return original(path)

    monkeypatch.setattr(scaling, "atomic_path", recording)
    config = _config(tmp_path, seeds=(0,))
    config.archive = str(tmp_path / "archive")
    archive, runs = tmp_path / "archive" / "study", tmp_path / "runs" / "study"
    report = run_scaling(config, only=["lm"]).read_text()
    for run in ("lm-1m-s0", "lm-10m-s0"):
        assert (archive / f"{run}.json").read_bytes() == (runs / run / "result.json").read_bytes()
        assert archive / f"{run}.json" in written  # through the atomic write: a temporary file renamed into place
    assert sorted(p.name for p in archive.iterdir()) == ["lm-10m-s0.json", "lm-1m-s0.json"]  # no temporary file left
    assert "Archive `" in report and "`: 2 run results copied in by this report." in report

    (archive / "lm-1m-s0.json").write_text('{"an": "older copy"}\n')
    written.clear()
    with caplog.at_level(logging.WARNING, logger="genrec.scaling"):
        report = run_scaling(config, collect_only=True).read_text()
    assert (archive / "lm-1m-s0.json").read_bytes() == (runs / "lm-1m-s0" / "result.json").read_bytes()
    assert written.count(archive / "lm-1m-s0.json") == 1 and archive / "lm-10m-s0.json" not in written  # an identical copy stays
    assert f"lm-1m-s0: the archive's {archive / 'lm-1m-s0.json'} differs from the run folder's result.json: replaced by the run folder's (newer)" in caplog.text
    assert "1 run results copied in by this report (1 replacing a differing copy: lm-1m-s0)." in report
    assert "0 run results copied in" in run_scaling(config, collect_only=True).read_text()


def test_an_archive_that_does_not_exist_yet_is_empty(tmp_path, fake_training):
    config = _config(tmp_path, seeds=(0,))
    config.archive = str(tmp_path / "no" / "archive")
    report = run_scaling(config, collect_only=True).read_text()
    assert fake_training == [] and "Not run yet (7)" in report and "`: 0 run results copied in by this report." in report
    assert not (tmp_path / "no").exists()


def test_only_trains_the_named_sweeps_split_over_shards(tmp_path, fake_training):
    config = _config(tmp_path, seeds=(0,))
    report = run_scaling(config, shard=(1, 2), only=["lm"]).read_text()
    assert fake_training == ["lm-10m-s0"]  # the lm runs are lm-1m-s0, lm-10m-s0; shard 1/2 takes the second
    assert "Not run yet (6)" in report and "tiger-336k-s0" in report
    fake_training.clear()
    with pytest.raises(ValueError, match=r"--only names no sweep of 'study': \['gpt'\]"):
        run_scaling(config, only=["gpt"])
    with pytest.raises(ValueError, match=r"--only names no sweep of 'scaling-synthetic': \['gpt'\]"):
        main(["scaling", "--config", "configs/scaling/synthetic.yaml", "--root", str(tmp_path / "cli"), "--only", "[gpt]"])
    assert fake_training == []


def test_preset_overrides_reach_only_their_preset_after_the_sweep_overrides(tmp_path, fake_training):
    config = _config(tmp_path, seeds=(0,))
    config.sweeps["tiger"].overrides = ["--model.init_args.lr", "0.004"]
    config.sweeps["tiger"].preset_overrides = {"43m": ["--model.init_args.lr", "0.002"]}
    run_scaling(config, only=["tiger"])
    big, small = fake_training.overrides["tiger-43m-s0"], fake_training.overrides["tiger-13m-s0"]
    assert big[:4] == ["--model.init_args.lr", "0.004", "--model.init_args.lr", "0.002"]  # the later value wins
    assert "0.002" not in small and small == ["--model.init_args.lr", "0.004"]
    # preset and seed are typed settings on the parsed config, set after every override
    assert fake_training.values["tiger-13m-s0"] == {"model.init_args.preset": "13m", "seed_everything": 0}
    with pytest.raises(ValueError, match=r"sweep 't': preset_overrides for presets it does not sweep: \['88m'\]"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "presets": ["43m"], "preset_overrides": {"88m": []}}})



def test_pretrained_models_by_label_are_the_llm_ladder(tmp_path, monkeypatch):
    """A sweep of pretrained checkpoints (``models``: label -> alias, folder or hub name) runs
    each with ``model.init_args.model`` set and no preset; the LLM law's points take the frozen
    size from parameters - trainable (LoRA)."""
    calls = {}

    def run_model(pipeline, name, path, sids, values):
        calls[name] = values
        size = {"small": 135e6, "large": 1.7e9}[name.split("-")[1]]
        result = {"parameters": int(size), "trainable_parameters": int(size / 100), "device": "FakeGPU", "train_seconds": 1.0,
                  "metrics": {"test/recall@10": 0.03 + 0.01 * (size > 1e9), "test/ndcg@10": 0.015}}
        write_json(pipeline.run_dir / name / "result.json", result)
        return result

    monkeypatch.setattr("genrec.scaling.run_model", run_model)
    config = ScalingConfig(name="pre", data="configs/data/synthetic.yaml", seeds=[0], root=str(tmp_path / "runs"),
                           sweeps={"lm": {"model": "configs/lm/smollm2-lora.yaml", "paradigm": "llm",
                                          "models": {"small": "smollm2", "large": "/models/SmolLM2-1.7B"}}})
    run_scaling(config)
    assert calls == {"lm-small-s0": {"model.init_args.model": "smollm2", "model.init_args.preset": None, "seed_everything": 0},
                     "lm-large-s0": {"model.init_args.model": "/models/SmolLM2-1.7B", "model.init_args.preset": None, "seed_everything": 0}}
    points = read_json(tmp_path / "runs" / "pre" / "scaling.json")["sweeps"]["lm"]["points"]
    assert [(p["preset"], p["n_lora"], p["n_llm"]) for p in points] == [("small", 1.35e6, 135e6 - 1.35e6), ("large", 1.7e7, 1.7e9 - 1.7e7)]
    assert "| lm | llm | large |" in (tmp_path / "runs" / "pre" / "scaling.md").read_text()


def _lr_quality_training(monkeypatch) -> dict:
    """Training replaced by a result.json whose quality peaks at each size's best lr (336k: 4e-3,
    13m: 1e-3; + 0.0005 per seed); returns run name -> the values it was trained with."""
    best = {"336k": 0.004, "13m": 0.001}  # the lr each size does best with
    calls = {}

    def run_model(pipeline, name, path, sids, values):
        calls[name] = values
        label, lr, seed = name.split("-")[1], values["model.init_args.lr"], values["seed_everything"]
        quality = 0.06 - 0.01 * abs(np.log2(lr / best[label])) + 0.0005 * seed
        result = {"parameters": int(nominal_size(label)), "epochs": 10, "best_epoch": 6,
                  "val_curve": {"monitor": "val/ndcg@10", "points": [[e, quality * min(e, 6) / 6] for e in range(10)]},
                  "metrics": {"test/recall@10": quality * 0.8, "test/ndcg@10": quality * 0.4}, "train_seconds": 1.0, "device": "FakeGPU"}
        write_json(pipeline.run_dir / name / "result.json", result)
        return result

    monkeypatch.setattr("genrec.scaling.run_model", run_model)
    return calls


def test_lr_sweep_per_size_is_chosen_on_val_and_shown(tmp_path, monkeypatch):
    """``lrs``: every size runs every lr (every seed); per size the lr with the best mean peak of
    the val curve is chosen, only its runs make the points, and the report shows the selection."""
    calls = _lr_quality_training(monkeypatch)
    (tmp_path / "sids.safetensors").write_bytes(b"")
    config = ScalingConfig(name="lr", data="configs/data/synthetic.yaml", sids=str(tmp_path / "sids.safetensors"), seeds=[0, 1],
                           encoder_parameters=ENCODER, tokenizer_parameters=TOKENIZER, root=str(tmp_path / "runs"),
                           sweeps={"tiger": {"model": "configs/tiger/synthetic.yaml", "presets": ["336k", "13m"], "lrs": [0.001, 0.002, 0.004]}})
    assert len(config.runs()) == 2 * 3 * 2 and config.runs()[0].name == "tiger-336k-lr0.001-s0"
    report = run_scaling(config).read_text()
    assert calls["tiger-13m-lr0.002-s1"] == {"model.init_args.preset": "13m", "seed_everything": 1, "model.init_args.lr": 0.002}
    assert "| tiger | 336k | 0.004 | 0.0602 | 2 | yes |" in report and "| tiger | 13m | 0.001 | 0.0602 | 2 | yes |" in report
    assert "| tiger | 13m | 0.004 | 0.0402 | 2 |  |" in report
    summary = read_json(tmp_path / "runs" / "lr" / "scaling.json")
    assert summary["lr_selection"]["tiger"]["336k"]["chosen"] == 0.004
    # both choices sit at an end of the grid [0.001, 0.004]: the report says the best lr may lie beyond it
    assert summary["lr_selection"]["tiger"]["336k"]["grid_edge"] == "largest" and summary["lr_selection"]["tiger"]["13m"]["grid_edge"] == "smallest"
    assert ("Chosen at the edge of the swept lrs (the best lr may lie beyond it: widen `lrs` for these sizes): "
            "tiger 336k (0.004, the largest of [0.001, 0.002, 0.004]), tiger 13m (0.001, the smallest of [0.001, 0.002, 0.004]).") in report
    points = summary["sweeps"]["tiger"]["points"]
    assert len(points) == 4 and all(abs(p["recall"] - 0.8 * (0.06 + 0.0005 * p["seed"])) < 1e-9 for p in points)
    # every curve is flat from epoch 6 of 0..9: no late gain, each run's in the table, the plot made
    assert "| 6 / 10, 6 / 10 | +0.0 %, +0.0 % |" in report and "No finished run rose more than 1% late." in report
    assert summary["late_val_gain"]["runs"]["tiger-13m-lr0.004-s1"] == 0.0 and len(summary["late_val_gain"]["runs"]) == 12
    assert (tmp_path / "runs" / "lr" / "val_curves.png").read_bytes()[:4] == b"\x89PNG" and "![val curves](val_curves.png)" in report
    rising = tmp_path / "runs" / "lr" / "tiger-336k-lr0.001-s0" / "result.json"
    result = read_json(rising)
    result["val_curve"]["points"] = [[e, 0.01 * (1 + e)] for e in range(10)]  # still climbing: 0.10 late against 0.07 before
    write_json(rising, result)
    report = run_scaling(config, collect_only=True).read_text()
    assert "Still rising at the end (above 1%): tiger-336k-lr0.001-s0 (+42.9 %)." in report
    with pytest.raises(ValueError, match="lrs must be distinct and > 0"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "presets": ["1m"], "lrs": [0.001, 0.001]}})

def test_lr_seeds_sweep_the_lrs_on_the_first_seed_and_run_the_others_at_the_choice(tmp_path, monkeypatch):
    """``lr_seeds: 1``: every lr runs on seed 0 only; seeds 1 and 2 wait for their size's choice
    (listed), then one job trains them at the chosen lr; only seed 0 chooses (seeds 1-2 exist at
    one lr only); the points are the chosen lr's three seeds. 10 runs instead of 18."""
    calls = _lr_quality_training(monkeypatch)
    (tmp_path / "sids.safetensors").write_bytes(b"")
    settings = dict(name="lr1", data="configs/data/synthetic.yaml", sids=str(tmp_path / "sids.safetensors"), seeds=[0, 1, 2],
                    encoder_parameters=ENCODER, tokenizer_parameters=TOKENIZER, root=str(tmp_path / "runs"),
                    sweeps={"tiger": {"model": "configs/tiger/synthetic.yaml", "presets": ["336k", "13m"], "lrs": [0.001, 0.002, 0.004], "lr_seeds": 1}})
    config = ScalingConfig(**settings)
    assert [r.name for r in config.runs()] == [f"tiger-{p}-lr{lr}-s0" for p in ("336k", "13m") for lr in ("0.001", "0.002", "0.004")]
    assert config.waiting() == ["tiger-336k-s1", "tiger-336k-s2", "tiger-13m-s1", "tiger-13m-s2"]
    report = run_scaling(config, shard=(0, 2)).read_text()  # a shard does not go on to the later seeds
    assert len(calls) == 3 and "Waiting for their size's lr choice (4)" in report
    report = run_scaling(ScalingConfig(**settings)).read_text()  # one job: the rest of the lr runs, then seeds 1-2
    assert len(calls) == 10 and {"tiger-336k-lr0.004-s1", "tiger-336k-lr0.004-s2", "tiger-13m-lr0.001-s1", "tiger-13m-lr0.001-s2"} <= set(calls)
    assert calls["tiger-13m-lr0.001-s2"] == {"model.init_args.preset": "13m", "seed_everything": 2, "model.init_args.lr": 0.001}
    assert "| tiger | 336k | 0.004 | 0.0600 | 1 | yes |" in report and "Waiting" not in report and "Not run yet" not in report
    points = read_json(tmp_path / "runs" / "lr1" / "scaling.json")["sweeps"]["tiger"]["points"]
    assert sorted((p["preset"], p["seed"]) for p in points) == sorted((p, s) for p in ("336k", "13m") for s in (0, 1, 2))
    with pytest.raises(ValueError, match="lr_seeds 4 needs lrs and 1 <= lr_seeds <= the 3 seeds"):
        ScalingConfig(**{**settings, "sweeps": {"t": {"model": "m.yaml", "presets": ["1m"], "lrs": [0.001], "lr_seeds": 4}}})


def test_lr_extend_adds_lrs_beyond_an_edge_that_won_until_the_best_is_inside(tmp_path, monkeypatch):
    """``lr_extend``: a size whose best lr is the edge of its grid runs the next lr beyond it (the
    grid's outer step), again while the best stays at the edge, at most ``lr_extend`` times;
    seeds past ``lr_seeds`` wait for the final choice. 336k does best at 4e-3, 13m at 1e-3."""
    calls = _lr_quality_training(monkeypatch)
    (tmp_path / "sids.safetensors").write_bytes(b"")
    settings = dict(name="ext", data="configs/data/synthetic.yaml", sids=str(tmp_path / "sids.safetensors"), seeds=[0, 1],
                    encoder_parameters=ENCODER, tokenizer_parameters=TOKENIZER, root=str(tmp_path / "runs"),
                    sweeps={"tiger": {"model": "configs/tiger/synthetic.yaml", "presets": ["336k", "13m"], "lrs": [0.001, 0.002],
                                      "lr_seeds": 1, "lr_extend": 2}})
    report = run_scaling(ScalingConfig(**settings)).read_text()
    lrs = {(name.split("-")[1], name.split("-lr")[1]) for name in calls}
    assert lrs == {("336k", "0.001-s0"), ("336k", "0.002-s0"), ("336k", "0.004-s0"), ("336k", "0.008-s0"), ("336k", "0.004-s1"),
                   ("13m", "0.0005-s0"), ("13m", "0.001-s0"), ("13m", "0.002-s0"), ("13m", "0.001-s1")}
    assert "| tiger | 336k | 0.004 | 0.0600 | 1 | yes |" in report and "| tiger | 13m | 0.001 | 0.0600 | 1 | yes |" in report
    assert "Chosen at the edge" not in report and "Waiting" not in report
    # one extension only: 336k stops at 4e-3, still the largest of its grid, and the report says so
    calls.clear()
    settings.update(name="ext1", sweeps={"tiger": {**settings["sweeps"]["tiger"], "presets": ["336k"], "lr_extend": 1}})
    report = run_scaling(ScalingConfig(**settings)).read_text()
    assert sorted(calls) == ["tiger-336k-lr0.001-s0", "tiger-336k-lr0.002-s0", "tiger-336k-lr0.004-s0", "tiger-336k-lr0.004-s1"]
    assert "tiger 336k (0.004, the largest of [0.001, 0.002, 0.004])" in report
    # a choice at the edge with an extension still to run is provisional, and its seeds so far are reported
    (tmp_path / "runs" / "ext1" / "tiger-336k-lr0.004-s0" / "result.json").unlink()
    settings.update(name="ext1")
    config = ScalingConfig(**settings)
    assert config.chosen_lr("tiger", "336k") is None and config.waiting() == ["tiger-336k-s1"]
    report = run_scaling(config, collect_only=True).read_text()
    assert "| tiger | 336k | 0.002 | 0.0500 | 1 | so far (0.004 to run) |" in report and "| tiger | sid | 336k |" in report
    (tmp_path / "runs" / "ext1" / "tiger-336k-lr0.002-s1").mkdir()  # seed 1 at the provisional lr: reported as such
    write_json(tmp_path / "runs" / "ext1" / "tiger-336k-lr0.002-s1" / "result.json",
               read_json(tmp_path / "runs" / "ext1" / "tiger-336k-lr0.004-s1" / "result.json"))
    report = run_scaling(ScalingConfig(**settings), collect_only=True).read_text()
    assert ("Of these, 1 already ran at their size's lr so far, counted in the table meanwhile (run again if another lr wins): "
            "tiger-336k-s1 (lr 0.002).") in report
    assert "| 2/2 |" in next(line for line in report.splitlines() if line.startswith("| tiger | sid | 336k |"))
    with pytest.raises(ValueError, match="lr_extend 1 needs lr_extend >= 0 and at least 2 lrs"):
        ScalingConfig(**{**settings, "sweeps": {"t": {"model": "m.yaml", "presets": ["1m"], "lrs": [0.001], "lr_extend": 1}}})


def test_bad_settings(tmp_path, fake_training, capsys):
    with pytest.raises(ValueError, match="paradigm must be 'sid' or 'llm'"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "presets": ["1m"], "paradigm": "other"}})
    with pytest.raises(ValueError, match="give either presets or models .*not neither"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "presets": []}})
    with pytest.raises(ValueError, match="not both"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "presets": ["1m"], "models": {"a": "smollm2"}}})
    with pytest.raises(ValueError, match=r"model labels name run folders .*\['a/b'\]"):
        ScalingConfig(name="x", data="d.yaml", sweeps={"t": {"model": "m.yaml", "models": {"a/b": "smollm2"}}})
    with pytest.raises(ValueError, match="shard 2/2"):
        run_scaling(_config(tmp_path), shard=(2, 2))
    with pytest.raises(SystemExit) as exit_:  # a bad flag: one line, exit 2
        main(["scaling", "--config", "configs/scaling/synthetic.yaml", "--shard", "half"])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip() == "error: --shard must look like i/n, got 'half'"


def test_unknown_encoder_size_skips_the_sid_fit_with_a_reason(tmp_path, fake_training, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = tmp_path / "encoder.yaml"
    encoder.write_text("encoder:\n  model: no-such-org/no-such-encoder\n")
    config = _config(tmp_path, seeds=(0, 1))
    config.encoder, config.encoder_parameters = str(encoder), None
    report = run_scaling(config).read_text()
    assert "tiger: not fitted: encoder parameter count unknown (set encoder_parameters)" in report
    summary = read_json(tmp_path / "runs" / "study" / "scaling.json")
    assert summary["sweeps"]["tiger"]["points"][0]["n_llm"] is None and "fit" not in summary["sweeps"]["tiger"]


def test_shards_started_together_make_the_sids_one_at_a_time(tmp_path, fake_training, monkeypatch):
    """Shards launched at once (one per GPU) would both run the encode/tokenize stages into the
    same files: the SID stages run under a lock on the study folder."""
    from filelock import FileLock, Timeout

    import genrec.scaling as sweep

    config = _config(tmp_path)
    original, held = sweep._sids, []

    def sids_under_lock(cfg, pipeline, *args):
        try:
            FileLock(str(cfg.run_dir / ".sid-stages.lock")).acquire(timeout=0)  # another holder: us
            held.append(False)
        except Timeout:
            held.append(True)
        return original(cfg, pipeline, *args)

    monkeypatch.setattr(sweep, "_sids", sids_under_lock)
    run_scaling(config, shard=(0, 2))
    assert held == [True]


def test_encoder_parameters_of_the_cf_encoder_are_zero_and_minilm_is_counted():
    from genrec.scaling import count_encoder_parameters
    from tests.test_configs import ROOT

    assert count_encoder_parameters(str(ROOT / "configs/encode/cf.yaml")) == 0
    assert count_encoder_parameters(str(ROOT / "configs/encode/minilm.yaml")) == 22_713_216


def test_pretrained_local_folders_train_for_real(tmp_path):
    """Two tiny causal LMs saved as local folders (a stand-in for pretrained sizes a user has)
    run as one LLM ladder through the real training path; each run's result counts its folder's
    parameters."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.test_configs import ROOT, TINY_DATA

    folders = {}
    for label, hidden in (("h16", 16), ("h32", 32)):
        config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
        folders[label] = str(tmp_path / label)
        LlamaForCausalLM(config).save_pretrained(folders[label])
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(TINY_DATA))
    config = ScalingConfig(name="local", data=str(data), seeds=[0], root=str(tmp_path / "runs"), accelerator="cpu",
                           sweeps={"lm": {"model": str(ROOT / "configs/lm/tiny-scratch.yaml"), "paradigm": "llm", "models": folders,
                                          "overrides": ["--model.init_args.prompt.max_tokens", "96", "--trainer.max_epochs", "1",
                                                        "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
                                                        "--trainer.limit_val_batches", "1", "--data.init_args.batch_size", "8"]}})
    run_scaling(config)
    results = {label: read_json(tmp_path / "runs" / "local" / f"lm-{label}-s0" / "result.json") for label in folders}
    expected = {label: sum(p.numel() for p in LlamaForCausalLM.from_pretrained(folder).parameters()) for label, folder in folders.items()}
    assert {label: r["parameters"] for label, r in results.items()} == expected
    assert all(0.0 <= r["metrics"]["test/recall@10"] <= 1.0 for r in results.values())


def test_late_gain_reads_the_last_quarter_of_a_val_curve_against_the_best_before_it(tmp_path):
    from genrec.convergence import late_gain, plot_val_curves

    flat = [[e, min(e, 10) / 100] for e in range(1, 41)]  # peaks at epoch 10 of 40
    assert late_gain(flat) == 0.0
    climbing = [[e, e / 100] for e in range(1, 41)]  # late (epochs >= 30.25): 0.40; before: 0.30
    assert late_gain(climbing) == pytest.approx(0.40 / 0.30 - 1)
    assert late_gain(list(reversed(climbing))) == pytest.approx(0.40 / 0.30 - 1)  # order does not matter
    assert late_gain([[1, 0.2], [2, 0.3], [3, 0.25]]) == pytest.approx(-1 / 6)  # the late value below the earlier best
    assert late_gain(climbing, tail=0.5) == pytest.approx(0.40 / 0.20 - 1)
    assert late_gain([[1, 0.1], [2, 0.2]]) is None and late_gain(None) is None  # too short to read
    assert late_gain([[1, 0.0], [2, 0.0], [3, 0.1]]) is None  # nothing to be relative to
    path = plot_val_curves({"tiger": [("336k lr 0.001 s0", climbing, True), ("336k lr 0.001 s1", flat, True),
                                      ("336k lr 0.002 s0", flat, False)], "enc-cf": [("13m s0", flat, True)]}, tmp_path / "v.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no val curves to plot"):
        plot_val_curves({}, tmp_path / "none.png")
