"""The ``encode`` stage: every item of a data set -> one embedding (a safetensors file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from genrec.data.catalog import DEFAULT_TEMPLATE
from genrec.data.datamodule import SequenceDataModule
from genrec.encode import EncoderConfig, add_encode_arguments, encode_items
from genrec.stages.parsing import PARSER_OPTIONS


def encode_parser() -> ArgumentParser:
    """Parser of the ``data:``, ``encoder:`` and ``encode:`` blocks."""
    parser = ArgumentParser(prog="train.py encode", description="Embed every item's text with a modality encoder.", **PARSER_OPTIONS)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML(s): a data: block and encoder:/encode: blocks")
    parser.add_subclass_arguments(SequenceDataModule, "data", required=True, help="The data set whose items are encoded.")
    return add_encode_arguments(parser)


def encode_options(config: Namespace, datamodule: SequenceDataModule) -> dict[str, Any]:
    """The ``encode:`` options of a parsed config (the keyword arguments of
    :func:`~genrec.encode.encode_catalog`), the template defaulting to the data preset's
    ``text_template`` (then :data:`~genrec.data.catalog.DEFAULT_TEMPLATE`) when none is given."""
    options = dict(vars(config.encode))
    options["template"] = options.get("template") or datamodule.text_template or DEFAULT_TEMPLATE
    return options


def encode_stage(datamodule: SequenceDataModule, encoder: EncoderConfig, options: dict[str, Any]) -> Path:
    """The ``encode`` stage: writes (or reuses) the ``[num_items, dim]`` embedding file of
    ``datamodule``'s items and returns its path; ``options`` as :func:`encode_options` gives
    them (``output``, ``batch_size``, ``accelerator``, ...)."""
    return encode_items(datamodule.data, encoder=encoder, data_name=datamodule.name, **options)
