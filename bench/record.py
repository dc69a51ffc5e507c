"""Benchmark rows: print a table and append it to docs/benchmarks.md with command, device, date.

Each benchmark owns one section (``## <title>``) of docs/benchmarks.md; a run appends its rows at
the end of that section (creating it if needed), so the file keeps the history of every measured
number with what produced it. Rows join the section's last table when the section ends with a
table of the same columns (runs of one hold add up in one table), and start a new table at its
end otherwise: a section is a history of tables, each with the prose written about it, and a row
never lands in an older table under prose that was not written about it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from genrec.artifacts import atomic_path

BENCHMARKS = Path(os.environ.get("GENREC_BENCH_FILE") or Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
"""Where rows go; ``GENREC_BENCH_FILE`` redirects them (e.g. to ``$OUT`` on a lent GPU machine,
to be merged back with ``python -m bench.record merge FILE``)."""


def device_name() -> str:
    """The device the numbers come from, e.g. ``NVIDIA H100 80GB HBM3`` or ``CPU (2 threads)``."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        return f"{torch.cuda.get_device_name(0)}" + (f" x{count}" if count > 1 else "")
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def command_line() -> str:
    """The command as typed (``python -m bench.x --flag ...``)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    argv[0] = "python"
    return " ".join(shlex.quote(a) for a in argv)


def set_flags(items: list[str]) -> list[str]:
    """A benchmark's ``--set key=value`` items as LightningCLI flags ``--key=value``."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SystemExit(f"--set takes key=value, got {bad}")
    return [f"--{item.split('=', 1)[0]}={item.split('=', 1)[1]}" for item in items]


def metric_columns(results: dict[str, float], cold_ndcg: bool = False) -> dict[str, str]:
    """The test-metric columns of a quality row (``test R@5`` ... ``popularity R@10``), from a
    ``trainer.test`` result; NaN where a metric is missing."""
    columns = [("test R@5", "recall@5"), ("test N@5", "ndcg@5"), ("test R@10", "recall@10"), ("test N@10", "ndcg@10"),
               ("cold R@10", "cold/recall@10"), *([("cold N@10", "cold/ndcg@10")] if cold_ndcg else []),
               ("popularity R@10", "popularity/recall@10")]
    return {label: f"{results.get(f'test/{key}', float('nan')):.4f}" for label, key in columns}


def format_table(rows: list[dict[str, object]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def record(section: str, rows: list[dict[str, object]], note: str = "", path: Path = BENCHMARKS) -> None:
    """Print ``rows`` and append them (with date, device and command) under ``## section``."""
    stamp = {"date": dt.date.today().isoformat(), "device": device_name(), "command": f"`{command_line()}`"}
    rows = [{**row, **stamp} for row in rows]
    table = format_table(rows)
    print(table)
    append_table(section, table, note, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``path`` (runs side by side on one machine append to the same
    file: without it, two read-modify-writes lose or repeat each other's rows). The lock file is
    in the temporary folder, named after the file's absolute path, not beside it in docs/."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"genrec-record-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_table(section: str, table: str, note: str = "", path: Path = BENCHMARKS) -> None:
    """Append a markdown ``table`` under ``## section`` of ``path`` (see the module docstring);
    safe for several processes at once."""
    with _locked(path):
        _append_table(section, table, note, path)


def _append_table(section: str, table: str, note: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery number here was measured by a script in bench/; each row names its command, device and date.\n"
    header = f"\n## {section}\n"
    body = table.split("\n", 2)
    if header in text:
        start = text.index(header) + len(header)
        end = text.find("\n## ", start)
        end = len(text) if end < 0 else end
        block = text[start:end].rstrip("\n")
        # the section's last table takes the rows if the section ends with it and it has the same
        # columns; otherwise a new table starts at the section's end (module docstring)
        lines = block.split("\n")
        first = len(lines)
        while first > 0 and lines[first - 1].startswith("|"):
            first -= 1
        if first < len(lines) and lines[first] == body[0]:
            block = block + "\n" + body[2]
        else:
            block = block + "\n\n" + table
        text = text[:start] + block + "\n" + text[end:]
    else:
        text = text.rstrip("\n") + "\n" + header + (f"\n{note}\n" if note else "") + "\n" + table + "\n"
    with atomic_path(path) as tmp:  # a killed run leaves the old file whole
        tmp.write_text(text)


def merge(source: Path, path: Path = BENCHMARKS) -> None:
    """Append every section's table rows of ``source`` (a file written elsewhere) to ``path``."""
    for block in source.read_text().split("\n## ")[1:]:
        title, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        note = "\n".join(line for line in body.splitlines() if line and not line.startswith("|")).strip()
        if lines:
            append_table(title.strip(), "\n".join(lines), note, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Merge benchmark rows measured elsewhere into docs/benchmarks.md.")
    parser.add_argument("command", choices=["merge"])
    parser.add_argument("source", type=Path)
    merge(parser.parse_args().source)
