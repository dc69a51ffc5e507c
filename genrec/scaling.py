"""The ``scaling`` command (a scaling study): sweep size presets x seeds for each paradigm, fit the paper's law, report.

``python train.py scaling --config configs/scaling/<name>.yaml`` trains and tests one model per
(sweep, preset, seed) through the pipeline's model stage (:func:`genrec.pipeline.run_model`), so
every run is skipped when its ``result.json`` is up to date and resumed from ``last.ckpt`` after
a kill; then, per sweep, fits ``Recall@k = R0 - A/N_SI^a - B/N_CF^b``
(:func:`genrec.scaling_law.fit_scaling_law`, the paradigm's form), checks extrapolation to the
largest size (:func:`genrec.scaling_law.held_out_error`) and writes under ``<root>/<name>/``:

* ``<sweep>-<preset>-s<seed>/`` — each run (config, checkpoints, ``result.json``);
* ``scaling.json`` — every point and every fit;
* ``scaling.md`` — the table (mean ± std over seeds per preset), the axes table (sweeps that vary
  the SIDs, e.g. the encoder or the codebook, beside the ladder at their size), fitted constants,
  R², held-out error, the command and device, and with ``claims`` the paper's claims decided from
  the runs (:mod:`genrec.claims`);
* ``scaling.png`` — points with error bars and the fitted curves;
* ``val_curves.png`` — every finished run's val curve, one panel per sweep (the runs at a size's
  chosen lr solid): whether each point reached its plateau (the table's late val gain,
  :func:`genrec.convergence.late_gain`, says it in numbers).

With ``archive`` (e.g. ``docs/runs``, kept in git), each report also copies every finished run's
``result.json`` to ``<archive>/<name>/<run>.json``, and a run whose result is only there counts
as finished (read by the report, not re-trained): the numbers outlive the machine that trained
them (:func:`result_file`, :func:`archive_results`).

A sweep may name its own SIDs (``encoder``, ``tokenizer``, ``tokenize_overrides`` or ``sids``,
each falling back to the study's): its encode + tokenize stages run (or are reused) into
``<root>/<name>/sids/<sweep>.safetensors``, and its law inputs are counted from them.

Parameter counts fed to the law: SID-based GR (``paradigm: sid``) — ``N_RS`` the TIGER model,
``N_LLM`` the frozen modality encoder, ``N_QT`` the tokenizer (both of the sweep's SIDs); LLM-as-RS (``paradigm: llm``) —
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
from genrec.claims import check_claims, claims_table, decide_claims
from genrec.convergence import RISING, TAIL, late_gain, plot_val_curves
from genrec.errors import ConfigError, UsageError, one_line, user_error
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
        lr_seeds: run the lr sweep on the study's first ``lr_seeds`` seeds only, and the other
            seeds at the lr chosen on those (a size's later seeds wait until every lr has a
            finished run on each of the first seeds). ``None``: every seed runs every lr.
            With 3 lrs and 3 seeds, ``lr_seeds: 1`` trains 5 runs a size instead of 9.
        lr_extend: how many lrs a size may add beyond its grid: when every lr of a size has
            finished (on the lr-sweep seeds) and the best is the largest (smallest), the next
            one up (down) by the grid's outer step (e.g. 4e-3 after 1e-3, 2e-3) joins that size's
            grid and runs; repeated while the best stays at the edge, at most ``lr_extend`` times
            (the report flags a choice still at the edge). 0: the grid as given.
        lr_key: the dotted config key of the learning rate (``model.init_args.lr`` for TIGER
            and SASRec, ``model.init_args.optimizer.lr`` for the LM recommender).
        paradigm: ``sid`` (SID-based GR) or ``llm`` (LLM-as-RS): which law is fitted.
        overrides: extra command-line arguments of every run of this sweep.
        preset_overrides: preset -> extra arguments of that preset's runs, after ``overrides``
            (e.g. a lower learning rate, or a half batch with ``accumulate_grad_batches: 2``, which
            keeps the optimizer step of the others while halving the activation memory).
        encoder: this sweep's encoder YAML (its own SIDs); ``None``: the study's.
        tokenizer: this sweep's tokenizer YAML (its own SIDs); ``None``: the study's.
        tokenize_overrides: extra arguments of this sweep's encode + tokenize stages, after the
            study's ``overrides["tokenize"]`` (a later one wins), e.g. ``[--encoder.cf_weight, "3"]``
            or ``[--tokenizer.init_args.codebook_size, "512"]``; only ``--encoder.*``,
            ``--encode.*``, ``--tokenizer.*`` and ``--tokenize.*`` (the data is the study's).
        sids: an existing SID artifact for this sweep instead of its stages (``encoder``, if
            given, then only counts ``N_LLM``).
        encoder_parameters: ``N_LLM`` of this sweep's own SIDs; ``None``: counted.
        tokenizer_parameters: ``N_QT`` of this sweep's own SIDs; ``None``: counted.
        axis: what this sweep varies against the ladder (e.g. ``encoder``, ``codebook``): the
            report's axes table puts it beside the ladder sweeps (those without an axis) at each
            of its sizes, grouped by axis.
        description: its SIDs in words for the axes table (e.g. ``SmolLM2-135M mean + cf``);
            empty: the encoder and tokenizer YAML names and the overrides.

    A sweep with any of ``encoder``, ``tokenizer``, ``tokenize_overrides`` or ``sids`` has its own
    SIDs and counts ``N_LLM``/``N_QT`` from them (never the study's ``encoder_parameters`` /
    ``tokenizer_parameters``, which describe the study's SIDs).
    """

    model: str
    presets: list[str] = field(default_factory=list)
    paradigm: Literal["sid", "llm"] = "sid"
    overrides: list[str] = field(default_factory=list)
    preset_overrides: dict[str, list[str]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)
    lr_seeds: int | None = None
    lr_extend: int = 0
    lr_key: str = "model.init_args.lr"
    encoder: str | None = None
    tokenizer: str | None = None
    tokenize_overrides: list[str] = field(default_factory=list)
    sids: str | None = None
    encoder_parameters: int | None = None
    tokenizer_parameters: int | None = None
    axis: str | None = None
    description: str = ""

    @property
    def own_sids(self) -> bool:
        """Whether this sweep names its own SIDs rather than using the study's."""
        return bool(self.encoder or self.tokenizer or self.tokenize_overrides or self.sids)

    @property
    def labels(self) -> list[str]:
        """The sizes of the ladder: preset names, or the labels of ``models``."""
        return list(self.models) if self.models else list(self.presets)

    def values(self, label: str, seed: int, lr: float | None = None) -> dict[str, Any]:
        """The settings one run of ``label`` (and ``lr``) puts on its parsed model config."""
        size = {"model.init_args.model": self.models[label], "model.init_args.preset": None} if self.models else {"model.init_args.preset": label}
        return {**size, "seed_everything": seed, **({} if lr is None else {self.lr_key: lr})}


