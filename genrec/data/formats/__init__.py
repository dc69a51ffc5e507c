"""One reader per on-disk format; each returns :class:`~genrec.data.formats.base.RawData`."""

from genrec.data.formats.amazon2014 import Amazon2014Source
from genrec.data.formats.amazon2018 import Amazon2018Source
from genrec.data.formats.amazon2023 import Amazon2023Source
from genrec.data.formats.base import (
    DataFormatError,
    DataSource,
    MissingItemError,
    RawData,
    ReadReport,
)
from genrec.data.formats.lcrec import LCRecSource
from genrec.data.formats.movielens import MovieLensSource
from genrec.data.formats.p5 import P5Source
from genrec.data.formats.recbole import RecBoleSource

__all__ = [
    "Amazon2014Source",
    "Amazon2018Source",
    "Amazon2023Source",
    "DataFormatError",
    "DataSource",
    "LCRecSource",
    "MissingItemError",
    "MovieLensSource",
    "P5Source",
    "RawData",
    "ReadReport",
    "RecBoleSource",
]
