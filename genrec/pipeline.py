"""The ``pipeline`` command: data -> encode -> tokenize -> every model's fit/test -> report.

One YAML (``configs/pipeline/*.yaml``) names the data preset, the encoder, the tokenizer and a
config per model (TIGER, the LM recommender, SASRec, ...), with extra command-line overrides
per stage. Everything goes under ``checkpoints/<name>/``:

* ``data.json`` — the data set's statistics;
* ``embeddings/<encoder>.safetensors`` — the item embeddings;
* ``sids/<tokenizer>.safetensors`` — the semantic IDs (the tokenize stage reuses it, and the
  embeddings, when their settings are unchanged);
* ``<model>/config.yaml`` — the model's config with its checkpoint and log folders moved under
  the run (the command-line overrides come on top; the fully resolved config, overrides
  included, is the ``logs/version_N/config.yaml`` LightningCLI writes), ``<model>/checkpoints/``, ``<model>/result.json`` — test metrics,
  parameter count, training time (summed over the segments of a resumed run), device, and a digest of everything that made them;
* ``report.md``, ``recall_vs_params.png`` and (with SIDs) ``sid_usage.png``.

A model whose ``result.json`` carries the same digest is skipped; one killed mid-training
resumes from its ``last.ckpt``; a changed config or override re-runs it.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from genrec.artifacts import atomic_path, config_digest, file_digest, read_json, write_json

if TYPE_CHECKING:
    from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)

SID_MODELS = ("TigerModule",)


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
        root: the folder of all runs.
    """

    name: str
    data: str
    encoder: str = "configs/encode/minilm.yaml"
    tokenizer: str = "configs/tokenizer/rqvae.yaml"
    models: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    root: str = "checkpoints"

    @property
    def run_dir(self) -> Path:
        return Path(self.root) / self.name


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.machine()} ({torch.get_num_threads()} threads)"


def run_pipeline(config: PipelineConfig, command: str = "") -> Path:
    """Run every stage of ``config`` (skipping finished ones) and write the report.

    Returns:
        the path of ``report.md``.
    """
    from genrec.cli import run_data

    run = config.run_dir
    run.mkdir(parents=True, exist_ok=True)
    stats = run_data(["--config", config.data, *config.overrides.get("data", []), "--output", str(run / "data.json")])
    needs_sids = any(model_class(path) in SID_MODELS for path in config.models.values())
    sids_path = run_sid_stages(config) if needs_sids else None
    results = {}
    for name, path in config.models.items():
        sids = sids_path if model_class(path) in SID_MODELS else None
        results[name] = run_model(config, name, path, sids)
    return write_report(config, stats, sids_path, results, command)


def run_sid_stages(config: PipelineConfig) -> Path:
    """encode + tokenize into ``<run>/embeddings/`` and ``<run>/sids/`` (each reused when its
    settings are unchanged); the path of the SID artifact."""
    from genrec.cli import run_tokenize

    run = config.run_dir
    sids_path = run / "sids" / f"{Path(config.tokenizer).stem}.safetensors"
    run_tokenize(
        ["--config", config.data, "--config", config.encoder, "--config", config.tokenizer,
         "--encode.output", str(run / "embeddings" / f"{Path(config.encoder).stem}.safetensors"),
         "--tokenize.output", str(sids_path), *config.overrides.get("tokenize", [])]
    )
    return sids_path


def model_class(path: str) -> str:
    """The class name a model YAML's ``model.class_path`` names (e.g. ``TigerModule``)."""
    model = (yaml.safe_load(Path(path).read_text()) or {}).get("model", {})
    return str(model.get("class_path", "")).rsplit(".", 1)[-1]


