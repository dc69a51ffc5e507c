"""Shared fixtures: one CPU thread for tiny tensors; one tiny pipeline run of every model."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

TINY_MODELS = ("tiger", "sasrec", "lm")


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core box: more intra-op threads only add contention (10x seen)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """A finished pipeline run of every model in ``TINY_MODELS`` (one epoch each, about 15 s
    on 2 CPU cores), run with stdout redirected to a buffer and a progress line due every
    millisecond: ``(run folder, everything printed)``. Shared by the pipeline and recommender
    tests."""
    from genrec.cli import main
    from genrec.progress import ENV_EVERY
    from tests.test_pipeline import pipeline_config

    tmp_path = tmp_path_factory.mktemp("tiny-run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box
    out = io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
            patch.chdir(tmp_path)
            patch.setenv(ENV_EVERY, "0.001")
            main(["pipeline", "--config", pipeline_config(tmp_path, dict.fromkeys(TINY_MODELS, 1))])
    finally:
        torch.set_num_threads(threads)
    return tmp_path / "runs" / "tiny", out.getvalue()
