"""RecBole atomic files (.item / .inter), the P5 + .item join, and catalogues without text, on
fixtures written here."""

import gzip
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from genrec.cli import main
from genrec.data.catalog import Item, ItemCatalog, NoItemTextError, format_number
from genrec.data.formats import DataFormatError, MissingItemError, P5Source, RecBoleSource
from genrec.data.formats.recbole import parse_value, split_quoted
from genrec.data.sequences import build_sequences

ITEM_HEADER = "item_id:token\ttitle:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token\tscores:float_seq\ttags:token_seq\n"
ITEMS = (
    ITEM_HEADER
    # plain values; Amazon-style quoted token_seq with a comma inside a name
    + "I1\tXtreme Gel 1oz.\t52254.0\t'Beauty', 'Hair Care', 'Creams, Gels & Lotions'\t19.99\tXtreme\t0.5 1.25\tred blue\n"
    # csv quoting: doubled quotes around a name with an apostrophe; a tab and a newline inside quoted fields
    + 'I2\t"Prada\tCandy\nSpray"\t\t"\'Beauty\', ""Women\'s"", \'Eau de Parfum\'"\t5.0\tL&#39;Oreal &amp; Co\t\t\n'
    # empty floats and sequences
    + "I3\t\t\t\t\t\t\t\n"
)
INTER = "user_id:token\trating:float\titem_id:token\ttimestamp:float\nU1\t5\tI2\t300\nU1\t4\tI1\t100\nU1\t1\tI3\t200\nU2\t3\tI3\t50\nU2\t5\tI1\t60\nU2\t5\tI2\t70\n"


def write(path: Path, text: str, compress: bool = False) -> Path:
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def recbole_fixture(folder: Path, items: str = ITEMS, inter: str = INTER, compress: bool = False) -> None:
    write(folder / "toy.item", items, compress)
    write(folder / "toy.inter", inter, compress)


# ---- values ---------------------------------------------------------------------------------------


def test_split_quoted_reads_python_style_lists_without_eval():
    assert split_quoted("'Beauty', 'Creams, Gels & Lotions'") == ["Beauty", "Creams, Gels & Lotions"]
    assert split_quoted("\"Women's\", 'a'") == ["Women's", "a"]
    assert split_quoted("['x\\'s', \"back\\\\slash\"]") == ["x's", "back\\slash"]
    assert split_quoted("  ") == []
    for bad in ("'open", "'a' 'b'", "'a', b", "'a',", "__import__('os')"):
        with pytest.raises(ValueError):
            split_quoted(bad)


def test_parse_value_every_type():
    assert parse_value("token", " a b ") == " a b "
    assert parse_value("token_seq", "a  b c") == ["a", "b", "c"]  # RecBole's own form
    assert parse_value("token_seq", "'a b', 'c'") == ["a b", "c"]  # the Amazon files' form
    assert parse_value("token_seq", "a|b", seq_separator="|") == ["a", "b"]
    assert parse_value("token_seq", "'Til There Was You") == ["'Til", "There", "Was", "You"]  # not a quoted list
    assert parse_value("float", "5.04") == 5.04 and parse_value("float", "") is None
    assert parse_value("float_seq", "1 2.5") == [1.0, 2.5] and parse_value("float_seq", "") == []
    for kind, bad in (("float", "cheap"), ("float", "nan"), ("float_seq", "1 x")):
        with pytest.raises(ValueError):
            parse_value(kind, bad)
    assert [format_number(v) for v in (5.04, 10486.0, 0.1 + 0.2, -3.0)] == ["5.04", "10486", "0.30000000000000004", "-3"]