class SidSource(NamedTuple):
    """Where a sweep's SIDs come from: the encode + tokenize stages of ``encoder`` and
    ``tokenizer`` with ``overrides``, or the finished artifact ``sids``; ``encoder_parameters`` /
    ``tokenizer_parameters`` the law's ``N_LLM`` / ``N_QT`` when given (else counted)."""

    encoder: str
    tokenizer: str
    overrides: tuple[str, ...]
    sids: str | None
    encoder_parameters: int | None
    tokenizer_parameters: int | None


TOKENIZE_OVERRIDE_PREFIXES = ("--encoder.", "--encode.", "--tokenizer.", "--tokenize.")
"""The flags a sweep's ``tokenize_overrides`` may set (its SIDs; the data stays the study's)."""


def run_name(sweep: str, label: str, seed: int, lr: float | None = None) -> str:
    """The folder name of one run: ``<sweep>-<label>[-lr<lr>]-s<seed>``."""
    return f"{sweep}-{label}{'' if lr is None else f'-lr{lr:g}'}-s{seed}"


def val_peak(config: ScalingConfig, run: str) -> float | None:
    """The best value of a finished run's val curve (its :func:`result_file`); ``None`` if none yet."""
    path = result_file(config, run)
    points = (read_json(path).get("val_curve") or {}).get("points") if path is not None else None
    return max(value for _, value in points) if points else None


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
        tokenizer_parameters: ``N_QT``; ``None``: counted from the tokenizer file next to the SIDs
            (unknown when the SIDs are not here, e.g. ``--collect_only`` on a fresh checkout: the
            report then says so and does not fit the law).
        metric: the test metric the law models (``recall@10`` -> ``test/recall@10``).
        overrides: stage name (``data``, ``tokenize``) -> extra command-line arguments.
        accelerator: the Lightning accelerator of every stage (as in
            :class:`~genrec.pipeline.PipelineConfig`); ``None``: each YAML says.
        root: the folder of all runs.
        claims: the paper's claims the report decides from these runs (:mod:`genrec.claims`):
            claim key (``sid_saturation``, ``encoder_size``, ``codebook_size``, ``llm_scaling``,
            ``cold_start``, ``cf_injection``) -> the sweeps (and sizes) that bear on it, e.g.
            ``sid_saturation: {ladder: tiger, at: 13m}``.
        archive: a folder of finished runs' results kept in the repo (e.g. ``docs/runs``):
            ``<archive>/<name>/<run>.json``, a byte-identical copy of the run's ``result.json``.
            Every report copies the run folders' results there (a run folder's wins over a
            differing copy: it is newer), and a run whose result is only in the archive counts
            as finished: read by the report, not re-trained. ``None``: no archive; a folder
            that does not exist yet is an empty archive.
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
    archive: str | None = None
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sweeps = {k: v if isinstance(v, Sweep) else Sweep(**v) for k, v in self.sweeps.items()}
        for name, sweep in self.sweeps.items():
            if sweep.paradigm not in ("sid", "llm"):
                raise ConfigError(f"sweep {name!r}: paradigm must be 'sid' or 'llm', got {sweep.paradigm!r}")
            if bool(sweep.presets) == bool(sweep.models):
                raise ConfigError(f"sweep {name!r}: give either presets or models (pretrained, by label), not {'both' if sweep.presets else 'neither'}")
            bad = [label for label in sweep.models if not re.fullmatch(r"[A-Za-z0-9._-]+", label)]
            if bad:
                raise ConfigError(f"sweep {name!r}: model labels name run folders (letters, digits, '.', '_', '-'): {bad}")
            if any(lr <= 0 for lr in sweep.lrs) or len(set(sweep.lrs)) != len(sweep.lrs):
                raise ConfigError(f"sweep {name!r}: lrs must be distinct and > 0, got {sweep.lrs}")
            if sweep.lr_seeds is not None and (not sweep.lrs or not 1 <= sweep.lr_seeds <= len(self.seeds or [])):
                raise ConfigError(f"sweep {name!r}: lr_seeds {sweep.lr_seeds} needs lrs and 1 <= lr_seeds <= the {len(self.seeds or [])} seeds")
            if sweep.lr_extend and (sweep.lr_extend < 0 or len(sweep.lrs) < 2):
                raise ConfigError(f"sweep {name!r}: lr_extend {sweep.lr_extend} needs lr_extend >= 0 and at least 2 lrs (their step)")
            stray = sorted(set(sweep.preset_overrides) - set(sweep.labels))
            if stray:
                raise ConfigError(f"sweep {name!r}: preset_overrides for presets it does not sweep: {stray}")
            if sweep.sids and (sweep.tokenizer or sweep.tokenize_overrides):
                raise ConfigError(f"sweep {name!r}: sids {sweep.sids} is a finished artifact, so tokenizer / tokenize_overrides "
                                  f"({sweep.tokenizer or sweep.tokenize_overrides}) would not be used: give one or the other")
            flags = [arg for arg in sweep.tokenize_overrides if arg.startswith("-")]
            stray = [arg for arg in flags if not arg.startswith(TOKENIZE_OVERRIDE_PREFIXES)]
            if stray or (sweep.tokenize_overrides and not flags):
                raise ConfigError(f"sweep {name!r}: tokenize_overrides may only set {', '.join(p + '*' for p in TOKENIZE_OVERRIDE_PREFIXES)}, "
                                  f"got {stray[0] if stray else sweep.tokenize_overrides[0]!r}")
        if not self.seeds:
            raise ConfigError("scaling needs at least one seed")
        check_claims(self.claims, {name: sweep.labels for name, sweep in self.sweeps.items()})

    def source(self, sweep_name: str) -> SidSource:
        """The SIDs of sweep ``sweep_name``: its own settings over the study's (see :class:`Sweep`)."""
        sweep, study = self.sweeps[sweep_name], tuple(self.overrides.get("tokenize", []))
        if not sweep.own_sids:
            return SidSource(self.encoder, self.tokenizer, study, self.sids, self.encoder_parameters, self.tokenizer_parameters)
        return SidSource(sweep.encoder or self.encoder, sweep.tokenizer or self.tokenizer, (*study, *sweep.tokenize_overrides),
                         sweep.sids, sweep.encoder_parameters, sweep.tokenizer_parameters)

    def describe_sids(self, sweep_name: str) -> str:
        """A sweep's SIDs in words: its ``description``, else the YAML names and the overrides it adds."""
        sweep = self.sweeps[sweep_name]
        if sweep.description:
            return sweep.description
        if sweep.sids:
            return f"file {sweep.sids}"
        source = self.source(sweep_name)
        added = " ".join(sweep.tokenize_overrides if sweep.own_sids else source.overrides)
        return f"{Path(source.encoder).stem} + {Path(source.tokenizer).stem}" + (f" ({added})" if added else "") + ("" if sweep.own_sids else ", the study's")

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / self.name

    @property
    def archive_dir(self) -> Path | None:
        """This study's folder of the archive (``<archive>/<name>``); ``None`` without one."""
        return None if self.archive is None else Path(self.archive) / self.name

    def every_run(self) -> list[ScalingRun]:
        """Every run the study could train: each sweep's sizes x lrs (:meth:`size_lrs`) x all seeds
        (:meth:`runs` holds back the seeds past ``lr_seeds`` and the lrs they do not run at)."""
        return [ScalingRun(run_name(s, p, seed, lr), s, p, seed, lr) for s, sweep in self.sweeps.items() for p in sweep.labels
                for lr in self.size_lrs(s, p) or [None] for seed in self.seeds]

    def runs(self) -> list[ScalingRun]:
        """Every run that can train now, sweep by sweep, small to large (and lr by lr within a
        size); a sweep's seeds past ``lr_seeds`` only at their size's chosen lr, once chosen
        (:meth:`waiting` lists the others)."""
        out = []
        for s, sweep in self.sweeps.items():
            for p in sweep.labels:
                lrs, chosen = self._lr_grid(s, p)
                for lr in lrs or [None]:
                    for seed in self.lr_sweep_seeds(s):
                        out.append(ScalingRun(run_name(s, p, seed, lr), s, p, seed, lr))
                chosen = chosen if sweep.lr_seeds else None
                if chosen is not None:
                    out += [ScalingRun(run_name(s, p, seed, chosen), s, p, seed, chosen) for seed in self.seeds[sweep.lr_seeds:]]
        return out

    def lr_sweep_seeds(self, sweep_name: str) -> list[int]:
        """The seeds that run every lr of a sweep (all of them unless ``lr_seeds``)."""
        sweep = self.sweeps[sweep_name]
        return self.seeds[: sweep.lr_seeds] if sweep.lr_seeds else list(self.seeds)

    def _best_lr(self, sweep_name: str, label: str, lrs: Sequence[float]) -> float | None:
        """Of ``lrs``, the one with the best mean val peak over the lr-sweep seeds, once each has a
        finished run (a ``result.json`` with a val curve) at every one of them; else ``None``."""
        means = {}
        for lr in lrs:
            peaks = [val_peak(self, run_name(sweep_name, label, seed, lr)) for seed in self.lr_sweep_seeds(sweep_name)]
            if None in peaks:
                return None
            means[lr] = float(np.mean(peaks))
        return max(means, key=means.get) if means else None

    def _lr_grid(self, sweep_name: str, label: str) -> tuple[list[float], float | None]:
        """:meth:`size_lrs` and :meth:`chosen_lr` of one size, from one read of its runs' results."""
        sweep = self.sweeps[sweep_name]
        lrs = list(sweep.lrs)
        best = self._best_lr(sweep_name, label, lrs)
        for _ in range(sweep.lr_extend):
            grid = sorted(lrs)
            if best == grid[-1]:
                lrs.append(float(f"{grid[-1] * grid[-1] / grid[-2]:.6g}"))
            elif best == grid[0]:
                lrs.append(float(f"{grid[0] * grid[0] / grid[1]:.6g}"))
            else:
                break  # not chosen yet, or inside the grid
            best = self._best_lr(sweep_name, label, lrs)
        return lrs, best

    def size_lrs(self, sweep_name: str, label: str) -> list[float]:
        """The lrs size ``label`` runs: the sweep's ``lrs``, then those ``lr_extend`` added beyond
        an edge that was best (each once the lrs before it have all finished)."""
        return self._lr_grid(sweep_name, label)[0]

    def chosen_lr(self, sweep_name: str, label: str) -> float | None:
        """The lr of size ``label`` with the best mean val peak over the lr-sweep seeds, once each
        of them has a finished run at every lr of :meth:`size_lrs` (extensions included); else ``None``."""
        return self._lr_grid(sweep_name, label)[1]

    def waiting(self) -> list[str]:
        """Runs not yet startable: seeds past ``lr_seeds`` of sizes whose lr is not chosen yet."""
        return [f"{s}-{p}-s{seed}" for s, sweep in self.sweeps.items() if sweep.lr_seeds for p in sweep.labels
                if self.chosen_lr(s, p) is None for seed in self.seeds[sweep.lr_seeds:]]


