"""The item catalogue: dense item ids, external ids and the text fields every model reads.

Item ids are dense integers ``0 .. N-1``; the external id (an ASIN, a MovieLens id, a P5
integer string) is kept beside them. Text fields are cleaned once, when the catalogue is
built: HTML entities unescaped, HTML markup removed, whitespace runs collapsed, ends stripped.
Besides the text fields an item may carry a price and any further fields a reader kept
(``extra``, e.g. a sales rank), all as text, so a template can name every one of them.

Markup is removed only where it is certainly markup (:func:`clean_text`): ``Size <M> shirt`` and
``x<y and z>w`` keep their text. What the cleaning removed is counted while a
:func:`counting_cleaning` block is open (the data module opens one around its reader), so it
appears in the data statistics with examples.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

_WHITESPACE = re.compile(r"\s+")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]{0,15})((?:\s+[^<>]{0,300}?)?)\s*(/?)>")
"""A candidate tag: ``<``, an optional ``/``, a name, optional attributes, an optional ``/``, ``>``;
:func:`_is_markup` decides whether it is one."""
_ATTRIBUTE = re.compile(r"""[A-Za-z_:][-\w:.]*\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+)""")
_HTML_TAG_NAMES = (
    "a abbr acronym address area article aside audio b base bdi bdo big blockquote body br button caption center "
    "cite code col colgroup dd del details dfn div dl dt em embed fieldset figcaption figure font footer form h1 "
    "h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd label legend li link main map mark meta nav "
    "noscript object ol optgroup option p param picture pre q rp rt ruby s samp script section select small "
    "source span strike strong style sub summary sup table tbody td template textarea tfoot th thead time title "
    "tr track tt u ul var video wbr"
)
_HTML_TAGS = frozenset(_HTML_TAG_NAMES.split())
"""Element names of HTML; ``<M>`` or ``<y and z>`` name none, so they are text."""
_UNPAIRED_NAMES = "area base br col embed hr img input link meta param source track wbr p li dt dd tr td th option"
_UNPAIRED = frozenset(_UNPAIRED_NAMES.split())
"""Void elements and elements whose end tag may be omitted: markup even without a closing tag."""
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_FIELD = re.compile(r"\{(\w+)\}")

TEXT_FIELDS = ("title", "brand", "categories", "description")

FIELDS = ("id", *TEXT_FIELDS, "price")
"""The fields every item has (``price`` may be empty); readers' extra fields take other names."""

DEFAULT_TEMPLATE = "{title}[. Brand: {brand}][. Categories: {categories}][. {description}]"
"""Title, then each non-empty field; a ``[...]`` segment is dropped when a field inside is empty."""


class TextFieldError(ValueError):
    """A text field holds a value that is not text (a mapping, ...); readers report it as a bad
    record naming the file and line."""


@dataclass
class CleaningCounts:
    """What :func:`clean_text` removed beyond entities and whitespace, while counting.

    Attributes:
        markup_removed: values from which HTML tags were removed.
        examples: up to 5 such values, ``"before" -> "after"`` (shortened).
    """

    markup_removed: int = 0
    examples: list[str] = field(default_factory=list)


_COUNTS: ContextVar[CleaningCounts | None] = ContextVar("genrec_cleaning_counts", default=None)


@contextmanager
def counting_cleaning() -> Iterator[CleaningCounts]:
    """Count what :func:`clean_text` removes inside the block (in this thread / context)."""
    counts = CleaningCounts()
    token = _COUNTS.set(counts)
    try:
        yield counts
    finally:
        _COUNTS.reset(token)


def clean_text(value: object) -> str:
    """Normalise one raw text value: unescape HTML entities (twice, for ``&amp;amp;``), remove
    HTML markup, collapse whitespace. Lists are joined with " "; ``None`` gives ""; numbers
    become their text.

    Markup is a tag with an HTML element name that is a closing tag, carries ``name=value``
    attributes, is self-closing or of an element needing no closing tag (``<br>``, ``<p>``), or
    is closed later in the value (``<b>..</b>``). Anything else between ``<`` and ``>`` is text:
    ``Size <M> shirt``, ``x<y and z>w``, ``Size <S> shirt`` are kept as they are.

    Raises:
        TextFieldError: ``value`` is a mapping or another non-text type.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(s for s in (clean_text(v) for v in value) if s)
    if not isinstance(value, (str, int, float)):
        raise TextFieldError(f"expected text, got a {type(value).__name__} ({str(value)[:60]!r})")
    text = html.unescape(html.unescape(str(value)))
    if "<" in text:
        lowered = text.lower()
        stripped = _TAG.sub(lambda m: " " if _is_markup(m, lowered) else m.group(0), text)
        if stripped != text:
            _count_markup(text, stripped)
            text = stripped
    return _WHITESPACE.sub(" ", text).strip()


def format_number(value: float) -> str:
    """A number as short text: integral values without ``.0`` (``10486.0`` -> ``"10486"``), others
    as the shortest repr that reads back the same float (``5.04`` -> ``"5.04"``)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {value}")
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(float(value))


