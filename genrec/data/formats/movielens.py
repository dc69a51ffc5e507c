"""MovieLens-100K as RecBole atomic files: ``ml-100k.inter`` and ``ml-100k.item`` (parsed by
:func:`genrec.data.formats.recbole.read_atomic`; :class:`~genrec.data.formats.recbole.RecBoleSource`
reads any other RecBole data set).

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
    resolve_file,
    time_problem,
)
from genrec.data.formats.recbole import AtomicRows, read_atomic


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

        table = read_atomic(self, item_path, report, wanted={"item_id", "movie_title", "release_year", "class"})
        _require(table, ("item_id",))
        items: dict[str, Item] = {}
        for _, values in table.rows:
            row = dict(zip((c.name for c in table.columns), values, strict=True))
            year = row.get("release_year") or ""
            items[str(row["item_id"])] = Item.from_raw(
                row["item_id"],
                title=row.get("movie_title"),
                categories=row.get("class") or [],
                description=f"Released {year}." if year else "",
            )

        raw = RawData(items=items, report=report)
        table = read_atomic(self, inter_path, report, wanted={"user_id", "item_id", "timestamp", "rating"})
        _require(table, ("user_id", "item_id", "timestamp"))
        for number, values in table.rows:
            row = dict(zip((c.name for c in table.columns), values, strict=True))
            user, item, timestamp, rating = (row.get(k) for k in ("user_id", "item_id", "timestamp", "rating"))
            if timestamp is None:
                self.bad_record(inter_path, number, "empty timestamp", report)
                continue
            problem = time_problem(timestamp, float(timestamp), "timestamp") or id_problem("user", str(user)) or id_problem("item", str(item))
            if problem:
                self.bad_record(inter_path, number, problem, report)
                continue
            if self.min_rating and not (rating is not None and rating >= self.min_rating):
                report.filtered_events[f"rating < {self.min_rating:g}"] += 1
                continue
            if self.keep_event(raw, str(item), f"{inter_path}:{number}"):
                raw.add(str(user), str(item), float(timestamp))  # type: ignore[arg-type]
        return raw


def _require(table: AtomicRows, required: tuple[str, ...]) -> None:
    """A :class:`DataFormatError` naming ``file:1`` when a required column is missing."""
    missing = [r for r in required if table.index(r) is None]
    if missing:
        raise DataFormatError(f"{table.path}:1: header lacks {missing} (got {[f'{c.name}:{c.type}' for c in table.columns]})")


__all__ = ["MovieLensSource", "recbole_ml100k_dir"]
