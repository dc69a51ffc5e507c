"""The worked examples of docs/extending.md run as written: the Python blocks are saved as a
module of their own (``my_ext``) and each extension is used the way the document says."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from genrec.data import SequenceDataModule
from genrec.quantize.protocol import FitSettings, Tokenizer

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture()
def my_ext(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3, "docs/extending.md: one Python example per extension"
    (tmp_path / "my_ext.py").write_text("\n\n".join(blocks))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_ext", None)
    yield importlib.import_module("my_ext")
    sys.modules.pop("my_ext", None)


def tsv_folder(folder: Path) -> Path:
    folder.mkdir()
    items = [f"i{k}" for k in range(12)]
    (folder / "items.tsv").write_text("".join(f"{i}\ttitle of {i}\n" for i in items))
    rows = [f"u{u}\t{items[(u + t) % 12]}\t{1_600_000_000 + 60 * t}\n" for u in range(10) for t in range(6)]
    (folder / "events.tsv").write_text("".join(rows) + "u0\ti1\n")  # a bad line, to be skipped and counted
    return folder


def test_the_data_format_example_reads_and_counts_a_bad_line(my_ext, tmp_path):
    source = my_ext.TsvSource(str(tsv_folder(tmp_path / "d")), skip_bad_lines=True)
    dm = SequenceDataModule(source=source, name="doc", kcore=0, batch_size=8)
    dm.setup("fit")
    assert dm.data.num_items == 12 and dm.data.num_users == 10
    raw = my_ext.TsvSource(str(tmp_path / "d"), skip_bad_lines=True).read()
    assert sum(raw.report.bad_lines.values()) == 1 and "events.tsv:61" in raw.report.bad_line_examples[0]


def test_the_tokenizer_example_follows_the_protocol_and_round_trips(my_ext, tmp_path):
    tokenizer = my_ext.ProjectedKMeans(codebook_size=4, dim=3)
    assert isinstance(tokenizer, Tokenizer)
    embeddings = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    codes = tokenizer.fit(embeddings, FitSettings(seed=1)).encode_codes(embeddings)
    assert codes.shape == (40, 1) and int(codes.min()) >= 0 and int(codes.max()) < 4
    loaded = my_ext.ProjectedKMeans.load(tokenizer.save(tmp_path / "t.tokenizer.safetensors"))
    assert torch.equal(loaded.encode_codes(embeddings), codes)


def test_the_recommender_example_trains_and_recommends(my_ext, tmp_path):
    dm = SequenceDataModule(source=my_ext.TsvSource(str(tsv_folder(tmp_path / "d")), skip_bad_lines=True), name="doc", kcore=0, batch_size=8)
    model = my_ext.LastItemModel(dim=8)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["test/recall@10"] <= 1.0
    batch = next(iter(dm.test_dataloader()))
    result = model.recommend(batch, k=5)
    assert result.items.shape == (len(batch.targets), 5)
    assert all(row.unique().numel() == 5 for row in result.items)
