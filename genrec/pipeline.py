"""The ``pipeline`` command: data -> encode -> tokenize -> every model's fit/test -> report.

One YAML (``configs/pipeline/*.yaml``) names the data preset, the encoder, the tokenizer and a
config per model (TIGER, the LM recommender, SASRec, ...), with extra command-line overrides
per stage. Everything goes under ``checkpoints/<name>/``:

* ``data.json`` — the data set's statistics;
* ``embeddings/<encoder>.safetensors`` — the item embeddings;
* ``sids/<tokenizer>.safetensors`` — the semantic IDs (the tokenize stage reuses it, and the
  embeddings, when their settings are unchanged);
* ``<model>/`` — the model's run folder (its ``trainer.default_root_dir``, from which the
  trainer's defaults put ``logs/`` and ``checkpoints/`` there: :mod:`genrec.stages.fit`):
  ``config.yaml`` (the fully resolved config, overrides included), ``result.json`` — test metrics,
  parameter count, training time (summed over the segments of a resumed run), device, and a digest of everything that made them;
* ``report.md``, ``recall_vs_params.png`` and (with SIDs) ``sid_usage.png``.

Every stage is a function of :mod:`genrec.stages` called with typed inputs; ``accelerator``
reaches the encoder, the tokenizer's training and every model's trainer.

A model whose ``result.json`` carries the same digest is skipped; one killed mid-training
resumes from its ``last.ckpt``; a changed config or override re-runs it. Each stage starts with a
header line (``== stage 2/5: tokenize ...``) and ends with its wall time, which the report
lists too; with output that is not a terminal, training prints plain progress lines
(:mod:`genrec.progress`).
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from genrec.artifacts import (
    atomic_path,
    config_digest,
    file_digest,
    read_checkpoint,
    read_json,
    write_json,
)
from genrec.divergence import SkipNonFiniteSteps, StopOnNonFiniteLoss
from genrec.errors import ArtifactError
from genrec.stages.data import describe_data, load_data
from genrec.stages.fit import build_model_run
from genrec.stages.tokenize import read_tokenize, tokenize_stage

if TYPE_CHECKING:
    from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    """What the pipeline runs.

    Args:
        name: run name; outputs go to ``<root>/<name>/``.
        data: the data preset YAML (a ``data:`` block).
        encoder: the encoder YAML (``encoder:``/``encode:`` blocks).
        tokenizer: the tokenizer YAML (``tokenizer:``/``tokenize:`` blocks).
        models: model name -> its YAML (``model:``/``trainer:`` blocks), run in this order.
        overrides: stage name (``data``, ``tokenize`` or a model name) -> extra command-line
            arguments, e.g. ``{"tiger": ["--trainer.max_epochs", "3"]}``.
        accelerator: the Lightning accelerator of every stage (``cpu``, ``gpu``, ``auto``): the
            encoder, the tokenizer's training and each model's trainer; ``None``: each stage's
            YAML (or override) says.
        root: the folder of all runs.
        notes: lines the report prints under "Notes" (e.g. why a model is sized as it is).
    """

    name: str
    data: str
    encoder: str = "configs/encode/minilm.yaml"
    tokenizer: str = "configs/tokenizer/rqvae.yaml"
    models: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    accelerator: str | None = None
    root: str = "checkpoints"
    notes: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / self.name


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


class StageClock:
    """Stage headers and wall times: ``with clock.stage("tokenize", "encode + tokenize"):``
    prints ``== stage i/n: tokenize (encode + tokenize) ==`` before and ``== tokenize: 12.3 s ==``
    after, and keeps the seconds (also of a stage that raised) in :attr:`seconds`."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    @contextmanager
    def stage(self, name: str, what: str = "") -> Iterator[None]:
        print(f"== stage {len(self.seconds) + 1}/{self.total}: {name}" + (f" ({what})" if what else "") + " ==", flush=True)
        self.seconds[name] = 0.0
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started
            note = f" ({self.notes[name]})" if name in self.notes else ""
            print(f"== {name}: {self.seconds[name]:.1f} s{note} ==", flush=True)


