import pytest

from genrec.data.catalog import (
    DEFAULT_TEMPLATE,
    Item,
    ItemCatalog,
    clean_categories,
    clean_text,
    render,
)


def test_clean_text_unescapes_html_and_normalises_whitespace():
    assert clean_text("AT&amp;T  210\n Phone ") == "AT&T 210 Phone"
    assert clean_text("a &amp;amp; b") == "a & b"  # double-escaped in some Amazon dumps
    assert clean_text("<b>Bold</b>\ttext") == "Bold text"
    assert clean_text(["First line.", "", " Second  "]) == "First line. Second"
    assert clean_text("size &lt;5mm&gt;") == "size <5mm>"  # not a tag
    assert clean_text(None) == ""


def test_clean_categories_flattens_paths_and_dedups():
    assert clean_categories([["Beauty", "Skin Care"], ["Beauty", "Face"]]) == ("Beauty", "Skin Care", "Face")
    assert clean_categories("Office Electronics, Telephones &amp; Accessories") == ("Office Electronics", "Telephones & Accessories")
    assert clean_categories(None) == ()


def test_render_drops_optional_segments_with_empty_fields():
    full = Item.from_raw("A1", title="Lipstick", brand="Acme", categories=["Beauty", "Lips"], description="Red.")
    bare = Item.from_raw("A2", title="Soap")
    assert render(DEFAULT_TEMPLATE, full.fields()) == "Lipstick. Brand: Acme. Categories: Beauty, Lips. Red."
    assert render(DEFAULT_TEMPLATE, bare.fields()) == "Soap"
    assert render("{title} by {brand}", full.fields(), max_chars=8) == "Lipstick"
    with pytest.raises(KeyError, match="colour"):
        render("{title} {colour}", full.fields())


def test_catalog_lookup_fingerprint_and_empty_counts():
    items = [Item.from_raw("A", title="x"), Item.from_raw("B", title="", brand="b")]
    catalog = ItemCatalog(items)
    assert catalog.id_of("B") == 1 and "A" in catalog and "Z" not in catalog
    with pytest.raises(KeyError, match="'Z'"):
        catalog.id_of("Z")
    assert catalog.field_counts() == {"title": 1, "brand": 1, "categories": 2, "description": 2}
    assert catalog.texts("{id}:{title}") == ["A:x", "B:"]
    changed = ItemCatalog([items[0], Item.from_raw("B", title="y", brand="b")])
    assert catalog.fingerprint() == ItemCatalog(list(items)).fingerprint()
    assert catalog.fingerprint() != changed.fingerprint()
    with pytest.raises(ValueError, match="duplicate external item id 'A'"):
        ItemCatalog([items[0], items[0]])