# ---- .item ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_item_file_every_type_quoting_and_html(tmp_path, compress):
    recbole_fixture(tmp_path, compress=compress)
    raw = RecBoleSource(path=str(tmp_path), name="toy").read()
    one, two, three = (raw.items[i] for i in ("I1", "I2", "I3"))
    assert list(raw.items) == ["I1", "I2", "I3"]  # file order
    assert one.title == "Xtreme Gel 1oz." and one.brand == "Xtreme" and one.price == "19.99"
    assert one.categories == ("Beauty", "Hair Care", "Creams, Gels & Lotions")
    assert dict(one.extra) == {"sales_rank": "52254", "scores": "0.5, 1.25", "tags": "red, blue"}
    assert two.title == "Prada Candy Spray"  # tab and newline inside the quoted field, whitespace collapsed
    assert two.categories == ("Beauty", "Women's", "Eau de Parfum")
    assert two.brand == "L'Oreal & Co" and two.price == "5"
    assert three == Item("I3", extra=(("sales_rank", ""), ("scores", ""), ("tags", "")))
    name = "toy.item.gz" if compress else "toy.item"
    assert raw.report.html_unescaped[name] == 1  # one value held entities (two of them)
    assert raw.report.absent_columns == {name: ["description"]}
    fields = one.fields()
    assert fields["price"] == "19.99" and fields["sales_rank"] == "52254"


def test_unknown_type_and_bad_header_are_one_line_errors(tmp_path):
    recbole_fixture(tmp_path, items="item_id:token\ttitle:text\nI1\tx\n")
    with pytest.raises(DataFormatError, match=r"toy.item:1: column 'title' has type 'text'; RecBole types are token, token_seq, float, float_seq"):
        RecBoleSource(path=str(tmp_path), name="toy").read()
    recbole_fixture(tmp_path, items="item_id\ttitle:token\nI1\tx\n")
    with pytest.raises(DataFormatError, match=r"toy.item:1: header cell 'item_id' is not name:type"):
        RecBoleSource(path=str(tmp_path), name="toy").read()
    recbole_fixture(tmp_path, items="id:token\ttitle:token\nI1\tx\n")
    with pytest.raises(DataFormatError, match=r"toy.item:1: no item id column 'item_id'"):
        RecBoleSource(path=str(tmp_path), name="toy").read()


def test_missing_mapped_column_is_empty_and_reported(tmp_path):
    recbole_fixture(tmp_path, items="item_id:token\tname:token\tgenre:token_seq\nI1\tOne\tx y\nI2\tTwo\tz\nI3\tThree\t\n")
    raw = RecBoleSource(path=str(tmp_path), name="toy", fields={"title": "name", "brand": "maker"}, extra_columns="none").read()
    assert [i.title for i in raw.items.values()] == ["One", "Two", "Three"]
    assert all(i.brand == "" and i.price == "" and i.extra == () for i in raw.items.values())
    assert raw.report.absent_columns == {"toy.item": ["maker", "categories", "description", "price"]}
    assert raw.report.ignored_columns["toy.item"] == ["genre"]
    data = build_sequences(raw, kcore=0)
    assert data.stats.empty_fields["brand"] == 3
    assert re.search(r"columns absent from toy.item \(fields empty\) +maker, categories, description, price\n", data.stats.format())
    with pytest.raises(ValueError, match=r"\['colour'\] are not catalogue fields"):
        RecBoleSource(path=str(tmp_path), name="toy", fields={"colour": "c"})


def test_extra_columns_kept_or_not_read_by_config(tmp_path):
    recbole_fixture(tmp_path)
    kept = RecBoleSource(path=str(tmp_path), name="toy", extra_columns=["sales_rank", "size"]).read()
    assert kept.items["I1"].extra == (("sales_rank", "52254"),)
    assert kept.report.absent_columns["toy.item"] == ["description", "size"]
    assert kept.report.ignored_columns["toy.item"] == ["scores", "tags"]
    catalog = build_sequences(kept, kcore=0).catalog
    assert catalog.text(catalog.id_of("I1"), "{title}[ (rank {sales_rank})][, ${price}]") == "Xtreme Gel 1oz. (rank 52254), $19.99"
    assert catalog.text(catalog.id_of("I3"), "{id}[ (rank {sales_rank})][, ${price}]") == "I3"
    none = RecBoleSource(path=str(tmp_path), name="toy", extra_columns="none").read()
    assert all(item.extra == () for item in none.items.values())
    assert none.report.ignored_columns["toy.item"] == ["sales_rank", "scores", "tags"]
    # an unmapped column named like a catalogue field is not read (it would shadow the field)
    remapped = RecBoleSource(path=str(tmp_path), name="toy", fields={"title": "brand", "brand": None}).read()
    assert remapped.items["I1"].title == "Xtreme" and remapped.items["I1"].brand == ""
    assert "title" in remapped.report.ignored_columns["toy.item"]
    assert "title" not in dict(remapped.items["I1"].extra)


