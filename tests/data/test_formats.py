"""P5, LC-Rec and MovieLens readers on fixtures written here, plain and gzip."""

import gzip
import json
from pathlib import Path

import pytest

from genrec.data.formats import (
    DataFormatError,
    LCRecSource,
    MissingItemError,
    MovieLensSource,
    P5Source,
)
from genrec.data.sequences import build_sequences


def write(path: Path, text: str | bytes, compress: bool) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def p5_fixture(folder: Path, compress: bool, sequences: str = "1 1 2 3\n2 2 3 1 4\n", titles: bool = True) -> None:
    maps = {"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}, "id2user": {"1": "U1", "2": "U2"}}
    write(folder / "datamaps.json", json.dumps(maps), compress)
    write(folder / "sequential_data.txt", sequences, compress)
    if titles:
        (folder / "item_id_to_int.json").write_text(json.dumps({"A1": 0, "A2": 1, "A3": 2, "A4": 3}))
        (folder / "products_lookup.csv").write_text(",global_product_id,name\n0,1,Two &amp; Co\n1,0,One\n2,3,\n3,2,Three\n")


@pytest.mark.parametrize("compress", [False, True])
def test_p5_reads_sequences_and_joins_titles(tmp_path, compress):
    p5_fixture(tmp_path, compress)
    raw = P5Source(path=str(tmp_path)).read()
    assert list(raw.items) == ["A1", "A2", "A3", "A4"]
    assert [raw.items[a].title for a in raw.items] == ["One", "Two & Co", "Three", ""]
    assert raw.users == ["U1"] * 3 + ["U2"] * 4
    assert raw.item_ids == ["A1", "A2", "A3", "A2", "A3", "A1", "A4"]
    data = build_sequences(raw, kcore=0)
    assert data.stats.items_without_title == 1  # kept, counted
    assert data.sequence(1).tolist() == [1, 2, 0, 3]


def test_p5_bad_lines_and_missing_items(tmp_path):
    p5_fixture(tmp_path, False, sequences="1 1 2 3\nx y\n2 2 3 9 1\n")
    with pytest.raises(DataFormatError, match=r"sequential_data.txt:2"):
        P5Source(path=str(tmp_path)).read()
    with pytest.raises(MissingItemError, match=r"P5 id 9.*|sequential_data.txt:3"):
        P5Source(path=str(tmp_path), skip_bad_lines=True).read()
    raw = P5Source(path=str(tmp_path), skip_bad_lines=True, missing_items="drop").read()
    assert raw.report.bad_lines["sequential_data.txt"] == 1
    assert raw.report.missing_item_events == 1
    assert raw.item_ids[3:] == ["A2", "A3", "A1"]


def test_p5_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "datamaps.json")):
        P5Source(path=str(tmp_path)).read()


def test_p5_titles_required_when_asked(tmp_path):
    p5_fixture(tmp_path, False, titles=False)
    assert P5Source(path=str(tmp_path)).read().items["A1"].title == ""
    with pytest.raises(FileNotFoundError, match="item_id_to_int.json"):
        P5Source(path=str(tmp_path), titles=True).read()


LCREC_ITEMS = {
    "0": {"title": "AT&amp;T Phone", "description": "", "brand": "AT&amp;T", "categories": "Office, Phones"},
    "1": {"title": "", "description": "A pen.", "brand": "", "categories": "Office, Pens"},
    "2": {"title": "Stapler", "description": "Staples.", "brand": "Swingline", "categories": "Office"},
}


@pytest.mark.parametrize("compress", [False, True])
def test_lcrec_reads_items_and_sequences(tmp_path, compress):
    write(tmp_path / "Toy.item.json", json.dumps(LCREC_ITEMS, indent=4), compress)
    write(tmp_path / "Toy.inter.json", json.dumps({"0": [0, 1, 2], "1": [2, 0, 1]}, indent=4), compress)
    raw = LCRecSource(path=str(tmp_path), name="Toy").read()
    assert raw.items["0"].title == "AT&T Phone" and raw.items["0"].brand == "AT&T"
    assert raw.items["0"].categories == ("Office", "Phones")
    assert raw.items["1"].title == "" and raw.items["1"].description == "A pen."
    assert raw.users == ["0"] * 3 + ["1"] * 3 and raw.item_ids == ["0", "1", "2", "2", "0", "1"]


