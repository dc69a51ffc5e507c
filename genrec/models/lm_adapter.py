"""A trained LM recommender's own weights without its base model: the adapter file (issue 20).

A LoRA run of SmolLM2-135M trains 4.9M of its 139M parameters, but its Lightning checkpoint
holds all of them (and the optimizer's state): over 500 MB. The adapter file holds only the
parameters that trained (``requires_grad``: the LoRA matrices, and a trained CF map), 20 MB in
float32, so a trained model can be moved where a checkpoint cannot (the GPU hold's transfer
limits, bench/hold/README.md) and rebuilt there from its config and the same base weights.

The file is one safetensors file (the tensors exactly as trained). Its metadata records what it
was made from: the module's hyperparameters, the file it came from, and a digest of the frozen
(base) weights it must be put back on. :func:`load_adapter` checks all of it before it copies a
tensor: the same set of trained parameters with the same shapes and dtypes, and the same base
weights (the digest), else one line naming the file and what differs.

    python -m bench.lm_adapter CKPT OUT.safetensors        # from a Lightning checkpoint
    python -m bench.lm_decode ... --adapter OUT.safetensors  # decode with it
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from genrec.artifacts import atomic_path
from genrec.errors import ArtifactError, one_line

if TYPE_CHECKING:
    from genrec.models.lm_rec import LMRecModule

FORMAT = "genrec-lm-adapter/1"


def trained_parameters(module: LMRecModule) -> dict[str, Tensor]:
    """The module's parameters that train (``requires_grad``), by name: the adapter's content."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def base_digest(module: LMRecModule) -> str:
    """A digest of the module's frozen parameters (names, shapes, dtypes and bytes): the base
    weights an adapter was trained on. Equal on every machine that builds the same base."""
    sha = hashlib.sha256()
    for name, p in sorted(module.named_parameters(), key=lambda item: item[0]):
        if p.requires_grad:
            continue
        data = p.detach().to("cpu").contiguous()
        sha.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        sha.update(data.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()[:16]


def save_adapter(module: LMRecModule, path: str | os.PathLike[str], source: str = "") -> dict[str, Any]:
    """Write the module's trained parameters to ``path`` (safetensors, atomically), with its
    hyperparameters, ``source`` (what it was made from, e.g. the checkpoint) and the base
    weights' digest in the metadata; returns the metadata."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().to("cpu").contiguous() for name, p in trained_parameters(module).items()}
    if not tensors:
        raise ArtifactError(f"{path}: the module has no trained parameters to save (every parameter is frozen)")
    meta = {"format": FORMAT, "source": str(source), "base_digest": base_digest(module),
            "parameters": str(sum(t.numel() for t in tensors.values())),
            "hparams": json.dumps(dict(module.hparams), default=str, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return meta


def load_adapter(module: LMRecModule, path: str | os.PathLike[str]) -> dict[str, str]:
    """Copy the adapter file's tensors into the module's trained parameters, after checking that
    the file is an adapter, that its parameters are exactly the module's trained ones (names,
    shapes, dtypes) and that the module's frozen weights are the ones it was trained on.

    Returns:
        the file's metadata (``source``, ``hparams``, ...).

    Raises:
        ArtifactError: one line naming the file and what does not match.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as error:  # noqa: BLE001 - safetensors raises its own types for missing or damaged files
        raise ArtifactError(f"{path}: not a readable adapter file ({type(error).__name__}: {one_line(error)[:160]})") from error
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a genrec LM adapter (format {meta.get('format')!r}, expected {FORMAT!r})")
    trained = trained_parameters(module)
    missing, extra = sorted(set(trained) - set(tensors)), sorted(set(tensors) - set(trained))
    if missing or extra:
        raise ArtifactError(f"{path}: its parameters are not this model's trained ones ({len(missing)} missing, e.g. "
                            f"{missing[:1]}; {len(extra)} unknown, e.g. {extra[:1]}): another LoRA rank, target or model?")
    for name, p in trained.items():
        t = tensors[name]
        if t.shape != p.shape or t.dtype != p.dtype:
            raise ArtifactError(f"{path}: {name} is {t.dtype} {tuple(t.shape)}, the model's is {p.dtype} {tuple(p.shape)}")
    digest = base_digest(module)
    if meta.get("base_digest") != digest:
        raise ArtifactError(f"{path}: trained on other base weights (digest {meta.get('base_digest')}, this model's {digest}): "
                            f"the adapter was made from {meta.get('source') or 'an unnamed source'}")
    with torch.no_grad():
        for name, p in trained.items():
            p.copy_(tensors[name].to(p.device))
    return meta


__all__ = ["FORMAT", "base_digest", "load_adapter", "save_adapter", "trained_parameters"]