def result_file(config: ScalingConfig, run: str) -> Path | None:
    """Where a finished run's result is: its run folder's ``result.json``, else the archive's
    copy (``<archive>/<name>/<run>.json``), else ``None`` (not finished). Every reader of a
    run's result goes through this, so an archived result counts as a finished run."""
    path = config.run_dir / run / "result.json"
    if path.is_file():
        return path
    archived = None if config.archive_dir is None else config.archive_dir / f"{run}.json"
    return archived if archived is not None and archived.is_file() else None


def archive_results(config: ScalingConfig) -> tuple[list[str], list[str]]:
    """Copy every run folder's ``result.json`` into the archive (``<archive>/<name>/<run>.json``,
    byte for byte, atomically) where the archive lacks it or holds a different copy: the run
    folder's is newer and wins (logged). Returns the runs copied and, of those, the ones that
    replaced a differing copy; nothing without an archive."""
    if config.archive_dir is None:
        return [], []
    copied, replaced = [], []
    for run, *_ in config.every_run():
        source = config.run_dir / run / "result.json"
        if not source.is_file():
            continue
        target = config.archive_dir / f"{run}.json"
        content = source.read_bytes()
        if target.is_file():
            if target.read_bytes() == content:
                continue
            log.warning("%s: the archive's %s differs from the run folder's result.json: replaced by the run folder's (newer)", run, target)
            replaced.append(run)
        with atomic_path(target) as tmp:
            tmp.write_bytes(content)
        copied.append(run)
    if copied:
        log.info("archived %d run results in %s (%d replacing a differing copy)", len(copied), config.archive_dir, len(replaced))
    return copied, replaced


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value the last ``flag value`` or ``flag=value`` of command-line ``args`` gives; ``None`` if none."""
    value = None
    for k, arg in enumerate(args):
        if arg == flag and k + 1 < len(args):
            value = args[k + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def count_encoder_parameters(encoder_yaml: str, overrides: Sequence[str] = ()) -> int:
    """Parameters of the text encoder an encode YAML names (built on the meta device, no weights
    read), or the one ``--encoder.model`` in ``overrides`` names; 0 for the ``cf`` encoder, which
    has no model (its embeddings are fitted from the interactions, like the tokenizer, not a
    pretrained network)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from genrec.encode import CF_MODEL, resolve_model

    settings = (yaml.safe_load(Path(encoder_yaml).read_text()) or {}).get("encoder", {})
    settings = dict(settings.get("init_args", settings))
    for key in ("model", "gguf_file"):
        value = _flag_value(overrides, f"--encoder.{key}")
        if value is not None:
            settings[key] = value
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