def test_bad_lines_name_file_and_line_or_are_counted(tmp_path):
    items = ITEM_HEADER + "I1\tA\t1\t'x'\t2\tb\t\t\nI2\tonly three\tfields\n" + "I3\tC\tcheap\t'y'\t3\tb\t\t\nI4\tD\t4\t'z'\t4\tb\t\t\n"
    recbole_fixture(tmp_path, items=items, inter="user_id:token\titem_id:token\nU1\tI1\nU1\tI4\nU1\tI1\n")
    with pytest.raises(DataFormatError, match=r"toy.item:3: expected 8 tab-separated fields \(item_id, .*\), got 3"):
        RecBoleSource(path=str(tmp_path), name="toy").read()
    recbole_fixture(tmp_path, items=ITEM_HEADER + "I3\tC\tcheap\t'y'\t3\tb\t\t\n", inter="user_id:token\titem_id:token\nU1\tI3\n")
    with pytest.raises(DataFormatError, match=r"toy.item:2: column 'sales_rank' \(float\): could not convert string to float: 'cheap'"):
        RecBoleSource(path=str(tmp_path), name="toy").read()
    recbole_fixture(tmp_path, items=ITEM_HEADER + "I1\tA\t1\t'x'\t2\tb\t1 2 x\t\n", inter="user_id:token\titem_id:token\nU1\tI1\n")
    with pytest.raises(DataFormatError, match=r"toy.item:2: column 'scores' \(float_seq\): could not convert string to float: 'x'"):
        RecBoleSource(path=str(tmp_path), name="toy").read()

    recbole_fixture(tmp_path, items=items, inter="user_id:token\titem_id:token\tts:float\nU1\tI1\t1\nU1\tI4\tsoon\nU1\tI4\t3\nU1\tI1\t4\n")
    raw = RecBoleSource(path=str(tmp_path), name="toy", time_field="ts", skip_bad_lines=True).read()
    assert list(raw.items) == ["I1", "I4"]
    assert raw.report.bad_lines == {"toy.item": 2, "toy.inter": 1}
    assert raw.item_ids == ["I1", "I4", "I1"] and raw.timestamps == [1.0, 3.0, 4.0]
    assert "malformed lines skipped" in build_sequences(raw, kcore=0).stats.format()


def test_line_numbers_count_lines_inside_quoted_fields(tmp_path):
    items = "item_id:token\ttitle:token\nI1\t\"two\nlines\"\nI2\n"
    recbole_fixture(tmp_path, items=items)
    with pytest.raises(DataFormatError, match=r"toy.item:4: expected 2 tab-separated fields"):
        RecBoleSource(path=str(tmp_path), name="toy").read()


def test_duplicate_item_rows_keep_the_first_and_are_counted(tmp_path):
    recbole_fixture(tmp_path, items="item_id:token\ttitle:token\nI1\tfirst\nI2\tb\nI1\tsecond\nI3\tc\n")
    raw = RecBoleSource(path=str(tmp_path), name="toy").read()
    assert raw.items["I1"].title == "first" and raw.report.duplicate_meta_lines == {"toy.item": 1}


# ---- .inter ---------------------------------------------------------------------------------------


def test_inter_columns_by_name_in_any_order_sorted_by_time(tmp_path):
    recbole_fixture(tmp_path)
    raw = RecBoleSource(path=str(tmp_path), name="toy").read()
    assert raw.report.ignored_columns["toy.inter"] == ["rating"]
    data = build_sequences(raw, kcore=0)
    catalog = data.catalog
    assert [catalog[i].external_id for i in data.sequence(data.user_ids.index("U1")).tolist()] == ["I1", "I3", "I2"]
    assert [catalog[i].external_id for i in data.sequence(data.user_ids.index("U2")).tolist()] == ["I3", "I1", "I2"]
    assert (data.num_users, data.num_items, len(data.items)) == (2, 3, 6)


