"""Shared fixtures: one CPU thread for tiny tensors."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core box: more intra-op threads only add contention (10x seen)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