def _sids(config: ScalingConfig, pipeline: PipelineConfig, collect_only: bool = False, trained: set[str] | None = None) -> Path | None:
    """The study's SID artifact (of the sweeps without their own): the configured one, or the
    pipeline's encode + tokenize stages (reused when unchanged). With ``collect_only``, or when
    none of the ``trained`` sweeps reads it, an existing artifact is taken as it is (the runs'
    digests record the SIDs they trained on) and a missing one is not made (``None``): collecting
    never runs an encoder, and a job training other sweeps does not run their stages."""
    users = [name for name, s in config.sweeps.items() if model_needs_sids(s.model) and not s.own_sids]
    if not users:
        return None
    if config.sids:
        path = Path(config.sids)
        if not path.is_file():
            raise FileNotFoundError(f"scaling config: sids file {path} does not exist")
        return path
    path = pipeline.run_dir / "sids" / f"{Path(pipeline.tokenizer).stem}.safetensors"
    if collect_only or (trained is not None and not trained.intersection(users)):
        return path if path.is_file() else None
    return run_sid_stages(pipeline)


def _read_source(config: ScalingConfig, sweep_name: str, source: SidSource) -> Any:
    """The tokenize stage's inputs of a sweep's own SIDs (:func:`~genrec.stages.tokenize.read_tokenize`);
    a bad setting raises one line naming the sweep."""
    from genrec.stages.parsing import USER_ERRORS
    from genrec.stages.tokenize import read_tokenize

    try:
        return read_tokenize([config.data, source.encoder, source.tokenizer], source.overrides)
    except Exception as error:
        found = user_error(error, USER_ERRORS)
        if found is None:
            raise
        kind = UsageError if isinstance(found, UsageError) else ConfigError
        raise kind(f"scaling config: sweep {sweep_name!r} (its SIDs: {source.encoder}, {source.tokenizer}, "
                   f"{list(source.overrides)}): {one_line(found)}") from error


def _sweep_sids(config: ScalingConfig, sweep_name: str, inputs: Any) -> Path:
    """The encode + tokenize stages of a sweep's own SIDs (``inputs`` from :func:`_read_source`)
    into ``<run>/sids/<sweep>.safetensors``, the embeddings in ``<run>/embeddings/``, one file per
    encoder setting (so sweeps that differ only in the tokenizer share them); each reused when unchanged."""
    from genrec.encode import default_output
    from genrec.stages.tokenize import tokenize_stage

    path = config.run_dir / "sids" / f"{sweep_name}.safetensors"
    embeddings = default_output(inputs.datamodule.name, inputs.encoder, inputs.encode["template"]).name
    inputs.encode["output"] = str(config.run_dir / "embeddings" / embeddings)
    inputs.settings.output = str(path)
    print(f"== SIDs of sweep {sweep_name}: {config.describe_sids(sweep_name)} ==", flush=True)
    tokenize_stage(inputs.on(config.accelerator))
    return path


