"""The model stages (``fit``, ``validate``, ``test``, ``predict``): Lightning's ``LightningCLI``
over every genrec model and data module, with the trainer's logger and checkpoints derived
from the run folder (``trainer.default_root_dir``) once, here, so a model YAML holds only what
differs:

* a :class:`~lightning.pytorch.loggers.CSVLogger` writing ``<root>/logs/version_N/`` (unless
  ``trainer.logger`` is set; ``false`` turns logging off);
* a :class:`~lightning.pytorch.callbacks.ModelCheckpoint` writing ``<root>/checkpoints/``,
  keeping the best by ``val/ndcg@10`` (max) and ``last.ckpt`` (unless the config lists a
  ModelCheckpoint, or ``trainer.enable_checkpointing: false``);
* a :class:`~lightning.pytorch.callbacks.LearningRateMonitor` (per step) when there is a logger
  (unless the config lists one);
* a :class:`~genrec.divergence.StopOnNonFiniteLoss`: training stops, in one line, at a NaN or
  infinite training loss (then the best checkpoint before it is tested);
* ``<root>/config.yaml``, the resolved config of a ``fit`` (what
  :class:`~genrec.recommender.Recommender` reads).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from genrec.artifacts import atomic_path, read_checkpoint
from genrec.divergence import StopOnNonFiniteLoss
from genrec.errors import ArtifactError, UsageError, parse_error_line
from genrec.progress import progress_callbacks
from genrec.resume import RNGStateCheckpoint
from genrec.stages.parsing import PARSER_OPTIONS, instantiate

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

MONITOR = "val/ndcg@10"
"""The validation metric the default ModelCheckpoint keeps the best of (higher is better)."""


def run_folder_defaults(root: Path, logger: Any, callbacks: Sequence[Callback], checkpointing: bool = True) -> tuple[Any, list[Callback]]:
    """The trainer's ``(logger, extra callbacks)`` for the run folder ``root``, given what the
    config sets: a CSVLogger at ``<root>/logs`` when ``logger`` is unset (``None`` / ``True``),
    a ModelCheckpoint at ``<root>/checkpoints`` (best ``val/ndcg@10`` and ``last.ckpt``) unless
    ``callbacks`` has one or ``checkpointing`` is off, and a per-step LearningRateMonitor when
    there is a logger and ``callbacks`` has none."""
    if logger is None or logger is True:
        logger = CSVLogger(save_dir=str(root), name="logs")
    extra: list[Callback] = []
    if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        extra.append(ModelCheckpoint(dirpath=str(root / "checkpoints"), monitor=MONITOR, mode="max", save_last=True))
    if logger is not False and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
        extra.append(LearningRateMonitor(logging_interval="step"))
    return logger, extra


class GenRecCLI(LightningCLI):
    """LightningCLI over every genrec model and data module (subclass mode for both).

    ``fit`` ends with ``test`` on the best checkpoint (by the ModelCheckpoint's monitor, or the
    final weights when there is none), so one command trains, validates and tests.

    Args:
        args: the command line (``None``: ``sys.argv``), a dict or a Namespace.
        run: run the subcommand (``False``: only build the model, data module and trainer, of a
            parser without subcommands).
        values: settings put on the parsed config before anything is built (dotted keys, e.g.
            ``{"trainer.default_root_dir": "runs/x/tiger", "model.init_args.preset": "1M"}``):
            what a caller computes, never passed as command-line arguments.
    """

    def __init__(self, args: Sequence[str] | Mapping[str, Any] | None = None, run: bool = True,
                 values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"callbacks": [RNGStateCheckpoint(), StopOnNonFiniteLoss()]},
            parser_kwargs={**PARSER_OPTIONS, **{command: dict(PARSER_OPTIONS) for command in LIGHTNING_COMMANDS}},
            seed_everything_default=0,  # the seed Lightning falls back to, said explicitly (no "No seed found" warning)
            args=args if args is None or isinstance(args, Mapping) else list(args),
            run=run,
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            parser.set_defaults(weights_only=True)  # --ckpt_path files load without unpickling
        return parser

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse ``args`` when given (the pipeline and tests pass them), else ``sys.argv``, then
        set the ``values``; a parse error becomes one :class:`UsageError` line."""
        try:
            if args is None:
                super().parse_arguments(parser, args)
            elif isinstance(args, (dict, Namespace)):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except argparse.ArgumentError as error:
            given = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
            raise UsageError(parse_error_line(error, parser, given)) from error
        subcommand = self.config.get("subcommand")
        target = self.config[subcommand] if subcommand else self.config
        for key, value in self._values.items():
            target[key] = value

    def _parse_ckpt_path(self) -> None:
        """Check a ``--ckpt_path`` file before LightningCLI reads its hyperparameters: it must load
        with ``weights_only=True`` and name a genrec model or the model class the user's own
        config names (a researcher's subclass), if any."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            checkpoint = read_checkpoint(Path(path))
            class_path = str((checkpoint.get("hyper_parameters") or {}).get("_class_path", "genrec."))
            model = self.config[subcommand].get("model")
            configured = str(model.get("class_path", "")) if hasattr(model, "get") else ""
            if not class_path.startswith("genrec.") and class_path != configured:
                raise ArtifactError(f"{path}: the checkpoint names the class {class_path!r}, neither a genrec model nor the "
                                    f"configured model {configured or '(none)'!r}; refusing to import it")
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        instantiate(super().instantiate_classes)

    def before_fit(self) -> None:
        """``--ckpt_path last``: the ModelCheckpoint's ``last.ckpt`` must load (weights only)
        before training starts, or the command ends with one line naming it."""
        dirpath = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        if self.config["fit"].get("ckpt_path") == "last" and dirpath and (Path(dirpath) / "last.ckpt").is_file():
            read_checkpoint(Path(dirpath) / "last.ckpt")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with the run folder's logger and callbacks (:func:`run_folder_defaults`)
        and plain progress lines instead of Rich's bar when stdout is not a terminal (see
        :mod:`genrec.progress`) and no progress bar was configured."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        root = Path(config.get("default_root_dir") or os.getcwd())
        logger, extra = run_folder_defaults(root, config.get("logger"), callbacks, checkpointing=config.get("enable_checkpointing") is not False)
        kwargs.setdefault("logger", logger)
        progress = progress_callbacks() if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks) else []
        kwargs.setdefault("callbacks", [*callbacks, *extra, *progress])
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if not callable(getattr(self.model, "test_step", None)) or self.trainer.interrupted:
            return
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


class RunConfigSaver(SaveConfigCallback):
    """LightningCLI's config saver (``config.yaml`` in the log folder) that, when fitting, also
    writes the resolved config beside the checkpoints: ``<folder>/config.yaml`` next to
    ``<folder>/checkpoints/`` (the ModelCheckpoint's ``dirpath``, else the log folder's). That one
    file is what :class:`~genrec.recommender.Recommender` reads."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        folder = Path(dirpath).parent if dirpath else Path(trainer.log_dir or trainer.default_root_dir)
        text = self.parser.dump(self.config, skip_none=False)
        with atomic_path(folder / "config.yaml") as tmp:
            tmp.write_text(text)


def build_model_run(files: Sequence[str | Path], overrides: Sequence[str] = (), values: Mapping[str, Any] | None = None) -> GenRecCLI:
    """A model's run, built but not started: the model, data module and trainer of the YAML
    ``files`` (a ``data:`` block, a ``model:``/``trainer:`` one; later files win), the user's
    command-line ``overrides``, then ``values`` (see :class:`GenRecCLI`). ``cli.trainer.fit(cli.model,
    datamodule=cli.datamodule)`` trains it."""
    return GenRecCLI(args=[*(arg for file in files for arg in ("--config", str(file))), *overrides], run=False, values=values)
