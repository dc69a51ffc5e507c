"""What a resumed run needs beyond Lightning's checkpoint: the global random number generators.

Lightning checkpoints the weights, optimiser, schedulers, loops and callback states, but not the
process-wide generators that dropout (torch) and any numpy / Python sampling draw from; a run
resumed from epoch ``k`` would draw the masks of epoch 0 again. :class:`RNGStateCheckpoint`
saves them in every checkpoint and restores them when training resumes, so the resumed run
continues with the draws the uninterrupted one made. (The training shuffle's generator is the
data module's state: :meth:`genrec.data.datamodule.SequenceDataModule.state_dict`.)

Every value is a tensor or a plain Python number, so the checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def rng_states() -> dict[str, Any]:
    """The state of torch's CPU and CUDA generators, numpy's global one and Python's ``random``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where as many devices exist)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["internal"].tolist()), python["gauss_next"]))


class RNGStateCheckpoint(Callback):
    """Puts the global generator states in every checkpoint; restores them when a fit resumes.

    The states are taken when the checkpoint is written (after the epoch's training batches and
    validation) and set back when Lightning restores callbacks, before the resumed epoch draws
    anything (Lightning skips the sanity check when restarting).
    """

    def state_dict(self) -> dict[str, Any]:
        return rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            set_rng_states(state_dict)


__all__ = ["RNGStateCheckpoint", "rng_states", "set_rng_states"]
