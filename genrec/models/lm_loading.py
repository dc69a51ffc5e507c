"""Loading the LM recommender's language model: tokenizers, pretrained or preset causal LMs (GGUF
files dequantised, 4-bit nf4 base weights), LoRA adapters, Liger kernels, and the decoder-layer
classes FSDP wraps and :class:`LayerCompile` compiles."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from genrec.data.catalog import ItemCatalog
from genrec.models.lm_decoding import shared_prefix_attention
from genrec.models.presets import LMRecConfig
from genrec.models.settings import LoraSettings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str, gguf_file: str | None = None) -> Any:
    """The tokenizer of a model alias (``smollm2``), folder or hub name; cached per process
    (reading a GGUF's vocabulary takes seconds)."""
    from transformers import AutoTokenizer

    from genrec.encode import resolve_model

    path, gguf = resolve_model(name, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(path, **kwargs)


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The decoder-layer classes of a ``transformers`` model (``_no_split_modules``), e.g.
    ``{LlamaDecoderLayer}``: the ``auto_wrap_policy`` / ``activation_checkpointing_policy`` of
    Lightning's ``FSDPStrategy`` for it."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {type(m) for m in model.modules() if type(m).__name__ in names}


class LayerCompile:
    """``torch.compile`` for the training forward, one decoder layer at a time (regional compilation).

    Each decoder layer's call (``nn.Module._call_impl``, what ``nn.Module.compile`` compiles) is
    compiled on its own. Dynamo lifts a layer's parameters into graph inputs, so the first layer's
    graph serves every other layer of the same class: compile time is one layer's, not the whole
    model's. The embedding, final norm and output layer run eagerly (a few operators).
    Compiling the whole model as one graph instead took minutes on the host for SmolLM2-135M's 30
    layers with LoRA: on the H200 the fourteenth hold's two LoRA runs did not reach their 40th
    step in 8 minutes, the GPU idle (docs/benchmarks.md, "LM recommender").

    The compiled calls are in force only inside :meth:`active`; outside it (validation, test, beam
    search, whose attention hook reads a ``ContextVar`` that Dynamo cannot trace) the same layers
    run eagerly.

    Args:
        model: a ``transformers`` causal LM, or a peft wrapper of one.
        dynamic: ``torch.compile``'s ``dynamic`` (prompt lengths vary by batch).
        backend: ``torch.compile``'s backend (tests count graphs with ``"eager"``).
    """

    def __init__(self, model: nn.Module, dynamic: bool = True, backend: str | Any = "inductor") -> None:
        get_base = getattr(model, "get_base_model", None)
        classes = decoder_layer_classes(get_base() if get_base is not None else model)
        self.layers = [m for m in model.modules() if type(m) in classes]
        if not self.layers:
            raise ValueError(f"{type(model).__name__}: no decoder layers found to compile (its _no_split_modules name none)")
        self.calls = [torch.compile(layer._call_impl, dynamic=dynamic, backend=backend) for layer in self.layers]

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the layers' compiled calls inside the block (``nn.Module.__call__`` takes a module's
        ``_compiled_call_impl`` when set), and what they ran before after it."""
        before = [layer._compiled_call_impl for layer in self.layers]
        for layer, call in zip(self.layers, self.calls, strict=True):
            layer._compiled_call_impl = call
        try:
            yield
        finally:
            for layer, call in zip(self.layers, before, strict=True):
                layer._compiled_call_impl = call


def apply_liger(model: nn.Module, fused_loss: bool = False) -> None:
    """Patch a ``*ForCausalLM`` in place with Liger's RMSNorm, RoPE and SwiGLU kernels.

    Args:
        fused_loss: also Liger's output layer fused with the cross-entropy (the model's forward
            then returns the loss, not logits, when given labels). Off for this module, whose
            :meth:`LMRecModule.loss` takes logits of the target positions only; on in
            ``bench.lm_throughput``, whose loss covers every position.

    Raises:
        ValueError: when Liger has no kernels for the model's type.
    """
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = model.config.model_type
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ValueError(f"liger: Liger has no kernels for model type {model_type!r} (it has {sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)})")
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": fused_loss}
    accepted = inspect.signature(apply).parameters  # e.g. Gemma's has geglu, not swiglu
    apply(model=model, **{k: v for k, v in wanted.items() if k in accepted})


def save_plain(model: nn.Module, folder: str) -> None:
    """Save a (dequantised GGUF) model as plain safetensors + config, which ``save_pretrained``
    refuses for GGUF-loaded models."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    for key in ("quantization_config", "gguf_file"):
        if hasattr(config, key):
            delattr(config, key)
    config.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, f"{folder}/model.safetensors", metadata={"format": "pt"})


