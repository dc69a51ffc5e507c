"""LC-Rec style files: ``<name>.inter.json`` + ``<name>.item.json`` (plain or ``.gz``).

``<name>.inter.json`` is one JSON object ``{"user": [item, ...]}`` with each user's items in time
order; ``<name>.item.json`` is ``{"item": {"title", "description", "brand", "categories"}}``
(``categories`` a comma-separated string or a list). Keys are strings of integers in the copies
we know (``../shared/datasets/amazon_office_2018_apao``); any string works.

Catalogue order is the item file's key order.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from genrec.data.catalog import Item, TextFieldError
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    RawData,
    ReadReport,
    id_problem,
    read_text,
    resolve_file,
)


class LCRecSource(DataSource):
    """Reader of LC-Rec's ``inter``/``item`` JSON pair.

    Args:
        path: the folder with the two files.
        name: the data set's file prefix, e.g. ``Office`` for ``Office.inter.json``.
        skip_bad_lines: skip item entries that are not objects (counted) instead of raising.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    def __init__(
        self,
        path: str = "../shared/datasets/amazon_office_2018_apao",
        name: str = "Office",
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        self.path = path
        self.name = name

    def read(self) -> RawData:
        report = ReadReport()
        item_path = resolve_file(self.path, f"{self.name}.item.json")
        inter_path = resolve_file(self.path, f"{self.name}.inter.json")
        items: dict[str, Item] = {}
        for key, entry in _load_object(item_path, report).items():
            if not isinstance(entry, dict):
                self.bad_record(item_path, _line_of(item_path, key), f"item {key!r} is not an object", report)
                continue
            if problem := id_problem("item", str(key)):
                self.bad_record(item_path, _line_of(item_path, key), problem, report)
                continue
            try:
                items[str(key)] = Item.from_raw(
                    key,
                    title=entry.get("title"),
                    brand=entry.get("brand"),
                    categories=entry.get("categories"),
                    description=entry.get("description"),
                )
            except TextFieldError as error:
                self.bad_record(item_path, _line_of(item_path, key), f"item {key!r}: a text field is not text: {error}", report)
        raw = RawData(items=items, report=report)
        for user, sequence in _load_object(inter_path, report).items():
            if not isinstance(sequence, list):
                self.bad_record(inter_path, _line_of(inter_path, user), f"user {user!r}: expected a list of items", report)
                continue
            if problem := id_problem("user", str(user)):
                self.bad_record(inter_path, _line_of(inter_path, user), problem, report)
                continue
            if not sequence:
                report.empty_sequences[inter_path.name] += 1
                continue
            where = f"{inter_path} (user {user})"
            raw.add_sequence(str(user), [str(i) for i in sequence if self.keep_event(raw, str(i), where)])
        return raw


def _load_object(path, report: ReadReport) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, report))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}:1: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _line_of(path, key: str) -> int:
    """Line number of ``"key":`` in a pretty-printed JSON file (for error messages)."""
    needle = f'"{key}":'
    text = read_text(path, ReadReport())
    index = text.find(needle)
    return text.count("\n", 0, index) + 1 if index >= 0 else 1