def run_pipeline(config: PipelineConfig, command: str = "") -> Path:
    """Run every stage of ``config`` (skipping finished ones) and write the report.

    Returns:
        the path of ``report.md``.
    """
    run = config.run_dir
    run.mkdir(parents=True, exist_ok=True)
    ignored = unused_overrides(config)
    if ignored:
        log.warning("overrides for stages this run does not have are ignored: %s (stages: %s)",
                    ", ".join(ignored), ", ".join(["data", "tokenize", *config.models]))
    needs_sids = any(model_needs_sids(path) for path in config.models.values())
    clock = StageClock(1 + needs_sids + len(config.models) + 1)
    with clock.stage("data", config.data):
        stats = describe_data(load_data([config.data], config.overrides.get("data", [])), output=run / "data.json")
    sids_path = None
    if needs_sids:
        with clock.stage("tokenize", f"encode {Path(config.encoder).name} + tokenize {Path(config.tokenizer).name}"):
            sids_path = run_sid_stages(config)
    results = {}
    for name, path in config.models.items():
        sids = sids_path if model_needs_sids(path) else None
        with clock.stage(name, f"{model_class(path)}: fit + test, {path}"):
            results[name] = run_model(config, name, path, sids)
            if results[name].get("skipped"):
                clock.notes[name] = "result up to date, reused"
    with clock.stage("report"):
        stage_seconds = {k: v for k, v in clock.seconds.items() if k != "report"}
        report = write_report(config, stats, sids_path, results, command, stage_seconds=stage_seconds, stage_notes=clock.notes)
    return report


def unused_overrides(config: PipelineConfig) -> list[str]:
    """Stage names in ``config.overrides`` that are no stage of this run (neither ``data``,
    ``tokenize`` with a SID model, nor a model of ``config.models``)."""
    stages = {"data", *config.models}
    if any(model_needs_sids(path) for path in config.models.values()):
        stages.add("tokenize")
    return sorted(set(config.overrides) - stages)


def run_sid_stages(config: PipelineConfig) -> Path:
    """encode + tokenize into ``<run>/embeddings/`` and ``<run>/sids/`` (each reused when its
    settings are unchanged); the path of the SID artifact."""
    run = config.run_dir
    sids_path = run / "sids" / f"{Path(config.tokenizer).stem}.safetensors"
    inputs = read_tokenize([config.data, config.encoder, config.tokenizer], config.overrides.get("tokenize", []))
    inputs.encode["output"] = str(run / "embeddings" / f"{Path(config.encoder).stem}.safetensors")
    inputs.settings.output = str(sids_path)
    tokenize_stage(inputs.on(config.accelerator))
    return sids_path


def model_class(path: str) -> str:
    """The class name a model YAML's ``model.class_path`` names (e.g. ``TigerModule``)."""
    model = (yaml.safe_load(Path(path).read_text()) or {}).get("model", {})
    return str(model.get("class_path", "")).rsplit(".", 1)[-1]


def model_needs_sids(path: str) -> bool:
    """Whether the recommender a model YAML's ``model.class_path`` names reads semantic IDs (its
    class's ``needs_sids``; the class is imported: the user's own config names it)."""
    from genrec.models.base import recommender_class

    class_path = str(((yaml.safe_load(Path(path).read_text()) or {}).get("model") or {}).get("class_path", ""))
    return recommender_class(class_path, trusted=[class_path.rpartition(".")[0]], source=f"{path}: model.class_path").needs_sids


