"""MovieLens-100K as RecBole atomic files: ``ml-100k.inter`` and ``ml-100k.item``.

Tab-separated with typed headers: ``user_id:token  item_id:token  rating:float
timestamp:float`` and ``item_id:token  movie_title:token_seq  release_year:token
class:token_seq``. The ``recbole`` wheel (installed ``--no-deps``) ships a copy in
``recbole/dataset_example/ml-100k/``; with ``path: recbole`` the reader finds it without
importing recbole.

About half of the rows share a (user, timestamp) with another row; they keep file order (the
stable sort in :func:`genrec.data.sequences.build_sequences`). Genres become the categories,
the release year goes into the description.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from genrec.data.catalog import Item
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    RawData,
    ReadReport,
    expand,
    id_problem,
    iter_lines,
    resolve_file,
    time_problem,
)


def recbole_ml100k_dir() -> Path:
    """The ml-100k folder inside the installed ``recbole`` package (without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "recbole/dataset_example/ml-100k not found: install the recbole wheel with "
            "`pip install --no-deps recbole` or set the source's path to an ml-100k folder"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"


class MovieLensSource(DataSource):
    """Reader of RecBole atomic files for MovieLens.

    Args:
        path: folder with the ``.inter``/``.item`` files, or ``recbole`` for the copy in the
            installed recbole package.
        name: file prefix (``ml-100k``).
        min_rating: keep interactions rated at least this (0 keeps all, the usual choice).
        skip_bad_lines: see :class:`~genrec.data.formats.base.DataSource`.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    def __init__(
        self,
        path: str = "recbole",
        name: str = "ml-100k",
        min_rating: float = 0.0,
        skip_bad_lines: bool = False,
        missing_items: Literal["error", "drop"] = "error",
    ) -> None:
        super().__init__(skip_bad_lines, missing_items)
        self.path = path
        self.name = name
        self.min_rating = min_rating

    def folder(self) -> Path:
        return recbole_ml100k_dir() if self.path == "recbole" else expand(self.path)

    def read(self) -> RawData:
        report = ReadReport()
        folder = self.folder()
        item_path = resolve_file(folder, f"{self.name}.item")
        inter_path = resolve_file(folder, f"{self.name}.inter")

        items: dict[str, Item] = {}
        columns = None
        for number, line in iter_lines(item_path, report):
            fields = line.split("\t")
            if columns is None:
                columns = _header(item_path, fields, required=("item_id",))
                continue
            if len(fields) != len(columns):
                self.bad_record(item_path, number, f"expected {len(columns)} tab-separated fields, got {len(fields)}", report)
                continue
            row = dict(zip(columns, fields, strict=True))
            year = row.get("release_year", "")
            items[row["item_id"]] = Item.from_raw(
                row["item_id"],
                title=row.get("movie_title"),
                categories=row.get("class", "").split(),
                description=f"Released {year}." if year else "",
            )

        raw = RawData(items=items, report=report)
        columns = None
        for number, line in iter_lines(inter_path, report):
            fields = line.split("\t")
            if columns is None:
                columns = _header(inter_path, fields, required=("user_id", "item_id", "timestamp"))
                continue
            try:
                row = dict(zip(columns, fields, strict=True))
                timestamp = float(row["timestamp"])
                rating = float(row.get("rating", "nan"))
            except ValueError as error:
                self.bad_record(inter_path, number, f"bad row ({error})", report)
                continue
            problem = time_problem(timestamp, timestamp, "timestamp") or id_problem("user", row["user_id"]) or id_problem("item", row["item_id"])
            if problem:
                self.bad_record(inter_path, number, problem, report)
                continue
            if self.min_rating and not rating >= self.min_rating:
                report.filtered_events[f"rating < {self.min_rating:g}"] += 1
                continue
            if self.keep_event(raw, row["item_id"], f"{inter_path}:{number}"):
                raw.add(row["user_id"], row["item_id"], timestamp)
        return raw


def _header(path: Path, fields: list[str], required: tuple[str, ...]) -> list[str]:
    """Column names of a typed RecBole header (``name:type``)."""
    names = [f.split(":", 1)[0] for f in fields]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataFormatError(f"{path}:1: header lacks {missing} (got {fields})")
    return names


__all__ = ["MovieLensSource", "recbole_ml100k_dir"]