def _is_markup(match: re.Match[str], lowered: str) -> bool:
    closing, name, attributes, self_closing = match.group(1), match.group(2).lower(), match.group(3), match.group(4)
    if name not in _HTML_TAGS:
        return False
    return bool(closing or self_closing or name in _UNPAIRED or _ATTRIBUTE.search(attributes) or f"</{name}>" in lowered)


def _count_markup(before: str, after: str) -> None:
    counts = _COUNTS.get()
    if counts is None:
        return
    counts.markup_removed += 1
    if len(counts.examples) < 5:
        counts.examples.append(f"{before[:60]!r} -> {_WHITESPACE.sub(' ', after).strip()[:60]!r}")


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
    """One catalogue entry, text fields already cleaned.

    Attributes:
        price: the price as text (``"5.04"``), "" when unknown.
        extra: further ``(field, text)`` pairs a reader kept (e.g. ``("sales_rank", "10486")``),
            in column order; names never clash with :data:`FIELDS`.
    """

    external_id: str
    title: str = ""
    brand: str = ""
    categories: tuple[str, ...] = ()
    description: str = ""
    price: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_raw(
        cls,
        external_id: object,
        title: object = None,
        brand: object = None,
        categories: object = None,
        description: object = None,
        price: object = None,
        extra: Mapping[str, object] | None = None,
    ) -> Item:
        """Build an item from raw field values of any of the supported formats.

        ``price`` and the ``extra`` values may be numbers (written by :func:`format_number`),
        lists (joined with ", ") or text."""
        pairs = tuple((str(name), _clean_value(value)) for name, value in (extra or {}).items())
        clash = [name for name, _ in pairs if name in FIELDS]
        if clash:
            raise ValueError(f"extra field names {clash} clash with the item fields {list(FIELDS)}")
        return cls(
            external_id=str(external_id),
            title=clean_text(title),
            brand=clean_text(brand),
            categories=clean_categories(categories),
            description=clean_text(description),
            price=_clean_value(price),
            extra=pairs,
        )

    def fields(self) -> dict[str, str]:
        """Field name -> text, as the template sees them (categories joined with ", ")."""
        return {
            "id": self.external_id,
            "title": self.title,
            "brand": self.brand,
            "categories": ", ".join(self.categories),
            "description": self.description,
            "price": self.price,
            **dict(self.extra),
        }


def _clean_value(value: object) -> str:
    """A price or extra field as text: numbers by :func:`format_number`, lists joined with ", "."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return format_number(float(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(s for s in (_clean_value(v) for v in value) if s)
    return clean_text(value)


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


class NoItemTextError(ValueError):
    """A stage that reads item text got a catalogue whose items have none."""


@dataclass
class ItemCatalog:
    """All items of a data set, indexed by dense id ``0 .. len-1``.

    Args:
        items: the items in id order.
        name: the data set's name, for messages ("" when unknown).
    """

    items: list[Item]
    name: str = ""
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
        return ItemCatalog([self.items[i] for i in item_ids], self.name)

    def require_text(self, template: str, reader: str, data_name: str = "") -> None:
        """Raise :class:`NoItemTextError` (one line: the data set, 0 of N items, what to use
        instead) when no item has a non-empty value in any field ``template`` names (``{id}``
        does not count as text). ``reader`` names what needs the text, for the message."""
        names = [n for n in _FIELD.findall(template) if n != "id"]
        if any(item.fields().get(n) for item in self.items for n in names):
            return
        raise NoItemTextError(
            f"data set {data_name or self.name or '(unnamed)'!r}: 0 of {len(self):,} items have text in "
            f"{', '.join('{' + n + '}' for n in names) or 'the template'}, and {reader} needs item text; "
            "use semantic IDs from interactions (configs/encode/cf.yaml) or an ID model such as SASRec (configs/sasrec/)"
        )

    def fingerprint(self) -> str:
        """A sha256 over external ids and every field, in id order.

        Artifacts computed from a catalogue (embeddings, semantic IDs, title tables) record it,
        so loading one against a different catalogue is caught. An item without price and extra
        fields hashes exactly as before they existed (artifacts made then stay valid)."""
        digest = hashlib.sha256()
        for item in self.items:
            values = [item.external_id, item.title, item.brand, "|".join(item.categories), item.description]
            if item.price or item.extra:
                values += [f"price={item.price}", *(f"{name}={value}" for name, value in item.extra)]
            for value in values:
                digest.update(value.encode("utf-8"))
                digest.update(b"\x1f")
            digest.update(b"\x1e")
        return digest.hexdigest()

    def field_counts(self) -> dict[str, int]:
        """Number of items with an empty value, per text field, and per price / extra field
        when any item has one."""
        names = list(TEXT_FIELDS)
        if any(item.price for item in self.items):
            names.append("price")
        for item in self.items:
            names.extend(name for name, _ in item.extra if name not in names)
        empty = dict.fromkeys(names, 0)
        for item in self.items:
            fields = item.fields()
            for name in names:
                if not fields.get(name):
                    empty[name] += 1
        return empty