def run_model(config: PipelineConfig, name: str, path: str, sids: Path | None) -> dict[str, Any]:
    """Fit and test one model under ``<run>/<name>/`` unless its result is up to date."""
    from lightning.pytorch.callbacks import Timer

    from genrec.cli import GenRecCLI

    folder = config.run_dir / name
    overrides = list(config.overrides.get(name, []))
    digest = config_digest(
        {
            "data": Path(config.data).read_text(),
            "model": Path(path).read_text(),
            "overrides": [*config.overrides.get("data", []), *overrides],
            "sids": None if sids is None else file_digest(sids),  # content: a copy elsewhere still matches
        }
    )
    result_path = folder / "result.json"
    if result_path.is_file() and read_json(result_path).get("digest") == digest:
        log.info("%s: result up to date, skipped", name)
        return read_json(result_path)
    folder.mkdir(parents=True, exist_ok=True)
    model_config = _relocate(yaml.safe_load(Path(path).read_text()), folder)
    with atomic_path(folder / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(model_config, sort_keys=False))
    args = ["--config", config.data, "--config", str(folder / "config.yaml"), *config.overrides.get("data", []), *overrides]
    if sids is not None:
        args += ["--model.init_args.sids", str(sids)]
    cli = GenRecCLI(args=args, run=False)
    last = folder / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() and (folder / "digest").is_file() and (folder / "digest").read_text() == digest else None
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
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(resume) if resume else None)
    train_seconds = timer.time_elapsed("train")
    callback = cli.trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)[0]
    result = {
        "model": name,
        "class": type(cli.model).__name__,
        "parameters": sum(p.numel() for p in cli.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "train_seconds": round(train_seconds, 1),
        "epochs": cli.trainer.current_epoch,
        "resumed": resume is not None,
        "checkpoint": best,
        "device": device_name(),
        "digest": digest,
    }
    write_json(result_path, result)
    return result


def _relocate(model_config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The model config with its trainer's root, logger and checkpoint folders under ``folder``."""
    trainer = model_config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(folder)
    logger = trainer.get("logger")
    if isinstance(logger, dict):
        logger.setdefault("init_args", {})["save_dir"] = str(folder)
    for callback in trainer.get("callbacks") or []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(folder / "checkpoints")
    return model_config


def write_report(config: PipelineConfig, stats: dict[str, Any], sids: Path | None, results: dict[str, dict[str, Any]], command: str) -> Path:
    """``report.md`` (every number, with the command and device), the Recall@10 plot and the
    SID code-usage plot."""
    from genrec.quantize.semantic_ids import SemanticIDs

    run = config.run_dir
    s = stats["stats"]
    lines = [
        f"# genrec pipeline report: {config.name}",
        "",
        f"- command: `{command or 'python train.py pipeline'}`",
        f"- device: {device_name()}; date: {dt.date.today().isoformat()}",
        f"- config: `{yaml.safe_dump(asdict(config), default_flow_style=True, width=10_000).strip()}`",
        "",
        "## Data",
        "",
        f"{stats['data']['name']}: {s['users']:,} users, {s['items']:,} items, {s['interactions']:,} interactions; "
        f"sequence length {s['length_min']} / {s['length_mean']:.2f} / {s['length_max']} (min / mean / max); "
        f"leave-one-out samples train / val / test {stats['split']['train']:,} / {stats['split']['val']:,} / {stats['split']['test']:,}.",
        "",
    ]
    if sids is not None:
        semantic_ids = SemanticIDs.load(sids)
        q = semantic_ids.quality
        match = {m["level"]: m for m in q.get("next_item_prefix_match", [])}
        lines += ["## Semantic IDs", "", f"`{sids}`", "",
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
        "| model | parameters | R@5 | N@5 | R@10 | N@10 | cold R@10 | train s | epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    popularity = None
    for name, result in results.items():
        m = result["metrics"]
        popularity = popularity or m
        lines.append(
            f"| {name} ({result['class']}) | {result['parameters']:,} | {m.get('test/recall@5', float('nan')):.4f} | "
            f"{m.get('test/ndcg@5', float('nan')):.4f} | {m.get('test/recall@10', float('nan')):.4f} | "
            f"{m.get('test/ndcg@10', float('nan')):.4f} | {m.get('test/cold/recall@10', float('nan')):.4f} | "
            f"{result['train_seconds']} | {result['epochs']} |"
        )
    if popularity:
        p = popularity
        lines.append(
            f"| popularity | 0 | {p.get('test/popularity/recall@5', float('nan')):.4f} | {p.get('test/popularity/ndcg@5', float('nan')):.4f} | "
            f"{p.get('test/popularity/recall@10', float('nan')):.4f} | {p.get('test/popularity/ndcg@10', float('nan')):.4f} | | | |"
        )
    subsets = [f"- {name}: evaluated {m['test/users']:,.0f} of {m['test/users_total']:,.0f} test users (a seeded random subset, max_eval_users)."
               for name, result in results.items() if (m := result["metrics"]).get("test/users", 0) < m.get("test/users_total", 0)]
    if subsets:
        lines += ["", *subsets]
    if results:
        plot = _plot_recall(results, run / "recall_vs_params.png")
        lines += ["", f"![Recall@10 vs parameters]({plot.name})"]
    report = run / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def _plot_recall(results: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, ax = _subplots(figsize=(5, 3.5))
    for name, result in results.items():
        ax.scatter(result["parameters"], result["metrics"].get("test/recall@10", float("nan")), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test Recall@10")
    ax.legend()
    return _save_png(fig, path)


def _plot_sid_usage(sids: SemanticIDs, path: Path) -> Path:
    """One panel per RQ level: items per code, codes sorted by use, titled with the share of
    codes used. Even use is a flat profile at ``N / codebook_size`` (dashed); collapse is a
    steep or short one."""
    size = sids.codebook_size
    fig, axes = _subplots(ncols=sids.levels, figsize=(2.6 * sids.levels + 0.6, 2.8), sharey=True, squeeze=False)
    for level, ax in enumerate(axes[0]):
        counts = torch.bincount(sids.codes[:, level], minlength=size).sort(descending=True).values
        used = int((counts > 0).sum())
        ax.bar(range(size), counts.tolist(), width=1.0)
        ax.axhline(sids.num_items / size, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(f"level {level}: {used}/{size} codes ({used / size:.0%})", fontsize=9)
        ax.set_xlabel("code, by use")
    axes[0][0].set_ylabel("items")
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
