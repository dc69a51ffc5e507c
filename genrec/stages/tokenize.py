"""The ``tokenize`` stage: (encode if needed,) train a tokenizer on the item embeddings and
write every item's semantic ID."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from genrec.data.datamodule import SequenceDataModule
from genrec.encode import EncoderConfig
from genrec.quantize.protocol import Tokenizer
from genrec.quantize.stage import TokenizeConfig, format_quality, tokenize
from genrec.stages.encode import encode_options, encode_parser, encode_stage
from genrec.stages.parsing import instantiate, read_config


def tokenize_parser() -> ArgumentParser:
    """Parser of the ``tokenize`` command: the encode parser plus the tokenizer and its training."""
    parser = encode_parser()
    parser.prog = "train.py tokenize"
    parser.description = "Train an RQ-VAE / RQ-KMeans tokenizer on item embeddings and write semantic IDs."
    parser.add_argument("--tokenizer", type=Tokenizer, required=True, help="The quantizer (class_path/init_args): any class of the Tokenizer protocol.")
    parser.add_class_arguments(TokenizeConfig, "tokenize", help="Training settings and output.")
    parser.add_argument("--accelerator", type=str | None, default=None,
                        help="the encoder's and the tokenizer's accelerator at once (cpu, gpu, auto); unset: --encode.accelerator and --tokenize.accelerator")
    return parser


@dataclass
class TokenizeInputs:
    """Everything the tokenize stage runs on, read from its YAMLs (see :func:`read_tokenize`).

    Args:
        datamodule: the data set whose items get IDs.
        encoder: the modality encoder of the embeddings (when ``settings.embeddings`` is unset).
        encode: the encode options (:func:`~genrec.stages.encode.encode_options`).
        tokenizer: the untrained tokenizer.
        recorded: the tokenizer's ``class_path``/``init_args`` as configured (recorded, hashed).
        settings: its training settings and output.
    """

    datamodule: SequenceDataModule
    encoder: EncoderConfig
    encode: dict[str, Any]
    tokenizer: Any
    recorded: dict[str, Any]
    settings: TokenizeConfig

    def on(self, accelerator: str | None) -> TokenizeInputs:
        """These inputs with the encoder and the tokenizer's training on ``accelerator`` (unchanged when ``None``)."""
        if accelerator is None:
            return self
        return replace(self, encode={**self.encode, "accelerator": accelerator}, settings=replace(self.settings, accelerator=accelerator))


def read_tokenize(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> TokenizeInputs:
    """The tokenize stage's inputs from YAML ``files`` (``data:``, ``encoder:``/``encode:``,
    ``tokenizer:``/``tokenize:`` blocks, an optional top-level ``accelerator``) and the user's
    command-line ``overrides``."""
    parser = tokenize_parser()
    config = read_config(parser, files, overrides)
    recorded = json.loads(parser.dump(config, format="json_indented", skip_validation=True))["tokenizer"]
    init = instantiate(lambda: parser.instantiate_classes(config))
    inputs = TokenizeInputs(datamodule=init.data, encoder=init.encoder, encode=encode_options(config, init.data),
                            tokenizer=init.tokenizer, recorded=recorded, settings=init.tokenize)
    return inputs.on(config.accelerator)


def tokenize_stage(inputs: TokenizeInputs) -> Path:
    """The ``tokenize`` stage: the embeddings (``inputs.settings.embeddings``, else the encode
    stage's file, made or reused), the tokenizer trained on them, the SID artifact written (or
    reused when its settings are unchanged); prints its quality and returns its path."""
    datamodule = inputs.datamodule
    catalog = datamodule.data.catalog
    settings = inputs.settings
    embeddings = Path(settings.embeddings) if settings.embeddings else encode_stage(datamodule, inputs.encoder, inputs.encode)
    path, sids = tokenize(inputs.tokenizer, inputs.recorded, embeddings, catalog.fingerprint(), settings, data_name=datamodule.name,
                          transitions=datamodule.data.training_pairs(1), num_items=len(catalog))
    print(f"semantic IDs: {path}")
    print(format_quality(sids.quality))
    return path
