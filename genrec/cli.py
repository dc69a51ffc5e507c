"""The command line: ``python train.py <command> --config <yaml> [--key value ...]``, a thin
dispatcher that nothing in genrec imports: each command parses its YAMLs and flags and calls a
stage function (:mod:`genrec.stages`, :mod:`genrec.pipeline`, :mod:`genrec.scaling`,
:class:`genrec.recommender.Recommender`).

Model commands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's ``LightningCLI``
(:class:`genrec.stages.fit.GenRecCLI`); stage commands (``data``, ...) are jsonargparse parsers
over the same classes, so one YAML syntax (``class_path`` / ``init_args``) and the same
``--print_config`` work everywhere, and a data preset (``configs/data/*.yaml``, a top-level
``data:`` block) composes with any model config:
``--config configs/data/amazon-beauty.yaml --config configs/tiger/amazon-beauty.yaml``.

An error the user can cause (a bad value, an unknown key, a missing or damaged file) ends the
command with one line on stderr naming the key, flag or file and the value (exit 2 for a command
line or config that does not parse, 143 for a run stopped by SIGTERM that kept its work, 1
otherwise); ``--debug`` (or ``GENREC_DEBUG=1``) shows the
traceback instead. Options are never abbreviated (``--trainer.max_epoch`` is an error).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

from genrec.artifacts import write_json
from genrec.errors import Interrupted, UsageError, one_line, user_error
from genrec.models import presets
from genrec.noise import quiet_third_party
from genrec.pipeline import PipelineConfig, run_pipeline
from genrec.recommender import QueryError, Recommender
from genrec.scaling import ScalingConfig, run_scaling
from genrec.stages.data import data_parser, describe_data
from genrec.stages.encode import encode_options, encode_parser, encode_stage
from genrec.stages.fit import LIGHTNING_COMMANDS, GenRecCLI
from genrec.stages.parsing import PARSER_OPTIONS, instantiate, parse
from genrec.stages.parsing import USER_ERRORS as STAGE_ERRORS
from genrec.stages.tokenize import read_tokenize, tokenize_parser, tokenize_stage

USER_ERRORS: tuple[type[BaseException], ...] = (*STAGE_ERRORS, QueryError)
"""Errors besides :class:`~genrec.errors.UserError` that the user causes and fixes."""


def run_data(args: Sequence[str]) -> dict[str, object]:
    """``data`` command: statistics and split sizes of a data preset; returns them as a dict."""
    parser = data_parser()
    config = parse(parser, args)
    datamodule = instantiate(lambda: parser.instantiate_classes(config)).data
    return describe_data(datamodule, Path(config.output) if config.output else None)


def run_encode(args: Sequence[str]) -> Path:
    """``encode`` command: writes (or reuses) the item-embedding file and returns its path."""
    parser = encode_parser()
    config = parse(parser, args)
    init = instantiate(lambda: parser.instantiate_classes(config))
    path = encode_stage(init.data, init.encoder, encode_options(config, init.data))
    print(f"embeddings: {path}")
    return path


def run_tokenize(args: Sequence[str]) -> Path:
    """``tokenize`` command: (encode if needed,) train the tokenizer, write the SID artifact."""
    return tokenize_stage(read_tokenize([], args))


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
    parser = ArgumentParser(prog="train.py recommend", description="the top-k items a trained model recommends after a history.", **PARSER_OPTIONS)
    parser.add_argument("--run", required=True, help="a pipeline run folder (with --model) or a model folder")
    parser.add_argument("--model", default=None, help="the model's name in the pipeline run, e.g. tiger")
    parser.add_argument("--history", type=list[str], required=True, help='items oldest first: external ids or titles, e.g. ["Toy Story", "50"]')
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--keep_history", type=bool, default=False, help="also recommend items of the history (left out by default)")
    parser.add_argument("--all_titles", type=bool, default=False, help="list items that share a title separately (listed once by default)")
    parser.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint file")
    parser.add_argument("--output", default=None, help="also write the list as JSON here")
    parser.add_argument("--trusted", type=list[str], default=[],
                        help='modules outside genrec whose model or data-reader classes the run may import, e.g. ["my_ext"]')
    config = parse(parser, args)
    recommender = Recommender.load(config.run, model=config.model, checkpoint=config.checkpoint, trusted=config.trusted)
    history = list(config.history)
    recs = recommender.recommend(history, k=config.k, exclude_history=not config.keep_history, distinct_titles=not config.all_titles)
    rows = [dataclasses.asdict(r) for r in recs]
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
    except SIGTERMException:
        # Lightning's loops raise it (a SystemExit without a code: exit status 0) at their next
        # check after SIGTERM; say so, and exit as a process killed by the signal would.
        print(f"error: {command}: stopped by SIGTERM; the checkpoints saved so far are kept (a later run resumes from its last.ckpt)",
              file=sys.stderr)
        raise SystemExit(143) from None
    except Exception as error:
        # Bad input is the user's to fix: say what and where, in one line, without a traceback.
        found = user_error(error, USER_ERRORS)
        if found is None or debug:
            raise
        where = "trainer: " if isinstance(found, MisconfigurationException) else ""
        print(f"error: {where}{one_line(found)}", file=sys.stderr)
        raise SystemExit(2 if isinstance(found, UsageError) else 143 if isinstance(found, Interrupted) else 1) from None


__all__ = ["GenRecCLI", "data_parser", "encode_options", "encode_parser", "main", "run_data", "run_encode", "run_tokenize", "tokenize_parser"]
