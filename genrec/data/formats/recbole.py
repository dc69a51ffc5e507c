"""RecBole atomic files: ``<name>.item`` (item features) and ``<name>.inter`` (interactions).

An atomic file is tab-separated text with csv quoting (a quoted field may hold tabs, newlines
and ``""`` for a quote). Its first line names every column as ``name:type``; the types are
RecBole's ``token`` (text), ``token_seq`` (a list of tokens), ``float`` and ``float_seq`` (a list
of numbers). An empty ``float`` is missing. A ``token_seq`` is space-separated in RecBole's own
files; the Amazon files here write it as comma-separated quoted strings, Python style
(``'Beauty', 'Makeup', ""Women's""`` before csv unquoting): a value that starts with a quote (or
``[``) is read as such a list, by a quote-aware splitter (never ``eval``), any other value is split
on ``seq_separator`` (so is a value that starts with a quote but is no such list, e.g.
ml-100k's title ``'Til There Was You``).

Items: the column ``item_field`` (``item_id``) is the external id; catalogue fields (title,
brand, categories, description, price) come from the columns ``fields`` maps them to (a mapped
column the file lacks leaves the field empty and is reported, never an error); every other column
is kept as an extra template field (``{sales_rank}``) or not read, as ``extra_columns`` says.
Interactions: the columns ``user_field``, ``item_field`` and ``time_field`` of ``<name>.inter``,
found by name in any order (other columns are not read); without a time column the file order
is the time order.

Catalogue order is the ``.item`` file's row order (or, without a ``.item`` file, the order in
which items first appear in ``.inter``; such items have no text).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genrec.data.catalog import FIELDS, Item
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    RawData,
    ReadReport,
    read_text,
    resolve_file,
)

log = logging.getLogger(__name__)

COLUMN_TYPES = ("token", "token_seq", "float", "float_seq")
"""RecBole's atomic column types."""

CATALOG_FIELDS = ("title", "brand", "categories", "description", "price")
"""The item fields a column can be mapped to (``fields``)."""

DEFAULT_FIELDS: dict[str, str] = {name: name for name in CATALOG_FIELDS}
"""Each catalogue field read from the column of the same name."""

Value = str | list[str] | float | list[float] | None
ExtraColumns = Literal["all", "none"] | list[str]


@dataclass(frozen=True)
class Column:
    """One ``name:type`` column of an atomic file's header."""

    name: str
    type: str


def parse_header(path: Path, row: list[str]) -> list[Column]:
    """The columns of a header row; a cell that is not ``name:type`` with a RecBole type is a
    :class:`DataFormatError` naming ``path:1``."""
    columns = []
    for cell in row:
        name, sep, kind = cell.strip().rpartition(":")
        if not sep or not name:
            raise DataFormatError(f"{path}:1: header cell {cell!r} is not name:type (RecBole atomic header)")
        if kind not in COLUMN_TYPES:
            raise DataFormatError(f"{path}:1: column {name!r} has type {kind!r}; RecBole types are {', '.join(COLUMN_TYPES)}")
        columns.append(Column(name, kind))
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataFormatError(f"{path}:1: column names repeated in the header: {repeated}")
    return columns


def split_quoted(value: str) -> list[str]:
    """The strings of a comma-separated list of quoted strings, Python style:
    ``'a', "b's", 'c, d'`` -> ``["a", "b's", "c, d"]`` (optionally inside ``[...]``).

    Backslash escapes ``\\\\``, ``\\'``, ``\\"``, ``\\n``, ``\\t`` are decoded; any other backslash
    is kept as written. Raises ``ValueError`` (naming the position) on anything else.
    """
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            if out and text.rstrip().endswith(","):
                raise ValueError(f"trailing comma in {value!r}")
            return out
        quote = text[i]
        if quote not in "'\"":
            raise ValueError(f"expected a quoted string at position {i} of {value!r}")
        i += 1
        chars = []
        while True:
            if i >= n:
                raise ValueError(f"unterminated string in {value!r}")
            c = text[i]
            if c == "\\" and i + 1 < n:
                chars.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
                i += 2
                continue
            i += 1
            if c == quote:
                break
            chars.append(c)
        out.append("".join(chars))
        while i < n and text[i].isspace():
            i += 1
        if i < n:
            if text[i] != ",":
                raise ValueError(f"expected ',' at position {i} of {value!r}")
            i += 1


_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


def parse_value(kind: str, text: str, seq_separator: str = " ") -> Value:
    """One cell as its column type says: ``token`` -> str, ``token_seq`` -> list of str (a
    quoted list when the value is one, else split on ``seq_separator``), ``float`` -> float
    (empty -> ``None``), ``float_seq`` -> list of float. ``ValueError`` when a number does not
    parse or is not finite."""
    if kind == "token":
        return text
    if kind == "token_seq":
        stripped = text.strip()
        if stripped[:1] in ("'", '"', "["):
            try:
                return split_quoted(stripped)
            except ValueError:
                pass  # not a quoted list (ml-100k's title "'Til There Was You"): RecBole's own form
        return [t for t in (stripped.split(seq_separator) if seq_separator.strip() else stripped.split()) if t]
    if kind == "float":
        return _float(text) if text.strip() else None
    if kind == "float_seq":
        parts = text.split(seq_separator) if seq_separator.strip() else text.split()
        return [_float(t) for t in parts if t.strip()]
    raise ValueError(f"unknown column type {kind!r}")


