"""The item catalogue: dense item ids, external ids and the text fields every model reads.

Item ids are dense integers ``0 .. N-1``; the external id (an ASIN, a MovieLens id, a P5
integer string) is kept beside them. Text fields are cleaned once, when the catalogue is
built: HTML entities unescaped, whitespace runs collapsed, ends stripped.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_FIELD = re.compile(r"\{(\w+)\}")

TEXT_FIELDS = ("title", "brand", "categories", "description")

DEFAULT_TEMPLATE = "{title}[. Brand: {brand}][. Categories: {categories}][. {description}]"
"""Title, then each non-empty field; a ``[...]`` segment is dropped when a field inside is empty."""


def clean_text(value: object) -> str:
    """Normalise one raw text value: unescape HTML entities (twice, for ``&amp;amp;``), drop
    HTML tags, collapse whitespace. Lists are joined with ", "; ``None`` gives ""."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(s for s in (clean_text(v) for v in value) if s)
    text = html.unescape(html.unescape(str(value)))
    text = _TAG.sub(" ", text)
    return _WHITESPACE.sub(" ", text).strip()


def clean_categories(value: object) -> tuple[str, ...]:
    """Categories as a flat tuple of cleaned names, duplicates removed, order kept.

    Accepts a string (split on ","), a list of strings, or a list of lists (Amazon 2014's
    several category paths)."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts: Iterable[object] = value.split(",")
    else:
        parts = [p for v in value for p in (v if isinstance(v, (list, tuple)) else [v])]
    seen: dict[str, None] = {}
    for part in parts:
        name = clean_text(part)
        if name:
            seen.setdefault(name, None)
    return tuple(seen)


@dataclass(frozen=True)
class Item:
    """One catalogue entry, text fields already cleaned."""

    external_id: str
    title: str = ""
    brand: str = ""
    categories: tuple[str, ...] = ()
    description: str = ""

    @classmethod
    def from_raw(
        cls,
        external_id: object,
        title: object = None,
        brand: object = None,
        categories: object = None,
        description: object = None,
    ) -> Item:
        """Build an item from raw field values of any of the supported formats."""
        return cls(
            external_id=str(external_id),
            title=clean_text(title),
            brand=clean_text(brand),
            categories=clean_categories(categories),
            description=clean_text(description),
        )

    def fields(self) -> dict[str, str]:
        """Field name -> text, as the template sees them (categories joined with ", ")."""
        return {
            "id": self.external_id,
            "title": self.title,
            "brand": self.brand,
            "categories": ", ".join(self.categories),
            "description": self.description,
        }


def render(template: str, fields: dict[str, str], max_chars: int | None = None) -> str:
    """Render ``template`` over an item's fields.

    ``{name}`` is replaced by the field; a ``[...]`` segment is kept only when every field
    inside it is non-empty. Unknown field names raise ``KeyError`` naming the field.
    """

    def fill(segment: str) -> str:
        return _FIELD.sub(lambda m: _field(fields, m.group(1)), segment)

    def optional(match: re.Match[str]) -> str:
        segment = match.group(1)
        names = _FIELD.findall(segment)
        return fill(segment) if all(_field(fields, n) for n in names) else ""

    text = _WHITESPACE.sub(" ", fill(_OPTIONAL.sub(optional, template))).strip()
    return text[:max_chars] if max_chars else text


def _field(fields: dict[str, str], name: str) -> str:
    if name not in fields:
        raise KeyError(f"template field {{{name}}} is not one of {sorted(fields)}")
    return fields[name]


@dataclass
class ItemCatalog:
    """All items of a data set, indexed by dense id ``0 .. len-1``.

    Args:
        items: the items in id order.
    """

    items: list[Item]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {}
        for i, item in enumerate(self.items):
            if item.external_id in self._index:
                raise ValueError(f"duplicate external item id {item.external_id!r} in catalogue")
            self._index[item.external_id] = i

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item_id: int) -> Item:
        return self.items[item_id]

    def id_of(self, external_id: str) -> int:
        """Dense id of an external id; ``KeyError`` naming it when absent."""
        try:
            return self._index[external_id]
        except KeyError:
            raise KeyError(f"item {external_id!r} is not in the catalogue") from None

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    @property
    def external_ids(self) -> list[str]:
        return [item.external_id for item in self.items]

    @property
    def titles(self) -> list[str]:
        return [item.title for item in self.items]

    def text(self, item_id: int, template: str = DEFAULT_TEMPLATE, max_chars: int | None = None) -> str:
        """The item rendered through ``template`` (see :func:`render`)."""
        return render(template, self.items[item_id].fields(), max_chars)

    def texts(
        self,
        template: str = DEFAULT_TEMPLATE,
        item_ids: Sequence[int] | None = None,
        max_chars: int | None = None,
    ) -> list[str]:
        """Every item (or ``item_ids``) rendered through ``template``, in id order."""
        ids = range(len(self.items)) if item_ids is None else item_ids
        return [self.text(i, template, max_chars) for i in ids]

    def subset(self, item_ids: Sequence[int]) -> ItemCatalog:
        """A new catalogue of ``item_ids`` (renumbered densely in the given order)."""
        return ItemCatalog([self.items[i] for i in item_ids])

    def fingerprint(self) -> str:
        """A sha256 over external ids and every text field, in id order.

        Artifacts computed from a catalogue (embeddings, semantic IDs, title tables) record it,
        so loading one against a different catalogue is caught."""
        digest = hashlib.sha256()
        for item in self.items:
            for value in (item.external_id, item.title, item.brand, "|".join(item.categories), item.description):
                digest.update(value.encode("utf-8"))
                digest.update(b"\x1f")
            digest.update(b"\x1e")
        return digest.hexdigest()

    def field_counts(self) -> dict[str, int]:
        """Number of items with an empty value, per text field."""
        empty = dict.fromkeys(TEXT_FIELDS, 0)
        for item in self.items:
            for name, value in item.fields().items():
                if name in empty and not value:
                    empty[name] += 1
        return empty
