"""Extending genrec without editing genrec/: a recommender, a tokenizer and a data-format reader
defined in this file run through the pipeline (the Python API) on synthetic data and serve
recommendations through ``Recommender.load(...).recommend(...)``.

* :class:`SidGRU`: a :class:`~genrec.models.RecommenderModule` that reads semantic IDs
  (``needs_sids``): an item is the sum of its SID tokens' embeddings, a GRU reads the history,
  every item is scored by a dot product.
* :class:`HashTokenizer`: the :class:`~genrec.quantize.protocol.Tokenizer` protocol by
  random-projection hashing (no k-means): each level's code is the sign pattern of ``bits``
  random projections of the residual; the level's codebook is the mean residual per code.
* :class:`TsvSource`: a :class:`~genrec.data.formats.base.DataSource` reading ``items.tsv``
  (id, title) and ``events.tsv`` (user, item, time), bad lines named by file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from genrec.artifacts import atomic_path, read_json
from genrec.data.catalog import Item, ItemCatalog
from genrec.data.datamodule import PAD_ITEM, SeqBatch, load_embeddings
from genrec.data.formats.base import DataFormatError, DataSource, RawData, ReadReport, iter_lines
from genrec.data.synthetic import SyntheticSource
from genrec.decoding import BeamResult
from genrec.errors import ArtifactError
from genrec.metrics import RecEvaluation
from genrec.models import RecommenderModule, recommender_class
from genrec.models.optim import OptimizerConfig
from genrec.pipeline import PipelineConfig, run_pipeline
from genrec.quantize import FitSettings, SemanticIDs, Tokenizer
from genrec.recommender import Recommender
from tests.test_configs import ROOT

HERE = __name__  # "tests.test_extension": the module the configs name and Recommender.load trusts


# ---- a recommender ----------------------------------------------------------------------------


class SidGRU(RecommenderModule):
    """A GRU over SID-token item embeddings; full-catalogue scores.

    Args:
        sids: the SID file (the pipeline sets it: ``needs_sids``).
        hidden_size: embedding and GRU width.
        lr: AdamW learning rate.
        ks: cut-offs of Recall@K / NDCG@K.
    """

    needs_sids: ClassVar[bool] = True
    score_meaning: ClassVar[str] = "dot product of the GRU state with the item's SID embedding"

    def __init__(self, sids: str, hidden_size: int = 16, lr: float = 0.01, ks: tuple[int, ...] = (5, 10)) -> None:
        super().__init__()
        self.save_hyperparameters()
        vocab = SemanticIDs.load(sids).vocab_sizes
        self.register_buffer("offsets", torch.tensor([0, *vocab[:-1]]).cumsum(0), persistent=False)
        self.register_buffer("codes", torch.zeros(0, len(vocab), dtype=torch.long), persistent=False)
        self.tokens = nn.Embedding(sum(vocab), hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.ks = tuple(ks)
        self.evaluation = RecEvaluation(self.ks, 5)

    def attach(self, catalog: ItemCatalog, sids: SemanticIDs | None = None, train_counts: Tensor | None = None) -> None:
        assert sids is not None and sids.num_items == len(catalog)
        self.codes = sids.table.to(self.offsets.device) + self.offsets  # [N, levels + 1] token ids
        self.evaluation.attach(train_counts, len(catalog))

    def item_vectors(self) -> Tensor:
        """``[N, hidden]``: the sum of each item's SID-token embeddings."""
        return self.tokens(self.codes).sum(1)

    def scores(self, batch: SeqBatch) -> Tensor:
        """``[B, N]`` scores of every item after each history."""
        items = self.item_vectors()
        history = items[batch.history.clamp(min=0)] * (batch.history != PAD_ITEM)[..., None]
        states, _ = self.gru(history)
        last = states[torch.arange(len(batch), device=states.device), batch.lengths - 1]
        return last @ items.T

    def step_loss(self, batch: SeqBatch) -> Tensor:
        return F.cross_entropy(self.scores(batch), batch.targets)

    @torch.no_grad()
    def recommend(self, batch: SeqBatch, k: int | None = None) -> BeamResult:
        scores = self.scores(batch)
        top = scores.topk(k or max(self.ks), dim=1)
        return BeamResult(items=top.indices, scores=top.values)

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(lr=self.hparams.lr)


# ---- a tokenizer ------------------------------------------------------------------------------


