"""Amazon reviews, 2023 release (Hou et al.): ``<Category>.jsonl[.gz]`` and
``meta_<Category>.jsonl[.gz]``.

Both are JSON, one object per line. Reviews: ``user_id, asin, parent_asin, rating, timestamp``
(**milliseconds**, converted to seconds), ``title, text, images, helpful_vote,
verified_purchase``. The item is ``parent_asin`` (the product, over its variants), or ``asin``
when a review has none. Metadata: ``parent_asin, title, store`` (the brand; ``details["Brand"]``
when the store is empty), ``categories`` (a list of names), ``description`` (a list of
paragraphs, joined), ``features, details, main_category, average_rating, rating_number, price,
images, videos, bought_together``.

Catalogue order is the metadata file's order; see :mod:`genrec.data.formats.amazon` for the
rules shared by the Amazon readers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from genrec.data.catalog import Item, clean_text
from genrec.data.formats.amazon import AmazonSource


class Amazon2023Source(AmazonSource):
    """Reader of the 2023 Amazon reviews and metadata.

    Args:
        reviews: path of ``<Category>.jsonl[.gz]``.
        meta: path of ``meta_<Category>.jsonl[.gz]``.
        skip_bad_lines: see :class:`~genrec.data.formats.base.DataSource`.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    item_fields = ("parent_asin", "asin")
    user_field = "user_id"
    time_field = "timestamp"
    time_divisor = 1000.0
    meta_fields = {**AmazonSource.meta_fields, "brand": "store"}

    def parse_meta(self, line: str) -> object:
        return json.loads(line)

    def item_of(self, item_id: str, record: dict[str, Any]) -> Item:
        item = super().item_of(item_id, record)
        details = record.get("details")
        if item.brand or not isinstance(details, dict):
            return item
        return dataclasses.replace(item, brand=clean_text(details.get("Brand")))


__all__ = ["Amazon2023Source"]
