"""Issue 18, cases 2 and 3: an artifact records what it was made from and its consumer checks it.
tokenize refuses embeddings of another catalogue (fingerprint or row count) before training, in
one line naming both fingerprints; embeddings with NaN or infinite values are refused on load,
naming the item ids, for RQ-KMeans and RQ-VAE alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from genrec.data import SequenceDataModule
from genrec.data.datamodule import load_embeddings
from genrec.errors import ArtifactError
from genrec.quantize import RQKMeans
from genrec.quantize.stage import TokenizeConfig, check_embeddings, tokenize
from tests.reliability.helpers import data_yaml, error_line
from tests.test_configs import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


def _catalog(tmp_path: Path):
    from genrec.cli import data_parser

    parser = data_parser()
    datamodule: SequenceDataModule = parser.instantiate_classes(parser.parse_args(["--config", data_yaml(tmp_path)])).data
    return datamodule.data.catalog


def _embeddings(path: Path, rows: int, fingerprint: str, bad_rows: dict[int, float] = {}) -> Path:  # noqa: B006 - read only
    table = torch.nn.functional.normalize(torch.randn(rows, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    for row, value in bad_rows.items():
        table[row, 1] = value
    save_file({"embeddings": table}, str(path), metadata={"catalog_fingerprint": fingerprint, "num_items": str(rows)})
    return path


def _tokenize(tmp_path: Path, embeddings: Path, tokenizer: str = "rqkmeans") -> list[str]:
    extra = ["--tokenize.max_epochs", "1", "--tokenize.batch_size", "16"] if tokenizer == "rqvae" else []
    return ["tokenize", "--config", data_yaml(tmp_path), "--config", str(ROOT / f"configs/tokenizer/{tokenizer}.yaml"),
            *(["--tokenizer.init_args.overrides", "{codebook_size: 4}"] if tokenizer == "rqvae" else ["--tokenizer.init_args.codebook_size", "4"]),
            "--tokenize.embeddings", str(embeddings),
            "--tokenize.output", str(tmp_path / "sids.safetensors"), "--tokenize.accelerator", "cpu", *extra]


def test_tokenize_refuses_embeddings_of_another_catalogue(tmp_path, capsys):
    catalog = _catalog(tmp_path)
    other = _embeddings(tmp_path / "other.safetensors", len(catalog), "f" * 64)  # same row count, other catalogue
    code, line = error_line(_tokenize(tmp_path, other), capsys)
    assert code == 1
    assert f"made for catalogue fingerprint {'f' * 64}, but the catalogue in use has fingerprint {catalog.fingerprint()}" in line
    assert not (tmp_path / "sids.safetensors").exists()  # refused up front: nothing trained or written


def test_tokenize_refuses_a_row_count_mismatch_up_front(tmp_path, capsys):
    catalog = _catalog(tmp_path)
    short = _embeddings(tmp_path / "short.safetensors", len(catalog) - 1, catalog.fingerprint())
    code, line = error_line(_tokenize(tmp_path, short), capsys)
    assert code == 1 and f"item counts disagree (rows {len(catalog) - 1}, recorded num_items {len(catalog) - 1}, catalogue items {len(catalog)})" in line
    assert not (tmp_path / "sids.safetensors").exists()


def test_embeddings_without_a_fingerprint_are_refused(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"embeddings": torch.ones(5, 4)}, str(path))
    with pytest.raises(ArtifactError, match="records no catalog_fingerprint"):
        check_embeddings(path, "abc", 5)


def test_non_finite_embeddings_are_refused_on_load_naming_the_items(tmp_path):
    path = _embeddings(tmp_path / "nan.safetensors", 20, "fp", {3: float("nan"), 17: float("inf")})
    with pytest.raises(ArtifactError, match=r"2 of 20 item embeddings have NaN or infinite values \(item ids 3, 17\)"):
        load_embeddings(path)
    config = TokenizeConfig(output=str(tmp_path / "sids.safetensors"), accelerator="cpu")
    with pytest.raises(ArtifactError, match=r"item ids 3, 17"):
        tokenize(RQKMeans(codebook_size=4, iters=5), {}, path, "fp", config)
    assert not (tmp_path / "sids.safetensors").exists()


@pytest.mark.parametrize("tokenizer", ["rqkmeans", "rqvae"])
def test_tokenize_command_refuses_a_nan_embedding_in_one_line(tmp_path, capsys, tokenizer):
    catalog = _catalog(tmp_path)
    path = _embeddings(tmp_path / "nan.safetensors", len(catalog), catalog.fingerprint(), {5: float("nan")})
    code, line = error_line(_tokenize(tmp_path, path, tokenizer), capsys)
    assert code == 1 and f"nan.safetensors: 1 of {len(catalog)} item embeddings have NaN or infinite values (item ids 5)" in line
    assert not (tmp_path / "sids.safetensors").exists()
