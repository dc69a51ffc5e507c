"""The command line: ``python train.py <command> --config <yaml> [--key value ...]``.

Model commands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's ``LightningCLI``;
stage commands (``data``, ...) are jsonargparse parsers over the same classes, so one YAML
syntax (``class_path`` / ``init_args``) and the same ``--print_config`` work everywhere, and a
data preset (``configs/data/*.yaml``, a top-level ``data:`` block) composes with any model
config: ``--config configs/data/amazon-beauty.yaml --config configs/tiger/base.yaml``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningCLI

from genrec.artifacts import write_json
from genrec.data.datamodule import SequenceDataModule
from genrec.data.formats.base import DataFormatError, MissingItemError
from genrec.encode import EncoderConfig, encode_catalog, encode_items
from genrec.models import presets
from genrec.noise import quiet_third_party
from genrec.progress import progress_callbacks
from genrec.quantize.rqkmeans import RQKMeans
from genrec.quantize.rqvae import RQVAEModule
from genrec.quantize.stage import TokenizeConfig, format_quality, tokenize
from genrec.recommender import QueryError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class GenRecCLI(LightningCLI):
    """LightningCLI over every genrec model and data module (subclass mode for both).

    ``fit`` ends with ``test`` on the best checkpoint (by the ModelCheckpoint's monitor, or the
    final weights when there is none), so one command trains, validates and tests.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,  # the seed Lightning falls back to, said explicitly (no "No seed found" warning)
            args=list(args) if args is not None else None,
            run=run,
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse ``args`` when given (the pipeline and tests pass them), else ``sys.argv``.

        LightningCLI warns when both are set, as they are when the ``pipeline`` command builds
        a model's CLI from its own arguments; those are not meant for this parser."""
        if args is None:
            super().parse_arguments(parser, args)
        elif isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with plain progress lines instead of Rich's bar when stdout is not a
        terminal (see :mod:`genrec.progress`) and no progress bar was configured."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, *progress_callbacks()])
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not callable(getattr(self.model, "test_step", None)) or self.trainer.interrupted:
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def data_parser() -> ArgumentParser:
    """Parser of the ``data`` command."""
    parser = ArgumentParser(prog="train.py data", description="Read a data set, filter, split, and print its statistics.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with a top-level data: block (configs/data/*.yaml)")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data module and its reader.")
    parser.add_argument("--output", type=str | None, default=None, help="Also write the statistics as JSON here.")
    return parser


def run_data(args: Sequence[str]) -> dict[str, object]:
    """``data`` command: statistics and split sizes of a data preset; returns them as a dict."""
    parser = data_parser()
    config = parser.parse_args(list(args))
    datamodule: SequenceDataModule = parser.instantiate_classes(config).data
    data = datamodule.data
    split = {stage: len(data.samples(stage)[0]) for stage in ("train", "val", "test")}
    print(f"data set: {datamodule.name}  ({type(datamodule.source).__name__})")
    print(data.stats.format())
    print(f"{'leave-one-out samples train / val / test':<46} {split['train']:,} / {split['val']:,} / {split['test']:,}")
    result = {"data": datamodule.describe(), "stats": data.stats.as_dict(), "split": split}
    if config.output:
        write_json(Path(config.output), result)
        print(f"wrote {config.output}")
    return result


def encode_parser() -> ArgumentParser:
    """Parser of the ``encode`` command."""
    parser = ArgumentParser(prog="train.py encode", description="Embed every item's text with a modality encoder.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML(s): a data: block and encoder:/encode: blocks")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data set whose items are encoded.")
    parser.add_class_arguments(EncoderConfig, "encoder", help="The modality encoder.")
    parser.add_function_arguments(encode_catalog, "encode", skip={"catalog", "encoder", "data_name"})
    return parser


def run_encode(args: Sequence[str]) -> Path:
    """``encode`` command: writes (or reuses) the item-embedding file and returns its path."""
    parser = encode_parser()
    config = parser.parse_args(list(args))
    init = parser.instantiate_classes(config)
    datamodule: SequenceDataModule = init.data
    path = encode_items(datamodule.data, encoder=init.encoder, data_name=datamodule.name, **vars(config.encode))
    print(f"embeddings: {path}")
    return path


def tokenize_parser() -> ArgumentParser:
    """Parser of the ``tokenize`` command: the encode parser plus the tokenizer and its training."""
    parser = encode_parser()
    parser.prog = "train.py tokenize"
    parser.description = "Train an RQ-VAE / RQ-KMeans tokenizer on item embeddings and write semantic IDs."
    parser.add_argument("--tokenizer", type=RQVAEModule | RQKMeans, required=True, help="The quantizer (class_path/init_args).")
    parser.add_class_arguments(TokenizeConfig, "tokenize", help="Training settings and output.")
    return parser


