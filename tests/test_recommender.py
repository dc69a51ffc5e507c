"""The inference API on a tiny pipeline run (TIGER, SASRec and a from-scratch LM, one epoch each):
K distinct real items sorted by score, history given as external ids, titles or dense ids,
batches, truncation to the most recent items, and errors that name what is wrong."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genrec.artifacts import read_json
from genrec.cli import main
from genrec.recommender import Recommendation, Recommender
from tests.test_pipeline import pipeline_config

MODELS = ("tiger", "sasrec", "lm")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished pipeline run of every model in ``MODELS`` (about 15 s on 2 CPU cores)."""
    tmp_path = tmp_path_factory.mktemp("recommender")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box (see tests/conftest.py)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            main(["pipeline", "--config", pipeline_config(tmp_path, dict.fromkeys(MODELS, 1))])
    finally:
        torch.set_num_threads(threads)
    return tmp_path / "runs" / "tiny"


@pytest.fixture(scope="module")
def recommenders(run) -> dict[str, Recommender]:
    return {name: Recommender.load(run, model=name) for name in MODELS}


def _history(recommender: Recommender) -> list[int]:
    """Dense ids of four items with unique titles."""
    titles = recommender.catalog.titles
    unique = [i for i, title in enumerate(titles) if title and titles.count(title) == 1]
    return unique[3:11:2]


@pytest.mark.parametrize("model", MODELS)
def test_k_distinct_real_items_sorted_by_score(recommenders, model):
    recommender = recommenders[model]
    catalog = recommender.catalog
    history = [catalog[i].external_id for i in _history(recommender)]
    recs = recommender.recommend(history, k=10)
    assert len(recs) == 10 and all(isinstance(r, Recommendation) for r in recs)
    assert len({r.item for r in recs}) == 10
    for r in recs:
        assert 0 <= r.item < len(catalog)
        assert (r.external_id, r.title) == (catalog[r.item].external_id, catalog[r.item].title)
        assert math.isfinite(r.score)
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("model", MODELS)
def test_external_ids_titles_and_dense_ids_give_the_same_result(recommenders, model):
    recommender = recommenders[model]
    dense = _history(recommender)
    external = [recommender.catalog[i].external_id for i in dense]
    titles = [recommender.catalog[i].title for i in dense]
    titles[0] = "  " + titles[0].replace(" ", "\n ") + " "  # matched after the catalogue's cleaning
    by_id = recommender.recommend(external, k=5)
    assert recommender.recommend(titles, k=5) == by_id
    assert recommender.recommend(dense, k=5) == by_id


@pytest.mark.parametrize("model", MODELS)
def test_batch_and_truncation(recommenders, model):
    recommender = recommenders[model]
    history = _history(recommender)
    short = history[:1]
    batch = recommender.recommend([history, short], k=5)
    for row, single in zip(batch, (recommender.recommend(history, k=5), recommender.recommend(short, k=5)), strict=True):
        assert [r.item for r in row] == [r.item for r in single]
        assert [r.score for r in row] == pytest.approx([r.score for r in single], abs=1e-4)
    long = (history * 20)[: recommender.max_history + 7]
    assert recommender.recommend(long, k=5) == recommender.recommend(long[-recommender.max_history :], k=5)


def test_unknown_items_and_bad_requests_are_named(recommenders):
    recommender = recommenders["sasrec"]
    known = recommender.catalog[0].external_id
    with pytest.raises(ValueError, match="'NO-SUCH-ITEM'"):
        recommender.recommend([known, "NO-SUCH-ITEM"])
    with pytest.raises(ValueError, match="item id 100000 "):
        recommender.recommend([known, 100_000])
    with pytest.raises(ValueError, match="empty history"):
        recommender.recommend([])
    with pytest.raises(ValueError, match="k must lie"):
        recommender.recommend([known], k=len(recommender.catalog) + 1)


def test_load_by_folder_name_and_checkpoint(run, recommenders):
    history = _history(recommenders["tiger"])
    expected = recommenders["tiger"].recommend(history, k=5)
    best = Recommender.load(run / "tiger").recommend(history, k=5)  # the model's folder itself
    tested = Recommender.load(run / "tiger", checkpoint=read_json(run / "tiger" / "result.json")["checkpoint"])
    assert best == expected == tested.recommend(history, k=5)  # "best" is the checkpoint the pipeline tested
    assert len(Recommender.load(run, model="sasrec", checkpoint="last").recommend(history, k=3)) == 3
    with pytest.raises(FileNotFoundError, match=r"pass model=\.\.\."):
        Recommender.load(run)


def test_recommend_command_matches_the_api(run, recommenders, tmp_path, capsys):
    """`train.py recommend` (titles on the command line) prints and writes what the API returns."""
    rec = recommenders["tiger"]
    titles = [rec.catalog.titles[i] for i in _history(rec)]
    out = tmp_path / "recs.json"
    main(["recommend", "--run", str(run), "--model", "tiger", "--history", json.dumps(titles), "--k", "5", "--output", str(out)])
    expected = rec.recommend(titles, k=5)
    written = read_json(out)["recommendations"]
    assert [r["item"] for r in written] == [r.item for r in expected]
    assert [r["title"] for r in written] == [r.title for r in expected]
    printed = capsys.readouterr().out
    assert all(r.title in printed for r in expected)
    with pytest.raises(SystemExit, match="1"):  # bad input: a one-line error, no traceback
        main(["recommend", "--run", str(run), "--model", "tiger", "--history", '["no such item"]'])
    assert "error: 'no such item' is neither an external item id nor a title" in capsys.readouterr().err
