"""The command line: ``python train.py <command> --config <yaml> [--key value ...]``.

Model commands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's ``LightningCLI``;
stage commands (``data``, ...) are jsonargparse parsers over the same classes, so one YAML
syntax (``class_path`` / ``init_args``) and the same ``--print_config`` work everywhere, and a
data preset (``configs/data/*.yaml``, a top-level ``data:`` block) composes with any model
config: ``--config configs/data/amazon-beauty.yaml --config configs/tiger/base.yaml``.

An error the user can cause (a bad value, an unknown key, a missing or damaged file) ends the
command with one line on stderr naming the key, flag or file and the value (exit 2 for a command
line or config that does not parse, 1 otherwise); ``--debug`` (or ``GENREC_DEBUG=1``) shows the
traceback instead. Options are never abbreviated (``--trainer.max_epoch`` is an error).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from genrec.artifacts import atomic_path, read_checkpoint, write_json
from genrec.data.catalog import DEFAULT_TEMPLATE, NoItemTextError
from genrec.data.datamodule import SequenceDataModule
from genrec.data.formats.base import DataFormatError, MissingItemError
from genrec.encode import EncoderConfig, encode_catalog, encode_items
from genrec.errors import (
    ArtifactError,
    ConfigError,
    UsageError,
    one_line,
    parse_error_line,
    user_error,
)
from genrec.models import presets
from genrec.noise import quiet_third_party
from genrec.progress import progress_callbacks
from genrec.quantize.protocol import Tokenizer
from genrec.quantize.stage import TokenizeConfig, format_quality, tokenize
from genrec.recommender import QueryError
from genrec.resume import RNGStateCheckpoint

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}
"""Every parser raises (so :func:`main` reports one line) and matches options exactly."""

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
    DataFormatError, MissingItemError, NoItemTextError, QueryError, MisconfigurationException,
)
"""Errors besides :class:`~genrec.errors.UserError` that the user causes and fixes."""


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
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [RNGStateCheckpoint()]},
            parser_kwargs={**PARSER_OPTIONS, **{command: dict(PARSER_OPTIONS) for command in LIGHTNING_COMMANDS}},
            seed_everything_default=0,  # the seed Lightning falls back to, said explicitly (no "No seed found" warning)
            args=list(args) if args is not None else None,
            run=run,
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)  # --ckpt_path files load without unpickling
        return parser

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse ``args`` when given (the pipeline and tests pass them), else ``sys.argv``; a
        parse error becomes one :class:`UsageError` line.

        LightningCLI warns when both are set, as they are when the ``pipeline`` command builds
        a model's CLI from its own arguments; those are not meant for this parser."""
        try:
            if args is None:
                super().parse_arguments(parser, args)
            elif isinstance(args, (dict, Namespace)):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except argparse.ArgumentError as error:
            given = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
            raise UsageError(parse_error_line(error, parser, given)) from error

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before LightningCLI reads its hyperparameters: it must load
        with ``weights_only=True`` and name a genrec model, if any."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            checkpoint = read_checkpoint(Path(path))
            class_path = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "genrec."))
            if not class_path.startswith("genrec."):
                raise ArtifactError(f"{path}: the checkpoint names the class {class_path!r}, not a genrec model; refusing to import it")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        instantiate(super().instantiate_classes)

    def before_fit(self) -> None:
        """``--ckpt_path last``: the ModelCheckpoint's ``last.ckpt`` must load (weights only)
        before training starts, or the command ends with one line naming it."""
        dirpath = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if self.config["fit"].get("ckpt_path") == "last" and dirpath and (Path(dirpath) / "last.ckpt").is_file():
            read_checkpoint(Path(dirpath) / "last.ckpt")


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


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's config saver (``config.yaml`` in the log folder) that, when fitting, also
    writes the resolved config beside the checkpoints: ``<folder>/config.yaml`` next to
    ``<folder>/checkpoints/`` (the ModelCheckpoint's ``dirpath``, else the log folder's). That one
    file is what :class:`~genrec.recommender.Recommender` reads; in a pipeline run it replaces the
    relocated config the pipeline wrote there."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        folder = Path(dirpath).parent if dirpath else Path(trainer.log_dir or trainer.default_root_dir)
        text = self.parser.dump(self.config, skip_none=False)
        with atomic_path(folder / "config.yaml") as tmp:
            tmp.write_text(text)