def _float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


@dataclass
class AtomicRows:
    """The rows of an atomic file, typed.

    Attributes:
        path: the file.
        columns: the header's columns, in file order.
        rows: ``(line number, values)`` per record; values in column order, ``None`` for
            columns that were not asked for (and for empty floats).
    """

    path: Path
    columns: list[Column]
    rows: list[tuple[int, list[Value]]]

    def index(self, name: str) -> int | None:
        """Position of the column ``name``, or ``None`` when the file has none."""
        return next((i for i, c in enumerate(self.columns) if c.name == name), None)


def read_atomic(
    source: DataSource,
    path: Path,
    report: ReadReport,
    wanted: set[str] | None = None,
    seq_separator: str = " ",
) -> AtomicRows:
    """Read an atomic file (plain or ``.gz``), converting the ``wanted`` columns (all when
    ``None``); the others are kept as ``None``.

    A record with another number of fields than the header, or a value that does not parse,
    raises :class:`DataFormatError` naming ``path:line`` (with ``source.skip_bad_lines``: skipped
    and counted in ``report.bad_lines``). The line is the record's first line.
    """
    reader = csv.reader(io.StringIO(read_text(path, report), newline=""), delimiter="\t")
    header = next(reader, None)
    if not header:
        raise DataFormatError(f"{path}:1: empty file (expected a name:type header)")
    columns = parse_header(path, header)
    convert = [wanted is None or c.name in wanted for c in columns]
    rows: list[tuple[int, list[Value]]] = []
    last = reader.line_num
    for number, record in _records(reader, path, source, report):
        first, last = last + 1, number
        if not record or record == [""]:
            continue  # a blank line
        if len(record) != len(columns):
            names = ", ".join(c.name for c in columns)
            text = "\t".join(record)
            source.bad_record(path, first, f"expected {len(columns)} tab-separated fields ({names}), got {len(record)}: {text[:120]!r}", report)
            continue
        values: list[Value] = []
        for column, cell, keep in zip(columns, record, convert, strict=True):
            try:
                values.append(parse_value(column.type, cell, seq_separator) if keep else None)
            except ValueError as error:
                source.bad_record(path, first, f"column {column.name!r} ({column.type}): {error}", report)
                break
        else:
            rows.append((first, values))
    return AtomicRows(path, columns, rows)