class HashTokenizer:
    """Residual random-projection hashing into ``levels`` codes of ``2 ** bits`` values.

    Args:
        levels: code levels.
        bits: random projections per level (codebook size ``2 ** bits``).
    """

    file_suffix: ClassVar[str] = ".tokenizer.safetensors"

    def __init__(self, levels: int = 2, bits: int = 3) -> None:
        self.levels, self.bits = levels, bits
        self.codebook_size = 2**bits
        self.projections: Tensor | None = None  # [levels, D, bits]
        self.codebooks: Tensor | None = None  # [levels, 2 ** bits, D]

    def _codes(self, residual: Tensor, level: int) -> Tensor:
        signs = (residual @ self.projections[level] > 0).long()  # [N, bits]
        return (signs * 2 ** torch.arange(self.bits)).sum(1)

    def fit(self, embeddings: Tensor, settings: FitSettings) -> HashTokenizer:
        generator = torch.Generator().manual_seed(settings.seed)
        residual = embeddings.float().cpu()
        self.projections = torch.randn(self.levels, residual.shape[1], self.bits, generator=generator)
        books = []
        for level in range(self.levels):
            codes = self._codes(residual, level)
            sums = torch.zeros(self.codebook_size, residual.shape[1]).index_add_(0, codes, residual)
            book = sums / torch.bincount(codes, minlength=self.codebook_size).clamp(min=1)[:, None]
            books.append(book)
            residual = residual - book[codes]
        self.codebooks = torch.stack(books)
        return self

    def _encode(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        residual, codes = embeddings.float().cpu(), []
        for level in range(self.levels):
            codes.append(self._codes(residual, level))
            residual = residual - self.codebooks[level][codes[-1]]
        return torch.stack(codes, 1), residual

    def encode_codes(self, embeddings: Tensor) -> Tensor:
        return self._encode(embeddings)[0]

    def reconstruction_error(self, embeddings: Tensor) -> float:
        return float(self._encode(embeddings)[1].pow(2).mean())

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "levels": self.levels, "bits": self.bits}

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        with atomic_path(Path(path)) as tmp:
            save_file({"projections": self.projections, "codebooks": self.codebooks}, str(tmp), metadata={"config": json.dumps(self.describe())})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> HashTokenizer:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            config = json.loads(handle.metadata()["config"])
            tokenizer = cls(config["levels"], config["bits"])
            tokenizer.projections, tokenizer.codebooks = handle.get_tensor("projections"), handle.get_tensor("codebooks")
        return tokenizer


# ---- a data-format reader ---------------------------------------------------------------------


class TsvSource(DataSource):
    """``items.tsv`` (``item<TAB>title``) and ``events.tsv`` (``user<TAB>item<TAB>seconds``) in ``path``.

    Args:
        path: the folder of the two files.
    """

    def __init__(self, path: str, skip_bad_lines: bool = False) -> None:
        super().__init__(skip_bad_lines=skip_bad_lines)
        self.path = path

    def read(self) -> RawData:
        folder, report = Path(self.path), ReadReport()
        raw = RawData(items={}, report=report)
        for number, line in iter_lines(folder / "items.tsv", report):
            fields = self.parse_line(folder / "items.tsv", number, line, lambda s: s.split("\t", 1), report)
            if fields is not None and len(fields) == 2:
                raw.items[fields[0]] = Item.from_raw(fields[0], title=fields[1])
            elif fields is not None:
                self.bad_record(folder / "items.tsv", number, f"expected 2 tab-separated fields, got {line!r}", report)
        for number, line in iter_lines(folder / "events.tsv", report):
            event = self.parse_line(folder / "events.tsv", number, line, _event, report)
            if event is not None and self.keep_event(raw, event[1], f"events.tsv:{number}"):
                raw.add(*event)
        return raw


def _event(line: str) -> tuple[str, str, float]:
    user, item, seconds = line.split("\t")
    return user, item, float(seconds)


def write_tsv(folder: Path) -> Path:
    """The synthetic data set of :data:`tests.test_configs.TINY_DATA`, written as TSV files."""
    raw = SyntheticSource(num_users=40, num_items=60, num_categories=4, num_brands=8, max_length=10).read()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.tsv").write_text("".join(f"{i}\t{item.title}\n" for i, item in raw.items.items()))
    events = zip(raw.users, raw.item_ids, raw.timestamps, strict=True)
    (folder / "events.tsv").write_text("".join(f"{u}\t{i}\t{1_600_000_000 + t:.0f}\n" for u, i, t in events))
    return folder


# ---- the tests --------------------------------------------------------------------------------


def test_the_extensions_implement_the_contracts():
    assert isinstance(HashTokenizer(), Tokenizer)
    assert issubclass(SidGRU, RecommenderModule) and SidGRU.needs_sids


def test_only_trusted_recommender_subclasses_are_imported():
    """genrec's models resolve by name; another class only from a trusted module, and only if it
    is a RecommenderModule (issue 18's load-time rule)."""
    assert recommender_class("genrec.models.TigerModule").needs_sids
    assert recommender_class(f"{HERE}.SidGRU", trusted=["tests"]) is SidGRU  # a trusted package trusts its modules
    with pytest.raises(ValueError, match="not a genrec model .*nothing was imported"):
        recommender_class(f"{HERE}.SidGRU")
    with pytest.raises(ValueError, match="is not a genrec.models.RecommenderModule subclass"):
        recommender_class(f"{HERE}.HashTokenizer", trusted=[HERE])