def run_tokenize(args: Sequence[str]) -> Path:
    """``tokenize`` command: (encode if needed,) train the tokenizer, write the SID artifact."""
    parser = tokenize_parser()
    config = parser.parse_args(list(args))
    tokenizer_config = parser.dump(config, format="json_indented", skip_check=True)
    init = parser.instantiate_classes(config)
    datamodule: SequenceDataModule = init.data
    catalog = datamodule.data.catalog
    settings: TokenizeConfig = init.tokenize
    if settings.embeddings:
        embeddings = Path(settings.embeddings)
    else:
        embeddings = encode_items(datamodule.data, encoder=init.encoder, data_name=datamodule.name, **vars(config.encode))
    recorded = json.loads(tokenizer_config)["tokenizer"]
    path, sids = tokenize(init.tokenizer, recorded, embeddings, catalog.fingerprint(), settings, data_name=datamodule.name,
                          transitions=datamodule.data.training_pairs(1))
    print(f"semantic IDs: {path}")
    print(format_quality(sids.quality))
    return path


def run_presets(args: Sequence[str]) -> list[dict[str, object]]:
    """``presets`` command: every model size preset with its parameter count (built on the meta
    device, nothing allocated)."""
    parser = ArgumentParser(prog="train.py presets", description="List model size presets and their parameter counts.")
    parser.add_argument("--vocab_size", type=int, default=presets.DEFAULT_VOCAB_SIZE, help="TIGER vocabulary (SID tokens + specials); LM presets use their own.")
    config = parser.parse_args(list(args))
    rows = []
    for name in presets.names():
        shape = presets.TigerConfig.from_name(name)
        count = presets.count_parameters(shape, config.vocab_size)
        rows.append({"model": "tiger", "preset": name, "parameters": count, "shape": shape.as_dict()})
    for name in presets.lm_names():
        shape = presets.LMRecConfig.from_name(name)
        count = presets.count_lm_parameters(shape)
        rows.append({"model": "lm", "preset": name, "parameters": count, "shape": shape.as_dict()})
    print(f"{'model':<8}{'preset':<14}{'parameters':>14}  shape")
    for row in rows:
        shape = ", ".join(f"{k}={v}" for k, v in row["shape"].items())
        print(f"{row['model']:<8}{row['preset']:<14}{row['parameters']:>14,}  {shape}")
    return rows


def run_pipeline_command(args: Sequence[str]) -> Path:
    """``pipeline`` command: every stage of a pipeline config, then its report."""
    from genrec.pipeline import PipelineConfig, run_pipeline

    parser = ArgumentParser(prog="train.py pipeline", description="data -> encode -> tokenize -> models -> report, skipping finished stages.")
    parser.add_argument("--config", action=ActionConfigFile, help="a pipeline YAML (configs/pipeline/*.yaml)")
    parser.add_class_arguments(PipelineConfig, as_group=False)
    config = parser.parse_args(list(args))
    settings = PipelineConfig(**{k: v for k, v in vars(config).items() if k not in ("config", "__path__")})
    report = run_pipeline(settings, command="python train.py pipeline " + " ".join(args))
    print(f"report: {report}")
    return report