def run_model(config: PipelineConfig, name: str, path: str, sids: Path | None, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit and test one model under ``<run>/<name>/`` unless its result is up to date.

    Args:
        values: settings put on the model's parsed config after its overrides (dotted keys,
            e.g. ``{"model.init_args.preset": "1m", "seed_everything": 1}``; the scaling command's).
    """
    from lightning.pytorch.callbacks import Timer

    folder = config.run_dir / name
    overrides = list(config.overrides.get(name, []))
    values = {**(values or {}), **({"trainer.accelerator": config.accelerator} if config.accelerator else {})}
    digest = config_digest(
        {
            "data": Path(config.data).read_text(),
            "model": Path(path).read_text(),
            "overrides": [*config.overrides.get("data", []), *overrides],
            "sids": None if sids is None else file_digest(sids),  # content: a copy elsewhere still matches
            **({"values": values} if values else {}),
        }
    )
    result_path = folder / "result.json"
    if result_path.is_file() and read_json(result_path).get("digest") == digest:
        log.info("%s: result up to date, skipped", name)
        return {**read_json(result_path), "skipped": True}
    folder.mkdir(parents=True, exist_ok=True)
    args = [*config.overrides.get("data", []), *overrides]
    if sids is not None:
        args += ["--model.init_args.sids", str(sids)]
    cli = build_model_run([config.data, path], args, values={**values, "trainer.default_root_dir": str(folder)})
    last = folder / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() and (folder / "digest").is_file() and (folder / "digest").read_text() == digest else None
    if resume is not None and not _readable_checkpoint(resume):
        resume = None  # killed while writing it: start afresh rather than fail on every re-run
    (folder / "digest").write_text(digest)
    if resume:
        log.info("%s: resuming from %s", name, resume)
    # Training time through Lightning's Timer (the trainer's own when max_time is set): its state
    # travels in the checkpoint, so a resumed run reports the time of every segment up to its last
    # checkpoint, not only the time since the restart.
    timer = next((c for c in cli.trainer.callbacks if isinstance(c, Timer)), None)
    if timer is None:
        timer = Timer(verbose=False)
        cli.trainer.callbacks.append(timer)
    callback = cli.trainer.checkpoint_callback
    monitor = getattr(callback, "monitor", None) or "val/ndcg@10"
    curve: list[list[float]] = []  # [epoch, monitored value] of every validation of this process
    cli.trainer.callbacks.append(_ValCurve(monitor, curve))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(resume) if resume else None)
    diverged = next((c.stopped_at for c in cli.trainer.callbacks if isinstance(c, (StopOnNonFiniteLoss, SkipNonFiniteSteps)) and c.stopped_at), None)
    skipped = [s for c in cli.trainer.callbacks if isinstance(c, SkipNonFiniteSteps) for s in c.skipped]
    train_seconds = timer.time_elapsed("train")
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)[0]
    cold_max = getattr(getattr(cli.model, "evaluation", None), "cold_start_max_count", None)
    result = {
        "model": name,
        "class": type(cli.model).__name__,
        "parameters": sum(p.numel() for p in cli.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
        "metrics": {k: float(v) for k, v in metrics.items()},
        **({} if cold_max is None else {"cold_start_max_count": cold_max,
                                        "cold_test_users": cold_test_users(cli.datamodule.data, cold_max)}),
        "test_users": cli.datamodule.data.num_users,
        "train_seconds": round(train_seconds, 1),
        "epochs": cli.trainer.current_epoch,
        # the val curve (of this process; a resumed run's starts at the resume) and its best
        # epoch, so a reader sees whether the run reached its plateau
        "val_curve": {"monitor": monitor, "points": curve},
        "best_epoch": int(max(curve, key=lambda point: point[1])[0]) if curve else None,
        "resumed": resume is not None,
        **({"diverged": diverged} if diverged else {}),  # training stopped at a non-finite loss (step, epoch, loss)
        **({"skipped_steps": skipped} if skipped else {}),  # SkipNonFiniteSteps: steps skipped for non-finite gradients
        "checkpoint": best,
        "device": device_name(),
        "digest": digest,
    }
    write_json(result_path, result)
    return result


class _ValCurve(Callback):
    """Appends ``[epoch, value of monitor]`` to ``points`` after every validation (sanity checks excluded)."""

    def __init__(self, monitor: str, points: list[list[float]]) -> None:
        self.monitor, self.points = monitor, points

    def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.points.append([trainer.current_epoch, round(float(value), 6)])


def _readable_checkpoint(path: Path) -> bool:
    """Whether ``path`` loads (weights only); a damaged one is logged."""
    try:
        read_checkpoint(path)
    except ArtifactError as error:
        log.warning("not resuming: %s", error)
        return False
    return True


def cold_test_users(data: Any, max_count: int) -> int:
    """How many test users' target item occurs at most ``max_count`` times in training (the
    cold-start slice of :class:`genrec.metrics.RecEvaluation`); ``data`` a ``SequenceData``."""
    users, positions = data.samples("test")
    targets = data.items[data.offsets[users] + positions]
    return int((data.train_item_counts()[targets] <= max_count).sum())


def write_report(config: PipelineConfig, stats: dict[str, Any], sids_path: Path | None, results: dict[str, dict[str, Any]], command: str,
                 stage_seconds: dict[str, float] | None = None, stage_notes: dict[str, str] | None = None) -> Path:
    """``report.md`` (every number, with the command, device and stage times), the Recall@10
    plot and the SID code-usage plot.

    Args:
        sids_path: the SID artifact (a path; the loaded object is a ``SemanticIDs``, named ``sids``), if any.
        stage_seconds: stage name -> wall seconds in this invocation (the stage times table).
        stage_notes: stage name -> a note for that table (e.g. a reused result).
    """
    from genrec.quantize.semantic_ids import SemanticIDs

    run = config.run_dir
    s = stats["stats"]
    shown = asdict(config)
    ignored = unused_overrides(config)
    shown["overrides"] = {k: v for k, v in config.overrides.items() if k not in ignored}
    shown.pop("notes")
    if shown["accelerator"] is None:
        shown.pop("accelerator")
    lines = [
        f"# genrec pipeline report: {config.name}",
        "",
        f"- command: `{command or 'python train.py pipeline'}`",
        f"- device: {device_name()}; date: {dt.date.today().isoformat()}",
        f"- config: `{yaml.safe_dump(shown, default_flow_style=True, width=10_000).strip()}`",
        *([f"- ignored overrides (no such stage in this run): {', '.join(ignored)}"] if ignored else []),
        "",
        "## Data",
        "",
        f"{stats['data']['name']}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions; "
        f"sequence length {s['length_min']} / {s['length_mean']:.2f} / {s['length_max']} (min / mean / max); "
        f"leave-one-out samples train / val / test {stats['split']['train']:,} / {stats['split']['val']:,} / {stats['split']['test']:,}.",
        "",
    ]
    if sids_path is not None:
        semantic_ids = SemanticIDs.load(sids_path)
        q = semantic_ids.quality
        match = {m["level"]: m for m in q.get("next_item_prefix_match", [])}
        lines += ["## Semantic IDs", "", f"`{sids_path}`", "",
                  "| level | codes used | perplexity | next item shares the prefix (chance) |", "|---|---|---|---|"]
        lines += [f"| {lv['level']} | {lv['codes_used']}/{q['codebook_size']} ({lv['fraction_used']:.1%}) | {lv['perplexity']:.1f} | "
                  + (f"{match[lv['level']]['share']:.2%} ({match[lv['level']]['chance']:.2%})" if lv["level"] in match else "n/a") + " |"
                  for lv in q["per_level"]]
        lines += ["", f"Items needing a dedup digit > 0: {q['collision_rate']:.2%} (max digit {q['max_dedup_digit']}); reconstruction MSE {q['reconstruction_error']:.3g}.", ""]
        usage = _plot_sid_usage(semantic_ids, run / "sid_usage.png")
        lines += [f"![SID code usage per level]({usage.name})", ""]
    lines += [
        "## Results (test, full catalogue)",
        "",
        "| model | parameters | R@5 | N@5 | R@10 | N@10 | cold R@10 (users) | train s | epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    popularity = None
    for name, result in results.items():
        m = result["metrics"]
        popularity = popularity or m
        cold_users = result.get("cold_test_users")
        lines.append(
            f"| {name} ({result['class']}) | {result['parameters']:,} | {m.get('test/recall@5', float('nan')):.4f} | "
            f"{m.get('test/ndcg@5', float('nan')):.4f} | {m.get('test/recall@10', float('nan')):.4f} | "
            f"{m.get('test/ndcg@10', float('nan')):.4f} | {m.get('test/cold/recall@10', float('nan')):.4f}"
            f"{'' if cold_users is None else f' ({cold_users:,})'} | {result['train_seconds']} | {result['epochs']}"
            + (f" (stopped: loss {result['diverged']['loss']} at step {result['diverged']['step']})" if result.get("diverged") else "")
            + (f" ({len(result['skipped_steps'])} steps skipped: non-finite gradients)" if result.get("skipped_steps") else "") + " |"
        )
    if popularity:
        p = popularity
        lines.append(
            f"| popularity | 0 | {p.get('test/popularity/recall@5', float('nan')):.4f} | {p.get('test/popularity/ndcg@5', float('nan')):.4f} | "
            f"{p.get('test/popularity/recall@10', float('nan')):.4f} | {p.get('test/popularity/ndcg@10', float('nan')):.4f} | | | |"
        )
    cold = {(r["cold_start_max_count"], r["cold_test_users"]) for r in results.values() if "cold_test_users" in r}
    if cold:
        lines += ["", "Cold start: test users whose target item occurs at most "
                  + "; ".join(f"{count} times in training: {users:,} of {stats['split']['test']:,} test users"
                              for count, users in sorted(cold))
                  + (" (too few for a stable cold R@10)" if min(users for _, users in cold) < 100 else "") + "."]
    subsets = [f"- {name}: evaluated {m['test/users']:,.0f} of {m['test/users_total']:,.0f} test users (a seeded random subset, max_eval_users)."
               for name, result in results.items() if (m := result["metrics"]).get("test/users", 0) < m.get("test/users_total", 0)]
    if subsets:
        lines += ["", *subsets]
    if results:
        plot = _plot_recall(results, run / "recall_vs_params.png", title=f"{config.name}: test Recall@10 vs parameters")
        lines += ["", f"![Recall@10 vs parameters]({plot.name})"]
    if config.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in config.notes)]
    if stage_seconds:
        notes = stage_notes or {}
        lines += ["", "## Stage times (this invocation)", "", "| stage | wall time | |", "|---|---|---|"]
        lines += [f"| {name} | {seconds:.1f} s | {notes.get(name, '')} |" for name, seconds in stage_seconds.items()]
        lines.append(f"| total | {sum(stage_seconds.values()):.1f} s | before writing this report |")
    report = run / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def _plot_recall(results: dict[str, dict[str, Any]], path: Path, title: str = "test Recall@10 vs parameters") -> Path:
    """Test Recall@10 per model against its parameter count (log x axis, labelled 1, 2, 5 x
    10^k as ``200k``, ``5M``), each point named, the popularity baseline a dashed line."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = _subplots(figsize=(6, 4))
    counts = [max(int(r["parameters"]), 1) for r in results.values()]
    recalls = [r["metrics"].get("test/recall@10", float("nan")) for r in results.values()]
    for (name, result), count, recall in zip(results.items(), counts, recalls, strict=True):
        ax.scatter(count, recall, s=40, zorder=3, label=f"{name} ({result['class']})")
        ax.annotate(name, (count, recall), textcoords="offset points", xytext=(6, 5), fontsize=8)
    popularity = next((r["metrics"]["test/popularity/recall@10"] for r in results.values()
                       if "test/popularity/recall@10" in r["metrics"]), None)
    if popularity is not None:
        ax.axhline(popularity, color="gray", linestyle="--", linewidth=1, label=f"popularity ({popularity:.4f})")
    low, high = min(counts) / 2.5, max(counts) * 2.5  # points away from the edges
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    decades = high / low
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 1e3 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _human(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    top = max([v for v in [*recalls, popularity or 0.0] if v == v] or [1.0])
    ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test Recall@10")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save_png(fig, path)


def _human(count: float) -> str:
    """``336k``, ``7.3M``, ``2B``: a parameter count for an axis label."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{suffix}" if value >= 10 or value == int(value) else f"{value:.1f}{suffix}"
    return f"{count:.0f}"


def _plot_sid_usage(sids: SemanticIDs, path: Path) -> Path:
    """One panel per RQ level: items per code, codes sorted by use, titled with the share of
    codes used. Even use is a flat profile at ``N / codebook_size`` (dashed); collapse is a
    steep or short one."""
    size = sids.codebook_size
    fig, axes = _subplots(ncols=sids.levels, figsize=(2.6 * sids.levels + 0.6, 2.8), sharey=True, squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = torch.bincount(sids.codes[:, level], minlength=size).sort(descending=True).values
        used = int((counts > 0).sum())
        ax.bar(range(size), counts.tolist(), width=1.0, label="items per code")
        ax.axhline(sids.num_items / size, color="gray", linestyle="--", linewidth=0.8,
                   label=f"even use ({sids.num_items:,} items / {size} codes)")
        ax.set_title(f"level {level}: {used}/{size} codes ({used / size:.0%})", fontsize=9)
        ax.set_xlabel("code, by use")
    axes[0][0].set_ylabel("items")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle("semantic ID code usage per level (codes sorted by use)", fontsize=10)
    return _save_png(fig, path)


def _subplots(**kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def _save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
