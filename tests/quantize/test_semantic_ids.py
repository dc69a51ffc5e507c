import json
import os

import pytest
import torch

from genrec.quantize import (
    SemanticIDs,
    assign_dedup,
    build_semantic_ids,
    dedup_digits,
    quality_report,
)
from genrec.quantize.semantic_ids import FORMAT
from tests.quantize.conftest import write_embeddings


def test_dedup_digits_hand_example():
    codes = torch.tensor([[1, 2], [1, 2], [0, 0], [1, 2]])
    assert dedup_digits(codes).tolist() == [0, 1, 0, 2]
    assert assign_dedup(codes).tolist() == [[1, 2, 0], [1, 2, 1], [0, 0, 0], [1, 2, 2]]
    assert SemanticIDs.assign_dedup(codes).dtype == torch.int64


def test_dedup_matches_a_reference_and_makes_sids_unique():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 3, (500, 2), generator=g)
    seen: dict[tuple[int, ...], int] = {}
    expected = []
    for row in codes.tolist():  # reference: count earlier items with the same tuple
        expected.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = expected[-1] + 1
    assert dedup_digits(codes).tolist() == expected
    table = assign_dedup(codes)
    assert torch.unique(table, dim=0).shape[0] == len(codes)
    assert dedup_digits(torch.zeros(0, 3, dtype=torch.long)).shape == (0,)


def test_quality_report_hand_example():
    codes = torch.tensor([[0, 1], [0, 1], [1, 0], [2, 0]])
    report = quality_report(codes, codebook_size=4, reconstruction_error=0.5)
    level0, level1 = report["per_level"]
    assert (level0["codes_used"], level0["fraction_used"], level0["unique_prefixes"]) == (3, 0.75, 3)
    assert level0["perplexity"] == pytest.approx(2 ** 1.5)  # p = (1/2, 1/4, 1/4): H = 1.5 bits
    assert (level1["codes_used"], level1["unique_prefixes"]) == (2, 3)
    assert level1["perplexity"] == pytest.approx(2.0)
    assert report["collision_rate"] == 0.25
    assert report["items_with_dedup"] == 1
    assert report["max_dedup_digit"] == 1 and report["dedup_size"] == 2
    assert report["reconstruction_error"] == 0.5
    assert report["warnings"] == []
    json.dumps(report)  # JSON-able


def test_quality_report_flags_a_collapse():
    report = quality_report(torch.zeros(300, 3, dtype=torch.long), codebook_size=16)
    assert all(level["fraction_used"] == 1 / 16 and level["perplexity"] == 1.0 for level in report["per_level"])
    assert report["collision_rate"] == pytest.approx(299 / 300)
    assert report["dedup_size"] == 300
    assert any("collapse" in w for w in report["warnings"])
    assert any("beyond the codebook size" in w for w in report["warnings"])


def test_lookups_both_ways():
    sids = SemanticIDs.from_codes(torch.tensor([[1, 2], [1, 2], [0, 0], [1, 2]]), codebook_size=3)
    assert sids.table.tolist() == [[1, 2, 0], [1, 2, 1], [0, 0, 0], [1, 2, 2]]
    assert sids.sid_of(3) == (1, 2, 2)
    assert [sids.item_of(sids.sid_of(i)) for i in range(4)] == [0, 1, 2, 3]
    assert sids.items_of(torch.tensor([[1, 2, 1], [0, 0, 1], [2, 2, 0], [1, 2, 9], [-1, 0, 0]])).tolist() == [1, -1, -1, -1, -1]
    with pytest.raises(KeyError):
        sids.item_of((0, 0, 1))
    assert sids.levels == 2 and sids.num_items == 4
    assert sids.vocab_sizes == [3, 3, 3]


def test_dedup_digit_beyond_codebook_is_recorded():
    sids = SemanticIDs.from_codes(torch.zeros(5, 2, dtype=torch.long), codebook_size=2)
    assert sids.dedup_size == 5
    assert sids.vocab_sizes == [2, 2, 5]
    assert sids.metadata()["dedup_size"] == 5
    assert sids.item_of((0, 0, 4)) == 4