def cf_table(path: str, catalog: ItemCatalog) -> Tensor:
    """The ``[num_items, dim]`` float32 item table of the embeddings file ``path`` (the LM
    recommender's ``cf_init``), checked against ``catalog``."""
    from genrec.data.datamodule import load_embeddings
    from genrec.encode import CF_MODEL, embedding_metadata

    table = load_embeddings(path)
    metadata = embedding_metadata(path)
    fingerprint = metadata.get("catalog_fingerprint")
    if fingerprint != catalog.fingerprint():
        raise ValueError(f"cf_init {path}: catalogue fingerprint {fingerprint!r} is not this data's "
                         f"{catalog.fingerprint()!r}; encode this data set's items (configs/encode/cf.yaml)")
    if table.dim() != 2 or table.shape[0] != len(catalog):
        raise ValueError(f"cf_init {path}: embeddings of shape {tuple(table.shape)}, expected [{len(catalog)}, dim]")
    if metadata.get("model") != CF_MODEL:
        log.warning("cf_init %s was made by encoder %r, not the collaborative %r one", path, metadata.get("model"), CF_MODEL)
    return table


def build_lm(hp: Any, lora: LoraSettings, lm_config: LMRecConfig | None, tokenizer: Any, pad_id: int, eos_id: int) -> nn.Module:
    """The causal LM of :class:`~genrec.models.lm_rec.LMRecModule`'s hyperparameters ``hp``:
    from ``lm_config`` (a preset, over ``tokenizer``'s vocabulary) or pretrained (``hp.model``),
    with ``lora`` / 4-bit / checkpointing applied (:func:`adapt`)."""
    if lm_config is not None:
        model = lm_config.build(len(tokenizer), pad_id, eos_id)
    else:
        from transformers import AutoModelForCausalLM

        from genrec.encode import resolve_model

        path, gguf = resolve_model(hp.model, hp.gguf_file)
        kwargs: dict[str, Any] = {"dtype": hp.dtype if hp.dtype == "auto" else getattr(torch, hp.dtype)}
        if lora.load_in_4bit:
            from transformers import BitsAndBytesConfig

            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
            if gguf:  # transformers will not quantize a GGUF on load: dequantise, save, reload 4-bit
                with tempfile.TemporaryDirectory() as folder:
                    save_plain(AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.bfloat16), folder)
                    return adapt(AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, **kwargs), hp, lora)
            kwargs["quantization_config"] = quantization
        if gguf:
            kwargs["gguf_file"] = gguf
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return adapt(model, hp, lora)

def _shared_prefix(model: nn.Module) -> nn.Module:
    """Switch ``model``'s attention to :func:`shared_prefix_attention` of its current one."""
    config = model.config
    config._attn_implementation = shared_prefix_attention(config._attn_implementation or "sdpa")
    return model

def adapt(model: nn.Module, hp: Any, lora: LoraSettings) -> nn.Module:
    """Shared-prompt beam attention, gradient checkpointing, k-bit preparation and LoRA
    adapters, as the flags of ``hp`` and ``lora`` say."""
    model = _shared_prefix(model)
    if hp.liger:
        apply_liger(model)
    if hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.enabled:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if lora.load_in_4bit:
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=hp.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        targets = lora.target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets), task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, config)
    return model


__all__ = ["adapt", "apply_liger", "build_lm", "cf_table", "decoder_layer_classes", "load_tokenizer", "save_plain"]
