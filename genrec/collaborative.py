"""Collaborative item embeddings: the encode stage's ``cf`` encoder, from interactions instead of text.

Semantic IDs are only as informative as the embeddings they quantize. This encoder embeds items
by how users interact with them, so that SIDs built from text and SIDs built from behaviour can
be compared on the same pipeline (the paper's question of how much a short SID can carry).

The embedding: count, over the *training* part of every user's sequence (positions
``0 .. n-3``; the validation and test items are never read), how often items ``i`` and ``j``
occur within ``window`` positions of each other, each pair weighted ``1 / distance`` and counted
both ways; take the positive pointwise mutual information of that matrix (Levy & Goldberg's PPMI,
``max(0, log(C_ij * total / (C_i * C_j)))``); factorise it by truncated SVD (scipy's ``svds``) to
``dim`` components; embed item ``i`` as ``U_i * sqrt(S)`` and L2-normalise. Items with no
positive-PMI partner (e.g. items that occur only at validation or test positions: 33 of Beauty's
12,101) get a deterministic random unit vector and are counted in the file's metadata
(``isolated_items``) and in the log.

The file has the layout and metadata of :func:`genrec.encode.encode_catalog`'s output (``model:
cf``, the catalogue fingerprint, the item count), so the tokenize stage takes it unchanged.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from genrec.artifacts import atomic_path
from genrec.data.sequences import SequenceData
from genrec.encode.config import CF_MODEL
from genrec.errors import ConfigError

log = logging.getLogger(__name__)


def cooccurrence(data: SequenceData, window: int = 3):
    """The symmetric ``[N, N]`` scipy CSR matrix of training co-occurrence counts.

    Pairs within ``window`` positions of one user's training part (positions ``0 .. n-3``) add
    ``1 / distance`` to both ``(i, j)`` and ``(j, i)``.
    """
    import scipy.sparse as sp

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, cols, weights = [], [], []
    for distance in range(1, window + 1):
        a, b = data.training_pairs(distance)
        rows += [a, b]
        cols += [b, a]
        weights.append(torch.full((2 * len(a),), 1.0 / distance, dtype=torch.float64))
    rows_t, cols_t = torch.cat(rows).numpy(), torch.cat(cols).numpy()
    n = data.num_items
    return sp.coo_matrix((torch.cat(weights).numpy(), (rows_t, cols_t)), shape=(n, n)).tocsr()


def ppmi(counts):  # scipy.sparse matrices (scipy is imported lazily)
    """Positive pointwise mutual information of a symmetric count matrix (scipy CSR in, CSR out)."""
    import scipy.sparse as sp

    coo = counts.tocoo()
    total = coo.data.sum()
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    positive = pmi > 0
    return sp.coo_matrix((pmi[positive], (coo.row[positive], coo.col[positive])), shape=counts.shape).tocsr()


def cf_embeddings(data: SequenceData, dim: int = 64, window: int = 3, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Item embeddings from training co-occurrence (see the module docstring).

    Returns:
        ``([N, dim]`` float32 unit-norm embeddings, number of isolated items``)``.
    """
    from scipy.sparse.linalg import svds

    n = data.num_items
    if not 1 <= dim < n:
        raise ConfigError(f"encoder.cf_dim must be in [1, {n - 1}] for {n} items (the SVD rank), got {dim}")
    matrix = ppmi(cooccurrence(data, window))
    rng = np.random.default_rng(seed)
    u, s, _ = svds(matrix, k=dim, v0=rng.standard_normal(n))
    table = u * np.sqrt(s)
    isolated = np.asarray(matrix.sum(axis=1)).ravel() == 0
    norms = np.linalg.norm(table, axis=1)
    isolated |= norms == 0
    table[isolated] = rng.standard_normal((int(isolated.sum()), dim))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    return torch.from_numpy(table.astype(np.float32)), int(isolated.sum())


def encode_interactions(
    data: SequenceData,
    output: str | Path,
    dim: int = 64,
    window: int = 3,
    dtype: str = "float32",
    data_name: str = "",
    settings: dict[str, str] | None = None,
) -> Path:
    """Write the collaborative embeddings of ``data``'s items to ``output`` (atomically).

    Args:
        settings: metadata to record (the encode stage's settings, so a re-run with the same
            ones is recognised); ``dim``, ``window``, the item count and fingerprint are added.

    Returns:
        ``output``.
    """
    output = Path(output)
    started = time.perf_counter()
    table, isolated = cf_embeddings(data, dim, window)
    seconds = time.perf_counter() - started
    if isolated:
        log.warning("%d of %d items co-occur with no other item in training: random unit embeddings", isolated, data.num_items)
    metadata = {
        **(settings or {}),
        "model": CF_MODEL,
        "cf_dim": str(dim),
        "cf_window": str(window),
        "num_items": str(data.num_items),
        "catalog_fingerprint": data.catalog.fingerprint(),
        "data": data_name,
        "dtype": dtype,
        "dim": str(dim),
        "isolated_items": str(isolated),
        "encode_seconds": f"{seconds:.2f}",
        "items_encoded": str(data.num_items),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        save_file({"embeddings": table.to(getattr(torch, dtype)).contiguous()}, str(tmp), metadata=metadata)
    log.info("wrote %s: %d x %d collaborative embeddings in %.1fs", output, data.num_items, dim, seconds)
    return output


__all__ = ["cf_embeddings", "cooccurrence", "encode_interactions", "ppmi"]
