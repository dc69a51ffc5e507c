import numpy as np
import pytest
import torch

from genrec.cli import run_encode, run_tokenize
from genrec.collaborative import cf_embeddings, cooccurrence
from genrec.data.catalog import Item
from genrec.data.formats.base import RawData
from genrec.data.sequences import SequenceData, build_sequences
from genrec.encode import embedding_label, embedding_metadata
from genrec.errors import ConfigError
from genrec.quantize.semantic_ids import SemanticIDs


def _data(sequences: dict[str, list[str]]) -> SequenceData:
    names = sorted({i for seq in sequences.values() for i in seq}, key=int)
    raw = RawData(items={n: Item.from_raw(n, title=f"t{n}") for n in names})
    for user, seq in sequences.items():
        raw.add_sequence(user, seq)
    return build_sequences(raw, kcore=0, min_length=3)


def _dense(data: SequenceData, window: int) -> np.ndarray:
    return cooccurrence(data, window).toarray()


def test_cooccurrence_counts_the_training_part_within_the_window():
    # one user 0 1 2 3 4: training part 0 1 2 (3 is validation, 4 test)
    data = _data({"u": ["0", "1", "2", "3", "4"]})
    matrix = _dense(data, window=2)
    expected = np.zeros((5, 5))
    for a, b, w in [(0, 1, 1.0), (1, 2, 1.0), (0, 2, 0.5)]:
        expected[a, b] = expected[b, a] = w
    np.testing.assert_allclose(matrix, expected)
    np.testing.assert_allclose(_dense(data, window=1), np.where(expected == 1.0, 1.0, 0.0))


def test_pairs_never_cross_users():
    data = _data({"a": ["0", "1", "5", "6", "7"], "b": ["2", "3", "5", "6", "7"]})
    matrix = _dense(data, window=3)
    assert matrix[1, 2] == 0 and matrix[0, 3] == 0  # the end of a's training part next to b's start
    assert matrix[0, 1] == 1 and matrix[2, 3] == 1


def test_validation_and_test_items_are_never_read():
    rng = np.random.default_rng(0)
    sequences = {str(u): [str(i) for i in rng.choice(30, size=8, replace=False)] for u in range(40)}
    changed = {u: seq[:-2] + [str((int(x) + 7) % 30) for x in seq[-2:]] for u, seq in sequences.items()}
    a, b = _data(sequences), _data(changed)
    assert a.catalog.fingerprint() == b.catalog.fingerprint() and not torch.equal(a.items, b.items)
    np.testing.assert_array_equal(_dense(a, 3), _dense(b, 3))
    torch.testing.assert_close(cf_embeddings(a, dim=4)[0], cf_embeddings(b, dim=4)[0])


def test_items_bought_together_embed_close():
    # two communities: users buy among items 0-9 or among items 10-19, never across
    rng = np.random.default_rng(1)
    sequences = {}
    for u in range(120):
        group = 10 * (u % 2)
        sequences[str(u)] = [str(group + i) for i in rng.choice(10, size=7, replace=False)]
    data = _data(sequences)
    table, isolated = cf_embeddings(data, dim=8)
    assert table.shape == (20, 8) and isolated == 0
    torch.testing.assert_close(table.norm(dim=1), torch.ones(20))
    ids = torch.tensor([int(data.catalog[i].external_id) for i in range(20)])
    group = ids // 10
    cosine = table @ table.T
    same = group[:, None] == group[None, :]
    off_diagonal = ~torch.eye(20, dtype=torch.bool)
    assert cosine[same & off_diagonal].mean() > 0.5 > cosine[~same].mean() + 0.3


def test_dim_must_be_below_the_item_count():
    data = _data({"u": ["0", "1", "2", "3", "4"]})
    with pytest.raises(ConfigError, match=r"encoder.cf_dim must be in \[1, 4\] for 5 items"):
        cf_embeddings(data, dim=5)