def test_codes_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        SemanticIDs.from_codes(torch.tensor([[0, 4]]), codebook_size=4)


def _sids() -> SemanticIDs:
    codes = torch.randint(0, 8, (50, 3), generator=torch.Generator().manual_seed(1))
    return SemanticIDs.from_codes(
        codes, 8, quantizer={"class": "RQKMeans", "levels": 3}, embeddings="emb.safetensors", fingerprint="abc", reconstruction_error=0.25
    )


def test_save_load_round_trip(tmp_path):
    sids = _sids()
    path = sids.save(tmp_path / "sids.safetensors")
    back = SemanticIDs.load(path, expected_fingerprint="abc")
    assert torch.equal(back.table, sids.table) and torch.equal(back.codes, sids.codes)
    assert back.codebook_size == 8 and back.fingerprint == "abc" and back.embeddings == "emb.safetensors"
    assert back.quantizer == {"class": "RQKMeans", "levels": 3}
    assert back.quality == sids.quality and back.quality["reconstruction_error"] == 0.25
    assert back.metadata() == sids.metadata()
    sidecar = json.loads((tmp_path / "sids.json").read_text())
    assert sidecar["format"] == FORMAT and sidecar["dedup_size"] == sids.dedup_size
    assert sorted(os.listdir(tmp_path)) == ["sids.json", "sids.safetensors"]  # no temporary files left


def test_fingerprint_mismatch_names_both(tmp_path):
    path = _sids().save(tmp_path / "sids.safetensors")
    with pytest.raises(ValueError, match="'abc'.*'xyz'"):
        SemanticIDs.load(path, expected_fingerprint="xyz")


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = _sids().save(tmp_path / "sids.safetensors", sidecar=False)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        SemanticIDs.from_codes(torch.zeros(3, 3, dtype=torch.long), 8).save(path, sidecar=False)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["sids.safetensors"]


def test_load_refuses_other_files(tmp_path):
    path = write_embeddings(tmp_path / "emb.safetensors", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="not a semantic-ID artifact"):
        SemanticIDs.load(path)


def test_build_semantic_ids_from_an_embedding_file(tmp_path):
    class Fixed:
        """A stand-in tokenizer: code = row's argmax, twice."""

        codebook_size = 4

        def encode_codes(self, embeddings):
            top = embeddings.argmax(dim=1)
            return torch.stack([top, top], dim=1)

        def reconstruction_error(self, embeddings):
            return 0.0

        def describe(self):
            return {"class": "Fixed"}

    x = torch.eye(4)[[0, 1, 1, 3]]
    emb = write_embeddings(tmp_path / "emb.safetensors", x, catalog_fingerprint="fp1")
    sids = build_semantic_ids(Fixed(), emb, output=tmp_path / "sids.safetensors")
    assert sids.table.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1], [3, 3, 0]]
    back = SemanticIDs.load(tmp_path / "sids.safetensors", expected_fingerprint="fp1")
    assert back.embeddings == str(emb) and back.quantizer == {"class": "Fixed"}


def test_next_item_prefix_match_counts_shared_prefixes_and_chance():
    from genrec.quantize.semantic_ids import next_item_prefix_match

    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    earlier, later = torch.tensor([0, 0, 2, 3]), torch.tensor([1, 2, 3, 3])
    level0, level1 = next_item_prefix_match(codes, earlier, later)
    # level 0: pairs (0,1) share code 0, (0,2) do not, (2,3) and (3,3) share code 1
    assert level0["share"] == 0.75 and level1["share"] == 0.25
    # chance: earlier prefixes [0, 0, 1, 1], later [0, 1, 1, 1] -> 0.5 * 0.25 + 0.5 * 0.75
    assert abs(level0["chance"] - 0.5) < 1e-12
    # full codes: earlier [0, 0, 2, 3], later [1, 2, 3, 3] -> p(2) 0.25 * 0.25 + p(3) 0.25 * 0.5
    assert abs(level1["chance"] - 0.1875) < 1e-12
    report = SemanticIDs.from_codes(codes, 2, transitions=(earlier, later)).quality
    assert report["training_transitions"] == 4 and report["next_item_prefix_match"][0]["share"] == 0.75
