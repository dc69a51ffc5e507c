"""The reader contract: what every on-disk format reader returns, and how it reads lines.

A reader (a :class:`DataSource` subclass, one per format) turns files into :class:`RawData`:
catalogue items in the reader's native order and interaction events ``(user, item, time)``.
Everything after that (time ordering, k-core, split) is format-independent and lives in
:mod:`genrec.data.sequences`.

Bad input never disappears: a malformed line raises :class:`DataFormatError` naming the file and
line, or, with ``skip_bad_lines``, is skipped and counted in :class:`ReadReport` (with
examples); bytes that are not UTF-8 are replaced and counted in text, and make a line bad in a
user or item id (a replaced id would split a user silently); events whose item has no catalogue
entry raise an error naming the item, or with ``missing_items="drop"`` are dropped and counted.
A UTF-8 byte-order mark starting a file is ignored. Times must be numbers of seconds between
1970 and 2100 (:func:`time_problem`).
"""

from __future__ import annotations

import gzip
import html
import io
import math
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from genrec.data.catalog import Item
from genrec.errors import UserError

T = TypeVar("T")

MAX_SECONDS = 4_102_444_800.0
"""2100-01-01 UTC: a later event time is a unit error or garbage, not a time."""


class DataFormatError(UserError, ValueError):
    """A file does not have the format its reader expects; the message names file and line."""


class MissingItemError(UserError, KeyError):
    """An interaction names an item that has no catalogue entry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class ReadReport:
    """Counts of everything a reader skipped, replaced or dropped, reported with the statistics.

    Attributes:
        bad_lines: malformed lines skipped (only with ``skip_bad_lines``), per file name.
        non_utf8_lines: lines with bytes that were not UTF-8 (replaced by U+FFFD), per file name.
        missing_item_events: events dropped because their item has no catalogue entry.
        missing_item_examples: up to 5 such item ids, for the report.
        filtered_events: events a reader option filtered out, per reason (e.g. ``rating < 4``).
        duplicate_meta_lines: catalogue lines skipped because their item id was already read
            (the first entry is kept), per file name.
        html_unescaped: field values that held HTML entities (unescaped), per file name.
        absent_columns: configured columns a file does not have (their field is empty for
            every item), per file name.
        ignored_columns: columns of a file that are not read (by configuration), per file name.
        bad_line_examples: up to 5 skipped lines, ``file:line: what is wrong``.
        empty_sequences: users listed with no items at all (they have no events), per file name.
        markup_removed: catalogue text values from which HTML markup was removed.
        markup_examples: up to 5 of them, before -> after.
    """

    bad_lines: Counter[str] = field(default_factory=Counter)
    non_utf8_lines: Counter[str] = field(default_factory=Counter)
    missing_item_events: int = 0
    missing_item_examples: list[str] = field(default_factory=list)
    duplicate_meta_lines: Counter[str] = field(default_factory=Counter)
    filtered_events: Counter[str] = field(default_factory=Counter)
    html_unescaped: Counter[str] = field(default_factory=Counter)
    absent_columns: dict[str, list[str]] = field(default_factory=dict)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)

    def count_html(self, file_name: str, values: Iterable[object]) -> None:
        """Count, for ``file_name``, the text values holding HTML entities (which the catalogue
        unescapes): a value counts once however many entities it has."""
        self.html_unescaped[file_name] += sum(isinstance(v, str) and "&" in v and html.unescape(v) != v for v in values)
    bad_line_examples: list[str] = field(default_factory=list)
    empty_sequences: Counter[str] = field(default_factory=Counter)
    markup_removed: int = 0
    markup_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bad_lines": dict(self.bad_lines),
            "non_utf8_lines": dict(self.non_utf8_lines),
            "missing_item_events": self.missing_item_events,
            "missing_item_examples": list(self.missing_item_examples),
            "duplicate_meta_lines": dict(self.duplicate_meta_lines),
            "filtered_events": dict(self.filtered_events),
            "html_unescaped": dict(self.html_unescaped),
            "absent_columns": {k: list(v) for k, v in self.absent_columns.items()},
            "ignored_columns": {k: list(v) for k, v in self.ignored_columns.items()},
            "bad_line_examples": list(self.bad_line_examples),
            "empty_sequences": dict(self.empty_sequences),
            "markup_removed": self.markup_removed,
            "markup_examples": list(self.markup_examples),
        }


@dataclass
class RawData:
    """What a reader returns.

    Attributes:
        items: catalogue entries by external id, in the reader's native order (which becomes
            the dense id order of the final catalogue).
        users: external user id per event.
        item_ids: external item id per event; every one is a key of ``items``.
        timestamps: time of each event (seconds, or a position for formats without time).
        report: what was skipped or replaced while reading.
    """

    items: dict[str, Item]
    users: list[str] = field(default_factory=list)
    item_ids: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    report: ReadReport = field(default_factory=ReadReport)

    def add(self, user: str, item: str, timestamp: float) -> None:
        self.users.append(user)
        self.item_ids.append(item)
        self.timestamps.append(timestamp)

    def add_sequence(self, user: str, items: list[str]) -> None:
        """Add an already time-ordered sequence; positions serve as timestamps."""
        for position, item in enumerate(items):
            self.add(user, item, float(position))

    def __len__(self) -> int:
        return len(self.users)


def resolve_file(directory: str | os.PathLike[str], name: str) -> Path:
    """``directory/name``, or ``directory/name.gz`` when only the compressed file exists.

    Raises:
        FileNotFoundError: naming both paths tried.
    """
    base = Path(os.path.expandvars(os.path.expanduser(str(directory))))
    plain = base / name
    if plain.is_file():
        return plain
    gz = base / f"{name}.gz"
    if gz.is_file():
        return gz
    raise FileNotFoundError(f"{plain} not found (nor {gz.name})")


def expand(path: str | os.PathLike[str]) -> Path:
    """A user-given path with ``~`` and ``$VARS`` expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def read_text(path: Path, report: ReadReport) -> str:
    """The whole file (plain or ``.gz``) as text; undecodable bytes replaced and counted."""
    with _open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
        report.non_utf8_lines[path.name] += sum("\ufffd" in line for line in text.splitlines())
        return text


