"""RQ-KMeans: residual k-means, level by level, in torch (CPU or GPU), seeded.

Level ``l`` clusters the residuals ``r_l`` left by the levels before it (``r_0`` = the item
embeddings) into ``codebook_size`` centroids with k-means++ seeding and Lloyd iterations; each
item takes its nearest centroid ``C_l[c_l]`` and passes on ``r_{l+1} = r_l - C_l[c_l]``.

``normalize`` chooses the geometry:

* ``"none"``: plain residual vector quantization (RVQ) of the raw embeddings;
* ``"input"``: the embeddings are L2-normalised once, then plain RVQ (cosine geometry);
* ``"residual"``: every level's residual is L2-normalised before it is clustered, so each level
  codes a direction (``r_{l+1} = r_l / |r_l| - C_l[c_l]``), as GRID's RQ-KMeans does.

Normalising discards norms, so :meth:`RQKMeans.reconstruct` scales a normalised level by the mean
norm (recorded at fit time) of the residuals that took the same code; with ``"none"`` it is the
exact RVQ sum of centroids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.artifacts import atomic_path
from genrec.errors import positive
from genrec.quantize.protocol import FitSettings

Normalize = Literal["none", "input", "residual"]
_EPS = 1e-12


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes:
        centroids: ``[K, D]``.
        assignments: ``[N]`` int64 nearest centroid of each point.
        inertia: sum of squared distances to the assigned centroids.
        iterations: Lloyd iterations run.
        reseeded: empty clusters re-seeded (over all iterations).
    """

    centroids: Tensor
    assignments: Tensor
    inertia: float
    iterations: int
    reseeded: int


def nearest(x: Tensor, centroids: Tensor, chunk_size: int = 8192) -> tuple[Tensor, Tensor]:
    """Nearest centroid by Euclidean distance, computed in row chunks.

    Args:
        x: ``[N, D]`` points.
        centroids: ``[K, D]``.
        chunk_size: rows per distance block (memory ``chunk_size * K``).

    Returns:
        ``([N] int64 index, [N] squared distance)``; ties go to the lowest index.
    """
    c_sq = centroids.pow(2).sum(-1)
    index, dist = [], []
    for chunk in x.split(chunk_size):
        d = (chunk.pow(2).sum(-1, keepdim=True) - 2 * chunk @ centroids.T + c_sq).clamp_min_(0)
        best = d.min(dim=-1)
        index.append(best.indices)
        dist.append(best.values)
    if not index:
        return torch.zeros(0, dtype=torch.long, device=x.device), x.new_zeros(0)
    return torch.cat(index), torch.cat(dist)


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: ``k`` rows of ``x`` (``[N, D]``), each drawn with probability
    proportional to its squared distance to the nearest one already drawn. Returns ``[k, D]``."""
    n = x.shape[0]
    centers = x.new_empty(k, x.shape[1])
    first = int(torch.randint(n, (1,), generator=generator, device=generator.device))
    centers[0] = x[first]
    closest = (x - centers[0]).pow(2).sum(-1)
    for i in range(1, k):
        total = closest.sum()
        if float(total) <= 0:  # every point sits on a center already: draw uniformly
            pick = int(torch.randint(n, (1,), generator=generator, device=generator.device))
        else:
            pick = int(torch.multinomial(closest / total, 1, generator=generator))
        centers[i] = x[pick]
        closest = torch.minimum(closest, (x - centers[i]).pow(2).sum(-1))
    return centers


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    init_samples: int = 65536,
    chunk_size: int = 8192,
) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        x: ``[N, D]`` float points.
        k: number of clusters.
        iters: at most this many Lloyd iterations.
        tol: stop when the inertia falls by less than ``tol`` (relative) in an iteration.
        generator: random source (on ``x``'s device); a fresh one seeded 0 if ``None``.
        init_samples: k-means++ runs on at most this many random points.
        chunk_size: rows per distance block.

    Empty clusters are re-seeded with the points farthest from their centroids.
    """
    generator = generator or torch.Generator(device=x.device).manual_seed(0)
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    seed_pool = x
    if n > init_samples:
        seed_pool = x[torch.randperm(n, generator=generator, device=generator.device)[:init_samples].to(x.device)]
    centroids = kmeans_plusplus(seed_pool, k, generator)
    previous = float("inf")
    reseeded = 0
    iterations = 0
    for iterations in range(1, iters + 1):  # noqa: B007 (used after the loop)
        assign, dist = nearest(x, centroids, chunk_size)
        inertia = float(dist.sum())
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        updated = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = counts == 0
        num_empty = int(empty.sum())
        if num_empty:
            far = dist.topk(min(num_empty, n)).indices
            updated[empty.nonzero().squeeze(1)[: len(far)]] = x[far]
            reseeded += num_empty
        centroids = updated
        if not num_empty and previous < float("inf") and previous - inertia <= tol * max(previous, _EPS):
            break
        previous = inertia
    assign, dist = nearest(x, centroids, chunk_size)
    return KMeansResult(centroids, assign, float(dist.sum()), iterations, reseeded)