def parse(parser: ArgumentParser, args: Sequence[str]) -> Any:
    """``parser.parse_args(args)``; a parse error becomes a one-line :class:`UsageError`."""
    try:
        return parser.parse_args(list(args))
    except argparse.ArgumentError as error:
        raise UsageError(parse_error_line(error, parser, list(args))) from error


def instantiate(build: Callable[[], Any]) -> Any:
    """``build()`` (jsonargparse's instantiation of the configured classes); a ``ValueError`` or
    ``TypeError`` an ``__init__`` raises for a bad setting becomes a one-line :class:`ConfigError`
    (errors the user causes, e.g. :class:`ConfigError` itself, pass unchanged)."""
    try:
        return build()
    except (ValueError, TypeError) as error:
        if user_error(error, USER_ERRORS) is not None:
            raise
        inner: BaseException = error
        while inner.__cause__ or inner.__context__:
            inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
        raise ConfigError(f"invalid setting: {one_line(inner)}") from error


def data_parser() -> ArgumentParser:
    """Parser of the ``data`` command."""
    parser = ArgumentParser(prog="train.py data", description="Read a data set, filter, split, and print its statistics.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with a top-level data: block (configs/data/*.yaml)")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data module and its reader.")
    parser.add_argument("--output", type=str | None, default=None, help="Also write the statistics as JSON here.")
    return parser


def run_data(args: Sequence[str]) -> dict[str, object]:
    """``data`` command: statistics and split sizes of a data preset; returns them as a dict."""
    parser = data_parser()
    config = parse(parser, args)
    datamodule: SequenceDataModule = instantiate(lambda: parser.instantiate_classes(config)).data
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
    parser = ArgumentParser(prog="train.py encode", description="Embed every item's text with a modality encoder.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML(s): a data: block and encoder:/encode: blocks")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data set whose items are encoded.")
    parser.add_class_arguments(EncoderConfig, "encoder", help="The modality encoder.")
    parser.add_function_arguments(encode_catalog, "encode", skip={"catalog", "encoder", "data_name"})
    return parser


def run_encode(args: Sequence[str]) -> Path:
    """``encode`` command: writes (or reuses) the item-embedding file and returns its path."""
    parser = encode_parser()
    config = parse(parser, args)
    init = instantiate(lambda: parser.instantiate_classes(config))
    datamodule: SequenceDataModule = init.data
    path = encode_items(datamodule.data, encoder=init.encoder, data_name=datamodule.name, **encode_options(config, datamodule))
    print(f"embeddings: {path}")
    return path


def encode_options(config: object, datamodule: SequenceDataModule) -> dict[str, object]:
    """The ``encode`` options of a parsed config, the template defaulting to the data preset's
    ``text_template`` (then :data:`~genrec.data.catalog.DEFAULT_TEMPLATE`) when none is given."""
    options = dict(vars(config.encode))  # type: ignore[attr-defined]
    options["template"] = options.get("template") or datamodule.text_template or DEFAULT_TEMPLATE
    return options


def tokenize_parser() -> ArgumentParser:
    """Parser of the ``tokenize`` command: the encode parser plus the tokenizer and its training."""
    parser = encode_parser()
    parser.prog = "train.py tokenize"
    parser.description = "Train an RQ-VAE / RQ-KMeans tokenizer on item embeddings and write semantic IDs."
    parser.add_argument("--tokenizer", type=Tokenizer, required=True, help="The quantizer (class_path/init_args): any class of the Tokenizer protocol.")
    parser.add_class_arguments(TokenizeConfig, "tokenize", help="Training settings and output.")
    return parser


def run_tokenize(args: Sequence[str]) -> Path:
    """``tokenize`` command: (encode if needed,) train the tokenizer, write the SID artifact."""
    parser = tokenize_parser()
    config = parse(parser, args)
    tokenizer_config = parser.dump(config, format="json_indented", skip_check=True)
    init = instantiate(lambda: parser.instantiate_classes(config))
    datamodule: SequenceDataModule = init.data
    catalog = datamodule.data.catalog
    settings: TokenizeConfig = init.tokenize
    if settings.embeddings:
        embeddings = Path(settings.embeddings)
    else:
        embeddings = encode_items(datamodule.data, encoder=init.encoder, data_name=datamodule.name, **encode_options(config, datamodule))
    recorded = json.loads(tokenizer_config)["tokenizer"]
    path, sids = tokenize(init.tokenizer, recorded, embeddings, catalog.fingerprint(), settings, data_name=datamodule.name,
                          transitions=datamodule.data.training_pairs(1), num_items=len(catalog))
    print(f"semantic IDs: {path}")
    print(format_quality(sids.quality))
    return path


