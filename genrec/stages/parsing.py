"""Reading a stage's config: jsonargparse parsers that raise one-line errors, and the
instantiation of their classes with a bad setting reported in one line."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException

from genrec.data.catalog import NoItemTextError
from genrec.data.formats.base import DataFormatError, MissingItemError
from genrec.errors import ConfigError, UsageError, one_line, parse_error_line, user_error

PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}
"""Every parser raises (so the caller reports one line) and matches options exactly."""

USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
    DataFormatError, MissingItemError, NoItemTextError, MisconfigurationException,
)
"""Errors besides :class:`~genrec.errors.UserError` that the user causes and fixes."""


def parse(parser: ArgumentParser, args: Sequence[str]) -> Any:
    """``parser.parse_args(args)``; a parse error becomes a one-line :class:`UsageError`."""
    try:
        return parser.parse_args(list(args))
    except argparse.ArgumentError as error:
        raise UsageError(parse_error_line(error, parser, list(args))) from error


def read_config(parser: ArgumentParser, files: Sequence[str | Path], overrides: Sequence[str] = (),
                values: Mapping[str, Any] | None = None) -> Namespace:
    """A stage's config as the command line would read it: the YAML ``files`` in order (a later
    one wins), then the user's ``overrides`` (command-line arguments a pipeline YAML lists for
    this stage), then ``values`` (dotted keys, e.g. ``{"tokenize.accelerator": "cpu"}``: settings
    the caller computes, set on the parsed config, never passed as arguments).

    ``parser`` must have a ``--config`` option (:class:`~jsonargparse.ActionConfigFile`)."""
    config = parse(parser, [arg for file in files for arg in ("--config", str(file))] + list(overrides))
    for key, value in (values or {}).items():
        config[key] = value
    return config


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


__all__ = ["PARSER_OPTIONS", "USER_ERRORS", "instantiate", "parse", "parse_error_line", "read_config"]
