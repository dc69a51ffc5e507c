"""Narrow filters for third-party messages a genrec user cannot act on.

Warnings genrec itself causes are fixed where they arise (e.g. TIGER passes its KV cache under
the keyword the installed transformers expects; the pipeline's LightningCLI gets its arguments
without the process's own). What is left comes from libraries and says nothing about the
user's run; each filter here names one message (and its category), never a whole category or
module:

* ``isinstance(treespec, LeafSpec)`` is deprecated (FutureWarning): Lightning's
  ``utilities/_pytree.py`` builds ``LeafSpec()`` on newer torch;
* Lightning's "💡 Tip: ... litlogger / litmodels" advertisements, logged on every Trainer.

:func:`quiet_third_party` installs them; ``genrec.cli.main`` calls it (process-wide settings
are made there, never at import). pytest's ``filterwarnings`` (pyproject.toml) repeats the
warning filters for the test suite.
"""

from __future__ import annotations

import logging
import warnings

WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
"""(message regex matched at the start, category) of each third-party warning filtered out."""

TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""The loggers Lightning's ``rank_zero_info`` writes its tips to."""


class _TipFilter(logging.Filter):
    """Drops Lightning's "💡 Tip:" advertisements; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIP_FILTER = _TipFilter()


def quiet_third_party() -> None:
    """Install the filters of this module (idempotent)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)


__all__ = ["TIP_LOGGERS", "WARNINGS", "quiet_third_party"]