def test_inter_without_timestamp_or_item_file(tmp_path):
    write(tmp_path / "plain.inter", "item_id:token\tuser_id:token\nB\tu\nA\tu\nC\tu\nA\tv\n")
    raw = RecBoleSource(path=str(tmp_path), name="plain").read()
    assert list(raw.items) == ["B", "A", "C"]  # first appearance; no text
    assert raw.users == ["u", "u", "u", "v"] and raw.timestamps == [0.0, 1.0, 2.0, 3.0]
    assert all(item == Item(item.external_id) for item in raw.items.values())
    write(tmp_path / "bad.inter", "item:token\tuser_id:token\nB\tu\n")
    with pytest.raises(DataFormatError, match=r"bad.inter:1: no column 'item_id' \(columns: item, user_id\)"):
        RecBoleSource(path=str(tmp_path), name="bad").read()


def test_inter_item_absent_from_item_file_errors_or_is_dropped(tmp_path):
    recbole_fixture(tmp_path, inter=INTER + "U2\tI9\tI9\t80\n".replace("I9\tI9", "5\tI9"))
    with pytest.raises(MissingItemError, match=r"toy.inter:8: item 'I9' has no catalogue entry"):
        RecBoleSource(path=str(tmp_path), name="toy").read()
    raw = RecBoleSource(path=str(tmp_path), name="toy", missing_items="drop").read()
    assert raw.report.missing_item_events == 1 and raw.report.missing_item_examples == ["I9"]
    assert len(raw) == 6


# ---- P5 + .item -----------------------------------------------------------------------------------

P5_ITEM = "item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\tsales_rank:float\n" + (
    "A1\tOne (meta)\t'Beauty', 'Face'\t5.04\tAcme\t10.0\n"
    "A2\tTwo &amp; Co\t'Beauty'\t\t\t\n"
    "A3\tThree (meta)\t'Beauty', 'Nails'\t12.0\tL&#39;Or\t3.0\n"
    "A4\t\t'Beauty'\t1.5\tX\t1.0\n"
    "Z9\tnot in the sequences\t'Beauty'\t1\tX\t1\n"
)


