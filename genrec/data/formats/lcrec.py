"""LC-Rec style files: ``<name>.inter.json`` + ``<name>.item.json`` (plain or ``.gz``).

``<name>.inter.json`` is one JSON object ``{"user": [item, ...]}`` with each user's items in time
order; ``<name>.item.json`` is ``{"item": {"title", "description", "brand", "categories"}}``
(``categories`` a comma-separated string or a list). Keys are strings of integers in the copies
we know (``../shared/datasets/amazon_office_2018_apao``); any string works.

Catalogue order is the item file's key order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from genrec.data.catalog import Item, TextFieldError
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    RawData,
    ReadReport,
    expand,
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
        item_path, inter_path = self._files()
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

    def _files(self) -> tuple[Path, Path]:
        """``(<name>.item.json, <name>.inter.json)`` in ``path``, each plain or ``.gz``.

        Raises:
            FileNotFoundError: the folder is missing, or has no files of this ``name`` (the
                message names the files looked for and the prefixes the folder does have).
        """
        folder = expand(self.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"LC-Rec folder {folder} does not exist (source path {self.path!r})")
        try:
            return resolve_file(folder, f"{self.name}.item.json"), resolve_file(folder, f"{self.name}.inter.json")
        except FileNotFoundError:
            prefixes = sorted({f.name.split(".inter.json")[0] for f in folder.glob("*.inter.json*")})
            hint = (f"; the folder has the prefix(es) {', '.join(prefixes)}: set the source's name: to one of them"
                    if prefixes else "; the folder has no *.inter.json file")
            raise FileNotFoundError(
                f"LC-Rec files of name {self.name!r} not found: looked for {self.name}.item.json and "
                f"{self.name}.inter.json (or .gz) in {folder}{hint}"
            ) from None


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
