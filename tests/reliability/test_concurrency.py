"""Issue 18, case 5: two runs writing one output take turns (a lock per output path) and leave a
complete, consistent artifact. Each run's work inside the lock is slowed down so that, without
the lock, the two would overlap (and did: the first encode deleted the other's ``.parts``)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import genrec.encode
from genrec.artifacts import file_digest
from genrec.data import SequenceDataModule
from genrec.data.synthetic import SyntheticSource
from genrec.encode import EncoderConfig, encode_items
from genrec.quantize import RQKMeans, SemanticIDs
from genrec.quantize.stage import TokenizeConfig, tokenize

pytestmark = pytest.mark.usefixtures("one_thread")


def _in_turns(work, count: int = 2) -> list[object]:
    """Run ``work(i)`` in ``count`` threads started together; their results (errors re-raised)."""
    results: list[object] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def _timed(spans: list[tuple[float, float]], function, pause: float = 0.4):
    """``function`` that records its (start, end) in ``spans`` and takes at least ``pause`` s."""

    def wrapper(*args, **kwargs):
        began = time.monotonic()
        time.sleep(pause)
        try:
            return function(*args, **kwargs)
        finally:
            spans.append((began, time.monotonic()))

    return wrapper


def _disjoint(spans: list[tuple[float, float]]) -> bool:
    first, second = sorted(spans)
    return first[1] <= second[0]


def test_two_tokenizes_to_one_output_take_turns_and_leave_a_consistent_set(tmp_path, monkeypatch):
    emb = tmp_path / "emb.safetensors"
    table = torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    save_file({"embeddings": table}, str(emb), metadata={"catalog_fingerprint": "fp", "num_items": "64"})
    spans: list[tuple[float, float]] = []
    monkeypatch.setattr(RQKMeans, "fit", _timed(spans, RQKMeans.fit))
    output = tmp_path / "sids.safetensors"

    def work(i: int) -> SemanticIDs:  # two settings (seeds): the second run rebuilds after the first
        return tokenize(RQKMeans(codebook_size=4, iters=5), {"seed": i}, emb, "fp", TokenizeConfig(output=str(output), accelerator="cpu", seed=i))[1]

    first, second = _in_turns(work)
    assert len(spans) == 2 and _disjoint(spans)  # the trainings never overlapped
    final = SemanticIDs.load(output, expected_fingerprint="fp")
    assert final.quantizer["stage"]["train"]["seed"] in (0, 1) and final.num_items == 64
    winner = first if final.quantizer["stage"]["train"]["seed"] == 0 else second
    assert torch.equal(final.table, winner.table)  # the file is one run's whole result
    companion = output.with_name(final.quantizer["tokenizer_file"])
    assert file_digest(companion) == final.quantizer["tokenizer_digest"]  # its tokenizer, not the other run's
    assert json.loads(output.with_suffix(".json").read_text())["quantizer"]["stage_digest"] == final.quantizer["stage_digest"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_encodes_to_one_output_take_turns_and_the_second_reuses(tmp_path, monkeypatch):
    datamodule = SequenceDataModule(SyntheticSource(num_users=30, num_items=40, num_categories=4, num_brands=8, max_length=8), kcore=0)
    data = datamodule.data
    spans: list[tuple[float, float]] = []
    monkeypatch.setattr(genrec.encode, "encode_catalog", _timed(spans, genrec.encode.encode_catalog))
    output = tmp_path / "emb.safetensors"

    def work(i: int) -> Path:
        return encode_items(data, output, EncoderConfig(model="minilm", max_length=32), data_name="tiny", batch_size=16, chunk_size=8, accelerator="cpu", devices=1)

    paths = _in_turns(work)
    assert paths == [output, output]
    assert len(spans) == 2 and _disjoint(spans)
    with safe_open(str(output), "pt") as f:
        meta, rows = f.metadata(), f.get_tensor("embeddings")
    assert rows.shape[0] == data.num_items and bool(torch.isfinite(rows).all())
    assert meta["catalog_fingerprint"] == data.catalog.fingerprint() and meta["items_encoded"] == str(data.num_items)
    assert not output.with_name(output.name + ".parts").exists()
