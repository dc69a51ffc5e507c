"""Shared pieces of the reliability tests: tiny configs, a CLI runner that returns the exit code
and stderr, and a simulated kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from genrec.cli import main


def data_yaml(folder: Path, users: int = 40, items: int = 60, batch_size: int = 32, **data: Any) -> str:
    """A data preset over the synthetic source (``users`` x ``items``, histories of <= 10), written
    to ``folder/data.yaml``; ``data`` adds SequenceDataModule settings."""
    config = {
        "data": {
            "class_path": "genrec.data.SequenceDataModule",
            "init_args": {
                "name": "tiny",
                "kcore": 0,
                "batch_size": batch_size,
                "source": {
                    "class_path": "genrec.data.synthetic.SyntheticSource",
                    "init_args": {"num_users": users, "num_items": items, "num_categories": 4, "num_brands": 8, "max_length": 10},
                },
                **data,
            },
        }
    }
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``main(args)``: its exit code (0 when it returns) and the non-empty lines it wrote to stderr."""
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a command that must fail with one ``error:`` line; its exit code and that line
    (asserting it is the only one and no traceback was printed)."""
    code, lines = run_cli(args, capsys)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    return code, errors[0]


class Killed(Exception):
    """Raised by :class:`KillAfterEpoch`: the process dies here (nothing more is written)."""


class KillAfterEpoch(L.Callback):
    """Ends training with :class:`Killed` once epoch ``epoch`` (0-based) and its checkpoint are
    done, before the next epoch draws anything: what a ``kill -9`` between two epochs leaves."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch + 1:
            raise Killed(f"killed after epoch {self.epoch}")