def p5_with_metadata(folder: Path, lookup: bool, item2id: bool, item_rows: str = P5_ITEM) -> None:
    maps: dict[str, dict[str, str]] = {"id2item": {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}, "id2user": {"1": "U1", "2": "U2"}}
    if item2id:  # Beauty's datamaps has it; Toys' only id2item, which is what the join uses
        maps["item2id"] = {"A1": "1", "A2": "2", "A3": "3", "A4": "4"}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    (folder / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 1 4\n")
    write(folder / "Toy.item", item_rows, compress=True)
    if lookup:
        (folder / "item_id_to_int.json").write_text(json.dumps({"A1": 0, "A2": 1, "A3": 2, "A4": 3}))
        (folder / "products_lookup.csv").write_text(",global_product_id,name\n0,0,One\n1,1,Two &amp; Co\n2,2,Three\n3,3,\n")


def test_p5_beauty_like_join_keeps_lookup_titles_and_adds_metadata(tmp_path):
    p5_with_metadata(tmp_path, lookup=True, item2id=True)
    raw = P5Source(path=str(tmp_path), metadata="Toy.item").read()
    assert list(raw.items)[:4] == ["A1", "A2", "A3", "A4"]  # P5 id order; Z9 follows, without events
    assert [raw.items[a].title for a in ("A1", "A2", "A3", "A4")] == ["One", "Two & Co", "Three", ""]
    one, three = raw.items["A1"], raw.items["A3"]
    assert (one.brand, one.categories, one.price, one.extra) == ("Acme", ("Beauty", "Face"), "5.04", (("sales_rank", "10"),))
    assert (three.brand, three.price) == ("L'Or", "12")
    assert raw.report.ignored_columns == {"Toy.item.gz": ["title"]}
    assert raw.report.html_unescaped == {"products_lookup.csv": 1, "Toy.item.gz": 1}  # the unread title column not counted
    data = build_sequences(raw, kcore=0)
    assert data.num_items == 4 and data.stats.catalog_items_without_events == 1
    template = "{title}[. Price: ${price}][. Categories: {categories}][. Brand: {brand}]"
    assert data.catalog.text(0, template) == "One. Price: $5.04. Categories: Beauty, Face. Brand: Acme"
    assert data.catalog.text(1, template) == "Two & Co. Categories: Beauty"
    forced = P5Source(path=str(tmp_path), metadata="Toy.item", titles="metadata").read()
    assert forced.items["A1"].title == "One (meta)"


@pytest.mark.parametrize("item2id", [False, True])
def test_p5_toys_like_join_takes_titles_from_the_item_file(tmp_path, item2id):
    p5_with_metadata(tmp_path, lookup=False, item2id=item2id)
    raw = P5Source(path=str(tmp_path), metadata="Toy.item").read()
    assert [raw.items[a].title for a in ("A1", "A2", "A3", "A4")] == ["One (meta)", "Two & Co", "Three (meta)", ""]
    assert raw.item_ids == ["A1", "A2", "A3", "A2", "A3", "A1", "A4"]
    untitled = P5Source(path=str(tmp_path), metadata="Toy.item", titles=False).read()
    assert all(item.title == "" for item in untitled.items.values()) and untitled.items["A1"].brand == "Acme"
    with pytest.raises(FileNotFoundError, match="item_id_to_int.json"):
        P5Source(path=str(tmp_path), metadata="Toy.item", titles=True).read()
    with pytest.raises(ValueError, match="titles: metadata needs a metadata file"):
        P5Source(path=str(tmp_path), titles="metadata")


def test_p5_item_absent_from_item_file_errors_or_is_dropped(tmp_path):
    rows = "\n".join(line for line in P5_ITEM.splitlines() if not line.startswith("A3")) + "\n"
    p5_with_metadata(tmp_path, lookup=False, item2id=False, item_rows=rows)
    with pytest.raises(MissingItemError, match=r"sequential_data.txt:1: item 'A3' has no catalogue entry"):
        P5Source(path=str(tmp_path), metadata="Toy.item").read()
    raw = P5Source(path=str(tmp_path), metadata="Toy.item", missing_items="drop").read()
    assert raw.report.missing_item_events == 2 and raw.report.missing_item_examples == ["A3"]
    assert "A3" not in raw.items and raw.item_ids == ["A1", "A2", "A2", "A1", "A4"]


# ---- catalogue fields -----------------------------------------------------------------------------


def test_fingerprint_unchanged_for_items_without_price_or_extra():
    """Pinned: the sha256 the catalogue gave before price and extra fields existed, so artifacts
    of MovieLens / Office / synthetic catalogues stay valid."""
    items = [
        Item.from_raw("A1", title="Lipstick &amp; Co", brand="Acme", categories=["Beauty", "Lips"], description="Red."),
        Item.from_raw("B2"),
        Item.from_raw("C3", title="Soap"),
    ]
    catalog = ItemCatalog(items)
    assert catalog.fingerprint() == "7c3bf2e5b5946f68e97214f9dad4f67242aa6252b055934bd29fa9e5cc6a1172"
    priced = ItemCatalog([items[0], Item.from_raw("B2", price=1.5), items[2]])
    ranked = ItemCatalog([items[0], Item.from_raw("B2", extra={"sales_rank": 3.0}), items[2]])
    assert len({catalog.fingerprint(), priced.fingerprint(), ranked.fingerprint()}) == 3
    assert catalog.field_counts() == {"title": 1, "brand": 2, "categories": 2, "description": 2}
    assert ranked.field_counts() == {"title": 1, "brand": 2, "categories": 2, "description": 2, "sales_rank": 2}
    with pytest.raises(ValueError, match=r"extra field names \['title'\] clash"):
        Item.from_raw("X", extra={"title": "t"})


# ---- catalogues without text ----------------------------------------------------------------------


def test_require_text_names_data_set_count_and_alternatives():
    catalog = ItemCatalog([Item("A"), Item("B")], name="sports-like")
    with pytest.raises(NoItemTextError) as error:
        catalog.require_text("{id}: {title}[ by {brand}]", "the LM recommender")
    message = str(error.value)
    assert "\n" not in message and message.startswith("data set 'sports-like': 0 of 2 items have text in {title}, {brand}")
    assert "configs/encode/cf.yaml" in message and "SASRec" in message
    ItemCatalog([Item("A"), Item("B", brand="x")]).require_text("{title}[ by {brand}]", "x")  # one item with text is enough


def test_text_encoder_on_a_sports_like_preset_exits_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {str(i): f"S{i}" for i in range(1, 7)}}))
    (tmp_path / "sequential_data.txt").write_text("1 1 2 3 4\n2 2 3 4 5\n3 3 4 5 6\n")
    preset = {"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": {
        "name": "sports-like", "kcore": 0,
        "source": {"class_path": "genrec.data.formats.P5Source", "init_args": {"path": str(tmp_path)}}}}}
    config = tmp_path / "sports-like.yaml"
    config.write_text(yaml.safe_dump(preset))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", "--config", str(config), "--config", "configs/encode/minilm-cf.yaml", "--encode.output", str(tmp_path / "e.safetensors")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data set 'sports-like': 0 of 6 items have text in {title}, {brand}, {categories}, {description}")
    assert "the text encoder 'minilm'" in err and "configs/encode/cf.yaml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e.safetensors").exists() and not (tmp_path / "e.text.safetensors").exists()


