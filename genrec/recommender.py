"""Inference: load a trained model and recommend items for new histories.

``Recommender.load(folder)`` rebuilds what a model trained with from what its run wrote:

* the data module (so the catalogue: dense ids, external ids, titles) from the resolved config
  ``fit`` writes beside the checkpoints, ``<folder>/config.yaml`` (``model:`` and ``data:``
  blocks; no other file under the folder is read);
* the :class:`~genrec.models.RecommenderModule` of that config's ``model.class_path``, from a
  checkpoint loaded with ``weights_only=True`` (tensors and plain values; a pickled object is
  refused, never run);
* its items, through the contract's one call, ``module.attach(catalog, sids)``: with
  :attr:`~genrec.models.RecommenderModule.needs_sids` the SID file the run recorded (checked
  against the catalogue and against the SID table the checkpoint was trained on).

What may be imported (issue 18: a run folder from elsewhere must not choose what Python
imports). ``model.class_path`` must name one of genrec's models (:data:`genrec.models.base.MODELS`,
looked up by name, nothing imported) or a class of a module the caller names in ``trusted``
(e.g. ``Recommender.load(run, trusted=["my_lab.models"])``), which must be a
``RecommenderModule`` subclass (:func:`genrec.models.recommender_class`). Every ``class_path`` of
the ``data:`` block must lie in ``genrec`` or a ``trusted`` module (a user's reader). Anything
else is refused before it is imported.

``recommend(history, k)`` returns the ``k`` best distinct catalogue items of a history,
best first, through the module's ``recommend(batch, k)``. Scores compare items of one model
only (:attr:`Recommender.score_meaning`, the module's ``score_meaning``). Unlike evaluation, items of the history are not recommended again
(``exclude_history=False`` keeps them), and items that share a title are listed once, the
best-scored one carrying the others' external ids (``distinct_titles=False`` lists each).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
import yaml
from torch import Tensor

from genrec.artifacts import read_checkpoint
from genrec.data.catalog import ItemCatalog, clean_text
from genrec.data.datamodule import PAD_ITEM, SeqBatch, SequenceDataModule
from genrec.errors import ArtifactError
from genrec.models.base import RecommenderModule, recommender_class
from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)

ItemRef = int | str
"""A history entry: a dense item id (``int``), or an external id or exact title (``str``)."""


class QueryError(ValueError):
    """A history or ``k`` the recommender cannot serve (unknown item, ambiguous title, empty
    history, ``k`` out of range); the message names the offending value."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended item.

    Attributes:
        item: the dense item id (row of the catalogue).
        external_id: the data set's id of the item (ASIN, MovieLens id, ...).
        title: the item's title, as cleaned in the catalogue.
        score: the model's score, higher is better (see :attr:`Recommender.score_meaning`).
        same_title: external ids of lower-scored recommendable items with the same title, not
            listed separately (``recommend(..., distinct_titles=True)``).
    """

    item: int
    external_id: str
    title: str
    score: float
    same_title: tuple[str, ...] = ()


class Recommender:
    """A trained recommender and its catalogue, for inference on new histories.

    Args:
        module: a :class:`~genrec.models.RecommenderModule` with its items attached.
        catalog: the catalogue the module was trained on.
        max_history: the most recent items of a history that are kept (the data module's).
    """

    def __init__(self, module: RecommenderModule, catalog: ItemCatalog, max_history: int) -> None:
        if not isinstance(module, RecommenderModule):
            raise TypeError(f"no inference for {type(module).__name__}; expected a genrec.models.RecommenderModule")
        self.module = module.eval()
        self.catalog = catalog
        self.max_history = max_history
        self._by_title: dict[str, list[int]] = {}
        for item, title in enumerate(catalog.titles):
            if title:
                self._by_title.setdefault(title, []).append(item)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model: str | None = None,
        checkpoint: str = "best",
        device: str | torch.device = "cpu",
        trusted: Sequence[str] = (),
    ) -> Recommender:
        """Load a trained model with its catalogue.

        Args:
            path: a model's folder (``checkpoints/`` and the saved config below it: a pipeline's
                ``<run>/<model>/`` or a ``fit`` run's ``default_root_dir``), or a pipeline run
                folder together with ``model``.
            model: the model's name inside the pipeline run folder ``path`` (e.g. ``tiger``).
            checkpoint: ``best`` (the ModelCheckpoint's best, read from ``last.ckpt``; the one a
                pipeline tested), ``last``, or a checkpoint file (a path, or a name in
                ``checkpoints/``).
            device: where the model runs.
            trusted: module names (a package trusts its submodules) whose classes the run's
                config may name besides genrec's: a model or data reader of your own.

        Raises:
            FileNotFoundError: no checkpoint, saved config or SID file where expected.
            ArtifactError: the config names a class outside genrec's models and ``trusted``, a checkpoint does
                not load with ``weights_only=True`` (damaged, or pickled objects), or the SID file
                does not fit the catalogue or the checkpoint.
        """
        _check_run(Path(path), model)
        folder = _model_folder(Path(path), model)
        config = _saved_config(folder)
        module_class = _model_class(config, folder / "config.yaml", trusted)
        datamodule = _datamodule(config["data"], folder / "config.yaml", trusted)
        catalog = datamodule.data.catalog
        file = _checkpoint_file(folder, checkpoint)
        overrides: dict[str, Any] = {}
        if module_class.needs_sids:
            # The SID path as the run recorded it, or the pipeline's <run>/sids/ beside the model.
            overrides["sids"] = str(_located(config["model"]["init_args"]["sids"], folder.parent / "sids"))
        log.info("loading %s from %s", module_class.__name__, file)
        _check_hyperparameters(read_checkpoint(file), module_class, file)
        # weights_only: no unpickling; _instantiator None: the class is built from its hparams
        # directly, never through an importer the checkpoint names
        module = module_class.load_from_checkpoint(file, map_location=device, weights_only=True, _instantiator=None, **overrides).to(device)
        sids = SemanticIDs.load(module.hparams.sids, expected_fingerprint=catalog.fingerprint()) if module_class.needs_sids else None
        module.attach(catalog, sids)
        return cls(module, catalog, datamodule.max_history)

    @property
    def device(self) -> torch.device:
        return self.module.device

    @property
    def score_meaning(self) -> str:
        """What :attr:`Recommendation.score` is for this model, in one line."""
        return self.module.score_meaning

    def item_id(self, item: ItemRef) -> int:
        """The dense id of a history entry.

        A ``str`` is an external id if the catalogue has it, else a title, matched exactly after
        the catalogue's cleaning (HTML entities, whitespace); an ``int`` is a dense id.

        Raises:
            ValueError: naming an unknown id or title, or a title shared by several items.
        """
        if isinstance(item, str):
            if item in self.catalog:
                return self.catalog.id_of(item)
            matches = self._by_title.get(clean_text(item), [])
            if not matches:
                raise QueryError(f"{item!r} is neither an external item id nor a title of the catalogue{self._suggest(item)}")
            if len(matches) > 1:
                ids = [self.catalog[i].external_id for i in matches]
                raise QueryError(f"title {item!r} is shared by items {ids}; pass an external id")
            return matches[0]
        try:
            index = operator.index(item)
        except TypeError:
            raise TypeError(f"a history entry is an int (dense id) or a str (external id or title), got {item!r}") from None
        if not 0 <= index < len(self.catalog):
            raise QueryError(f"item id {index} is not in the catalogue (dense ids 0 .. {len(self.catalog) - 1})")
        return index

    def _suggest(self, text: str) -> str:
        """``"; did you mean 'A' or 'B'?"`` for the catalogue titles closest to ``text``
        (case-insensitive, :func:`difflib.get_close_matches`), or ``""``."""
        by_lower: dict[str, str] = {}
        for title in self._by_title:
            by_lower.setdefault(title.lower(), title)
        query = clean_text(text).lower()
        close = difflib.get_close_matches(query, list(by_lower), n=3, cutoff=0.6)
        # a title that merely extends the query ("Toy Story" -> "Toy Story (1995)") counts too
        close += [t for t in by_lower if query and t.startswith(query) and t not in close][: 3 - len(close)]
        if not close:
            return ""
        return "; did you mean " + " or ".join(repr(by_lower[t]) for t in close) + "?"

    def batch(self, histories: Sequence[Sequence[ItemRef]]) -> SeqBatch:
        """A :class:`SeqBatch` of histories, each cut to its ``max_history`` most recent items.

        New histories have no user: ``users`` is 0 (the hashed user token of a TIGER model
        with ``user_tokens`` is user 0's); ``targets`` is 0 and unused.
        """
        rows = []
        for history in histories:
            if not history:
                raise QueryError("a history needs at least one item")
            rows.append([self.item_id(item) for item in history][-self.max_history :])
        width = max(len(row) for row in rows)
        items = torch.full((len(rows), width), PAD_ITEM, dtype=torch.long)
        for i, row in enumerate(rows):
            items[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        zeros = torch.zeros(len(rows), dtype=torch.long)
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
        return SeqBatch(users=zeros, history=items, lengths=lengths, targets=zeros.clone()).to(self.device)

    @torch.no_grad()
    def top_items(self, batch: SeqBatch, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` best items of each history of ``batch``.

        Returns:
            ``items [B, k]`` int64 dense ids, distinct per row, and their ``scores [B, k]``,
            best first.
        """
        result = self.module.recommend(batch, k)
        if tuple(result.items.shape) != (len(batch), k) or bool((result.items < 0).any()):
            raise RuntimeError(f"{type(self.module).__name__}.recommend gave fewer than {k} items for a history")
        return result.items, result.scores

    @overload
    def recommend(self, history: Sequence[ItemRef], k: int = 10, exclude_history: bool = True,
                  distinct_titles: bool = True) -> list[Recommendation]: ...

    @overload
    def recommend(self, history: Sequence[Sequence[ItemRef]], k: int = 10, exclude_history: bool = True,
                  distinct_titles: bool = True) -> list[list[Recommendation]]: ...

    def recommend(
        self,
        history: Sequence[ItemRef] | Sequence[Sequence[ItemRef]],
        k: int = 10,
        exclude_history: bool = True,
        distinct_titles: bool = True,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """The ``k`` best distinct catalogue items after ``history``, best first.

        The model is asked for more than ``k`` items (``k`` plus the history's, doubled while
        a row is short) so that ``k`` remain after the exclusions.

        Args:
            history: items oldest first (see :meth:`item_id`: external ids or titles as ``str``,
                dense ids as ``int``), or a list of such histories (a batch). Only the
                ``max_history`` most recent items are read by the model.
            k: items to recommend, ``1 .. len(catalogue)``.
            exclude_history: leave out the history's items (all of them, also those older
                than ``max_history``), and with ``distinct_titles`` any item with a history
                item's title.
            distinct_titles: list items sharing a title once (the best-scored; the others'
                external ids in :attr:`Recommendation.same_title`).

        Returns:
            ``k`` :class:`Recommendation` s sorted by score (descending), or one such list per
            history of a batch.

        Raises:
            QueryError: an empty history, an unknown item, ``k`` out of range, or fewer than
                ``k`` items left after the exclusions.
        """
        if not history:
            raise QueryError("empty history: give at least one item")
        if not 1 <= k <= len(self.catalog):
            raise QueryError(f"k must lie in 1 .. {len(self.catalog)} (the catalogue size), got {k}")
        batched = isinstance(history[0], (list, tuple))
        histories = history if batched else [history]
        batch = self.batch(histories)
        excluded = [{self.item_id(item) for item in h} if exclude_history else set() for h in histories]
        wanted = min(len(self.catalog), k + max(len(e) for e in excluded))
        while True:
            items, scores = self.top_items(batch, wanted)
            results = [self._select(row_items, row_scores, skip, k, distinct_titles)
                       for row_items, row_scores, skip in zip(items.tolist(), scores.float().tolist(), excluded, strict=True)]
            if all(len(row) == k for row in results) or wanted == len(self.catalog):
                break
            wanted = min(len(self.catalog), 2 * wanted)
        for row, skip in zip(results, excluded, strict=True):
            if len(row) < k:
                what = " and items sharing a title" if distinct_titles else ""
                raise QueryError(f"only {len(row)} items are left to recommend after leaving out the history's "
                                 f"{len(skip)}{what}; ask for k <= {len(row)}")
        return results if batched else results[0]

    def _select(self, items: list[int], scores: list[float], excluded: set[int], k: int,
                distinct_titles: bool) -> list[Recommendation]:
        """The first ``k`` of ranked ``items`` not in ``excluded``, one per title with
        ``distinct_titles`` (the others' external ids in ``same_title``)."""
        catalog = self.catalog
        taken = {catalog[i].title for i in excluded} if distinct_titles else set()
        taken.discard("")
        kept: list[tuple[int, float, list[str]]] = []
        by_title: dict[str, list[str]] = {}
        for item, score in zip(items, scores, strict=True):
            if item in excluded:
                continue
            title = catalog[item].title
            if distinct_titles and title:
                if title in by_title:
                    by_title[title].append(catalog[item].external_id)
                    continue
                if title in taken:
                    continue
            if len(kept) < k:
                same: list[str] = []
                kept.append((item, score, same))
                if distinct_titles and title:
                    by_title[title] = same
        return [Recommendation(item, catalog[item].external_id, catalog[item].title, score, tuple(same))
                for item, score, same in kept]


def _check_run(path: Path, model: str | None) -> None:
    """Errors a user can make in ``Recommender.load(path, model)``, each said in one line: a
    folder that does not exist (relative paths are read from the current directory), or a
    model name the pipeline run does not have (its models listed)."""
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise FileNotFoundError(f"run folder {path} does not exist{where}; give the folder a pipeline or fit wrote, "
                                "e.g. checkpoints/demo")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file; give a run folder (e.g. checkpoints/demo) or a model's folder")
    if model is None or (path / model / "checkpoints").is_dir():
        return
    models = sorted(p.parent.name for p in path.glob("*/checkpoints") if p.is_dir())
    if not models:
        return  # not a pipeline run folder: _model_folder says what is missing
    close = difflib.get_close_matches(model, models, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise FileNotFoundError(f"the run {path} has no model {model!r}; its models are {', '.join(models)}{hint}")


def _model_folder(path: Path, model: str | None) -> Path:
    folder = path / model if model else path
    if (folder / "checkpoints").is_dir():
        return folder
    models = sorted(p.parent.name for p in path.glob("*/checkpoints") if p.is_dir())
    hint = f"; the models of this run are {models} (pass model=...)" if models and not model else ""
    raise FileNotFoundError(f"{folder} has no checkpoints/ folder{hint}")


def _saved_config(folder: Path) -> dict[str, Any]:
    """The resolved config ``fit`` wrote beside the checkpoints, ``<folder>/config.yaml`` (with
    ``model:`` and ``data:`` blocks); no other file is considered."""
    path = folder / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: fit writes the run's resolved config there, beside checkpoints/ "
            "(for a run made before it did, copy the run's logs/version_N/config.yaml there)"
        )
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid YAML ({type(error).__name__}: {error})".replace("\n", " ")) from error
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("data"), dict)):
        raise ArtifactError(f"{path}: expected model: and data: blocks (the resolved config fit writes)")
    return config


def _model_class(config: dict[str, Any], source: Path, trusted: Sequence[str] = ()) -> type[RecommenderModule]:
    """The recommender class of ``config``'s ``model.class_path``: a genrec model looked up by
    name, or a ``RecommenderModule`` subclass of a ``trusted`` module (anything else is refused
    before any import; :func:`genrec.models.recommender_class`)."""
    try:
        return recommender_class(str(config["model"].get("class_path")), trusted)
    except ValueError as error:
        raise ArtifactError(f"{source}: {error}") from None


def _trusted(class_path: str, trusted: Sequence[str]) -> bool:
    module = class_path.rpartition(".")[0]
    return any(module == t or module.startswith(t + ".") for t in ("genrec", *trusted) if t)


def _foreign_class_paths(block: Any, where: str = "data", trusted: Sequence[str] = ()) -> list[str]:
    """Every ``class_path`` inside a config block that lies outside the genrec package and the ``trusted`` modules."""
    found = []
    if isinstance(block, dict):
        for key, value in block.items():
            if key == "class_path" and not _trusted(str(value), trusted):
                found.append(f"{where}.class_path {value!r}")
            found += _foreign_class_paths(value, f"{where}.{key}" if key != "init_args" else where, trusted)
    elif isinstance(block, list):
        for i, value in enumerate(block):
            found += _foreign_class_paths(value, f"{where}[{i}]", trusted)
    return found


def _datamodule(data: dict[str, Any], source: Path, trusted: Sequence[str] = ()) -> SequenceDataModule:
    """The data module of a config's ``data:`` block (``class_path`` / ``init_args``), whose
    classes must all lie in genrec or a ``trusted`` module (checked before jsonargparse imports any)."""
    from genrec.stages.data import data_parser
    from genrec.stages.parsing import instantiate, parse_error_line

    foreign = _foreign_class_paths(data, trusted=trusted)
    if foreign:
        raise ArtifactError(f"{source}: {foreign[0]} lies outside genrec; refusing to import it")
    parser = data_parser()
    try:
        parsed = parser.parse_object({"data": data})
    except argparse.ArgumentError as error:
        raise ArtifactError(f"{source}: {parse_error_line(error, parser, [])}") from error
    return instantiate(lambda: parser.instantiate_classes(parsed)).data


def _check_hyperparameters(checkpoint: dict[str, Any], module_class: type[RecommenderModule], file: Path) -> None:
    """A checkpoint's recorded class (LightningCLI's ``_class_path``) is the config's model."""
    recorded = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if recorded is not None and str(recorded).rpartition(".")[2] != module_class.__name__:
        raise ArtifactError(f"{file}: the checkpoint is of {recorded!r}, the run's config names {module_class.__name__}")


def _checkpoint_file(folder: Path, checkpoint: str) -> Path:
    checkpoints = folder / "checkpoints"
    last = checkpoints / "last.ckpt"
    if checkpoint == "last":
        path = last
    elif checkpoint == "best":
        if not last.is_file():
            raise FileNotFoundError(f"{last} not found, which records the best checkpoint; pass checkpoint=<file>")
        state = read_checkpoint(last).get("callbacks", {})
        best = next((s["best_model_path"] for key, s in state.items() if key.startswith("ModelCheckpoint") and s.get("best_model_path")), "")
        path = checkpoints / Path(best).name if best else last  # never a file outside the run's checkpoints/
    else:
        path = Path(checkpoint) if Path(checkpoint).is_file() else checkpoints / checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def _located(recorded: str, folder: Path) -> Path:
    """``recorded`` if it exists, else the file of that name in ``folder`` (a run records paths
    relative to the directory it ran in; this finds them from elsewhere)."""
    path = Path(recorded)
    if path.is_file():
        return path
    moved = folder / path.name
    if moved.is_file():
        return moved
    raise FileNotFoundError(f"{recorded} not found (nor {moved})")


__all__ = ["ItemRef", "QueryError", "Recommendation", "Recommender"]
