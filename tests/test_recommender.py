"""The inference API on a tiny pipeline run (TIGER, SASRec and a from-scratch LM, one epoch each):
K distinct real items sorted by score, history given as external ids, titles or dense ids,
batches, truncation to the most recent items, and errors that name what is wrong."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from genrec.artifacts import read_json
from genrec.cli import main
from genrec.data.catalog import ItemCatalog
from genrec.recommender import Recommendation, Recommender
from tests.conftest import TINY_MODELS

MODELS = TINY_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tiny_run):
    """The tiny pipeline run of every model (tests/conftest.py)."""
    return tiny_run[0]


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
    assert printed.startswith("top 5 of tiger (TigerModule) after 4 history items (history items left out):\n")
    assert "score: log-probability of the item's semantic ID" in printed
    with pytest.raises(SystemExit, match="1"):  # bad input: a one-line error, no traceback
        main(["recommend", "--run", str(run), "--model", "tiger", "--history", '["no such item"]'])
    assert "error: 'no such item' is neither an external item id nor a title" in capsys.readouterr().err


@pytest.mark.parametrize("model", MODELS)
def test_history_items_are_left_out_by_default(recommenders, model):
    """By default no history item comes back, and the k items are the model's best others (the
    ranking with the history kept, history items struck out); ``exclude_history=False`` keeps them."""
    recommender = recommenders[model]
    size = len(recommender.catalog)
    history = _history(recommender)
    kept = recommender.recommend(history, k=10 + len(history), exclude_history=False, distinct_titles=False)
    recs = recommender.recommend(history, k=10, distinct_titles=False)
    assert recs == [r for r in kept if r.item not in history][:10]
    # every other item of the catalogue, and none of the history, even when the model must rank them all
    everything = recommender.recommend(history, k=size - len(history), distinct_titles=False)
    assert sorted(r.item for r in everything) == sorted(set(range(size)) - set(history))
    with_history = recommender.recommend(history, k=size, exclude_history=False, distinct_titles=False)
    assert set(history) <= {r.item for r in with_history}


@pytest.mark.parametrize("model", ["tiger", "sasrec"])
def test_items_sharing_a_title_are_listed_once(recommenders, model):
    """Items with the same title (here: every third item given its neighbour's title) come back
    as one line, the best-scored, naming the others in ``same_title``; nothing else is lost; an
    item titled like a history item is left out with the history."""
    trained = recommenders[model]
    items = list(trained.catalog.items)
    for i in range(0, len(items) - 1, 3):
        items[i + 1] = replace(items[i + 1], title=items[i].title)
    recommender = Recommender(trained.module, ItemCatalog(items), trained.max_history)  # TIGER and SASRec read no titles
    catalog = recommender.catalog
    history = [3, 10]  # 3 and 4 share a title; so do 9 and 10
    shown = {catalog[i].title for i in history}
    left = [i for i in range(len(catalog)) if i not in history and catalog[i].title not in shown]
    titles = {catalog[i].title for i in left}
    assert 4 not in left and 9 not in left and len(titles) < len(left)
    recs = recommender.recommend(history, k=len(titles))
    assert sorted(r.title for r in recs) == sorted(titles)  # each title once
    listed = {r.external_id for r in recs} | {e for r in recs for e in r.same_title}
    assert listed == {catalog[i].external_id for i in left}  # the rest named in same_title
    assert all(catalog[catalog.id_of(e)].title == r.title for r in recs for e in r.same_title)
    every = {r.item: r.score for r in recommender.recommend(history, k=len(left) + 2, distinct_titles=False)}
    for r in recs:  # the line shown is the best-scored item of its title
        assert r.score == pytest.approx(max(every[catalog.id_of(e)] for e in (r.external_id, *r.same_title)), abs=1e-4)
    with pytest.raises(ValueError, match=f"only {len(titles)} items are left"):
        recommender.recommend(history, k=len(titles) + 1)


def test_almost_right_title_gets_suggestions(run, recommenders, capsys):
    recommender = recommenders["sasrec"]
    title = recommender.catalog.titles[_history(recommender)[0]]
    typo = title[:2] + title[3] + title[2] + title[4:]  # two letters swapped
    with pytest.raises(ValueError, match="did you mean") as error:
        recommender.recommend([typo])
    assert repr(title) in str(error.value)
    with pytest.raises(SystemExit, match="1"):
        main(["recommend", "--run", str(run), "--model", "sasrec", "--history", json.dumps([typo.upper()])])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"did you mean {title!r}" in err, err


def test_wrong_model_lists_the_runs_models(run, capsys):
    with pytest.raises(SystemExit, match="1"):
        main(["recommend", "--run", str(run), "--model", "t5", "--history", '["1"]'])
    err = capsys.readouterr().err.strip()
    assert err == f"error: the run {run} has no model 't5'; its models are lm, sasrec, tiger", err
    with pytest.raises(FileNotFoundError, match=r"no model 'tigr'; its models are lm, sasrec, tiger; did you mean 'tiger'\?"):
        Recommender.load(run, model="tigr")


def test_missing_run_folder_is_named(tmp_path, monkeypatch, capsys):
    """The README's snippet run from another folder: the relative run folder is not there."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="1"):
        main(["recommend", "--run", "checkpoints/demo", "--model", "tiger", "--history", '["Toy Story"]'])
    err = capsys.readouterr().err.strip()
    assert err == f"error: run folder checkpoints/demo does not exist (relative to the current directory {tmp_path}); " \
                  "give the folder a pipeline or fit wrote, e.g. checkpoints/demo", err
