"""The ``data`` stage: read a data set, filter and split it, report its statistics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from genrec.artifacts import write_json
from genrec.data.datamodule import SequenceDataModule
from genrec.stages.parsing import PARSER_OPTIONS, instantiate, read_config


def data_parser() -> ArgumentParser:
    """Parser of a ``data:`` block (``configs/data/*.yaml``) and the statistics' ``--output``."""
    parser = ArgumentParser(prog="train.py data", description="Read a data set, filter, split, and print its statistics.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with a top-level data: block (configs/data/*.yaml)")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data module and its reader.")
    parser.add_argument("--output", type=str | None, default=None, help="Also write the statistics as JSON here.")
    return parser


def load_data(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> SequenceDataModule:
    """The data module of the ``data:`` block of ``files`` (later files win), with ``overrides``."""
    parser = data_parser()
    config = read_config(parser, files, overrides)
    return instantiate(lambda: parser.instantiate_classes(config)).data


def describe_data(datamodule: SequenceDataModule, output: Path | None = None) -> dict[str, object]:
    """The ``data`` stage: prints the statistics and leave-one-out split sizes of ``datamodule``,
    writes them as JSON to ``output`` when given, and returns them
    (``{"data": ..., "stats": ..., "split": {"train": n, "val": n, "test": n}}``)."""
    data = datamodule.data
    split = {stage: len(data.samples(stage)[0]) for stage in ("train", "val", "test")}
    print(f"data set: {datamodule.name}  ({type(datamodule.source).__name__})")
    print(data.stats.format())
    print(f"{'leave-one-out samples train / val / test':<46} {split['train']:,} / {split['val']:,} / {split['test']:,}")
    result = {"data": datamodule.describe(), "stats": data.stats.as_dict(), "split": split}
    if output is not None:
        write_json(Path(output), result)
        print(f"wrote {output}")
    return result
