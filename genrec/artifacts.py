"""Artifacts on disk: written atomically, each carrying the config that made it.

Every stage writes its output to a temporary file in the destination folder and renames it
into place (``os.replace`` is atomic on one file system), so a killed run never leaves a
half-written artifact that a later run would take for a finished one. A stage that writes an
output holds :func:`output_lock` on it, so two runs writing one output take turns (the second
waits, then finds the first's result).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and writers that replace the file (safetensors) keep that: artifacts
        # get the usual permissions, set on what was written
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (the file ``<path>.lock`` beside it), waiting
    for another process or thread that holds it; the wait is logged once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another run is writing %s", lock.lock_file, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning checkpoint loaded with ``torch.load(weights_only=True)``: tensors and plain
    values only, nothing unpickled into objects (memory-mapped, so reading a header is cheap).

    Raises:
        ArtifactError: naming the file when it is truncated, damaged, not a dict, or holds
            pickled objects (which ``weights_only`` refuses to build).
    """
    import torch

    from genrec.errors import ArtifactError, one_line

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch raises several types for a damaged file
        raise ArtifactError(f"{path}: not a readable checkpoint: truncated, damaged, or pickled objects "
                            f"that weights-only loading refuses ({type(error).__name__}: {one_line(error)[:160]})") from error
    if not isinstance(checkpoint, dict):
        raise ArtifactError(f"{path}: not a Lightning checkpoint (a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def write_json(path: str | os.PathLike[str], value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def file_digest(path: str | os.PathLike[str]) -> str:
    """A short hash of a file's bytes: the same on every machine that has the same file, unlike
    its path or modification time (a copy carried to another machine keeps neither)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def config_digest(config: Any) -> str:
    """A short, stable hash of a JSON-able config (keys sorted), for artifact cache keys."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