def run_presets(args: Sequence[str]) -> list[dict[str, object]]:
    """``presets`` command: every model size preset with its parameter count (built on the meta
    device, nothing allocated)."""
    parser = ArgumentParser(prog="train.py presets", description="List model size presets and their parameter counts.", **PARSER_OPTIONS)
    parser.add_argument("--vocab_size", type=int, default=presets.DEFAULT_VOCAB_SIZE, help="TIGER vocabulary (SID tokens + specials); LM presets use their own.")
    config = parse(parser, args)
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

    parser = ArgumentParser(prog="train.py pipeline", description="data -> encode -> tokenize -> models -> report, skipping finished stages.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="a pipeline YAML (configs/pipeline/*.yaml)")
    parser.add_class_arguments(PipelineConfig, as_group=False)
    config = parse(parser, args)
    settings = PipelineConfig(**{k: v for k, v in vars(config).items() if k not in ("config", "__path__")})
    report = run_pipeline(settings, command="python train.py pipeline " + " ".join(args))
    print(f"report: {report}")
    return report


def run_scaling_command(args: Sequence[str]) -> Path:
    """``scaling`` command: train every (sweep, preset, seed) of a scaling config, fit the law, report."""
    from genrec.sweep import ScalingConfig, run_scaling

    parser = ArgumentParser(prog="train.py scaling", description="size presets x seeds per paradigm -> scaling-law fit, table and plot.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="a scaling YAML (configs/scaling/*.yaml)")
    parser.add_class_arguments(ScalingConfig, as_group=False)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th run starting at i (independent jobs, e.g. one per GPU)")
    parser.add_argument("--collect_only", type=bool, default=False, help="fit and report the finished runs, train nothing")
    parser.add_argument("--only", type=list[str] | None, default=None, help='train only these sweeps, e.g. [tiger]')
    config = parse(parser, args)
    values = {k: v for k, v in vars(config).items() if k not in ("config", "__path__", "shard", "collect_only", "only")}
    values["sweeps"] = {k: (vars(v) if not isinstance(v, dict) else v) for k, v in values["sweeps"].items()}
    try:
        index, count = (int(x) for x in str(config.shard).split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/n, got {config.shard!r}") from None
    report = run_scaling(ScalingConfig(**values), command="python train.py scaling " + " ".join(args), shard=(index, count),
                         collect_only=config.collect_only, only=config.only)
    print(f"report: {report}")
    return report


def run_recommend(args: Sequence[str]) -> list[dict[str, object]]:
    """``recommend`` command: the top-k items of a trained model for one history (see
    :class:`genrec.recommender.Recommender`); prints them and returns them as dicts."""
    from dataclasses import asdict

    from genrec.recommender import Recommender

    parser = ArgumentParser(prog="train.py recommend", description="the top-k items a trained model recommends after a history.", **PARSER_OPTIONS)
    parser.add_argument("--run", required=True, help="a pipeline run folder (with --model) or a model folder")
    parser.add_argument("--model", default=None, help="the model's name in the pipeline run, e.g. tiger")
    parser.add_argument("--history", type=list[str], required=True, help='items oldest first: external ids or titles, e.g. ["Toy Story", "50"]')
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--keep_history", type=bool, default=False, help="also recommend items of the history (left out by default)")
    parser.add_argument("--all_titles", type=bool, default=False, help="list items that share a title separately (listed once by default)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint file")
    parser.add_argument("--output", default=None, help="also write the list as JSON here")
    config = parse(parser, args)
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
    lines.append("`python train.py <command> --help` lists a command's options; --debug (or GENREC_DEBUG=1) shows")
    lines.append("the traceback of an error instead of its one-line message.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``train.py``. Process-wide settings are made here, never at import."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("GENREC_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
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
            if argv is None:
                sys.argv = [sys.argv[0], *args]  # without --debug
            GenRecCLI(args=None if argv is None else [command, *rest])
        else:
            STAGE_COMMANDS[command][0](rest)
    except Exception as error:
        # Bad input is the user's to fix: say what and where, in one line, without a traceback.
        found = user_error(error, USER_ERRORS)
        if found is None or debug:
            raise
        where = "trainer: " if isinstance(found, MisconfigurationException) else ""
        print(f"error: {where}{one_line(found)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(found, UsageError) else 1) from None


__all__ = ["GenRecCLI", "main", "run_data"]