def test_lm_recommender_on_a_catalogue_without_titles_stops_with_the_message():
    """The check comes first where the module reads titles (a stand-in ``self``: building the
    module loads a tokenizer, tens of seconds on a busy CPU)."""
    from genrec.models.lm_rec import LMRecModule

    module = SimpleNamespace(prompt=SimpleNamespace(max_title_tokens=8), _encode=lambda texts: pytest.fail("encoded before the check"))
    catalog = ItemCatalog([Item("A", brand="x"), Item("B"), Item("C")], name="sports-like")
    with pytest.raises(NoItemTextError, match=r"data set 'sports-like': 0 of 3 items have text in \{title\}, and the LM recommender"):
        LMRecModule.title_token_ids(module, catalog)  # type: ignore[arg-type]


def test_encode_uses_the_data_presets_text_template_unless_given(tmp_path, monkeypatch):
    from genrec.cli import encode_options, encode_parser, run_encode
    from genrec.data.catalog import DEFAULT_TEMPLATE
    from genrec.encode import embedding_metadata

    recbole_fixture(tmp_path)
    source = {"class_path": "genrec.data.formats.RecBoleSource", "init_args": {"path": str(tmp_path), "name": "toy"}}
    template = "{title}[. Price: ${price}][. Categories: {categories}][. Brand: {brand}]"
    for name, text_template in (("with", template), ("without", None)):
        args = {"name": f"toy-{name}", "kcore": 0, "source": source, **({"text_template": text_template} if text_template else {})}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": args}}))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])

    def resolved(*args: str) -> str:
        parser = encode_parser()
        config = parser.parse_args(list(args))
        return encode_options(config, parser.instantiate_classes(config).data)["template"]

    minilm = "configs/encode/minilm.yaml"
    assert resolved("--config", str(tmp_path / "with.yaml"), "--config", minilm) == template
    assert resolved("--config", str(tmp_path / "with.yaml"), "--config", minilm, "--encode.template", "{title}") == "{title}"
    assert resolved("--config", str(tmp_path / "without.yaml"), "--config", minilm) == DEFAULT_TEMPLATE
    out = run_encode(["--config", str(tmp_path / "with.yaml"), "--config", minilm, "--encode.output", str(tmp_path / "e.safetensors"),
                      "--encode.accelerator", "cpu"])
    assert embedding_metadata(out)["template"] == template