def _tiny_data_yaml(tmp_path):
    """A data preset of 60 synthetic users over 50 items, written under ``tmp_path``."""
    import yaml

    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": {
        "name": "tiny", "kcore": 0, "source": {"class_path": "genrec.data.synthetic.SyntheticSource",
                                                "init_args": {"num_users": 60, "num_items": 50, "num_categories": 4, "max_length": 10}}}}}))
    return path


def test_encode_cf_is_reused_and_tokenizes(tmp_path):
    data_yaml = _tiny_data_yaml(tmp_path)
    out = tmp_path / "cf.safetensors"
    args = ["--config", str(data_yaml), "--encoder.model", "cf", "--encoder.cf_dim", "8", "--encode.output", str(out)]
    path = run_encode(args)
    meta = embedding_metadata(path)
    assert (meta["model"], meta["cf_dim"], meta["dim"], meta["num_items"]) == ("cf", "8", "8", "50")
    stamp = out.stat().st_mtime_ns
    assert run_encode(args) == out and out.stat().st_mtime_ns == stamp  # same settings: reused
    run_encode([*args[:-4], "--encoder.cf_dim", "6", "--encode.output", str(out)])
    assert embedding_metadata(out)["dim"] == "6"  # other settings: recomputed
    sids_path = run_tokenize(["--config", str(data_yaml), "--encoder.model", "cf", "--encoder.cf_dim", "8",
                              "--encode.output", str(tmp_path / "cf8.safetensors"),
                              "--tokenizer", "genrec.quantize.RQKMeans", "--tokenizer.codebook_size", "4", "--tokenizer.levels", "2",
                              "--tokenize.output", str(tmp_path / "sids.safetensors"), "--tokenize.accelerator", "cpu"])
    sids = SemanticIDs.load(sids_path)
    assert sids.num_items == 50 and sids.table.shape[1] == 3


def test_hybrid_embeddings_join_normalised_text_and_scaled_cf(tmp_path):
    from safetensors.torch import load_file

    from genrec.encode import EncoderConfig

    data_yaml = _tiny_data_yaml(tmp_path)
    out = tmp_path / "hybrid.safetensors"
    args = ["--config", str(data_yaml), "--encoder.model", "minilm", "--encoder.cf_dim", "8", "--encoder.cf_weight", "0.25",
            "--encode.output", str(out), "--encode.accelerator", "cpu"]
    path = run_encode(args)
    meta = embedding_metadata(path)
    assert (meta["model"], meta["cf_weight"], meta["dim"], meta["text_dim"]) == ("minilm", "0.25", "392", "384")
    table = load_file(str(path))["embeddings"]
    text = load_file(meta["text_embeddings"])["embeddings"]
    cf = load_file(meta["cf_embeddings"])["embeddings"]
    assert torch.allclose(table[:, :384], torch.nn.functional.normalize(text, dim=1), atol=1e-6)
    assert torch.allclose(table[:, 384:], 0.5 * torch.nn.functional.normalize(cf, dim=1), atol=1e-6)  # sqrt(0.25)
    assert embedding_metadata(meta["cf_embeddings"])["cf_dim"] == "8"
    assert meta["cf_embeddings"] == str(tmp_path / "hybrid.cf.safetensors")  # an explicit output keeps its parts beside it
    assert (embedding_label(path), embedding_label(meta["cf_embeddings"]), embedding_label(meta["text_embeddings"])) == \
        ("minilm+cf (cf_weight 0.25)", "cf", "minilm")
    stamp = out.stat().st_mtime_ns
    assert run_encode(args) == out and out.stat().st_mtime_ns == stamp  # same settings and parts: reused
    run_encode([*args[:7], "1.0", *args[8:]])
    assert torch.allclose(load_file(str(out))["embeddings"][:, 384:].norm(dim=1), torch.ones(50), atol=1e-5)  # recomputed
    # Text-only settings (and so their file names) do not mention the cf options.
    assert not any(k.startswith("cf_") for k in EncoderConfig().settings())
    assert EncoderConfig(cf_weight=0.5).settings()["cf_weight"] == 0.5
    with pytest.raises(ValueError, match="cf_weight must be >= 0, got -1"):
        EncoderConfig(cf_weight=-1)
