"""The Amazon readers (2014, 2018, 2023) on tiny fixtures written in each exact format."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from genrec.data.catalog import Item
from genrec.data.formats.amazon import AmazonSource
from genrec.data.formats.amazon2014 import Amazon2014Source
from genrec.data.formats.amazon2018 import Amazon2018Source
from genrec.data.formats.amazon2023 import Amazon2023Source
from genrec.data.formats.base import DataFormatError, MissingItemError
from genrec.data.sequences import build_sequences
from tests.data.test_formats import write


@pytest.fixture(params=[False, True], ids=["plain", "gz"])
def gz(request: pytest.FixtureRequest) -> bool:
    return request.param


def write_lines(path: Path, lines: list[str | bytes], gz: bool) -> Path:
    """Write ``lines`` (str as UTF-8, bytes as they are), gzipped to ``path.gz`` when ``gz``."""
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in lines)
    return write(path, data, gz)


def at(path: Path, number: int) -> str:
    """A regex matching ``path:number`` literally."""
    return re.escape(f"{path}:{number}")


def events(raw) -> list[tuple[str, str, float]]:
    return list(zip(raw.users, raw.item_ids, raw.timestamps, strict=True))


# --- one minimal line builder per format, for the behaviours all three share ---------------


@dataclass
class Format:
    source: type[AmazonSource]
    meta: Callable[[str, str], str]  # (item id, title) -> metadata line
    review: Callable[[str, str, int], str]  # (user, item id, seconds) -> review line


FORMATS = {
    "2014": Format(
        Amazon2014Source,
        lambda asin, title: repr({"asin": asin, "title": title, "categories": [["Beauty"]]}),
        lambda user, asin, t: json.dumps(
            {"reviewerID": user, "asin": asin, "overall": 5.0, "unixReviewTime": t}
        ),
    ),
    "2018": Format(
        Amazon2018Source,
        lambda asin, title: json.dumps({"asin": asin, "title": title, "category": ["Beauty"]}),
        lambda user, asin, t: json.dumps(
            {"reviewerID": user, "asin": asin, "overall": 4.0, "unixReviewTime": t, "vote": "2"}
        ),
    ),
    "2023": Format(
        Amazon2023Source,
        lambda asin, title: json.dumps({"parent_asin": asin, "title": title, "categories": []}),
        lambda user, asin, t: json.dumps(
            {
                "user_id": user,
                "asin": asin + "-v",
                "parent_asin": asin,
                "rating": 5.0,
                "timestamp": t * 1000,
            }
        ),
    ),
}


@pytest.fixture(params=sorted(FORMATS))
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


def files(
    tmp_path: Path, fmt: Format, meta: list[str | bytes], reviews: list[str | bytes], gz: bool
):
    return write_lines(tmp_path / "meta.json", meta, gz), write_lines(
        tmp_path / "reviews.json", reviews, gz
    )


def source(fmt: Format, meta: Path, reviews: Path, **kwargs) -> AmazonSource:
    return fmt.source(reviews=str(reviews), meta=str(meta), **kwargs)


# --- 2014 ------------------------------------------------------------------------------------

META_2014 = [
    "{'asin': 'B2', 'title': 'Rose &amp; Oud  Oil', 'brand': 'Acme', "
    "'categories': [['Beauty', 'Fragrance'], ['Beauty', 'Oils']], 'description': ' Warm\\n scent ',"
    " 'price': 12.5, 'salesRank': {'Beauty': 100}, 'related': {'also_bought': ['B1']},"
    " 'imUrl': 'http://x/y.jpg'}",
    "{'asin': '0205616461', 'categories': [['Beauty', 'Skin Care', 'Face']]}",  # no title
    "{'asin': 'B1', 'title': 'Soap', 'categories': [[]]}",
]


def review_2014(user: str, asin: str, t: int) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": asin,
            "reviewerName": "N",
            "helpful": [0, 0],
            "reviewText": "ok",
            "overall": 4.0,
            "summary": "s",
            "unixReviewTime": t,
            "reviewTime": "01 1, 2014",
        }
    )


def test_2014_catalogue_and_events(tmp_path: Path, gz: bool) -> None:
    reviews = [
        review_2014("U1", "B1", 300),
        review_2014("U2", "0205616461", 100),
        review_2014("U1", "B2", 200),
    ]
    meta, rev = files(tmp_path, FORMATS["2014"], META_2014, reviews, gz)
    raw = Amazon2014Source(reviews=str(rev), meta=str(meta)).read()

    assert list(raw.items) == ["B2", "0205616461", "B1"]  # metadata file order
    assert raw.items["B2"] == Item(
        "B2", "Rose & Oud Oil", "Acme", ("Beauty", "Fragrance", "Oils"), "Warm scent"
    )
    assert raw.items["0205616461"] == Item(
        "0205616461", "", "", ("Beauty", "Skin Care", "Face"), ""
    )
    assert raw.items["B1"].categories == ()
    # readers keep file order; sorting is build_sequences' job
    assert events(raw) == [("U1", "B1", 300.0), ("U2", "0205616461", 100.0), ("U1", "B2", 200.0)]
    assert raw.report.as_dict()["bad_lines"] == {}


def test_2014_meta_is_never_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = f"{{'asin': __import__('pathlib').Path({str(marker)!r}).touch()}}"
    meta, rev = files(
        tmp_path, FORMATS["2014"], [META_2014[0], evil], [review_2014("U", "B2", 1)], False
    )
    with pytest.raises(DataFormatError, match=at(meta, 2)):
        Amazon2014Source(reviews=str(rev), meta=str(meta)).read()
    assert not marker.exists()
    getcwd = "{'asin': __import__('os').getcwd()}"
    write_lines(meta, [getcwd], False)
    with pytest.raises(DataFormatError, match=at(meta, 1)):
        Amazon2014Source(reviews=str(rev), meta=str(meta)).read()


def test_2014_malformed_literal_meta_line(tmp_path: Path, gz: bool) -> None:
    lines = [META_2014[0], "{'asin': 'B9', 'title': 'unterminated}", META_2014[2]]
    meta, rev = files(tmp_path, FORMATS["2014"], lines, [review_2014("U", "B1", 1)], gz)
    with pytest.raises(DataFormatError, match=at(meta, 2)):
        Amazon2014Source(reviews=str(rev), meta=str(meta)).read()
    raw = Amazon2014Source(reviews=str(rev), meta=str(meta), skip_bad_lines=True).read()
    assert list(raw.items) == ["B2", "B1"]
    assert raw.report.bad_lines[meta.name] == 1
    assert events(raw) == [("U", "B1", 1.0)]


def test_2014_build_sequences_orders_by_time_stably(tmp_path: Path) -> None:
    reviews = [
        review_2014("U1", "B1", 300),
        review_2014("U2", "B1", 50),
        review_2014("U1", "0205616461", 100),
        review_2014("U2", "B2", 50),  # same time as U2's first: file order kept
        review_2014("U1", "B2", 200),
        review_2014("U2", "0205616461", 10),
        review_2014("U3", "B1", 1),  # too short, dropped
    ]
    meta, rev = files(tmp_path, FORMATS["2014"], META_2014, reviews, False)
    data = build_sequences(
        Amazon2014Source(reviews=str(rev), meta=str(meta)).read(), kcore=0, min_length=3
    )

    ext = data.catalog.external_ids
    assert ext == ["B2", "0205616461", "B1"]
    assert data.user_ids == ["U1", "U2"]
    assert [ext[i] for i in data.sequence(0).tolist()] == ["0205616461", "B2", "B1"]
    assert [ext[i] for i in data.sequence(1).tolist()] == ["0205616461", "B1", "B2"]
    assert data.timestamps.tolist() == [100.0, 200.0, 300.0, 10.0, 50.0, 50.0]
    assert data.stats.short_users_dropped == 1


# --- 2018 ------------------------------------------------------------------------------------


def test_2018_catalogue_and_events(tmp_path: Path, gz: bool) -> None:
    meta_lines = [
        json.dumps(
            {
                "asin": "A1",
                "title": 'Tom &amp;amp; Jerry <span class="x">Mug</span>',
                "brand": "Acme",
                "category": ["Home", "Kitchen", "Home"],
                "description": ["Holds tea.", "  Dishwasher   safe. "],
                "feature": ["12 oz"],
                "main_cat": "Amazon Home",
            }
        ),
        json.dumps({"asin": "A2", "title": "", "brand": "", "category": [], "description": []}),
        json.dumps({"asin": "A1", "title": "Duplicate, ignored"}),
    ]
    reviews = [
        json.dumps(
            {
                "overall": 5.0,
                "verified": True,
                "reviewTime": "09 13, 2009",
                "reviewerID": "R1",
                "asin": "A2",
                "style": {"Size:": " Large"},
                "unixReviewTime": 1252800000,
                "vote": "3",
            }
        ),
        json.dumps(
            {"overall": 3.0, "reviewerID": "R2", "asin": "A1", "unixReviewTime": 1252900000}
        ),
    ]
    meta, rev = files(tmp_path, FORMATS["2018"], meta_lines, reviews, gz)
    raw = Amazon2018Source(reviews=str(rev), meta=str(meta)).read()

    assert list(raw.items) == ["A1", "A2"]
    assert raw.items["A1"] == Item(
        "A1", "Tom & Jerry Mug", "Acme", ("Home", "Kitchen"), "Holds tea. Dishwasher safe."
    )
    assert raw.items["A2"] == Item("A2")
    assert raw.report.duplicate_meta_lines == {meta.name: 1}
    assert raw.report.as_dict()["duplicate_meta_lines"] == {meta.name: 1}
    assert events(raw) == [("R1", "A2", 1252800000.0), ("R2", "A1", 1252900000.0)]


# --- 2023 ------------------------------------------------------------------------------------


def test_2023_catalogue_and_events(tmp_path: Path, gz: bool) -> None:
    meta_lines = [
        json.dumps(
            {
                "main_category": "All Beauty",
                "title": "Howard LC0008 Leather Conditioner, 8-Ounce",
                "average_rating": 4.8,
                "rating_number": 10,
                "features": [],
                "description": ["Restores leather.", "Made in USA."],
                "price": None,
                "images": [],
                "videos": [],
                "store": "Howard Products",
                "categories": ["Beauty", "Leather Care"],
                "details": {"Brand": "Ignored, store wins"},
                "parent_asin": "P1",
                "bought_together": None,
            }
        ),
        json.dumps(
            {"title": "Brush", "store": "", "details": {"Brand": "Bristle Co"}, "parent_asin": "P2"}
        ),
        json.dumps({"title": "No brand", "store": None, "details": {}, "parent_asin": "P3"}),
    ]
    reviews = [
        json.dumps(
            {
                "rating": 5.0,
                "title": "Great",
                "text": "Works",
                "images": [],
                "asin": "V1",
                "parent_asin": "P1",
                "user_id": "AGKH",
                "timestamp": 1588687728923,
                "helpful_vote": 0,
                "verified_purchase": True,
            }
        ),
        json.dumps({"rating": 4.0, "asin": "P2", "user_id": "BXYZ", "timestamp": 1588687729000}),
    ]
    meta, rev = files(tmp_path, FORMATS["2023"], meta_lines, reviews, gz)
    raw = Amazon2023Source(reviews=str(rev), meta=str(meta)).read()

    assert list(raw.items) == ["P1", "P2", "P3"]
    assert raw.items["P1"] == Item(
        "P1",
        "Howard LC0008 Leather Conditioner, 8-Ounce",
        "Howard Products",
        ("Beauty", "Leather Care"),
        "Restores leather. Made in USA.",
    )
    assert raw.items["P2"].brand == "Bristle Co"  # details["Brand"] when the store is empty
    assert raw.items["P3"].brand == ""
    # parent_asin is the item (V1 is a variant), asin the fallback; milliseconds -> seconds
    assert events(raw) == [("AGKH", "P1", 1588687728.923), ("BXYZ", "P2", 1588687729.0)]


# --- behaviours shared by the three formats ------------------------------------------------


def test_malformed_review_line(tmp_path: Path, fmt: Format, gz: bool) -> None:
    reviews = [
        fmt.review("U1", "X1", 10),
        '{"reviewerID": "U2", "asin": ',
        fmt.review("U1", "X2", 20),
    ]
    meta, rev = files(tmp_path, fmt, [fmt.meta("X1", "one"), fmt.meta("X2", "two")], reviews, gz)
    with pytest.raises(DataFormatError, match=at(rev, 2)):
        source(fmt, meta, rev).read()
    raw = source(fmt, meta, rev, skip_bad_lines=True).read()
    assert raw.report.bad_lines[rev.name] == 1
    assert events(raw) == [("U1", "X1", 10.0), ("U1", "X2", 20.0)]


@pytest.mark.parametrize("line", ["[1, 2]", '"just a string"', "{}"])
def test_review_that_is_not_a_full_record(tmp_path: Path, fmt: Format, line: str) -> None:
    meta, rev = files(
        tmp_path, fmt, [fmt.meta("X1", "one")], [fmt.review("U1", "X1", 10), line], False
    )
    with pytest.raises(DataFormatError, match=at(rev, 2)):
        source(fmt, meta, rev).read()
    raw = source(fmt, meta, rev, skip_bad_lines=True).read()
    assert raw.report.bad_lines == {rev.name: 1}
    assert len(raw) == 1


def test_review_without_numeric_time(tmp_path: Path, fmt: Format) -> None:
    record = json.loads(fmt.review("U1", "X1", 10))
    record[fmt.source.time_field] = "yesterday"
    meta, rev = files(tmp_path, fmt, [fmt.meta("X1", "one")], [json.dumps(record)], False)
    with pytest.raises(
        DataFormatError, match=at(rev, 1) + f": .*{fmt.source.time_field}.*yesterday"
    ):
        source(fmt, meta, rev).read()


def test_meta_line_without_item_id(tmp_path: Path, fmt: Format, gz: bool) -> None:
    no_id = fmt.meta("", "orphan")
    meta, rev = files(
        tmp_path, fmt, [fmt.meta("X1", "one"), no_id], [fmt.review("U1", "X1", 10)], gz
    )
    with pytest.raises(DataFormatError, match=at(meta, 2) + ": metadata record without"):
        source(fmt, meta, rev).read()
    raw = source(fmt, meta, rev, skip_bad_lines=True).read()
    assert list(raw.items) == ["X1"]
    assert raw.report.bad_lines == {meta.name: 1}


def test_review_of_item_without_metadata(tmp_path: Path, fmt: Format, gz: bool) -> None:
    reviews = [
        fmt.review("U1", "X1", 10),
        fmt.review("U1", "GHOST", 20),
        fmt.review("U2", "X1", 30),
    ]
    meta, rev = files(tmp_path, fmt, [fmt.meta("X1", "one")], reviews, gz)
    with pytest.raises(MissingItemError, match=at(rev, 2) + ": item 'GHOST'"):
        source(fmt, meta, rev).read()
    raw = source(fmt, meta, rev, missing_items="drop").read()
    assert events(raw) == [("U1", "X1", 10.0), ("U2", "X1", 30.0)]
    assert raw.report.missing_item_events == 1
    assert raw.report.missing_item_examples == ["GHOST"]


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path: Path, fmt: Format, gz: bool) -> None:
    bad = fmt.meta("X1", "Caf@ au lait").encode("utf-8").replace(b"@", b"\xe9")  # latin-1 é
    meta, rev = files(tmp_path, fmt, [bad, fmt.meta("X2", "two")], [fmt.review("U1", "X1", 10)], gz)
    raw = source(fmt, meta, rev).read()
    assert raw.items["X1"].title == "Caf\ufffd au lait"
    assert raw.items["X2"].title == "two"
    assert raw.report.non_utf8_lines == {meta.name: 1}


@pytest.mark.parametrize("which", ["meta", "reviews"])
def test_missing_file(tmp_path: Path, fmt: Format, which: str) -> None:
    meta, rev = files(tmp_path, fmt, [fmt.meta("X1", "one")], [fmt.review("U1", "X1", 10)], False)
    gone = tmp_path / "nope" / f"{which}.json.gz"
    paths = {"meta": meta, "reviews": rev, which: gone}
    with pytest.raises(FileNotFoundError, match=re.escape(str(gone))):
        source(fmt, paths["meta"], paths["reviews"]).read()


def test_paths_expand_user_and_vars(
    tmp_path: Path, fmt: Format, monkeypatch: pytest.MonkeyPatch
) -> None:
    files(tmp_path, fmt, [fmt.meta("X1", "one")], [fmt.review("U1", "X1", 10)], True)
    monkeypatch.setenv("AMZ_DIR", str(tmp_path))
    src = fmt.source(reviews="$AMZ_DIR/reviews.json.gz", meta="$AMZ_DIR/meta.json.gz")
    assert events(src.read()) == [("U1", "X1", 10.0)]
    assert src.describe() == {
        "class": fmt.source.__name__,
        "skip_bad_lines": False,
        "missing_items": "error",
        "reviews": "$AMZ_DIR/reviews.json.gz",
        "meta": "$AMZ_DIR/meta.json.gz",
    }
