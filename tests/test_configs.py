"""Every YAML under configs/ is run: data presets by the `data` command, model configs by
`fit` with fast_dev_run. A config pointing at a class that does not exist fails here."""

from pathlib import Path

import pytest
import yaml

from genrec.cli import main, run_data, run_encode, run_tokenize
from genrec.encode import embedding_metadata
from genrec.quantize import SemanticIDs

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
SHARED = ROOT.parent / "shared" / "datasets"

EXPECTED = {  # exact sizes of the real data sets (see ../shared/datasets/*/SOURCE.md)
    "configs/data/amazon-beauty.yaml": (22_363, 12_101, 198_502),
    "configs/data/amazon-office.yaml": (4_905, 2_420, 53_258),
    "configs/data/amazon-toys.yaml": (19_412, 11_924, 167_597),
    "configs/data/amazon-sports.yaml": (35_598, 18_357, 296_337),
}


def _needs_shared(config: str) -> bool:
    return "../shared/datasets" in (ROOT / config).read_text()


def test_configs_exist():
    assert any(c.startswith("configs/data/") for c in CONFIGS)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/data/")])
def test_data_config(config, monkeypatch):
    if _needs_shared(config) and not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (CI has it beside the clone)")
    monkeypatch.chdir(ROOT)
    result = run_data(["--config", config])
    stats = result["stats"]
    assert stats["users"] > 0 and stats["items"] > 0
    assert result["split"]["test"] == stats["users"] == result["split"]["val"]
    if config in EXPECTED:
        assert (stats["users"], stats["items"], stats["interactions"]) == EXPECTED[config]


TINY_DATA = {
    "data": {
        "class_path": "genrec.data.SequenceDataModule",
        "init_args": {
            "name": "tiny",
            "kcore": 0,
            "source": {
                "class_path": "genrec.data.synthetic.SyntheticSource",
                "init_args": {"num_users": 40, "num_items": 60, "num_categories": 4, "num_brands": 8, "max_length": 10},
            },
        },
    }
}


@pytest.fixture
def tiny_data(tmp_path) -> str:
    path = tmp_path / "tiny-data.yaml"
    path.write_text(yaml.safe_dump(TINY_DATA))
    return str(path)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/encode/")])