class RQKMeans:
    """Residual k-means tokenizer (see the module docstring).

    Args:
        levels: residual levels (SID digits before the dedup digit).
        codebook_size: centroids per level.
        normalize: ``"none"`` (plain RVQ), ``"input"`` or ``"residual"`` (L2-normalise every
            level's residual before clustering).
        iters: at most this many Lloyd iterations per level.
        tol: relative inertia improvement below which a level stops early.
        seed: seed of the k-means++ draws.
        init_samples: k-means++ seeding runs on at most this many random points per level.
        chunk_size: rows per distance block.
        device: where to fit (``None``: the device of the embeddings given to :meth:`fit`).
    """

    def __init__(
        self,
        levels: int = 3,
        codebook_size: int = 256,
        normalize: Normalize = "residual",
        iters: int = 100,
        tol: float = 1e-4,
        seed: int = 0,
        init_samples: int = 65536,
        chunk_size: int = 8192,
        device: str | None = None,
    ) -> None:
        if normalize not in ("none", "input", "residual"):
            raise ValueError(f"normalize must be 'none', 'input' or 'residual', got {normalize!r}")
        positive("RQKMeans", iters=iters, init_samples=init_samples, chunk_size=chunk_size)
        if levels < 1 or codebook_size < 2:
            raise ValueError(f"need levels >= 1 and codebook_size >= 2, got {levels} and {codebook_size}")
        self.levels = levels
        self.codebook_size = codebook_size
        self.normalize = normalize
        self.iters = iters
        self.tol = tol
        self.seed = seed
        self.init_samples = init_samples
        self.chunk_size = chunk_size
        self.device = device
        self.centroids: Tensor | None = None
        """``[levels, codebook_size, D]`` after :meth:`fit`."""
        self.scales: Tensor | None = None
        """``[levels, codebook_size]`` mean residual norm per code (1 on levels not normalised)."""
        self.fit_stats: list[dict[str, float]] = []
        """Per level: ``inertia``, ``iterations``, ``reseeded``."""

    def _normalised(self, level: int) -> bool:
        return self.normalize == "residual" or (self.normalize == "input" and level == 0)

    file_suffix: ClassVar[str] = ".tokenizer.safetensors"
    """The file :meth:`save` writes beside a SID artifact (the tokenizer protocol's)."""

    def fit(self, embeddings: Tensor, settings: FitSettings | None = None) -> RQKMeans:
        """Learn the centroids of every level from ``embeddings`` (``[N, D]``). Returns ``self``.

        With ``settings`` (the tokenize stage's): their ``seed``, and without a ``device`` of its
        own, the GPU when ``settings`` allow one."""
        if settings is not None:
            self.seed = settings.seed
            if self.device is None and settings.may_use_cuda():
                embeddings = embeddings.cuda()
        device = torch.device(self.device) if self.device else embeddings.device
        residual = embeddings.to(device, torch.float32)
        if residual.ndim != 2:
            raise ValueError(f"embeddings must be [N, D], got {tuple(residual.shape)}")
        generator = torch.Generator(device=device).manual_seed(self.seed)
        centroids, scales, self.fit_stats = [], [], []
        for level in range(self.levels):
            norms = None
            if self._normalised(level):
                norms = residual.norm(dim=-1)
                residual = residual / norms.clamp_min(_EPS)[:, None]
            result = kmeans(residual, self.codebook_size, self.iters, self.tol, generator, self.init_samples, self.chunk_size)
            scale = torch.ones(self.codebook_size, device=device)
            if norms is not None:
                counts = torch.bincount(result.assignments, minlength=self.codebook_size)
                sums = torch.zeros(self.codebook_size, device=device).index_add_(0, result.assignments, norms)
                scale = torch.where(counts > 0, sums / counts.clamp_min(1), norms.mean())
            centroids.append(result.centroids)
            scales.append(scale)
            self.fit_stats.append({"inertia": result.inertia, "iterations": result.iterations, "reseeded": result.reseeded})
            residual = residual - result.centroids[result.assignments]
        self.centroids = torch.stack(centroids)
        self.scales = torch.stack(scales)
        return self

    def _check_fitted(self) -> tuple[Tensor, Tensor]:
        if self.centroids is None or self.scales is None:
            raise RuntimeError("RQKMeans is not fitted: call fit() or load()")
        return self.centroids, self.scales

    def encode(self, embeddings: Tensor) -> Tensor:
        """``[N, D]`` embeddings -> ``[N, levels]`` int64 codes (on the embeddings' device)."""
        centroids, _ = self._check_fitted()
        residual = embeddings.to(centroids.device, torch.float32)
        codes = []
        for level in range(self.levels):
            if self._normalised(level):
                residual = F.normalize(residual, dim=-1, eps=_EPS)
            index, _ = nearest(residual, centroids[level], self.chunk_size)
            codes.append(index)
            residual = residual - centroids[level][index]
        return torch.stack(codes, dim=1).to(embeddings.device)

    encode_codes = encode

    def reconstruct(self, codes: Tensor) -> Tensor:
        """``[N, levels]`` codes -> ``[N, D]`` approximate embeddings (see the module docstring)."""
        centroids, scales = self._check_fitted()
        idx = codes.to(centroids.device).long()
        out = torch.zeros(idx.shape[0], centroids.shape[-1], device=centroids.device)
        for level in reversed(range(self.levels)):
            out = scales[level][idx[:, level], None] * (centroids[level][idx[:, level]] + out)
        return out.to(codes.device)

    def reconstruction_error(self, embeddings: Tensor) -> float:
        """Mean squared error (per element) of ``embeddings`` ``[N, D]`` rebuilt from their codes."""
        recon = self.reconstruct(self.encode(embeddings))
        return float(F.mse_loss(recon, embeddings.float()))

    def config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "normalize": self.normalize,
            "iters": self.iters,
            "tol": self.tol,
            "seed": self.seed,
            "init_samples": self.init_samples,
            "chunk_size": self.chunk_size,
        }

    def describe(self) -> dict[str, Any]:
        """The quantizer config and fit statistics, for the SID artifact."""
        return {"class": type(self).__name__, **self.config(), "fit_stats": self.fit_stats}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write centroids and scales (safetensors, config in the metadata), atomically."""
        from safetensors.torch import save_file

        centroids, scales = self._check_fitted()
        path = Path(path)
        meta = {"config": json.dumps(self.config()), "fit_stats": json.dumps(self.fit_stats)}
        with atomic_path(path) as tmp:
            save_file({"centroids": centroids.cpu().contiguous(), "scales": scales.cpu().contiguous()}, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> RQKMeans:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            centroids, scales = handle.get_tensor("centroids"), handle.get_tensor("scales")
        model = cls(**{**json.loads(meta["config"]), "device": device})
        model.fit_stats = json.loads(meta.get("fit_stats", "[]"))
        model.centroids = centroids.to(device or "cpu")
        model.scales = scales.to(device or "cpu")
        return model
