"""Amazon reviews, 2018 release (Ni et al.): ``<Category>[_5].json[.gz]`` and
``meta_<Category>.json[.gz]``.

Both are JSON, one object per line. Reviews: ``reviewerID, asin, overall, unixReviewTime``
(seconds), ``reviewTime, vote, style, verified, reviewerName, reviewText, summary, image``.
Metadata: ``asin, title`` (sometimes with HTML, cleaned), ``brand, category`` (a list of
names), ``description`` (a list of paragraphs, joined), ``feature, main_cat, rank, also_buy,
also_view, price, imageURL, details, date``. The metadata files repeat some ASINs; the first
record is kept and the repeats counted.

Catalogue order is the metadata file's order; see :mod:`genrec.data.formats.amazon` for the
rules shared by the Amazon readers.
"""

from __future__ import annotations

import json

from genrec.data.formats.amazon import AmazonSource


class Amazon2018Source(AmazonSource):
    """Reader of the 2018 Amazon reviews and metadata.

    Args:
        reviews: path of ``<Category>[_5].json[.gz]``.
        meta: path of ``meta_<Category>.json[.gz]``.
        skip_bad_lines: see :class:`~genrec.data.formats.base.DataSource`.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    meta_fields = {**AmazonSource.meta_fields, "categories": "category"}

    def parse_meta(self, line: str) -> object:
        return json.loads(line)


__all__ = ["Amazon2018Source"]