def test_tsv_reader_names_a_bad_line(tmp_path):
    folder = write_tsv(tmp_path / "tsv")
    with (folder / "events.tsv").open("a") as f:
        f.write("u1\tnot-a-time\n")
    lines = len((folder / "events.tsv").read_text().splitlines())
    with pytest.raises(DataFormatError, match=rf"events.tsv:{lines}: cannot parse line"):
        TsvSource(str(folder)).read()
    assert TsvSource(str(folder), skip_bad_lines=True).read().report.bad_lines["events.tsv"] == 1


def test_new_recommender_tokenizer_and_reader_run_through_the_pipeline(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    folder = write_tsv(tmp_path / "tsv")
    data = {"data": {"class_path": "genrec.data.SequenceDataModule", "init_args": {
        "name": "tsv", "kcore": 0, "batch_size": 32, "source": {"class_path": f"{HERE}.TsvSource", "init_args": {"path": str(folder)}}}}}
    tokenizer = {"tokenizer": {"class_path": f"{HERE}.HashTokenizer", "init_args": {"levels": 2, "bits": 3}}, "tokenize": {"name": "hash"}}
    model = {"model": {"class_path": f"{HERE}.SidGRU", "init_args": {"hidden_size": 16}},
             "trainer": {"max_epochs": 2, "accelerator": "cpu", "check_val_every_n_epoch": 1, "enable_progress_bar": False}}
    paths = {}
    for name, content in {"data": data, "tokenizer": tokenizer, "gru": model}.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content))
    config = PipelineConfig(name="ext", data=str(paths["data"]), encoder=str(ROOT / "configs/encode/cf.yaml"),
                            tokenizer=str(paths["tokenizer"]), models={"gru": str(paths["gru"])}, root=str(tmp_path / "runs"),
                            overrides={"tokenize": ["--tokenize.accelerator", "cpu", "--encoder.cf_dim", "16"]})
    run_pipeline(config)

    run = tmp_path / "runs" / "ext"
    sids = SemanticIDs.load(run / "sids" / "tokenizer.safetensors")
    assert sids.quantizer["class"] == "HashTokenizer" and sids.codebook_size == 8 and sids.levels == 2
    saved = HashTokenizer.load(run / "sids" / "tokenizer.tokenizer.safetensors")  # the tokenizer's own save()
    assert torch.equal(saved.encode_codes(load_embeddings(run / "embeddings" / "cf.safetensors")), sids.codes)
    result = read_json(run / "gru" / "result.json")
    assert result["class"] == "SidGRU" and result["epochs"] == 2
    assert 0.0 <= result["metrics"]["test/recall@10"] <= 1.0 and "test/ndcg@10" in result["metrics"]
    assert "| gru |" in (run / "report.md").read_text()

    with pytest.raises(ArtifactError, match=rf"{HERE}.SidGRU' is not a genrec model .*nothing was imported"):
        Recommender.load(run, model="gru")  # a model from elsewhere needs the caller's trust
    recommender = Recommender.load(run, model="gru", trusted=[HERE])
    assert isinstance(recommender.module, SidGRU) and recommender.score_meaning == SidGRU.score_meaning
    history = recommender.catalog.external_ids[:3]
    recs = recommender.recommend(history, k=5)
    assert len({r.item for r in recs}) == 5 and not {r.external_id for r in recs} & set(history)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    batch = recommender.batch([history])
    expected = recommender.module.scores(batch)[0]
    assert all(abs(expected[r.item].item() - r.score) < 1e-4 for r in recs)

    # `train.py test --ckpt_path` on the user's own model: the checkpoint may name the class the
    # user's config names (and no other outside genrec)
    from genrec.cli import main

    best = next((run / "gru" / "checkpoints").glob("epoch=*.ckpt"))
    sids_flag = f"--model.init_args.sids={run / 'sids' / 'tokenizer.safetensors'}"
    assert main(["test", "--config", str(paths["data"]), "--config", str(paths["gru"]), sids_flag, "--ckpt_path", str(best),
                 "--trainer.default_root_dir", str(tmp_path / "retest")]) in (0, None)
    with pytest.raises(SystemExit) as refused:  # one error line, exit 1: the model's module is not trusted
        main(["recommend", "--run", str(run), "--model", "gru", "--history", json.dumps(history), "--k", "3"])
    assert refused.value.code == 1
    assert main(["recommend", "--run", str(run), "--model", "gru", "--history", json.dumps(history), "--k", "3",
                 "--trusted", json.dumps([HERE]), "--output", str(tmp_path / "recs.json")]) in (0, None)
    assert [r["external_id"] for r in read_json(tmp_path / "recs.json")["recommendations"]] == [r.external_id for r in recs[:3]]