def sid_paths(config: ScalingConfig, pipeline: PipelineConfig, collect_only: bool = False,
              only: Sequence[str] | None = None) -> dict[str, Path | None]:
    """Sweep name -> the SID artifact its runs read (``None`` for a model without SIDs, or for
    SIDs not made here): the study's for sweeps without their own, else each distinct source's
    (its ``sids``, or its stages, made once; with ``collect_only`` an existing artifact is taken
    as it is and a missing one is not made: collecting never runs an encoder). With ``only``, the
    stages of sources that no sweep of ``only`` reads are not run (their existing artifacts are taken as they are): a job that trains one sweep needs no other
    sweep's encoder. Every sweep's settings are read before any stage runs, so a bad one fails
    at once, in one line."""
    needs = {name: model_needs_sids(sweep.model) for name, sweep in config.sweeps.items()}
    trained = None if only is None else set(only)
    owners: dict[SidSource, str] = {}  # each distinct source, by the first sweep that has it
    readers: dict[SidSource, set[str]] = {}
    for name, sweep in config.sweeps.items():
        if sweep.own_sids and not needs[name]:
            raise ConfigError(f"scaling config: sweep {name!r}: its model {sweep.model} reads no semantic IDs, so its "
                              "encoder / tokenizer / tokenize_overrides / sids would not be used")
        if sweep.own_sids:
            source = config.source(name)
            owners.setdefault(source, name)
            readers.setdefault(source, set()).add(name)
    made: dict[SidSource, Path | None] = {}
    pending = {}
    for source, name in owners.items():
        existing = config.run_dir / "sids" / f"{name}.safetensors"
        idle = trained is not None and not trained & readers[source]  # no sweep this job trains reads it
        if source.sids:
            made[source] = Path(source.sids)
            if not made[source].is_file():
                raise FileNotFoundError(f"scaling config: sweep {name!r}: sids file {source.sids} does not exist")
        elif (collect_only or idle) and existing.is_file():
            made[source] = existing
        elif idle or collect_only:
            _read_source(config, name, source)  # not made by this job; its settings are still checked
            made[source] = None
        else:
            pending[source] = _read_source(config, name, source)
    study = _sids(config, pipeline, collect_only, trained)
    for source, inputs in pending.items():
        made[source] = _sweep_sids(config, owners[source], inputs)
    return {name: (made[config.source(name)] if sweep.own_sids else study) if needs[name] else None
            for name, sweep in config.sweeps.items()}


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
        sids = sid_paths(config, pipeline, collect_only, None if collect_only else only)
    done: set[str] = set()
    while not collect_only:
        for k, (run, sweep_name, preset, seed, lr) in enumerate(runs):
            if k % count != index or run in done:
                continue
            found = result_file(config, run)
            if found is not None and found != config.run_dir / run / "result.json":
                log.info("%s: finished, its result taken from the archive %s (not re-trained)", run, found)
                done.add(run)
                continue
            sweep = config.sweeps[sweep_name]
            pipeline.models = {run: sweep.model}
            pipeline.overrides[run] = [*sweep.overrides, *sweep.preset_overrides.get(preset, [])]
            log.info("scaling run %d/%d: %s", k + 1, len(runs), run)
            run_model(pipeline, run, sweep.model, sids[sweep_name], values=sweep.values(preset, seed, lr))
            done.add(run)
        # A single job goes on with the seeds whose lr its runs just chose (lr_seeds); shards
        # stop here (each would see the choices at another time): re-run them for those.
        runs = [r for r in config.runs() if only is None or r[1] in only]
        if count > 1 or all(r[0] in done for r in runs):
            break
    return write_scaling_report(config, sids, command)



def val_curves(config: ScalingConfig, selection: dict[str, dict[str, dict[str, Any]]]
               ) -> tuple[dict[str, float], dict[str, list[tuple[str, list[list[float]], bool]]], list[str]]:
    """Every finished run's late val gain (:func:`~genrec.convergence.late_gain`; runs whose
    curve is too short to read are left out); per sweep, its val curves for
    :func:`~genrec.convergence.plot_val_curves`: ``(label, points, counted)``, ``counted`` false
    for a run at an lr its size did not choose; and the metrics the curves monitor."""
    chosen = {(name, label): pick["chosen"] for name, picks in selection.items() for label, pick in picks.items()}
    gains: dict[str, float] = {}
    panels: dict[str, list[tuple[str, list[list[float]], bool]]] = {}
    monitors: set[str] = set()
    for run, sweep_name, label, seed, lr in config.every_run():
        path = result_file(config, run)
        curve = (read_json(path).get("val_curve") or {}) if path is not None else {}
        points = curve.get("points")
        if not points:
            continue
        monitors.add(str(curve.get("monitor") or "val metric"))
        gain = late_gain(points)
        if gain is not None:
            gains[run] = gain
        counted = lr is None or chosen.get((sweep_name, label)) == lr
        name = f"{label}{'' if lr is None else f' lr {lr:g}'} s{seed}"
        panels.setdefault(sweep_name, []).append((name, points, counted))
    return gains, panels, sorted(monitors)


def select_lrs(config: ScalingConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Per sweep with ``lrs``, per size label: every lr's mean best val value over its finished
    seeds (``{"lrs": {lr: [mean, seeds]}, "chosen": lr, "pending": [lr, ...]}``), the chosen lr
    the one with the highest mean so far, provisional while ``pending`` lists lrs of the size's
    grid (:meth:`ScalingConfig.size_lrs`) without a finished run; a size with no val curve yet
    has no choice (``chosen`` None)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run, sweep_name, label, seed, lr in config.runs():
        if lr is None or seed not in config.lr_sweep_seeds(sweep_name):
            continue  # the later seeds of an lr_seeds sweep run at the chosen lr only: they do not choose it
        peak = val_peak(config, run)
        entry = out.setdefault(sweep_name, {}).setdefault(label, {"lrs": {}, "chosen": None})
        if peak is not None:
            entry["lrs"].setdefault(lr, []).append(peak)
    for picks in out.values():
        for entry in picks.values():
            entry["lrs"] = {lr: [float(np.mean(values)), len(values)] for lr, values in entry["lrs"].items()}
            entry["chosen"] = max(entry["lrs"], key=lambda lr: entry["lrs"][lr][0]) if entry["lrs"] else None
    for name, picks in out.items():
        for label, entry in picks.items():  # provisional while an lr of the size's grid has no finished run
            entry["pending"] = [lr for lr in config.size_lrs(name, label) if lr not in entry["lrs"]]
    return out

def lr_grid_edges(config: ScalingConfig, selection: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, float, str]]:
    """``(sweep, size, chosen lr, "largest" | "smallest")`` of each size whose lr, chosen over every
    lr of its sweep's grid (of more than one), is the grid's largest or smallest."""
    edges = []
    for name, picks in selection.items():
        for label, entry in picks.items():
            grid, chosen = sorted(config.size_lrs(name, label)), entry["chosen"]
            if len(grid) < 2 or chosen is None or entry["pending"]:
                continue  # one lr, or not every lr has run yet: no edge to speak of
            if chosen in (grid[0], grid[-1]):
                edges.append((name, label, chosen, "largest" if chosen == grid[-1] else "smallest"))
    return edges


