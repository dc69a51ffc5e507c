"""What the Amazon review dumps (2014, 2018 and 2023 releases) have in common.

Every release ships, per category, a reviews file and a metadata file, one record per line,
plain or gzipped. The metadata file is read first: its records become the catalogue, in file
order; a record without an item id is a bad line, and a repeated item id keeps its first record
(the repeats are counted in ``ReadReport.duplicate_meta_lines``). Then every review is one
event ``(user, item, time in seconds)``; a review without user, item or a numeric time is a bad
line, and a review of an item without metadata follows ``missing_items``.

The releases differ in field names, in the syntax of the metadata lines (Python literals in
2014, JSON later) and in the time unit; a subclass names them (:class:`AmazonSource`).
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from genrec.data.catalog import Item, TextFieldError
from genrec.data.formats.base import (
    DataSource,
    RawData,
    ReadReport,
    expand,
    id_problem,
    iter_lines,
    time_problem,
)


class AmazonSource(DataSource):
    """Base of the Amazon readers: one metadata file, one reviews file.

    A subclass sets the class attributes naming its fields and implements :meth:`parse_meta`.

    Args:
        reviews: path of the reviews file (plain or ``.gz``; ``~`` and ``$VARS`` expanded).
        meta: path of the metadata file (plain or ``.gz``; ``~`` and ``$VARS`` expanded).
        skip_bad_lines: see :class:`~genrec.data.formats.base.DataSource`.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    item_fields: ClassVar[tuple[str, ...]] = ("asin",)
    """Fields holding the item id in reviews and metadata; the first non-empty one is used."""
    user_field: ClassVar[str] = "reviewerID"
    """Field holding the user id in reviews."""
    time_field: ClassVar[str] = "unixReviewTime"
    """Field holding the review time in reviews."""
    time_divisor: ClassVar[float] = 1.0
    """The review time divided by this is in seconds (1000 for milliseconds)."""
    meta_fields: ClassVar[dict[str, str]] = {
        "title": "title",
        "brand": "brand",
        "categories": "categories",
        "description": "description",
    }
    """:class:`~genrec.data.catalog.Item` field -> metadata field holding its raw value."""

    def __init__(
        self,
        reviews: str,
        meta: str,
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        self.reviews = reviews
        self.meta = meta

    @abstractmethod
    def parse_meta(self, line: str) -> object:
        """One metadata line as a record (a dict); raises on a malformed line."""

    def item_of(self, item_id: str, record: dict[str, Any]) -> Item:
        """The catalogue entry of one metadata record (text fields cleaned by ``Item``)."""
        raw_fields = {name: record.get(key) for name, key in self.meta_fields.items()}
        return Item.from_raw(item_id, **raw_fields)

    def read(self) -> RawData:
        meta_path, reviews_path = _existing(self.meta), _existing(self.reviews)
        report = ReadReport()
        raw = RawData(items=self._read_meta(meta_path, report), report=report)
        for number, line in iter_lines(reviews_path, report):
            record = self.parse_line(reviews_path, number, line, _json_record, report)
            if record is None:
                continue
            event = self._event(record)
            if isinstance(event, str):
                self.bad_record(reviews_path, number, event, report)
            elif self.keep_event(raw, event[1], f"{reviews_path}:{number}"):
                raw.add(*event)
        return raw

    def _read_meta(self, path: Path, report: ReadReport) -> dict[str, Item]:
        items: dict[str, Item] = {}
        for number, line in iter_lines(path, report):
            record = self.parse_line(path, number, line, self._meta_record, report)
            if record is None:
                continue
            item_id = _first_id(record, self.item_fields)
            if item_id is None:
                missing = " or ".join(self.item_fields)
                self.bad_record(path, number, f"metadata record without {missing}", report)
            elif item_id in items:
                report.duplicate_meta_lines[path.name] += 1
            elif problem := id_problem("item", item_id):
                self.bad_record(path, number, problem, report)
            else:
                try:
                    items[item_id] = self.item_of(item_id, record)
                except TextFieldError as error:
                    self.bad_record(path, number, f"item {item_id}: a text field is not text: {error}", report)
        return items

    def _meta_record(self, line: str) -> dict[str, Any]:
        return _record(self.parse_meta(line))

    def _event(self, record: dict[str, Any]) -> tuple[str, str, float] | str:
        """``(user, item, seconds)`` of a review, or what is wrong with it."""
        user = _id(record.get(self.user_field))
        item = _first_id(record, self.item_fields)
        if user is None or item is None:
            return f"review without {self.user_field} or {' or '.join(self.item_fields)}"
        problem = id_problem("user", user) or id_problem("item", item)
        if problem:
            return problem
        value = record.get(self.time_field)
        seconds = value / self.time_divisor if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        problem = time_problem(value, seconds, self.time_field)
        if problem:
            return problem
        return user, item, seconds


def _existing(path: str) -> Path:
    """The expanded ``path``; ``FileNotFoundError`` naming it when it is not a file."""
    resolved = expand(path)
    if not resolved.is_file():
        raise FileNotFoundError(f"{resolved} not found")
    return resolved


def _record(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a record ({{...}}), got {type(value).__name__}")
    return value


def _json_record(line: str) -> dict[str, Any]:
    return _record(json.loads(line))


def _id(value: object) -> str | None:
    """An id as text, or None when absent or empty (ints are accepted, other types are not)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    return text if text.strip() else None


def _first_id(record: dict[str, Any], fields: tuple[str, ...]) -> str | None:
    return next((i for i in (_id(record.get(f)) for f in fields) if i is not None), None)
