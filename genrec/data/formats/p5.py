"""P5 preprocessed Amazon data: ``sequential_data.txt`` + ``datamaps.json`` (+ optional titles).

``sequential_data.txt`` has one line per user, ``user_id item_id item_id ...`` in P5's integer
ids (strings "1".."N"), already in time order. ``datamaps.json`` maps them to ASINs
(``id2item``) and users (``id2user``). P5 ships no item text; titles are joined, when the two
files are present, through ``item_id_to_int.json`` (ASIN -> int) and ``products_lookup.csv``
(``,global_product_id,name``), as in ``../shared/datasets/amazon_beauty_p5``.

Further item metadata (brand, categories, price, sales rank, ...) is joined from a RecBole
``.item`` file in the same folder (``metadata``), by ASIN (its ``item_id`` column) through
``datamaps.json``'s ``id2item``; the file is read by :mod:`genrec.data.formats.recbole`. An item of
the sequences that the ``.item`` file lacks is an error naming it, or with ``missing_items: drop``
its events are dropped and counted. Titles come from the lookup files when they exist (``titles:
auto``), else from the ``.item`` file's title column (``titles: metadata`` forces that).

Catalogue order is P5's item id order (item "1" gets dense id 0).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Literal

from genrec.data.catalog import Item, clean_text
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    RawData,
    ReadReport,
    iter_lines,
    read_text,
    resolve_file,
)
from genrec.data.formats.recbole import ExtraColumns, merge_fields, read_items


class P5Source(DataSource):
    """Reader of the P5 files.

    Args:
        path: the folder with the files (``.gz`` variants are found too).
        sequences: name of the sequence file.
        datamaps: name of the id-map file.
        titles: where titles come from: ``True`` the lookup files ``item_id_to_int.json`` +
            ``products_lookup.csv`` (required), ``"metadata"`` the ``metadata`` file's title
            column, ``"auto"`` the lookup files when both exist, else the metadata file (when
            given), ``False`` nowhere.
        metadata: a RecBole ``.item`` file in ``path`` (``.gz`` found too) whose fields are
            joined by ASIN; ``None``: no metadata.
        metadata_fields: catalogue field -> ``.item`` column, over the defaults (see
            :class:`~genrec.data.formats.recbole.RecBoleSource`).
        extra_columns: other ``.item`` columns kept as template fields: ``all``, ``none``, a list.
        skip_bad_lines: see :class:`DataSource`.
        missing_items: see :class:`DataSource`.
    """

    def __init__(
        self,
        path: str = "../shared/datasets/amazon_beauty_p5",
        sequences: str = "sequential_data.txt",
        datamaps: str = "datamaps.json",
        titles: bool | Literal["auto", "metadata"] = "auto",
        metadata: str | None = None,
        metadata_fields: dict[str, str | None] | None = None,
        extra_columns: ExtraColumns = "all",
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        if titles == "metadata" and not metadata:
            raise ValueError("titles: metadata needs a metadata file (metadata: <name>.item)")
        merge_fields(metadata_fields)  # reject unknown fields at construction
        self.path = path
        self.sequences = sequences
        self.datamaps = datamaps
        self.titles = titles
        self.metadata = metadata
        self.metadata_fields = metadata_fields
        self.extra_columns = extra_columns

    def read(self) -> RawData:
        report = ReadReport()
        maps_path = resolve_file(self.path, self.datamaps)
        try:
            maps = json.loads(read_text(maps_path, report))
            id2item: dict[str, str] = maps["id2item"]
            id2user: dict[str, str] = maps.get("id2user", {})
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataFormatError(f"{maps_path}: not a P5 datamaps file ({type(error).__name__}: {error})") from error

        titles = {} if self.titles == "metadata" else self._titles(report)
        if self.metadata:
            items = self._metadata_items(id2item, titles, report)
        else:
            items = {}
            for pid in sorted(id2item, key=_int_key):
                asin = id2item[pid]
                items[asin] = Item.from_raw(asin, title=titles.get(asin))
        raw = RawData(items=items, report=report)

        seq_path = resolve_file(self.path, self.sequences)
        for number, line in iter_lines(seq_path, report):
            parts = self.parse_line(seq_path, number, line, _split_sequence, report)
            if parts is None:
                continue
            user, pids = parts
            where = f"{seq_path}:{number}"
            asins = [id2item.get(pid, f"P5 id {pid}") for pid in pids]
            raw.add_sequence(id2user.get(user, user), [a for a in asins if self.keep_event(raw, a, where)])
        return raw

    def _metadata_items(self, id2item: dict[str, str], titles: dict[str, str], report: ReadReport) -> dict[str, Item]:
        """The ``.item`` file's items by ASIN, in P5 id order (rows for ASINs outside ``id2item``
        follow, and are dropped as items without events); lookup ``titles``, when there are any,
        replace the file's titles."""
        item_path = resolve_file(self.path, self.metadata or "")
        fields = merge_fields(self.metadata_fields)
        if titles or self.titles is False:
            fields["title"] = None  # titles from the lookup files, or none
        by_asin = read_items(self, item_path, report, fields, self.extra_columns)
        items = {}
        for pid in sorted(id2item, key=_int_key):
            asin = id2item[pid]
            if asin in by_asin:
                item = by_asin.pop(asin)
                items[asin] = dataclasses.replace(item, title=clean_text(titles[asin])) if titles and asin in titles else item
        items.update(by_asin)
        return items

    def _titles(self, report: ReadReport) -> dict[str, str]:
        """ASIN -> title, or {} when titles are off or (with "auto") the files are absent."""
        if self.titles is False:
            return {}
        try:
            id_path = resolve_file(self.path, "item_id_to_int.json")
            lookup_path = resolve_file(self.path, "products_lookup.csv")
        except FileNotFoundError:
            if self.titles == "auto":
                return {}
            raise
        asin_to_int: dict[str, int] = json.loads(read_text(id_path, report))
        name_of: dict[int, str] = {}
        reader = csv.reader(io.StringIO(read_text(lookup_path, report)))
        header = next(reader, None)
        if not header or "global_product_id" not in header or "name" not in header:
            raise DataFormatError(f"{lookup_path}:1: expected a header with global_product_id and name, got {header}")
        gid, name = header.index("global_product_id"), header.index("name")
        for number, row in enumerate(reader, start=2):
            try:
                name_of[int(row[gid])] = row[name]
            except (ValueError, IndexError) as error:
                self.bad_record(lookup_path, number, f"bad row {row!r} ({error})", report)
        report.count_html(lookup_path.name, name_of.values())
        return {asin: name_of.get(i, "") for asin, i in asin_to_int.items()}


def _split_sequence(line: str) -> tuple[str, list[str]]:
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected a user id followed by at least one item id")
    for part in parts:
        int(part)  # P5 ids are integers; anything else is a format error
    return parts[0], parts[1:]


def _int_key(value: str) -> tuple[int, str]:
    try:
        return int(value), value
    except ValueError:
        return 1 << 62, value