def test_encode_config(config, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "emb.safetensors"
    encoder = yaml.safe_load((ROOT / config).read_text())["encoder"]
    small = ["--encoder.cf_dim", "8"] if encoder["model"] == "cf" or encoder.get("cf_weight") else []  # the tiny catalogue has 60 items
    path = run_encode(["--config", tiny_data, "--config", config, *small, "--encode.output", str(out), "--encode.accelerator", "cpu"])
    meta = embedding_metadata(path)
    items = run_data(["--config", tiny_data])["stats"]["items"]
    assert path == out and meta["num_items"] == str(items)
    assert meta["model"] == yaml.safe_load((ROOT / config).read_text())["encoder"]["model"]


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/tokenizer/")])
def test_tokenizer_config(config, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sids.safetensors"
    args = ["--config", tiny_data, "--config", "configs/encode/minilm.yaml", "--config", config,
            "--encode.output", str(tmp_path / "emb.safetensors"), "--encode.accelerator", "cpu",
            "--tokenize.output", str(out), "--tokenize.accelerator", "cpu", "--tokenize.fast_dev_run", "true",
            *(["--tokenizer.init_args.overrides", "{codebook_size: 8}"] if "rqvae" in config else ["--tokenizer.init_args.codebook_size", "8"])]
    path = run_tokenize(args)
    sids = SemanticIDs.load(path)
    assert sids.codebook_size == 8 and sids.num_items == run_data(["--config", tiny_data])["stats"]["items"]
    assert len(set(map(tuple, sids.table.tolist()))) == sids.num_items  # unique after dedup
    mtime = path.stat().st_mtime_ns
    run_tokenize(args)  # same settings: the artifact is reused
    assert path.stat().st_mtime_ns == mtime


def tiny_sids(path: Path) -> str:
    """A SID artifact (random codes, 3 x 8) for TINY_DATA's catalogue."""
    import torch

    from genrec.data import SequenceDataModule
    from genrec.data.synthetic import SyntheticSource
    from genrec.quantize import SemanticIDs

    data = TINY_DATA["data"]["init_args"]
    catalog = SequenceDataModule(SyntheticSource(**data["source"]["init_args"]), kcore=data["kcore"]).data.catalog
    codes = torch.randint(0, 8, (len(catalog), 3), generator=torch.Generator().manual_seed(0))
    return str(SemanticIDs.from_codes(codes, 8, fingerprint=catalog.fingerprint()).save(path / "tiny-sids.safetensors"))


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/tiger/")])
def test_tiger_config(config, tiny_data, tmp_path, monkeypatch):
    """Each TIGER config fits one batch (and validates) on the tiny data set, on the CPU."""
    import torch

    sids = tiny_sids(tmp_path)
    monkeypatch.chdir(tmp_path)  # the config's checkpoint and log folders are relative paths
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only contend on a shared 2-core box
    try:
        main(
            ["fit", "--config", tiny_data, "--config", str(ROOT / config), "--model.init_args.sids", sids]
            + ["--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]
            + ["--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8"]  # one small batch each
        )
    finally:
        torch.set_num_threads(threads)


LM_TINY_SHAPE = "{num_layers: 1, hidden_size: 32, num_heads: 2, num_kv_heads: 1, head_dim: 16, intermediate_size: 64}"


@pytest.mark.parametrize(
    "config",
    [pytest.param(c, marks=[pytest.mark.slow] if "smollm2" in c else []) for c in CONFIGS if c.startswith("configs/lm/")],
)
def test_lm_config(config, tiny_data, tmp_path, monkeypatch):
    """Each LM config fits one batch (and validates with beam search) on the tiny data, on the CPU.

    smollm2 configs load the real offline GGUF (slow-marked: over a minute on 2 cores). A config
    naming a hub model (Qwen/Qwen3-0.6B: no network in tests) keeps every other setting but builds
    the same architecture from the ``qwen3-0.6b`` preset at tiny width. An FSDP strategy is built
    from the YAML and checked, then replaced by the default one: Lightning's FSDP refuses the CPU.
    """
    import torch
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy, Strategy

    spec = yaml.safe_load((ROOT / config).read_text())
    init = spec["model"]["init_args"]
    args = ["fit", "--config", tiny_data, "--config", str(ROOT / config)]
    args += ["--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true"]
    args += ["--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "4", "--model.init_args.prompt.max_tokens", "128"]
    if init.get("preset") is None and "/" in init.get("model", "smollm2") and not Path(init["model"]).exists():
        args += ["--model.init_args.preset", "qwen3-0.6b", "--model.init_args.overrides", LM_TINY_SHAPE]
    strategy = (spec.get("trainer") or {}).get("strategy")
    if isinstance(strategy, dict):
        parser = ArgumentParser()
        parser.add_argument("--strategy", type=Strategy)
        built = parser.instantiate(parser.parse_object({"strategy": strategy})).strategy
        assert isinstance(built, FSDPStrategy) and "auto_wrap_policy" in built.kwargs
        args += ["--trainer.strategy", "auto"]
    monkeypatch.chdir(tmp_path)  # the config's checkpoint and log folders are relative paths
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/sasrec/")])
def test_sasrec_config(config, tiny_data, tmp_path, monkeypatch):
    """Each SASRec config fits one batch (and validates) on the tiny data set, on the CPU."""
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", tiny_data, "--config", str(ROOT / config), "--trainer.fast_dev_run", "true",
          "--trainer.accelerator", "cpu", "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8"])


PIPELINES = [
    # the demo trains three models on MovieLens-100K for minutes: run with `-m slow` (and by the README's main command)
    pytest.param(c, marks=pytest.mark.slow) if c.endswith("/demo.yaml") else c
    for c in CONFIGS
    if c.startswith("configs/pipeline/")
]


@pytest.mark.parametrize("config", PIPELINES)
def test_pipeline_config(config, tmp_path, monkeypatch, one_thread):
    """Each pipeline config runs to its report (outputs under a temporary root), every model for
    one epoch (the config's epochs are its own business; the chain is what this checks)."""
    monkeypatch.chdir(ROOT)
    settings = yaml.safe_load((ROOT / config).read_text())
    overrides = settings.setdefault("overrides", {})
    for model in settings["models"]:
        overrides[model] = [*overrides.get(model, []), "--trainer.max_epochs", "1"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(settings))
    main(["pipeline", "--config", str(path), "--root", str(tmp_path)])
    assert "## Results" in (tmp_path / settings["name"] / "report.md").read_text()


def test_every_config_is_covered():
    """Each config has a block this test module knows how to run."""
    for config in CONFIGS:
        keys = set(yaml.safe_load((ROOT / config).read_text()))
        assert keys & {"data", "model", "encoder", "tokenizer", "sweeps"}, f"{config} has none of data:, model:, encoder:, tokenizer:, sweeps:"
        prefix = config.split("/")[1]
        assert prefix in {"data", "encode", "tokenizer", "tiger", "lm", "sasrec", "pipeline", "scaling"}, f"{config}: no test runs configs/{prefix}/"


def test_cli_reports_bad_input_without_traceback(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--config", "configs/data/amazon-beauty.yaml", "--data.source.path", "/nonexistent/beauty"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "/nonexistent/beauty/datamaps.json not found" in err and "amazon-beauty" in err


def test_cli_reports_a_sigterm_stop_in_one_line_with_exit_code_143(capsys, monkeypatch):
    """A stage stopped by SIGTERM that kept its work (genrec.errors.Interrupted) exits as a
    process killed by the signal would (143), with its one line and no traceback."""
    import genrec.cli as cli
    from genrec.errors import Interrupted

    def stopped(args):
        raise Interrupted("encode: stopped by SIGTERM; 8 of 24 items are encoded in /x.parts: the same command resumes from there")

    monkeypatch.setitem(cli.STAGE_COMMANDS, "encode", (stopped, "help"))
    with pytest.raises(SystemExit) as exit_info:
        main(["encode"])
    assert exit_info.value.code == 143
    err = capsys.readouterr().err
    assert err == "error: encode: stopped by SIGTERM; 8 of 24 items are encoded in /x.parts: the same command resumes from there\n"


def test_cli_turns_lightnings_sigterm_stop_into_exit_code_143(capsys, monkeypatch):
    """Lightning's loops stop on SIGTERM with a SystemExit that has no code (exit status 0, as if
    the run had finished): the command line says it was stopped and exits 143."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import genrec.cli as cli

    def stopped(args):
        raise SIGTERMException

    monkeypatch.setitem(cli.STAGE_COMMANDS, "tokenize", (stopped, "help"))
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize"])
    assert exit_info.value.code == 143
    assert capsys.readouterr().err.startswith("error: tokenize: stopped by SIGTERM; the checkpoints saved so far are kept")


def test_cli_usage_lists_commands(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert "fit" in out and "data" in out
    with pytest.raises(SystemExit):
        main(["nonsense"])


def tiny_llama(folder: Path) -> str:
    """A one-layer Llama over SmolLM2's vocabulary saved to ``folder`` (a stand-in for a pretrained LM)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.startswith("configs/scaling/")])
def test_scaling_config(config, tiny_data, tmp_path, monkeypatch, one_thread):
    """Each scaling config trains its sweeps' smallest and largest presets (one seed, fast_dev_run on
    the tiny data, CPU) and writes its report: the sweeps and model configs it names exist, and
    every preset between is a known one."""
    from genrec.models.presets import lm_names, names

    monkeypatch.chdir(ROOT)
    settings = yaml.safe_load((ROOT / config).read_text())
    claimed = {value for roles in settings.get("claims", {}).values() for role, value in roles.items() if role.endswith("at")}
    for sweep in settings["sweeps"].values():
        presets = sweep.get("presets", [])
        assert set(presets) <= set(names()) | set(lm_names()), f"{config}: unknown presets {set(presets) - set(names()) - set(lm_names())}"
        if len(presets) > 2:  # the ends, and the sizes its claims compare at
            sweep["presets"] = [p for p in presets if p in (presets[0], presets[-1]) or p in claimed]
            sweep["preset_overrides"] = {p: v for p, v in sweep.get("preset_overrides", {}).items() if p in sweep["presets"]}
    fast = ["--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--data.init_args.batch_size", "8", "--data.init_args.eval_batch_size", "8"]
    for sweep in settings["sweeps"].values():
        sweep["overrides"] = [*sweep.get("overrides", []), *fast]
        # A preset's own arguments come after the sweep's: the small batch must win there too.
        sweep["preset_overrides"] = {p: [*extra, *fast] for p, extra in sweep.get("preset_overrides", {}).items()}
        if "lm/" in sweep["model"]:  # a narrow one-layer LM: the 49k-token vocabulary dominates its cost
            sweep["overrides"] += ["--model.init_args.prompt.max_tokens", "64", "--model.init_args.evaluation.beam_width", "10"]
        if sweep.get("models"):  # pretrained LMs by label (SmolLM2: ~50 s to load on a CPU): a tiny local Llama folder of its
            # shapes' kind stands in, over SmolLM2's tokenizer, eager (compiling its layers on a CPU takes longer than the run)
            sweep["models"] = {label: tiny_llama(tmp_path / f"llama-{label}") for label in sweep["models"]}
            sweep["overrides"] += ["--model.init_args.tokenizer", "smollm2", "--model.init_args.compile", "false",
                                   "--trainer.val_check_interval", "1.0"]
        overrides = sweep["overrides"]
        for i, flag in enumerate(overrides[:-1]):
            if flag == "--model.init_args.cf_init" and str(overrides[i + 1]).endswith(".yaml"):  # the 60-item data: a narrow cf encoder
                small = yaml.safe_load((ROOT / overrides[i + 1]).read_text())
                small["encoder"]["cf_dim"] = 8
                overrides[i + 1] = str(tmp_path / "cf-init.yaml")
                (tmp_path / "cf-init.yaml").write_text(yaml.safe_dump(small))
        sweep["lrs"] = sweep.get("lrs", [])[:1]  # one lr of a sweep's lr selection: the runs differ only in that number
        sweep.pop("lr_extend", None)  # (it needs two lrs; tests/test_scaling.py runs it)
        if sweep.get("tokenize_overrides"):  # a sweep's own SIDs (e.g. a codebook axis) on the 60-item catalogue: small codebooks
            sweep["tokenize_overrides"] = [*sweep["tokenize_overrides"], "--tokenizer.init_args.codebook_size", "8"]
        if yaml.safe_load((ROOT / sweep.get("encoder", settings.get("encoder", "configs/encode/minilm.yaml"))).read_text())["encoder"]["model"] not in ("minilm", "cf"):
            # a sweep's own LLM encoder (SmolLM2: ~50 s to load on a CPU; test_encode_config runs its YAML) is
            # MiniLM here: the sweep's other settings (pooling, template, cf_weight) still parse and run
            sweep["tokenize_overrides"] = [*sweep.get("tokenize_overrides", []), "--encoder.model", "minilm"]
    archive = tmp_path / "archive" if settings.get("archive") else None  # never the repo's docs/runs
    settings.update(data=tiny_data, seeds=[0], root=str(tmp_path), archive=None if archive is None else str(archive))
    settings["overrides"] = {"tokenize": [*settings.get("overrides", {}).get("tokenize", []), "--tokenizer.init_args.codebook_size", "8",
                                          "--encoder.cf_dim", "8", "--tokenize.accelerator", "cpu", "--encode.accelerator", "cpu"]}
    path = tmp_path / "scaling.yaml"
    path.write_text(yaml.safe_dump(settings))
    main(["scaling", "--config", str(path)])
    report = (tmp_path / settings["name"] / "scaling.md").read_text()
    for name, sweep in settings["sweeps"].items():
        lr = f"-lr{sweep['lrs'][0]:g}" if sweep["lrs"] else ""
        for preset in sweep.get("presets") or list(sweep["models"]):
            assert f"| {name} | {sweep.get('paradigm', 'sid')} | {preset} |" in report
            result = tmp_path / settings["name"] / f"{name}-{preset}{lr}-s0" / "result.json"
            assert result.is_file()
            if archive is not None:  # the report copied it into the archive
                assert (archive / settings["name"] / f"{name}-{preset}{lr}-s0.json").read_bytes() == result.read_bytes()
        if sweep.get("axis"):
            assert f"| {sweep['axis']} | {sweep['presets'][0]} | {name} |" in report
    for key in settings.get("claims", {}):  # one seed a size: each claim's row, none decided
        from genrec.claims import CLAIMS

        assert f"| {CLAIMS[key][0]} | **not" in report


def _law_count_cases() -> list:
    """(scaling config, sweep) of every sweep whose SIDs have a configured ``tokenizer_parameters``
    (the study's or the sweep's own); those of an LLM encoder (SmolLM2: ~7 s to read its GGUF's
    config) are slow."""
    cases = []
    for config in (c for c in CONFIGS if c.startswith("configs/scaling/")):
        settings = yaml.safe_load((ROOT / config).read_text())
        for name, sweep in settings["sweeps"].items():
            own = any(sweep.get(k) for k in ("encoder", "tokenizer", "tokenize_overrides", "sids"))
            if (sweep if own else settings).get("tokenizer_parameters") is None:
                continue
            encoder = yaml.safe_load((ROOT / sweep.get("encoder", settings.get("encoder", "configs/encode/minilm.yaml"))).read_text())
            slow = encoder["encoder"]["model"] not in ("minilm", "cf")
            cases.append(pytest.param(config, name, id=f"{Path(config).stem}-{name}", marks=[pytest.mark.slow] if slow else []))
    return cases


@pytest.mark.parametrize(("config", "sweep"), _law_count_cases())
def test_scaling_config_tokenizer_parameters_are_what_the_sids_would_count(config, sweep, tmp_path, monkeypatch):
    """A scaling config's ``tokenizer_parameters`` (N_QT without the SID file, for ``--collect_only``
    on a fresh checkout) and ``encoder_parameters`` (N_LLM) equal what is counted: N_QT what :func:`~genrec.scaling.count_tokenizer_parameters` counts in
    the tokenizer file its SIDs' settings make: RQ-KMeans' centroids (levels x codes x the
    embedding's dims: the text encoder's hidden size, + cf_dim for cf or a hybrid) and scales."""
    import torch

    from genrec.encode import CF_MODEL, resolve_model
    from genrec.scaling import ScalingConfig, _read_source, count_tokenizer_parameters

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = yaml.safe_load((ROOT / config).read_text())
    study = ScalingConfig(**settings)
    source = study.source(sweep)
    inputs = _read_source(study, sweep, source)  # the data is not read: its path may be missing
    encoder, tokenizer = inputs.encoder, inputs.tokenizer
    dims = encoder.cf_dim if encoder.model == CF_MODEL or encoder.hybrid else 0
    if encoder.model != CF_MODEL:
        from transformers import AutoConfig

        path, gguf = resolve_model(encoder.model, encoder.gguf_file)
        dims += AutoConfig.from_pretrained(path, **({"gguf_file": gguf} if gguf else {})).hidden_size
    tokenizer.centroids = torch.zeros(tokenizer.levels, tokenizer.codebook_size, dims)
    tokenizer.scales = torch.ones(tokenizer.levels, tokenizer.codebook_size)
    tokenizer.save(tmp_path / f"sids{tokenizer.file_suffix}")
    assert source.tokenizer_parameters == count_tokenizer_parameters(tmp_path / "sids.safetensors")
    if source.encoder_parameters is not None:  # N_LLM given too: what the encoder YAML's model counts
        from genrec.scaling import count_encoder_parameters

        assert source.encoder_parameters == count_encoder_parameters(source.encoder, source.overrides)