def run_scaling_command(args: Sequence[str]) -> Path:
    """``scaling`` command: train every (sweep, preset, seed) of a scaling config, fit the law, report."""
    from genrec.sweep import ScalingConfig, run_scaling

    parser = ArgumentParser(prog="train.py scaling", description="size presets x seeds per paradigm -> scaling-law fit, table and plot.")
    parser.add_argument("--config", action=ActionConfigFile, help="a scaling YAML (configs/scaling/*.yaml)")
    parser.add_class_arguments(ScalingConfig, as_group=False)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (independent jobs, e.g. one per GPU)")
    parser.add_argument("--collect_only", type=bool, default=False, help="fit and report the finished runs, train nothing")
    parser.add_argument("--only", type=list[str] | None, default=None, help='train only these sweeps, e.g. [tiger]')
    config = parser.parse_args(list(args))
    values = {k: v for k, v in vars(config).items() if k not in ("config", "__path__", "shard", "collect_only", "only")}
    values["sweeps"] = {k: (vars(v) if not isinstance(v, dict) else v) for k, v in values["sweeps"].items()}
    try:
        index, count = (int(x) for x in str(config.shard).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n, got {config.shard!r}") from None
    report = run_scaling(ScalingConfig(**values), command="python train.py scaling " + " ".join(args), shard=(index, count),
                         collect_only=config.collect_only, only=config.only)
    print(f"report: {report}")
    return report


def run_recommend(args: Sequence[str]) -> list[dict[str, object]]:
    """``recommend`` command: the top-k items of a trained model for one history (see
    :class:`genrec.recommender.Recommender`); prints them and returns them as dicts."""
    from dataclasses import asdict

    from genrec.recommender import Recommender

    parser = ArgumentParser(prog="train.py recommend", description="the top-k items a trained model recommends after a history.")
    parser.add_argument("--run", required=True, help="a pipeline run folder (with --model) or a model folder")
    parser.add_argument("--model", default=None, help="the model's name in the pipeline run, e.g. tiger")
    parser.add_argument("--history", type=list[str], required=True, help='items oldest first: external ids or titles, e.g. ["Toy Story", "50"]')
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--keep_history", type=bool, default=False, help="also recommend items of the history (left out by default)")
    parser.add_argument("--all_titles", type=bool, default=False, help="list items that share a title separately (listed once by default)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint file")
    parser.add_argument("--output", default=None, help="also write the list as JSON here")
    config = parser.parse_args(list(args))
    recommender = Recommender.load(config.run, model=config.model, checkpoint=config.checkpoint)
    history = list(config.history)
    recs = recommender.recommend(history, k=config.k, exclude_history=not config.keep_history, distinct_titles=not config.all_titles)
    rows = [asdict(r) for r in recs]
    name = f"{config.model} ({type(recommender.module).__name__})" if config.model else type(recommender.module).__name__
    kept = "included" if config.keep_history else "left out"
    print(f"top {len(rows)} of {name} after {len(history)} history items (history items {kept}):")
    print(f"{'rank':>4}  {'score':>10}  {'item id':<14} title")
    for rank, row in enumerate(rows, 1):
        same = f"  (same title: {', '.join(row['same_title'])})" if row["same_title"] else ""
        print(f"{rank:>4}  {row['score']:>10.4f}  {row['external_id']:<14} {row['title']}{same}")
    print(f"score: {recommender.score_meaning}")
    if any(row["same_title"] for row in rows):
        print("items that share a title are listed once (the best-scored); --all_titles true lists each")
    if config.output:
        write_json(Path(config.output), {"history": history, "k": config.k, "model": name, "score": recommender.score_meaning,
                                         "history_excluded": not config.keep_history, "recommendations": rows})
    return rows


STAGE_COMMANDS: dict[str, tuple[Callable[[Sequence[str]], object], str]] = {
    "data": (run_data, "read a data set and print its statistics"),
    "encode": (run_encode, "embed every item's text (modality encoder) into a safetensors file"),
    "pipeline": (run_pipeline_command, "run data -> encode -> tokenize -> models -> report, skipping finished stages"),
    "recommend": (run_recommend, "the top-k items a trained model recommends after a history (titles or item ids)"),
    "scaling": (run_scaling_command, "sweep size presets x seeds per paradigm, fit the paper's scaling law, table + plot"),
    "presets": (run_presets, "list model size presets and their parameter counts"),
    "tokenize": (run_tokenize, "train an RQ-VAE / RQ-KMeans tokenizer and write every item's semantic ID"),
}


def usage() -> str:
    lines = ["usage: python train.py <command> --config <yaml> [--key value ...]", "", "commands:"]
    for name in LIGHTNING_COMMANDS:
        lines.append(f"  {name:<10} Lightning {name} of a model (LightningCLI)")
    for name, (_, help_text) in STAGE_COMMANDS.items():
        lines.append(f"  {name:<10} {help_text}")
    lines.append("")
    lines.append("`python train.py <command> --help` lists a command's options.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``train.py``. Process-wide settings are made here, never at import."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    torch.set_float32_matmul_precision("high")
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command not in LIGHTNING_COMMANDS and command not in STAGE_COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    try:
        if command in LIGHTNING_COMMANDS:
            # From the shell LightningCLI reads sys.argv itself (passing both makes it warn).
            GenRecCLI(args=None if argv is None else [command, *rest])
        else:
            STAGE_COMMANDS[command][0](rest)
    except (FileNotFoundError, DataFormatError, MissingItemError, QueryError) as error:
        # Bad input is the user's to fix: say what and where, without a traceback.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


__all__ = ["GenRecCLI", "main", "run_data"]
