"""Fixtures of the tokenizer tests: planted clusters, an embedding file, one CPU thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(autouse=True)
def _tiny_tensors_one_thread(one_thread):
    """Tokenizer tests run tiny tensors: one intra-op thread (see tests/conftest.py)."""
    yield


def planted_clusters(seed: int = 0, clusters: int = 8, per_cluster: int = 60, dim: int = 32, spread: float = 3.0):
    """``clusters`` Gaussian blobs (unit noise, centres ~ N(0, spread^2)): ``([N, dim], [N] labels)``."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * spread
    x = (centres[:, None, :] + torch.randn(clusters, per_cluster, dim, generator=g)).reshape(-1, dim)
    return x, torch.arange(clusters).repeat_interleave(per_cluster)


def same_code_rates(first_level: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Share of item pairs with the same code, within clusters and across clusters (self-pairs excluded)."""
    same = first_level[:, None] == first_level[None, :]
    same_label = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(labels), dtype=torch.bool)
    within = same[same_label & off_diagonal].float().mean().item()
    across = same[~same_label].float().mean().item()
    return within, across


def write_embeddings(path: Path, x: torch.Tensor, **metadata: str) -> Path:
    save_file({"embeddings": x.contiguous()}, str(path), metadata=metadata or None)
    return path


@pytest.fixture
def planted():
    return planted_clusters()
