"""The recommender contract: what the pipeline, the ``scaling`` command and
:class:`genrec.recommender.Recommender` know of a model, and the training code every model shares.

A recommender is a :class:`RecommenderModule` (a ``LightningModule``). genrec never looks at its
class name; it reads:

* :attr:`RecommenderModule.needs_sids` (class attribute): whether the model reads semantic IDs.
  Such a model takes the SID file as its ``sids`` init argument (a path; the pipeline sets it to
  the tokenize stage's output) and receives the loaded :class:`~genrec.quantize.SemanticIDs` in
  :meth:`~RecommenderModule.attach`.
* :meth:`RecommenderModule.attach`: the one way a model receives its items: the catalogue, the
  SIDs (with ``needs_sids``) and the training counts per item (cold-start slice, popularity
  baseline). :meth:`RecommenderModule.setup` calls it with the trainer's data module; inference
  (``Recommender.load``) and tests call it directly.
* :meth:`RecommenderModule.recommend`: ``[B]`` histories in, ``items [B, k]`` dense ids (distinct
  per row, best first) and ``scores [B, k]`` out.
* :attr:`RecommenderModule.score_meaning`: what a score is, in one line.

Training. :meth:`RecommenderModule.model_step` is the step of every stage: the loss of the batch
(:meth:`~RecommenderModule.step_loss`; logged as ``<stage>/loss``) and, on val/test, the ranking
of :meth:`~RecommenderModule.evaluate` scored by :class:`genrec.metrics.RecEvaluation`. A subclass
writes ``step_loss`` and ``recommend`` (and ``attach``); ``evaluate`` defaults to both of them.
The optimizer is AdamW with the schedule of :mod:`genrec.models.optim`, configured by
:meth:`~RecommenderModule.optimizer_config` (override it, or ``configure_optimizers``, for another).

CUDA graphs. A subclass whose hyperparameters set ``cuda_graphs`` (and optionally
``max_grad_norm``, ``pad_history``) trains each step as one replayed graph
(:class:`~genrec.models.graphed_step.GraphedTrainStep`) on a CUDA device: the base pads the
batch to static shapes (:meth:`~RecommenderModule.static_inputs`) and replays
:meth:`~RecommenderModule.masked_loss`, which such a subclass implements.

Loading a class. :func:`recommender_class` resolves a ``class_path`` to a ``RecommenderModule``
subclass under the load-time rule of :mod:`genrec.recommender`: a genrec model by name, or a class
from a module the user trusts explicitly; anything else is refused before it is imported.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.data.catalog import ItemCatalog
from genrec.data.datamodule import SeqBatch
from genrec.data.sequences import Stage
from genrec.decoding import BeamResult, Recommendations
from genrec.metrics import RecEvaluation
from genrec.models.graphed_step import GraphedAdamW, GraphedTrainStep
from genrec.models.optim import OptimizerConfig, adamw, fused_adamw
from genrec.quantize.semantic_ids import SemanticIDs

log = logging.getLogger(__name__)

MODELS: dict[str, str] = {"TigerModule": "genrec.models.tiger", "LMRecModule": "genrec.models.lm_rec", "SASRecModule": "genrec.models.sasrec"}
"""genrec's registry of recommenders: class name -> defining module (imported by name on use,
never from a name a file supplies)."""

GRAPH_LENGTH_STEP = 4
"""With ``cuda_graphs`` and no ``pad_history``, histories are padded to a multiple of this many
items: at most ``ceil(max_history / 4)`` captured graphs, little padding."""


class RecommenderModule(L.LightningModule, metaclass=ABCMeta):
    """Base class of genrec's recommenders (see the module docstring for the contract).

    Subclasses set :attr:`evaluation` (a :class:`~genrec.metrics.RecEvaluation`) in ``__init__``
    and implement :meth:`attach`, :meth:`step_loss` and :meth:`recommend`.
    """

    needs_sids: ClassVar[bool] = False
    """Whether the model reads semantic IDs (then it has a ``sids`` init argument, a SID file)."""

    score_meaning: ClassVar[str] = "model score (higher is better)"
    """What a score of :meth:`recommend` is, in one line."""

    evaluation: RecEvaluation

    def __init__(self) -> None:
        super().__init__()
        self._graph_step: GraphedTrainStep | None = None  # captured on the first CUDA-graph step
        self._graph_rows = 0  # the most rows of a batch seen by the CUDA-graph step

    # ---- items --------------------------------------------------------------------------------

    @abstractmethod
    def attach(self, catalog: ItemCatalog, sids: SemanticIDs | None = None, train_counts: Tensor | None = None) -> None:
        """Receive the items: what :meth:`setup` does with the data module's; call it directly to
        use the module without a trainer.

        Args:
            catalog: the items (dense ids ``0 .. N-1``).
            sids: the catalogue's semantic IDs (required when :attr:`needs_sids`, else ignored).
            train_counts: ``[N]`` training interactions per item; default all zero.
        """

    def setup(self, stage: str) -> None:
        """Attach the trainer's data module's items (and, with :attr:`needs_sids`, the SID file
        of the ``sids`` hyperparameter)."""
        data = self.trainer_data()
        sids = self.load_sids() if self.needs_sids else None
        self.attach(data.catalog, sids, data.train_item_counts())

    def trainer_data(self) -> Any:
        """The trainer's data module's ``.data`` (:class:`~genrec.data.sequences.SequenceData`)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = getattr(datamodule, "data", None)
        if data is None:
            raise RuntimeError(f"{type(self).__name__} needs a data module with a .data (SequenceData), e.g. genrec.data.SequenceDataModule")
        return data

    def load_sids(self) -> SemanticIDs:
        """The SID file of the ``sids`` hyperparameter (checked against the catalogue by :meth:`attach`)."""
        path = self.hparams.get("sids")
        if path is None:
            raise ValueError(f"{type(self).__name__} needs semantic IDs: set model.init_args.sids to a SID file")
        return SemanticIDs.load(path)

    # ---- recommending -------------------------------------------------------------------------

    @abstractmethod
    def recommend(self, batch: SeqBatch, k: int | None = None) -> BeamResult:
        """The top ``k`` items after each history of ``batch``.

        Args:
            batch: ``B`` histories (``history [B, L]`` dense ids right-padded with -1, ``lengths [B]``).
            k: items per row (default: ``max(ks)`` of the evaluation).

        Returns:
            :class:`~genrec.decoding.BeamResult`: ``items [B, k]`` int64 dense ids, distinct per
            row, and their ``scores [B, k]``, best first.
        """

    def predict_step(self, batch: SeqBatch, batch_idx: int = 0) -> Recommendations:
        result = self.recommend(batch)
        return Recommendations(users=batch.users, items=result.items, scores=result.scores)

    # ---- the step -----------------------------------------------------------------------------

    @abstractmethod
    def step_loss(self, batch: SeqBatch) -> Tensor:
        """The training loss of ``batch`` (float32 scalar)."""

    def evaluate(self, batch: SeqBatch) -> tuple[Tensor, Tensor]:
        """The loss of a val/test batch and its ranking ``[B, max(ks)]``; default
        :meth:`step_loss` and :meth:`recommend`."""
        return self.step_loss(batch), self.recommend(batch).items

    def eval_batch(self, batch: SeqBatch, stage: Stage) -> SeqBatch | None:
        """The rows of a val/test batch that are evaluated (default all; ``None``: none)."""
        return batch

    def model_step(self, batch: SeqBatch, stage: Stage) -> Tensor | None:
        """Loss of the batch; on val/test also the ranking and metric updates.

        Returns:
            the loss (float32 scalar), ``None`` for an evaluation batch without evaluated rows.
        """
        if stage != "train":
            batch = self.eval_batch(batch, stage)
            if batch is None:
                return None
        B = batch.targets.shape[0]
        if stage == "train":
            loss = self._graphed_step(batch) if self.uses_cuda_graphs() else self.step_loss(batch)
        else:
            loss, ranked = self.evaluate(batch)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=stage == "train", on_epoch=True, batch_size=B)
        if stage != "train":
            for metrics in self.evaluation.update(stage, ranked, batch.targets):
                self.log_dict(metrics, on_epoch=True, batch_size=B)
        return loss

    def training_step(self, batch: SeqBatch, batch_idx: int) -> Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: SeqBatch, batch_idx: int) -> Tensor | None:
        return self.model_step(batch, "val")

    def test_step(self, batch: SeqBatch, batch_idx: int) -> Tensor | None:
        return self.model_step(batch, "test")

    # ---- optimisation -------------------------------------------------------------------------

    def optimizer_config(self) -> OptimizerConfig:
        """The AdamW settings of :meth:`configure_optimizers` (default: the ``optimizer`` hyperparameter)."""
        config = self.hparams.get("optimizer")
        if config is None:
            return OptimizerConfig()
        return config if isinstance(config, OptimizerConfig) else OptimizerConfig(**config)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no decay on vectors) and the per-step schedule of :func:`~genrec.models.optim.lr_schedule`."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else float("inf")
        if self.uses_cuda_graphs():
            return adamw(self.parameters(), self.optimizer_config(), total, GraphedAdamW, fused=True, capturable=True)
        return adamw(self.parameters(), self.optimizer_config(), total, fused=fused_adamw(self))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``max_grad_norm`` in eager training (the graphed step clips inside its graph)."""
        norm = self.hparams.get("max_grad_norm")
        if norm and self.automatic_optimization and not self.trainer.gradient_clip_val:
            if str(self.trainer.precision) == "16-mixed" and getattr(optimizer, "_step_supports_amp_scaling", False):
                raise ValueError("max_grad_norm with 16-mixed and a fused AdamW would clip scaled gradients: use bf16-mixed or trainer.gradient_clip_val")
            torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], norm, foreach=True)

    # ---- CUDA graphs --------------------------------------------------------------------------

    @property
    def automatic_optimization(self) -> bool:
        """False while training with ``cuda_graphs`` on a GPU: the step is replayed from a graph."""
        return self._automatic_optimization and not self.uses_cuda_graphs()

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = value

    def uses_cuda_graphs(self) -> bool:
        """Whether training steps run as CUDA graphs: ``cuda_graphs`` on and a trainer on a CUDA device."""
        if not self.hparams.get("cuda_graphs") or self._trainer is None:
            return False
        try:
            return self.trainer.strategy.root_device.type == "cuda"
        except (AttributeError, RuntimeError):
            return False

    def masked_loss(self, batch: SeqBatch, valid: Tensor) -> Tensor:
        """The training loss over the ``valid [B]`` rows of a static-shape batch (what a captured
        step computes; needed with ``cuda_graphs``)."""
        raise NotImplementedError(f"{type(self).__name__} has no masked_loss(batch, valid), which cuda_graphs needs")

    def static_inputs(self, batch: SeqBatch) -> tuple[Tensor, ...]:
        """``(users [R], history [R, H], targets [R], valid [R])``: ``batch`` padded to the most rows
        seen (``R``; padding rows are not ``valid``) and its history to ``pad_history`` items or
        the next multiple of :data:`GRAPH_LENGTH_STEP`, so that few shapes are captured."""
        B, longest = batch.history.shape
        self._graph_rows = rows = max(self._graph_rows, B)
        length = self.hparams.get("pad_history") or -(-longest // GRAPH_LENGTH_STEP) * GRAPH_LENGTH_STEP
        if longest > length:
            raise ValueError(f"a history of {longest} items does not fit pad_history={length}")
        history = F.pad(batch.history, (0, length - longest, 0, rows - B), value=-1)
        users = F.pad(batch.users, (0, rows - B))
        targets = F.pad(batch.targets, (0, rows - B))
        valid = torch.arange(rows, device=targets.device) < B
        return users, history, targets, valid

    def _static_loss(self, users: Tensor, history: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        """The loss a captured step computes from its static input buffers."""
        lengths = (history >= 0).sum(dim=1)
        return self.masked_loss(SeqBatch(users, history, lengths, targets), valid)

    def _graphed_step(self, batch: SeqBatch) -> Tensor:
        """One training step replayed from a CUDA graph (see ``cuda_graphs``); the loss."""
        opt = self.optimizers()
        optimizer = opt.optimizer
        if self._graph_step is None:
            if self.trainer.gradient_clip_val:
                raise ValueError("cuda_graphs clips inside the graph (model max_grad_norm); set trainer.gradient_clip_val to null")
            precision = str(self.trainer.precision)
            dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16 if precision == "16-mixed" else None
            params = [p for p in self.parameters() if p.requires_grad]
            self._graph_step = GraphedTrainStep(self._static_loss, params, optimizer, self.hparams.get("max_grad_norm"), dtype)
        inputs = self.static_inputs(batch)
        optimizer.replaying = True
        try:
            loss = opt.step(closure=lambda: self._graph_step(*inputs))
        finally:
            optimizer.replaying = False
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss


def recommender_class(class_path: str, trusted: Sequence[str] = (), source: str = "model.class_path") -> type[RecommenderModule]:
    """The :class:`RecommenderModule` subclass a ``class_path`` names.

    The rule (issue 18: a file from elsewhere must not choose what Python imports): a class is
    imported only if it is a genrec model, named as ``genrec.models.<Name>`` or by its defining
    module, looked up in genrec's registry without importing anything; or if its module is one
    of ``trusted`` (module names the user gives explicitly: a config's own ``class_path``, the
    ``trusted`` argument of ``Recommender.load``; a trusted package trusts its submodules). The
    class found must be a ``RecommenderModule`` subclass.

    Raises:
        ValueError: naming ``source`` and the class path: untrusted, not importable, or not a
            recommender (nothing is imported in the first case).
    """
    module_name, _, name = str(class_path).rpartition(".")
    home = MODELS.get(name)
    if home is not None and module_name in (home, "genrec.models"):
        return getattr(importlib.import_module(home), name)
    if not any(module_name == t or module_name.startswith(t + ".") for t in trusted if t):
        expected = ", ".join(f"genrec.models.{n}" for n in MODELS)
        raise ValueError(f"{source} {class_path!r} is not a genrec model ({expected}) nor in a trusted module "
                         f"(trusted: {', '.join(trusted) or 'none'}); nothing was imported")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{source} {class_path!r} cannot be imported ({type(error).__name__}: {error})") from error
    if not (isinstance(cls, type) and issubclass(cls, RecommenderModule)):
        raise ValueError(f"{source} {class_path!r} is not a genrec.models.RecommenderModule subclass")
    return cls


__all__ = ["GRAPH_LENGTH_STEP", "MODELS", "RecommenderModule", "Stage", "recommender_class"]