def iter_lines(path: Path, report: ReadReport) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every non-blank line (1-based numbers, newline stripped).

    Lines with bytes that are not UTF-8 are decoded with replacement and counted in ``report``.
    """
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                report.non_utf8_lines[path.name] += 1
            line = line.rstrip("\r\n")
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is no content
            if line.strip():
                yield number, line


def _open_binary(path: Path) -> io.BufferedIOBase:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


class DataSource(ABC):
    """Base class of the format readers.

    Args:
        skip_bad_lines: skip malformed lines (counted in the report) instead of raising
            :class:`DataFormatError` at the first one.
        missing_items: what to do with an interaction whose item has no catalogue entry:
            ``"error"`` raises naming the item, ``"drop"`` drops the event and counts it.
    """

    def __init__(self, skip_bad_lines: bool = False, missing_items: Literal["error", "drop"] = "error") -> None:
        if missing_items not in ("error", "drop"):
            raise ValueError(f"missing_items must be 'error' or 'drop', not {missing_items!r}")
        self.skip_bad_lines = skip_bad_lines
        self.missing_items = missing_items

    @abstractmethod
    def read(self) -> RawData:
        """Read the files into items and events."""

    def describe(self) -> dict[str, Any]:
        """The reader's settings, recorded next to every artifact built from its data."""
        return {"class": type(self).__qualname__, **{k: _plain(v) for k, v in vars(self).items()}}

    def parse_line(self, path: Path, number: int, line: str, parse: Callable[[str], T], report: ReadReport) -> T | None:
        """``parse(line)``, or on failure raise naming ``path:number`` (or skip and count)."""
        try:
            return parse(line)
        except Exception as error:  # noqa: BLE001 - any parse failure is a format error here
            self.bad_record(path, number, f"cannot parse line ({type(error).__name__}: {error}): {line[:120]!r}", report)
            return None

    def bad_record(self, path: Path, number: int, message: str, report: ReadReport) -> None:
        """A parsed record misses required content: raise naming ``path:number`` or count a skip
        (the first few kept as examples)."""
        if self.skip_bad_lines:
            report.bad_lines[path.name] += 1
            if len(report.bad_line_examples) < 5:
                report.bad_line_examples.append(f"{path.name}:{number}: {message}"[:200])
            return
        raise DataFormatError(f"{path}:{number}: {message}")

    def keep_event(self, raw: RawData, item: str, where: str) -> bool:
        """Whether an event on ``item`` can be kept; raises (or counts a drop) when the item has
        no catalogue entry. ``where`` names the file and line or the user, for the message."""
        if item in raw.items:
            return True
        if self.missing_items == "error":
            raise MissingItemError(
                f"{where}: item {item!r} has no catalogue entry "
                "(set missing_items: drop to drop such events and count them)"
            )
        raw.report.missing_item_events += 1
        if len(raw.report.missing_item_examples) < 5 and item not in raw.report.missing_item_examples:
            raw.report.missing_item_examples.append(item)
        return False


def time_problem(value: object, seconds: float, field_name: str) -> str | None:
    """What is wrong with an event time, or ``None``: ``value`` as read (a string, a bool or a
    mapping is not a time) and ``seconds``, its conversion, which must lie in 1970 .. 2100."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{field_name} {value!r} is not a number"
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        return f"{field_name} {value!r} is not a time between 1970 and 2100"
    return None


def id_problem(kind: str, value: str) -> str | None:
    """What is wrong with a user or item id, or ``None``: an id with bytes that were not UTF-8
    (replaced by U+FFFD) would no longer match the same id elsewhere."""
    if "\ufffd" in value:
        return f"{kind} id {value!r} has bytes that are not UTF-8"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