def test_lcrec_errors_name_file_and_line(tmp_path):
    (tmp_path / "Toy.item.json").write_text('{\n    "0": {"title": "x"},\n    "1": oops\n}')
    (tmp_path / "Toy.inter.json").write_text('{"0": [0, 1]}')
    with pytest.raises(DataFormatError, match=r"Toy.item.json:3"):
        LCRecSource(path=str(tmp_path), name="Toy").read()
    (tmp_path / "Toy.item.json").write_text(json.dumps(LCREC_ITEMS, indent=4))
    (tmp_path / "Toy.inter.json").write_text('{"0": [0, 1, 7]}')
    with pytest.raises(MissingItemError, match=r"'7'"):
        LCRecSource(path=str(tmp_path), name="Toy").read()
    raw = LCRecSource(path=str(tmp_path), name="Toy", missing_items="drop").read()
    assert raw.report.missing_item_events == 1 and raw.report.missing_item_examples == ["7"]


def test_lcrec_wrong_name_says_which_files_it_looked_for(tmp_path):
    """A new category copied from a preset keeps the old ``name:`` prefix: the error names the
    files looked for and the prefixes the folder has, not just a path."""
    (tmp_path / "Toys.item.json").write_text(json.dumps(LCREC_ITEMS))
    (tmp_path / "Toys.inter.json").write_text('{"0": [0, 1, 2]}')
    with pytest.raises(FileNotFoundError) as error:
        LCRecSource(path=str(tmp_path), name="Office").read()
    assert str(error.value) == (f"LC-Rec files of name 'Office' not found: looked for Office.item.json and Office.inter.json "
                                f"(or .gz) in {tmp_path}; the folder has the prefix(es) Toys: set the source's name: to one of them")
    with pytest.raises(FileNotFoundError, match=r"LC-Rec folder .*nowhere does not exist"):
        LCRecSource(path=str(tmp_path / "nowhere"), name="Toys").read()
    assert len(LCRecSource(path=str(tmp_path), name="Toys").read().items) == 3


def test_lcrec_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    items = json.dumps(LCREC_ITEMS, indent=4).encode().replace(b"Stapler", b"Stap\xffler")
    (tmp_path / "Toy.item.json").write_bytes(items)
    (tmp_path / "Toy.inter.json").write_text('{"0": [0, 1, 2]}')
    raw = LCRecSource(path=str(tmp_path), name="Toy").read()
    assert raw.items["2"].title == "Stap\ufffdler"
    assert raw.report.non_utf8_lines["Toy.item.json"] == 1


ML_ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n1\tToy Story\t1995\tAnimation Comedy\n2\tGoldenEye\t1995\tAction\n3\tHeat\t1995\tCrime\n"
ML_INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t2\t3\t100\n7\t1\t5\t50\n7\t3\t4\t100\n8\t1\t1\t10\n8\t2\t2\t20\n8\t3\t3\t30\n"


@pytest.mark.parametrize("compress", [False, True])
def test_movielens_atomic_files(tmp_path, compress):
    write(tmp_path / "ml-100k.item", ML_ITEM, compress)
    write(tmp_path / "ml-100k.inter", ML_INTER, compress)
    raw = MovieLensSource(path=str(tmp_path)).read()
    assert raw.items["1"].title == "Toy Story" and raw.items["1"].categories == ("Animation", "Comedy")
    data = build_sequences(raw, kcore=0)
    # user 7: item 1 at t=50, then items 2 and 3 tie at t=100 and keep file order
    assert [data.catalog[i].external_id for i in data.sequence(0).tolist()] == ["1", "2", "3"]
    filtered = MovieLensSource(path=str(tmp_path), min_rating=3).read()
    assert len(filtered) == 4 and filtered.report.filtered_events == {"rating < 3": 2}  # counted, not lost


def test_movielens_bad_row(tmp_path):
    (tmp_path / "ml-100k.item").write_text(ML_ITEM)
    (tmp_path / "ml-100k.inter").write_text(ML_INTER + "9\t1\tfive\tlater\n")
    with pytest.raises(DataFormatError, match=r"ml-100k.inter:8"):
        MovieLensSource(path=str(tmp_path)).read()
    assert MovieLensSource(path=str(tmp_path), skip_bad_lines=True).read().report.bad_lines["ml-100k.inter"] == 1


def test_movielens_recbole_copy():
    # the recbole wheel (installed --no-deps by the set-up) ships ml-100k; found without importing it
    data = build_sequences(MovieLensSource(path="recbole").read(), kcore=0)
    assert (data.stats.raw_events, data.num_users, data.num_items) == (100_000, 943, 1682)