def law_inputs(config: ScalingConfig, sids: dict[str, Path | None]) -> dict[str, tuple[float, float]]:
    """Per SID-based sweep, ``(N_LLM, N_QT)`` of its SIDs (given in the config, else counted:
    the encoder from its YAML and overrides, the tokenizer from the file next to the SIDs);
    ``N_LLM`` NaN when the encoder cannot be counted here, ``N_QT`` NaN when the SIDs its model
    reads are not here (``--collect_only`` makes none); each logged, and that sweep is not fitted."""
    out: dict[str, tuple[float, float]] = {}
    counted: dict[tuple[SidSource, Path | None], tuple[float, float]] = {}
    for name, sweep in config.sweeps.items():
        if sweep.paradigm != "sid":
            continue
        source, path = config.source(name), sids.get(name)
        if (source, path) not in counted:
            n_llm = source.encoder_parameters
            if n_llm is None:
                try:
                    n_llm = count_encoder_parameters(source.encoder, source.overrides)
                except (OSError, ValueError, ImportError) as error:  # e.g. the encoder's package is not installed here
                    log.error("cannot count the parameters of the encoder of %s (%s): sweep %s's law is not fitted; "
                              "set encoder_parameters in the scaling config%s", source.encoder, error, name, " (of the sweep)" if sweep.own_sids else "")
                    n_llm = float("nan")
            n_qt = source.tokenizer_parameters
            if n_qt is None and path is None and model_needs_sids(sweep.model):
                # e.g. --collect_only on a fresh checkout: the SIDs were made on the machine that trained
                log.error("sweep %s: its SIDs are not here, so N_QT cannot be counted: its law is not fitted; "
                          "set tokenizer_parameters in the scaling config%s", name, " (of the sweep)" if sweep.own_sids else "")
                n_qt = float("nan")
            elif n_qt is None:
                n_qt = count_tokenizer_parameters(path) if path else 0
            counted[(source, path)] = (float(n_llm), float(n_qt))
        out[name] = counted[(source, path)]
    return out


def collect_points(config: ScalingConfig, sids: dict[str, Path | None], selection: dict[str, dict[str, dict[str, Any]]],
                   inputs: dict[str, tuple[float, float]] | None = None) -> dict[str, list[tuple[str, int, ScalingPoint, dict[str, Any]]]]:
    """Per sweep, ``(preset, seed, point, result)`` of every finished run (missing ones are
    reported in the log and the report, not fitted); of a sweep with ``lrs``, only the runs of
    each size's lr chosen in ``selection`` (:func:`select_lrs`); ``sids`` as :func:`sid_paths`
    gives them (the law's ``N_LLM`` / ``N_QT`` of each sweep: ``inputs``, else :func:`law_inputs`)."""
    key = f"test/{config.metric}"
    inputs = law_inputs(config, sids) if inputs is None else inputs
    out: dict[str, list[tuple[str, int, ScalingPoint, dict[str, Any]]]] = {name: [] for name in config.sweeps}
    chosen = {(name, label): pick["chosen"] for name, picks in selection.items() for label, pick in picks.items()}
    for run, sweep_name, preset, seed, lr in config.every_run():  # a provisional lr's later seeds too
        path = result_file(config, run)
        if path is None or (lr is not None and chosen.get((sweep_name, preset)) != lr):
            continue
        result = read_json(path)
        if key not in result["metrics"]:
            raise KeyError(f"{path}: no metric {key!r} (has {sorted(result['metrics'])})")
        recall = float(result["metrics"][key])
        if config.sweeps[sweep_name].paradigm == "sid":
            n_llm, n_qt = inputs[sweep_name]
            point = ScalingPoint(recall=recall, n_rs=float(result["parameters"]), n_llm=n_llm, n_qt=n_qt, label=preset, seed=seed)
        else:
            trained = float(result.get("trainable_parameters", result["parameters"]))
            point = ScalingPoint(recall=recall, n_lora=trained, n_llm=float(result["parameters"]) - trained, label=preset, seed=seed)
        out[sweep_name].append((preset, seed, point, result))
    return out


def _epochs(rows: list[tuple[str, int, ScalingPoint, dict[str, Any]]]) -> str:
    """``best / last`` epoch of each seed's run (best by the val curve its result records; ``?``
    for a result without one): a best epoch well before the last shows the run reached its plateau."""
    return ", ".join(f"{'?' if e[3].get('best_epoch') is None else e[3]['best_epoch']} / {e[3].get('epochs', '?')}" for e in rows)


def _late_gains(rows: list[tuple[str, int, ScalingPoint, dict[str, Any]]]) -> str:
    """Each seed's :func:`~genrec.convergence.late_gain` of its val curve, as ``+0.3 %`` (``?``
    without a curve to read)."""
    gains = [late_gain((e[3].get("val_curve") or {}).get("points")) for e in rows]
    return ", ".join("?" if g is None else f"{100 * g:+.1f} %" for g in gains)


def _known(value: float) -> float | None:
    """A parameter count for JSON: ``None`` when unknown (NaN)."""
    return None if math.isnan(value) else value


