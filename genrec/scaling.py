"""The ``scaling`` command (a scaling study): sweep size presets x seeds for each paradigm, fit the paper's law, report.

``python train.py scaling --config configs/scaling/<name>.yaml`` trains and tests one model per
(sweep, preset, seed) through the pipeline's model stage (:func:`genrec.pipeline.run_model`), so
every run is skipped when its ``result.json`` is up to date and resumed from ``last.ckpt`` after
a kill; then, per sweep, fits ``Recall@k = R0 - A/N_SI^a - B/N_CF^b``
(:func:`genrec.scaling_law.fit_scaling_law`, the paradigm's form), checks extrapolation to the
largest size (:func:`genrec.scaling_law.held_out_error`) and writes under ``<root>/<name>/``:

* ``<sweep>-<preset>-s<seed>/`` — each run (config, checkpoints, ``result.json``);
* ``scaling.json`` — every point and every fit;
* ``scaling.md`` — the table (mean ± std over seeds per preset), fitted constants, R², held-out
  error, the command and device;
* ``scaling.png`` — points with error bars and the fitted curves.

Parameter counts fed to the law: SID-based GR (``paradigm: sid``) — ``N_RS`` the TIGER model,
``N_LLM`` the frozen modality encoder, ``N_QT`` the tokenizer; LLM-as-RS (``paradigm: llm``) —
``N_LoRA`` the trained parameters (all of a from-scratch model), ``N_LLM`` the frozen pretrained
ones (0 from scratch).

Independent jobs: ``--shard i/n`` runs every n-th run starting at i (e.g. one process per GPU:
``CUDA_VISIBLE_DEVICES=1 python train.py scaling --config ... --shard 1/2``), ``--collect_only
true`` fits and reports from the results present, without training, and ``--only [tiger]`` trains
only the named sweeps (the report still covers all of them).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import yaml
from filelock import FileLock

from genrec.artifacts import atomic_path, read_json, write_json
from genrec.pipeline import (
    PipelineConfig,
    device_name,
    model_needs_sids,
    run_model,
    run_sid_stages,
)
from genrec.scaling_law import ScalingPoint, fit_scaling_law, held_out_error, plot_scaling

log = logging.getLogger(__name__)

MIN_FIT_POINTS = 7
"""The law has 7 free parameters (R0, A, a, B, b and two mixing weights)."""


@dataclass
class Sweep:
    """One paradigm's ladder.

    Args:
        model: the model YAML (``model:``/``trainer:`` blocks), e.g. ``configs/tiger/amazon-beauty.yaml``.
        presets: size preset names (``python train.py presets``), smallest first.
        models: instead of ``presets``, pretrained models by label, smallest first: label ->
            an offline alias, a local folder or a hub name, each run with
            ``model.init_args.model`` set to it (and no preset), e.g. ``{135m: smollm2,
            360m: /models/SmolLM2-360M, 1.7b: HuggingFaceTB/SmolLM2-1.7B}``: the paper's
            LLM-as-RS curve for whoever has the weights. Labels name the runs (letters,
            digits, ``.``, ``_``, ``-``).
        lrs: learning rates to try at every size (every seed each); the report and the law use,
            per size, the one with the best mean val metric (the peak of each run's val curve),
            and show the whole selection. Empty: the model YAML's lr only.
        lr_key: the dotted config key of the learning rate (``model.init_args.lr`` for TIGER
            and SASRec, ``model.init_args.optimizer.lr`` for the LM recommender).
        paradigm: ``sid`` (SID-based GR) or ``llm`` (LLM-as-RS): which law is fitted.
        overrides: extra command-line arguments of every run of this sweep.
        preset_overrides: preset -> extra arguments of that preset's runs, after ``overrides``
            (e.g. a lower learning rate, or a half batch with ``accumulate_grad_batches: 2``, which
            keeps the optimizer step of the others while halving the activation memory).
    """

    model: str
    presets: list[str] = field(default_factory=list)
    paradigm: Literal["sid", "llm"] = "sid"
    overrides: list[str] = field(default_factory=list)
    preset_overrides: dict[str, list[str]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)
    lr_key: str = "model.init_args.lr"

    @property
    def labels(self) -> list[str]:
        """The sizes of the ladder: preset names, or the labels of ``models``."""
        return list(self.models) if self.models else list(self.presets)

    def values(self, label: str, seed: int, lr: float | None = None) -> dict[str, Any]:
        """The settings one run of ``label`` (and ``lr``) puts on its parsed model config."""
        size = {"model.init_args.model": self.models[label], "model.init_args.preset": None} if self.models else {"model.init_args.preset": label}
        return {**size, "seed_everything": seed, **({} if lr is None else {self.lr_key: lr})}


class ScalingRun(NamedTuple):
    """One run of a study: its folder name, sweep, size label, seed and learning rate (``None``: the YAML's)."""

    name: str
    sweep: str
    label: str
    seed: int
    lr: float | None


@dataclass
class ScalingConfig:
    """What the ``scaling`` command sweeps.

    Args:
        name: study name; outputs go to ``<root>/<name>/``.
        data: the data preset YAML.
        sweeps: sweep name (e.g. ``tiger``, ``lm``) -> :class:`Sweep`.
        seeds: seeds of every (sweep, preset).
        encoder: encoder YAML of the SID stage (run or reused as in the pipeline), unless ``sids``.
        tokenizer: tokenizer YAML of the SID stage, unless ``sids``.
        sids: an existing semantic-ID artifact to use instead of running encode + tokenize.
        encoder_parameters: ``N_LLM`` of SID-based GR (the frozen text encoder); ``None``:
            counted from the encoder config's model (offline aliases and local folders).
        tokenizer_parameters: ``N_QT``; ``None``: counted from the tokenizer file next to the SIDs.
        metric: the test metric the law models (``recall@10`` -> ``test/recall@10``).
        overrides: stage name (``data``, ``tokenize``) -> extra command-line arguments.
        accelerator: the Lightning accelerator of every stage (as in
            :class:`~genrec.pipeline.PipelineConfig`); ``None``: each YAML says.
        root: the folder of all runs.
    """

    name: str
    data: str
    sweeps: dict[str, Sweep]
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    encoder: str = "configs/encode/minilm.yaml"
    tokenizer: str = "configs/tokenizer/rqvae.yaml"
    sids: str | None = None
    encoder_parameters: int | None = None
    tokenizer_parameters: int | None = None
    metric: str = "recall@10"
    overrides: dict[str, list[str]] = field(default_factory=dict)
    accelerator: str | None = None
    root: str = "checkpoints"

    def __post_init__(self) -> None:
        self.sweeps = {k: v if isinstance(v, Sweep) else Sweep(**v) for k, v in self.sweeps.items()}
        for name, sweep in self.sweeps.items():
            if sweep.paradigm not in ("sid", "llm"):
                raise ValueError(f"sweep {name!r}: paradigm must be 'sid' or 'llm', got {sweep.paradigm!r}")
            if bool(sweep.presets) == bool(sweep.models):
                raise ValueError(f"sweep {name!r}: give either presets or models (pretrained, by label), not {'both' if sweep.presets else 'neither'}")
            bad = [label for label in sweep.models if not re.fullmatch(r"[A-Za-z0-9._-]+", label)]
            if bad:
                raise ValueError(f"sweep {name!r}: model labels name run folders (letters, digits, '.', '_', '-'): {bad}")
            if any(lr <= 0 for lr in sweep.lrs) or len(set(sweep.lrs)) != len(sweep.lrs):
                raise ValueError(f"sweep {name!r}: lrs must be distinct and > 0, got {sweep.lrs}")
            stray = sorted(set(sweep.preset_overrides) - set(sweep.labels))
            if stray:
                raise ValueError(f"sweep {name!r}: preset_overrides for presets it does not sweep: {stray}")
        if not self.seeds:
            raise ValueError("scaling needs at least one seed")

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / self.name

    def runs(self) -> list[ScalingRun]:
        """Every run, sweep by sweep, small to large (and lr by lr within a size)."""
        return [ScalingRun(f"{s}-{p}{'' if lr is None else f'-lr{lr:g}'}-s{seed}", s, p, seed, lr)
                for s, sweep in self.sweeps.items() for p in sweep.labels for lr in (sweep.lrs or [None]) for seed in self.seeds]


def count_encoder_parameters(encoder_yaml: str) -> int:
    """Parameters of the text encoder an encode YAML names (built on the meta device, no weights
    read); 0 for the ``cf`` encoder, which has no model (its embeddings are fitted from the
    interactions, like the tokenizer, not a pretrained network)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from genrec.encode import CF_MODEL, resolve_model

    settings = (yaml.safe_load(Path(encoder_yaml).read_text()) or {}).get("encoder", {})
    settings = settings.get("init_args", settings)
    if settings.get("model") == CF_MODEL:
        return 0
    path, gguf = resolve_model(settings.get("model", "minilm"), settings.get("gguf_file"))
    config = AutoConfig.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def count_tokenizer_parameters(sids_path: Path) -> int:
    """Parameters of the tokenizer saved next to a SID artifact (``<sids stem>.tokenizer.*``): the
    RQ-VAE's weights and codebooks, or RQ-KMeans' centroids; 0 when none is found."""
    import torch
    from safetensors import safe_open

    stem = sids_path.with_suffix("")
    tensors = stem.with_name(stem.name + ".tokenizer.safetensors")
    if tensors.is_file():
        with safe_open(str(tensors), "pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is not iterable)
    ckpt = stem.with_name(stem.name + ".tokenizer.ckpt")
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True).get("state_dict", {})
        return sum(v.numel() for v in state.values() if hasattr(v, "numel") and v.is_floating_point())
    log.warning("no tokenizer next to %s: N_QT taken as 0", sids_path)
    return 0


def _sids(config: ScalingConfig, pipeline: PipelineConfig) -> Path | None:
    """The SID artifact: the configured one, or the pipeline's encode + tokenize stages (reused when unchanged)."""
    if not any(model_needs_sids(s.model) for s in config.sweeps.values()):
        return None
    if config.sids:
        path = Path(config.sids)
        if not path.is_file():
            raise FileNotFoundError(f"scaling config: sids file {path} does not exist")
        return path
    return run_sid_stages(pipeline)


def run_scaling(config: ScalingConfig, command: str = "", shard: tuple[int, int] = (0, 1), collect_only: bool = False,
                only: Sequence[str] | None = None) -> Path:
    """Train the runs of this shard (skipping finished ones), then fit and report every sweep.

    Args:
        only: train only these sweeps' runs (e.g. ``["tiger"]``: one job per paradigm, each on
            the machine it suits); the shards split those runs; the report still covers every sweep.

    Returns:
        the path of ``scaling.md``.
    """
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < n")
    unknown = sorted(set(only or ()) - set(config.sweeps))
    if unknown:
        raise ValueError(f"--only names no sweep of {config.name!r}: {unknown} (sweeps: {sorted(config.sweeps)})")
    runs = [r for r in config.runs() if only is None or r[1] in only]
    pipeline = PipelineConfig(name=config.name, data=config.data, encoder=config.encoder, tokenizer=config.tokenizer,
                              root=config.root, overrides={k: config.overrides.get(k, []) for k in ("data", "tokenize")},
                              accelerator=config.accelerator)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    # Shards started together (one per GPU) share the SID stages: one runs them, the others wait
    # and then find the artifacts up to date.
    with FileLock(str(config.run_dir / ".sid-stages.lock")):
        sids = _sids(config, pipeline)
    if not collect_only:
        for k, (run, sweep_name, preset, seed, lr) in enumerate(runs):
            if k % count != index:
                continue
            sweep = config.sweeps[sweep_name]
            pipeline.models = {run: sweep.model}
            pipeline.overrides[run] = [*sweep.overrides, *sweep.preset_overrides.get(preset, [])]
            log.info("scaling run %d/%d: %s", k + 1, len(runs), run)
            run_model(pipeline, run, sweep.model, sids if model_needs_sids(sweep.model) else None, values=sweep.values(preset, seed, lr))
    return write_scaling_report(config, sids, command)



def select_lrs(config: ScalingConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Per sweep with ``lrs``, per size label: every lr's mean best val value over its finished
    seeds (``{"lrs": {lr: [mean, seeds]}, "chosen": lr}``), the chosen lr the one with the
    highest mean; a size with no val curve yet has no choice (``chosen`` None)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run, sweep_name, label, _seed, lr in config.runs():
        if lr is None:
            continue
        path = config.run_dir / run / "result.json"
        points = (read_json(path).get("val_curve") or {}).get("points") if path.is_file() else None
        entry = out.setdefault(sweep_name, {}).setdefault(label, {"lrs": {}, "chosen": None})
        if points:
            entry["lrs"].setdefault(lr, []).append(max(value for _, value in points))
    for picks in out.values():
        for entry in picks.values():
            entry["lrs"] = {lr: [float(np.mean(values)), len(values)] for lr, values in entry["lrs"].items()}
            entry["chosen"] = max(entry["lrs"], key=lambda lr: entry["lrs"][lr][0]) if entry["lrs"] else None
    return out

def collect_points(config: ScalingConfig, sids_path: Path | None,
                   selection: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[tuple[str, int, ScalingPoint, dict[str, Any]]]]:
    """Per sweep, ``(preset, seed, point, result)`` of every finished run (missing ones are
    reported in the log and the report, not fitted); of a sweep with ``lrs``, only the runs of
    each size's lr chosen in ``selection`` (:func:`select_lrs`)."""
    key = f"test/{config.metric}"
    n_llm_sid = n_qt = 0.0
    if any(s.paradigm == "sid" for s in config.sweeps.values()):
        if config.encoder_parameters is not None:
            n_llm_sid = float(config.encoder_parameters)
        else:
            try:
                n_llm_sid = float(count_encoder_parameters(config.encoder))
            except (OSError, ValueError, ImportError) as error:  # e.g. the encoder's package is not installed here
                log.error("cannot count the parameters of the encoder of %s (%s): the SID law is not fitted; "
                          "set encoder_parameters in the scaling config", config.encoder, error)
                n_llm_sid = float("nan")
        n_qt = float(config.tokenizer_parameters if config.tokenizer_parameters is not None else (count_tokenizer_parameters(sids_path) if sids_path else 0))
    out: dict[str, list[tuple[str, int, ScalingPoint, dict[str, Any]]]] = {name: [] for name in config.sweeps}
    chosen = {(name, label): pick["chosen"] for name, picks in selection.items() for label, pick in picks.items()}
    for run, sweep_name, preset, seed, lr in config.runs():
        path = config.run_dir / run / "result.json"
        if not path.is_file() or (lr is not None and chosen.get((sweep_name, preset)) != lr):
            continue
        result = read_json(path)
        if key not in result["metrics"]:
            raise KeyError(f"{path}: no metric {key!r} (has {sorted(result['metrics'])})")
        recall = float(result["metrics"][key])
        if config.sweeps[sweep_name].paradigm == "sid":
            point = ScalingPoint(recall=recall, n_rs=float(result["parameters"]), n_llm=n_llm_sid, n_qt=n_qt, label=preset, seed=seed)
        else:
            trained = float(result.get("trainable_parameters", result["parameters"]))
            point = ScalingPoint(recall=recall, n_lora=trained, n_llm=float(result["parameters"]) - trained, label=preset, seed=seed)
        out[sweep_name].append((preset, seed, point, result))
    return out



def _epochs(rows: list[tuple[str, int, ScalingPoint, dict[str, Any]]]) -> str:
    """``best / last`` epoch of each seed's run (best by the val curve its result records; ``?``
    for a result without one): a best epoch well before the last shows the run reached its plateau."""
    return ", ".join(f"{'?' if e[3].get('best_epoch') is None else e[3]['best_epoch']} / {e[3].get('epochs', '?')}" for e in rows)

def write_scaling_report(config: ScalingConfig, sids_path: Path | None, command: str) -> Path:
    """Fit every sweep with enough points; write ``scaling.json``, ``scaling.md`` and ``scaling.png``."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    selection = select_lrs(config)
    collected = collect_points(config, sids_path, selection)
    metric = config.metric
    # The runs may have trained elsewhere (a GPU machine) than where the report is written.
    trained_on = Counter(e[3].get("device", "unknown") for entries in collected.values() for e in entries)
    trained = ", ".join(f"{name} ({n} runs)" for name, n in sorted(trained_on.items())) or "no runs yet"
    lines = [f"# Scaling study: {config.name}", "", f"Command: `{command}`", "",
             f"Data: `{config.data}`; seeds {config.seeds}; metric test {metric}; trained on {trained}; "
             f"report written on {device_name()}.", ""]
    lines += ["| sweep | paradigm | preset | parameters (trained) | seeds done | "
              f"test {metric} mean ± std | test ndcg@10 mean | cold {metric} mean | train s mean | best / last epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {"name": config.name, "metric": metric, "command": command, "device": device_name(),
                               "trained_on": dict(trained_on), "sweeps": {}}
    plotted = {}
    missing = [run for run, *_ in config.runs() if not (run_dir / run / "result.json").is_file()]
    if selection:
        summary["lr_selection"] = {name: {label: {"chosen": e["chosen"], "lrs": {f"{lr:g}": v for lr, v in e["lrs"].items()}}
                                          for label, e in picks.items()} for name, picks in selection.items()}
    for sweep_name, sweep in config.sweeps.items():
        entries = collected[sweep_name]
        for preset in sweep.labels:
            rows = [e for e in entries if e[0] == preset]
            if not rows:
                lines.append(f"| {sweep_name} | {sweep.paradigm} | {preset} | — | 0/{len(config.seeds)} | — | — | — | — | — |")
                continue
            recall = np.array([e[2].recall for e in rows])
            ndcg = np.mean([e[3]["metrics"].get("test/ndcg@10", float("nan")) for e in rows])
            cold = np.mean([e[3]["metrics"].get(f"test/cold/{metric}", float("nan")) for e in rows])
            seconds = np.mean([e[3].get("train_seconds", float("nan")) for e in rows])
            std = recall.std(ddof=1) if len(recall) > 1 else 0.0
            params = rows[0][3]["parameters"]
            trained = rows[0][3].get("trainable_parameters", params)
            lines.append(f"| {sweep_name} | {sweep.paradigm} | {preset} | {params:,} ({trained:,}) | {len(rows)}/{len(config.seeds)} | "
                         f"{recall.mean():.4f} ± {std:.4f} | {ndcg:.4f} | {cold:.4f} | {seconds:.0f} | {_epochs(rows)} |")
        points = [e[2] for e in entries]
        record: dict[str, Any] = {
            "paradigm": sweep.paradigm,
            "points": [{"preset": e[0], "seed": e[1], "recall": e[2].recall, "n_rs": e[2].n_rs, "n_llm": None if math.isnan(e[2].n_llm) else e[2].n_llm,
                        "n_qt": e[2].n_qt, "n_lora": e[2].n_lora} for e in entries],
        }
        if any(math.isnan(p.n_llm) for p in points):
            record["not_fitted"] = "encoder parameter count unknown (set encoder_parameters)"
        elif len(points) >= MIN_FIT_POINTS:
            fit = fit_scaling_law(points, sweep.paradigm)
            record["fit"] = fit.to_dict()
            plotted[f"{sweep_name} ({sweep.paradigm})"] = (fit, points)
            larger = [p for p in points if p.total_params < max(q.total_params for q in points)]
            if len(larger) >= MIN_FIT_POINTS:
                held = held_out_error(points, sweep.paradigm)
                record["held_out"] = {"size": held.size, "observed": held.observed, "predicted": held.predicted, "abs_error": held.abs_error}
        elif points:
            plotted[f"{sweep_name} ({sweep.paradigm})"] = (None, points)
        summary["sweeps"][sweep_name] = record
    if selection:
        lines += ["", "## Learning rate per size (chosen on val; the table above and the law use the chosen one)", "",
                  "| sweep | size | lr | mean best val | seeds | chosen |", "|---|---|---|---|---|---|"]
        for name, picks in selection.items():
            for label, entry in picks.items():
                for lr, (value, seeds) in entry["lrs"].items():
                    lines.append(f"| {name} | {label} | {lr:g} | {value:.4f} | {seeds} | {'yes' if lr == entry['chosen'] else ''} |")
    lines += ["", "## Fitted laws", "",
              "`Recall = R0 - A / N_SI^a - B / N_CF^b`, counts in millions (genrec/scaling_law.py has both paradigms' forms).", ""]
    for sweep_name, record in summary["sweeps"].items():
        fit = record.get("fit")
        if "not_fitted" in record:
            lines.append(f"- {sweep_name}: not fitted: {record['not_fitted']}.")
            continue
        if fit is None:
            lines.append(f"- {sweep_name}: {len(record['points'])} points, fewer than the {MIN_FIT_POINTS} the law needs: not fitted.")
            continue
        gammas = ", ".join(f"{k} {fit[k]:.3g}" for k in ("gamma1", "gamma2", "gamma", "beta") if fit.get(k) is not None)
        text = (f"- {sweep_name} ({fit['paradigm']}): R0 {fit['r0']:.4f}, A {fit['a']:.3g}, a {fit['alpha']:.3g}, "
                f"B {fit['b']:.3g}, b {fit['beta_exp']:.3g}, {gammas}; R² {fit['r2']:.3f} over {fit['n_points']} points")
        held = record.get("held_out")
        text += (f"; held-out largest size ({held['size'] / 1e6:.1f}M): observed {held['observed']:.4f}, predicted "
                 f"{held['predicted']:.4f}, error {held['abs_error']:.4f}.") if held else "; held-out check needs 7 points below the largest size."
        lines.append(text)
    if missing:
        started = [run for run in missing if (run_dir / run).is_dir()]
        lines += ["", f"Not run yet ({len(missing)}): " + ", ".join(missing) + ". Re-run the command to train them (finished runs are skipped"
                  + (f"; {', '.join(started)} started without finishing and resume from their last.ckpt" if started else "") + ")."]
    if plotted:
        plot_scaling(plotted, run_dir / "scaling.png", metric_label=f"test {metric}")
        lines += ["", "![scaling](scaling.png)"]
    write_json(run_dir / "scaling.json", summary)
    report = run_dir / "scaling.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report
