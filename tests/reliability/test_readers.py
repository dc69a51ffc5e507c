"""Issue 18, case 7: nothing is lost or altered silently while reading. HTML markup is removed
only where it is markup, and counted; a byte-order mark is ignored; an event time that is not a
number of seconds in 1970..2100, a user id with bytes that are not UTF-8, and a title that is not
text are bad lines (file:line, or a counted skip with examples); an LC-Rec user with no items is
counted; ``kcore -2`` and ``max_history 0`` are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from genrec.data import SequenceDataModule
from genrec.data.catalog import clean_text
from genrec.data.formats import Amazon2018Source, DataFormatError, LCRecSource
from genrec.errors import ConfigError
from tests.reliability.helpers import data_yaml, error_line

BOM = "\ufeff"


def _amazon(tmp_path: Path, titles: dict[str, object], reviews: list[dict | bytes], bom: bool = False) -> Amazon2018Source:
    """Amazon 2018 files: one metadata line per item, then ``reviews`` (dicts as JSON, bytes raw)."""
    meta = "\n".join(json.dumps({"asin": asin, "title": title}) for asin, title in titles.items()) + "\n"
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in reviews]
    (tmp_path / "meta.json").write_text((BOM if bom else "") + meta, encoding="utf-8")
    (tmp_path / "reviews.json").write_bytes((BOM.encode() if bom else b"") + b"\n".join(lines) + b"\n")
    return Amazon2018Source(reviews=str(tmp_path / "reviews.json"), meta=str(tmp_path / "meta.json"))


def _reviews(users: int = 3, items: int = 4) -> list[dict]:
    return [{"reviewerID": f"U{u}", "asin": f"A{i}", "unixReviewTime": 1_400_000_000 + 60 * (u * items + i)}
            for u in range(users) for i in range(items)]


def _items(count: int = 4) -> dict[str, object]:
    return {f"A{i}": f"Item {i}" for i in range(count)}


@pytest.mark.parametrize(("text", "cleaned"), [
    ("Size <M> shirt", "Size <M> shirt"),
    ("x<y and z>w", "x<y and z>w"),
    ("Size <S> shirt", "Size <S> shirt"),  # <s> is an element, but nothing closes it here
    ("<b>Bold</b> cream", "Bold cream"),
    ("Great<br>product", "Great product"),
    ('<a href="https://x.example">Link</a> text', "Link text"),
    ("&lt;i&gt;Escaped&lt;/i&gt; tags", "Escaped tags"),
])
def test_only_real_markup_is_removed(text, cleaned):
    assert clean_text(text) == cleaned


def test_markup_removal_is_counted_with_examples(tmp_path):
    titles = {"A0": "<b>Bold</b> cream", "A1": "Size <M> shirt", "A2": "x<y and z>w", "A3": "Plain"}
    data = SequenceDataModule(_amazon(tmp_path, titles, _reviews()), kcore=0).data
    assert data.catalog.titles == ["Bold cream", "Size <M> shirt", "x<y and z>w", "Plain"]
    read = data.stats.read
    assert read["markup_removed"] == 1 and read["markup_examples"] == ["'<b>Bold</b> cream' -> 'Bold cream'"]
    assert "text values with HTML markup removed" in data.stats.format()


def test_byte_order_mark_is_ignored(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "bom").mkdir()
    plain = SequenceDataModule(_amazon(tmp_path / "plain", _items(), _reviews()), kcore=0).data
    marked = SequenceDataModule(_amazon(tmp_path / "bom", _items(), _reviews(), bom=True), kcore=0).data
    assert marked.catalog.fingerprint() == plain.catalog.fingerprint() and len(marked.items) == len(plain.items) == 12
    assert marked.stats.read["bad_lines"] == {} and marked.stats.read["non_utf8_lines"] == {}


@pytest.mark.parametrize(("value", "problem"), [
    ("1400000000", "unixReviewTime '1400000000' is not a number"),
    (-5, "unixReviewTime -5 is not a time between 1970 and 2100"),
    (float("inf"), "unixReviewTime inf is not a time between 1970 and 2100"),
    (1e300, "unixReviewTime 1e+300 is not a time between 1970 and 2100"),
    (4_200_000_000, "unixReviewTime 4200000000 is not a time between 1970 and 2100"),  # the year 2103
])
def test_bad_timestamps_are_rejected_or_counted(tmp_path, value, problem):
    reviews = _reviews()
    reviews[4]["unixReviewTime"] = value
    source = _amazon(tmp_path, _items(), reviews)
    with pytest.raises(DataFormatError, match=re.escape(f"reviews.json:5: {problem}")):
        source.read()
    source.skip_bad_lines = True
    raw = source.read()
    assert len(raw) == 11 and raw.report.bad_lines == {"reviews.json": 1}
    assert raw.report.bad_line_examples == [f"reviews.json:5: {problem}"]


def test_non_utf8_byte_in_a_user_id_does_not_split_the_user(tmp_path):
    reviews: list[dict | bytes] = list(_reviews())
    reviews[1] = b'{"reviewerID": "U0\xff", "asin": "A1", "unixReviewTime": 1400000060}'
    source = _amazon(tmp_path, _items(), reviews)
    with pytest.raises(DataFormatError, match=re.escape("reviews.json:2: user id 'U0\ufffd' has bytes that are not UTF-8")):
        source.read()
    source.skip_bad_lines = True
    raw = source.read()
    assert set(raw.users) == {"U0", "U1", "U2"}  # no phantom user
    assert raw.report.bad_lines == {"reviews.json": 1} and raw.report.non_utf8_lines == {"reviews.json": 1}


def test_dict_valued_title_is_a_format_error_or_counted(tmp_path):
    titles = {**_items(), "A2": {"nested": "dict"}}
    source = _amazon(tmp_path, titles, _reviews())
    with pytest.raises(DataFormatError, match=r"meta.json:3: item A2: a text field is not text: expected text, got a dict"):
        source.read()
    source.skip_bad_lines, source.missing_items = True, "drop"
    raw = source.read()
    assert "A2" not in raw.items and raw.report.bad_lines == {"meta.json": 1}
    assert raw.report.missing_item_events == 3 and raw.report.missing_item_examples == ["A2"]  # its reviews, counted
    assert not any("nested" in item.title for item in raw.items.values())


def test_lcrec_user_with_no_items_is_counted(tmp_path):
    items = {str(i): {"title": f"Item {i}"} for i in range(4)}
    (tmp_path / "X.item.json").write_text(json.dumps(items))
    (tmp_path / "X.inter.json").write_text(json.dumps({"1": ["0", "1", "2", "3"], "2": [], "3": ["3", "2", "1"]}))
    data = SequenceDataModule(LCRecSource(path=str(tmp_path), name="X"), kcore=0).data
    assert data.stats.read["empty_sequences"] == {"X.inter.json": 1} and data.stats.users == 2
    assert "users listed without items (no events)" in data.stats.format()


def test_lcrec_dict_valued_title_names_the_item(tmp_path):
    (tmp_path / "X.item.json").write_text(json.dumps({"0": {"title": "ok"}, "1": {"title": {"nested": "dict"}}}, indent=1))
    (tmp_path / "X.inter.json").write_text(json.dumps({"1": ["0", "1", "0"]}))
    with pytest.raises(DataFormatError, match=r"X.item.json:\d+: item '1': a text field is not text"):
        LCRecSource(path=str(tmp_path), name="X").read()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("kcore", "-2", "SequenceDataModule: kcore must be >= 0, got -2"),
    ("max_history", "0", "SequenceDataModule: max_history must be >= 1, got 0"),
])
def test_kcore_and_max_history_out_of_range_are_refused(tmp_path, capsys, flag, value, message):
    code, line = error_line(["data", "--config", data_yaml(tmp_path), f"--data.init_args.{flag}", value], capsys)
    assert (code, line) == (1, f"error: {message}")
    with pytest.raises(ConfigError, match=message):
        SequenceDataModule(Amazon2018Source(reviews="r", meta="m"), **{flag: int(value)})