def _count(value: float) -> str:
    """A parameter count for a table: ``22,713,216``; ``?`` when unknown (NaN)."""
    return "?" if math.isnan(value) else f"{value:,.0f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.array(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def axes_table(config: ScalingConfig, collected: dict[str, list[tuple[str, int, ScalingPoint, dict[str, Any]]]],
               selection: dict[str, dict[str, dict[str, Any]]], inputs: dict[str, tuple[float, float]]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """The report's axes table: per axis (:attr:`Sweep.axis`), per size of its sweeps, the ladder
    sweeps of the same paradigm at that size (their chosen lr) and then the axis's sweeps: their
    SIDs, ``N_LLM``, ``N_QT``, seeds done, test metric and ndcg@10 mean ± std over seeds, each
    seed's best / last epoch. Returns the markdown lines (none without axes) and the rows by axis."""
    axes = list(dict.fromkeys(s.axis for s in config.sweeps.values() if s.axis))
    if not axes:
        return [], {}
    metric = config.metric
    chosen = {(name, label): pick["chosen"] for name, picks in selection.items() for label, pick in picks.items()}
    lines = ["", "## Axes (sweeps that vary the SIDs, beside the ladder at their size; mean ± std over seeds)", "",
             f"| axis | size | sweep | SIDs | lr | N_LLM | N_QT | seeds done | test {metric} | test ndcg@10 | best / last epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    table: dict[str, list[dict[str, Any]]] = {}
    for axis in axes:
        members = [name for name, sweep in config.sweeps.items() if sweep.axis == axis]
        paradigms = {config.sweeps[name].paradigm for name in members}
        ladders = [name for name, sweep in config.sweeps.items() if not sweep.axis and sweep.paradigm in paradigms]
        for label in dict.fromkeys(label for name in members for label in config.sweeps[name].labels):
            for name in [n for n in ladders + members if label in config.sweeps[n].labels]:
                sweep = config.sweeps[name]
                rows = [e for e in collected[name] if e[0] == label]
                lr = chosen.get((name, label)) if sweep.lrs else None
                n_llm, n_qt = inputs.get(name, (float("nan"), float("nan")))
                row: dict[str, Any] = {"size": label, "sweep": name, "sids": config.describe_sids(name),
                                       "lr": None if lr is None else float(lr), "n_llm": _known(n_llm),
                                       "n_qt": _known(n_qt), "seeds": len(rows)}
                shown = f"{lr:g}" if lr is not None else ("—" if sweep.lrs else "config")
                if rows:
                    recall = _mean_std([e[2].recall for e in rows])
                    ndcg = _mean_std([e[3]["metrics"].get("test/ndcg@10", float("nan")) for e in rows])
                    row.update(recall_mean=recall[0], recall_std=recall[1], ndcg_mean=ndcg[0], ndcg_std=ndcg[1],
                               best_last=[[e[3].get("best_epoch"), e[3].get("epochs")] for e in rows])
                    numbers = f"{recall[0]:.4f} ± {recall[1]:.4f} | {ndcg[0]:.4f} ± {ndcg[1]:.4f} | {_epochs(rows)}"
                else:
                    numbers = "— | — | —"
                lines.append(f"| {axis} | {label} | {name} | {row['sids']} | {shown} | {_count(n_llm)} | {_count(n_qt)} | "
                             f"{len(rows)}/{len(config.seeds)} | {numbers} |")
                table.setdefault(axis, []).append(row)
    return lines, table


def write_scaling_report(config: ScalingConfig, sids: dict[str, Path | None], command: str) -> Path:
    """Fit every sweep with enough points; write ``scaling.json``, ``scaling.md`` and ``scaling.png``.

    Args:
        sids: sweep name -> its SID artifact (:func:`sid_paths`).
    """
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    archived, replaced = archive_results(config)
    selection = select_lrs(config)
    inputs = law_inputs(config, sids)
    collected = collect_points(config, sids, selection, inputs)
    metric = config.metric
    # The runs may have trained elsewhere (a GPU machine) than where the report is written.
    trained_on = Counter(e[3].get("device", "unknown") for entries in collected.values() for e in entries)
    trained = ", ".join(f"{name} ({n} runs)" for name, n in sorted(trained_on.items())) or "no runs yet"
    lines = [f"# Scaling study: {config.name}", "", f"Command: `{command}`", "",
             f"Data: `{config.data}`; seeds {config.seeds}; metric test {metric}; trained on {trained}; "
             f"report written on {device_name()}.", ""]
    lines += ["| sweep | paradigm | preset | parameters (trained) | seeds done | "
              f"test {metric} mean ± std | test ndcg@10 mean | cold {metric} mean | train s mean | best / last epoch | "
              f"val gain, last {TAIL:.0%} of epochs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict[str, Any] = {"name": config.name, "metric": metric, "command": command, "device": device_name(),
                               "trained_on": dict(trained_on), "sweeps": {}}
    plotted = {}
    missing = [run for run, *_ in config.runs() if result_file(config, run) is None]
    if selection:
        edge = {(name, label): side for name, label, _, side in lr_grid_edges(config, selection)}
        summary["lr_selection"] = {name: {label: {"chosen": e["chosen"], "lrs": {f"{lr:g}": v for lr, v in e["lrs"].items()},
                                                  "grid_edge": edge.get((name, label)), "pending": e["pending"]}
                                          for label, e in picks.items()} for name, picks in selection.items()}
    for sweep_name, sweep in config.sweeps.items():
        entries = collected[sweep_name]
        for preset in sweep.labels:
            rows = [e for e in entries if e[0] == preset]
            if not rows:
                lines.append(f"| {sweep_name} | {sweep.paradigm} | {preset} | — | 0/{len(config.seeds)} | — | — | — | — | — | — |")
                continue
            recall = np.array([e[2].recall for e in rows])
            ndcg = np.mean([e[3]["metrics"].get("test/ndcg@10", float("nan")) for e in rows])
            cold = np.mean([e[3]["metrics"].get(f"test/cold/{metric}", float("nan")) for e in rows])
            seconds = np.mean([e[3].get("train_seconds", float("nan")) for e in rows])
            std = recall.std(ddof=1) if len(recall) > 1 else 0.0
            params = rows[0][3]["parameters"]
            trained = rows[0][3].get("trainable_parameters", params)
            lines.append(f"| {sweep_name} | {sweep.paradigm} | {preset} | {params:,} ({trained:,}) | {len(rows)}/{len(config.seeds)} | "
                         f"{recall.mean():.4f} ± {std:.4f} | {ndcg:.4f} | {cold:.4f} | {seconds:.0f} | {_epochs(rows)} | {_late_gains(rows)} |")
        points = [e[2] for e in entries]
        record: dict[str, Any] = {
            "paradigm": sweep.paradigm,
            **({"sids": None if sids.get(sweep_name) is None else str(sids[sweep_name]), "sids_description": config.describe_sids(sweep_name),
                "n_llm": _known(inputs[sweep_name][0]), "n_qt": _known(inputs[sweep_name][1])}
               if sweep_name in inputs else {}),
            **({"axis": sweep.axis} if sweep.axis else {}),
            "points": [{"preset": e[0], "seed": e[1], "recall": e[2].recall, "n_rs": e[2].n_rs, "n_llm": _known(e[2].n_llm),
                        "n_qt": _known(e[2].n_qt), "n_lora": e[2].n_lora} for e in entries],
        }
        n_llm, n_qt = inputs.get(sweep_name, (0.0, 0.0))
        if math.isnan(n_llm):
            record["not_fitted"] = "encoder parameter count unknown (set encoder_parameters)"
        elif math.isnan(n_qt):
            record["not_fitted"] = "tokenizer parameter count unknown: its SIDs are not here (set tokenizer_parameters)"
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
    rising, panels, monitors = val_curves(config, selection)
    summary["late_val_gain"] = {"tail": TAIL, "rising_above": RISING, "runs": rising}
    lines += ["", f"Late val gain: how much each run's best val value rose in the last {TAIL:.0%} of its epochs, relative to its "
              f"best before them (about 0: the run reached its plateau; `val_curves.png` shows the curves). "
              + ("Still rising at the end (above " + f"{RISING:.0%}" + "): " + ", ".join(f"{run} ({100 * g:+.1f} %)" for run, g in rising.items() if g > RISING) + "."
                 if any(g > RISING for g in rising.values()) else f"No finished run rose more than {RISING:.0%} late.")]
    axis_lines, summary["axes"] = axes_table(config, collected, selection, inputs)
    lines += axis_lines
    by_size: dict[str, dict[str, dict[str, list[float]]]] = {"all": {}, "cold": {}}
    for sweep_name, entries in collected.items():
        for preset, _, point, result in entries:
            by_size["all"].setdefault(sweep_name, {}).setdefault(preset, []).append(point.recall)
            cold = result["metrics"].get(f"test/cold/{metric}")
            if cold is not None:
                by_size["cold"].setdefault(sweep_name, {}).setdefault(preset, []).append(float(cold))
    summary["claims"] = decide_claims(config.claims, by_size["all"], by_size["cold"],
                                      {name: sweep.labels for name, sweep in config.sweeps.items()}, len(config.seeds), metric)
    lines += claims_table(summary["claims"])
    if selection:
        lines += ["", "## Learning rate per size (chosen on val; the table above and the law use the chosen one)", "",
                  "| sweep | size | lr | mean best val | seeds | chosen |", "|---|---|---|---|---|---|"]
        for name, picks in selection.items():
            for label, entry in picks.items():
                for lr, (value, seeds) in entry["lrs"].items():
                    mark = ("yes" if not entry["pending"] else f"so far ({', '.join(f'{x:g}' for x in entry['pending'])} to run)") if lr == entry["chosen"] else ""
                    lines.append(f"| {name} | {label} | {lr:g} | {value:.4f} | {seeds} | {mark} |")
        edges = lr_grid_edges(config, selection)
        if edges:
            lines += ["", "Chosen at the edge of the swept lrs (the best lr may lie beyond it: widen `lrs` for these sizes): "
                      + ", ".join(f"{name} {label} ({lr:g}, the {side} of {sorted(config.size_lrs(name, label))})" for name, label, lr, side in edges) + "."]
    lines += ["", "## Fitted laws", "",
              "`Recall = R0 - A / N_SI^a - B / N_CF^b`, counts in millions (genrec/scaling_law.py has both paradigms' forms).", ""]
    for sweep_name, record in summary["sweeps"].items():
        fit = record.get("fit")
        if "not_fitted" in record:
            lines.append(f"- {sweep_name}: not fitted: {record['not_fitted']}.")
            continue
        if fit is None:
            axis = config.sweeps[sweep_name].axis
            lines.append(f"- {sweep_name}: {len(record['points'])} points, fewer than the {MIN_FIT_POINTS} the law needs: not fitted"
                         + (f" (axis {axis}: in the axes table)." if axis else "."))
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
    if config.archive_dir is not None:
        alone = [run for run, *_ in config.runs() if result_file(config, run) not in (None, run_dir / run / "result.json")]
        lines += ["", f"Archive `{config.archive_dir}`: {len(archived)} run results copied in by this report"
                  + (f" ({len(replaced)} replacing a differing copy: {', '.join(replaced)})" if replaced else "")
                  + (f"; read from it alone ({len(alone)}): {', '.join(alone)}" if alone else "") + "."]
    waiting = config.waiting()
    if waiting:
        provisional = [f"{s}-{p}-s{seed} (lr {pick['chosen']:g})" for s, picks in selection.items() for p, pick in picks.items()
                       if pick["pending"] and pick["chosen"] is not None for seed in config.seeds[config.sweeps[s].lr_seeds or len(config.seeds):]
                       if result_file(config, run_name(s, p, seed, pick["chosen"])) is not None]
        lines += ["", f"Waiting for their size's lr choice ({len(waiting)}): " + ", ".join(waiting)
                  + ". They run, at the chosen lr, once every lr has a finished run on the lr-sweep seeds."
                  + (f" Of these, {len(provisional)} already ran at their size's lr so far, counted in the table meanwhile"
                     f" (run again if another lr wins): {', '.join(provisional)}." if provisional else "")]
    if plotted:
        plot_scaling(plotted, run_dir / "scaling.png", metric_label=f"test {metric}")
        lines += ["", "![scaling](scaling.png)"]
    if panels:
        plot_val_curves(panels, run_dir / "val_curves.png", metric_label=", ".join(monitors))
        lines += ["", "![val curves](val_curves.png)"]
    write_json(run_dir / "scaling.json", summary)
    report = run_dir / "scaling.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report
