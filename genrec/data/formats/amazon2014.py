"""Amazon reviews, 2014 release (McAuley et al.): ``reviews_<Category>[_5].json[.gz]`` and
``meta_<Category>.json[.gz]``.

Reviews are JSON, one object per line: ``reviewerID, asin, reviewerName, helpful, reviewText,
overall, summary, unixReviewTime`` (seconds), ``reviewTime``. The metadata lines are **Python
dict literals**, not JSON (``{'asin': '0205616461', 'title': ..., 'categories': [['Beauty',
'Skin Care', 'Face']], ...}``), read with :func:`ast.literal_eval` (never ``eval``); fields
``asin, title, brand, categories`` (a list of category paths, flattened), ``description``,
``price, salesRank, related, imUrl``.

Catalogue order is the metadata file's order; see :mod:`genrec.data.formats.amazon` for the
rules shared by the Amazon readers.
"""

from __future__ import annotations

import ast

from genrec.data.formats.amazon import AmazonSource


class Amazon2014Source(AmazonSource):
    """Reader of the 2014 Amazon reviews and (Python-literal) metadata.

    Args:
        reviews: path of ``reviews_<Category>[_5].json[.gz]``.
        meta: path of ``meta_<Category>.json[.gz]``.
        skip_bad_lines: see :class:`~genrec.data.formats.base.DataSource`.
        missing_items: see :class:`~genrec.data.formats.base.DataSource`.
    """

    def parse_meta(self, line: str) -> object:
        return ast.literal_eval(line)


__all__ = ["Amazon2014Source"]