def _records(reader: Iterator[list[str]], path: Path, source: DataSource, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """``(last line number, record)`` of every csv record; a record csv cannot read (e.g. a
    field over csv's size limit) is a format error naming the line, or a counted skip."""
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            line = reader.line_num  # type: ignore[attr-defined]
            if not source.skip_bad_lines:
                raise DataFormatError(f"{path}:{line}: {error}") from error
            report.bad_lines[path.name] += 1
            continue
        yield reader.line_num, record  # type: ignore[attr-defined]


def read_items(
    source: DataSource,
    path: Path,
    report: ReadReport,
    fields: Mapping[str, str | None],
    extra_columns: ExtraColumns = "all",
    item_field: str = "item_id",
    seq_separator: str = " ",
) -> dict[str, Item]:
    """The items of a ``.item`` atomic file, by external id in file order.

    Args:
        source: the reader (for ``skip_bad_lines``).
        path: the file.
        report: where absent / ignored columns, HTML entities, duplicates and bad lines go.
        fields: catalogue field -> column (``None``: the field is not read from this file).
        extra_columns: ``"all"`` keeps every other column as an extra field, ``"none"`` none,
            a list those columns (a listed column the file lacks is reported as absent).
        item_field: the column of the external item id.
        seq_separator: separator of unquoted ``token_seq`` / ``float_seq`` values.
    """
    mapped = {f: c for f, c in fields.items() if c}
    wanted = None if extra_columns == "all" else {item_field, *mapped.values(), *([] if extra_columns == "none" else extra_columns)}
    rows = read_atomic(source, path, report, wanted=wanted, seq_separator=seq_separator)
    names = [c.name for c in rows.columns]
    id_index = rows.index(item_field)
    if id_index is None:
        raise DataFormatError(f"{path}:1: no item id column {item_field!r} (columns: {', '.join(names)})")
    present = {f: rows.index(c) for f, c in mapped.items() if c in names}
    wanted_extra = [c for c in names if c != item_field and c not in mapped.values()] if extra_columns == "all" else (
        [] if extra_columns == "none" else list(extra_columns))
    clashing = [c for c in wanted_extra if c in FIELDS]  # e.g. a `title` column while title is mapped elsewhere
    extra = {c: rows.index(c) for c in wanted_extra if c in names and c not in clashing}
    absent = [c for f, c in mapped.items() if f not in present] + [c for c in wanted_extra if c not in names]
    ignored = [c for c in names if c != item_field and c not in mapped.values() and c not in extra]
    if absent:
        report.absent_columns[path.name] = absent
        log.info("%s has no column %s: those fields are empty for every item", path, ", ".join(absent))
    if ignored:
        report.ignored_columns[path.name] = ignored

    items: dict[str, Item] = {}
    for number, values in rows.rows:
        external = str(values[id_index] or "").strip()
        if not external:
            source.bad_record(path, number, f"empty item id (column {item_field!r})", report)
            continue
        if external in items:
            report.duplicate_meta_lines[path.name] += 1
            continue
        raw = {f: values[i] for f, i in present.items()}
        kept = {c: values[i] for c, i in extra.items()}
        report.count_html(path.name, [_as_text(v) for v in (*raw.values(), *kept.values())])
        items[external] = Item.from_raw(external, **raw, extra=kept)
    return items


def _as_text(value: Value) -> str | None:
    """A token or token list as one string (for entity counting); numbers as ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\x1f".join(value)  # type: ignore[arg-type]
    return None


def merge_fields(fields: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """:data:`DEFAULT_FIELDS` updated with ``fields``; an unknown catalogue field is a
    ``ValueError`` naming it."""
    unknown = sorted(set(fields or {}) - set(CATALOG_FIELDS))
    if unknown:
        raise ValueError(f"fields: {unknown} are not catalogue fields ({', '.join(CATALOG_FIELDS)})")
    return {**DEFAULT_FIELDS, **(fields or {})}


class RecBoleSource(DataSource):
    """Reader of a RecBole atomic data set: ``<name>.item`` + ``<name>.inter`` in ``path``.

    Args:
        path: the folder with the files (``.gz`` variants are found too).
        name: the file prefix (RecBole's dataset name), e.g. ``ml-100k``.
        fields: catalogue field -> column, over the defaults (each field from the column of
            its name); ``null`` leaves a field empty.
        extra_columns: other ``.item`` columns to keep as template fields: ``all``, ``none``
            or a list.
        item_field: the item id column (both files).
        user_field: the user id column of ``.inter``.
        time_field: the timestamp column of ``.inter`` (absent: file order is time order).
        seq_separator: separator of unquoted ``token_seq`` / ``float_seq`` values.
        skip_bad_lines: see :class:`DataSource`.
        missing_items: see :class:`DataSource`.
    """

    def __init__(
        self,
        path: str,
        name: str,
        fields: dict[str, str | None] | None = None,
        extra_columns: ExtraColumns = "all",
        item_field: str = "item_id",
        user_field: str = "user_id",
        time_field: str = "timestamp",
        seq_separator: str = " ",
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        merge_fields(fields)  # reject unknown fields at construction
        _check_extra(extra_columns)
        self.path = path
        self.name = name
        self.fields = fields
        self.extra_columns = extra_columns
        self.item_field = item_field
        self.user_field = user_field
        self.time_field = time_field
        self.seq_separator = seq_separator

    def read(self) -> RawData:
        report = ReadReport()
        inter_path = resolve_file(self.path, f"{self.name}.inter")
        try:
            item_path: Path | None = resolve_file(self.path, f"{self.name}.item")
        except FileNotFoundError:
            item_path = None
        items = {}
        if item_path is not None:
            items = read_items(self, item_path, report, merge_fields(self.fields), self.extra_columns, self.item_field, self.seq_separator)
        raw = RawData(items=items, report=report)

        rows = read_atomic(self, inter_path, report, wanted={self.user_field, self.item_field, self.time_field}, seq_separator=self.seq_separator)
        user_i, item_i, time_i = (rows.index(f) for f in (self.user_field, self.item_field, self.time_field))
        if user_i is None or item_i is None:
            missing = [f for f, i in ((self.user_field, user_i), (self.item_field, item_i)) if i is None]
            raise DataFormatError(f"{inter_path}:1: no column {' or '.join(map(repr, missing))} (columns: {', '.join(c.name for c in rows.columns)})")
        ignored = [c.name for c in rows.columns if c.name not in (self.user_field, self.item_field, self.time_field)]
        if ignored:
            report.ignored_columns[inter_path.name] = ignored
        if time_i is None:
            log.info("%s has no %r column: each user's events are in file order", inter_path, self.time_field)
        if item_path is None:
            log.warning("%s not found: items come from %s, without text", Path(self.path) / f"{self.name}.item", inter_path.name)
        for position, (number, values) in enumerate(rows.rows):
            user, item = str(values[user_i]).strip(), str(values[item_i]).strip()
            time = float(position) if time_i is None else values[time_i]
            if not user or not item or time is None:
                self.bad_record(inter_path, number, f"empty {self.user_field}, {self.item_field} or {self.time_field}", report)
                continue
            if item_path is None:
                raw.items.setdefault(item, Item(external_id=item))
            if self.keep_event(raw, item, f"{inter_path}:{number}"):
                raw.add(user, item, float(time))  # type: ignore[arg-type]
        return raw


def _check_extra(extra_columns: ExtraColumns) -> None:
    if isinstance(extra_columns, str) and extra_columns not in ("all", "none"):
        raise ValueError(f"extra_columns must be 'all', 'none' or a list of columns, not {extra_columns!r}")
