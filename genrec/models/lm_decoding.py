"""Title-constrained beam decoding of the LM recommender: the prompt prefilled once per user,
its keys/values shared by the user's beams.

Two decoders share the model and give the same items (``tests/models/test_lm_rec.py``); a
third, :mod:`genrec.models.lm_graphs`, is the slot decoder with static shapes replayed as CUDA
graphs, and is what :meth:`~genrec.models.LMRecModule.recommend` runs for the models it supports
(Llama, Qwen3), the slot decoder below for any other:

* **Slot decoding** (:class:`SlotKV`, :func:`slot_step`) serves
  :func:`genrec.decoding.pruned_beam_search`, which asks the model only for the beams that
  can still reach the top ``K``. Each layer keeps one preallocated buffer per user,
  ``[U, kv_heads, S + T * W, d]``: the prompt's keys/values in columns ``0 .. S-1`` (written
  once by the prefill) and the token that beam slot ``w`` fed at step ``t`` in column
  ``S + t * W + w`` (written in place). Nothing is copied when beams are reordered: an
  ancestry table ``[U, W, T]`` (the slot of each beam's ancestor at every step, a few KB)
  becomes an attention mask, so beam ``w`` sees the prompt and exactly its own ancestors'
  columns. One fused ``scaled_dot_product_attention`` call per layer attends the ``W * g``
  queries of a user's kv head (``W`` beams x ``g`` query heads per kv head, as TIGER's
  ``_fold_beams`` folds beams) over that buffer; the projections, MLPs and output layer run
  on the live beams only. When three quarters or fewer of the users in the buffers still have
  live beams, the buffers drop the finished users (one copy, so at most a few per batch).
* **Reference decoding** (:class:`PrefixKV`, :func:`reference_step`; ``recommend(...,
  reference=True)``, and the teacher-forced :func:`genrec.decoding.score_all_items`) is the
  decoder before issue 20, kept to check the new one against: it serves
  :func:`genrec.decoding.constrained_beam_search` with all ``B * W`` beams every step, the
  prompt's keys/values kept once per user and the generated tokens' per beam, reordered
  (copied) by the parents each step.

LoRA adapters are merged into float32 base weights for the duration of a slot decode
(:func:`merged_lora`): one matrix product per projection instead of three. The originals are
put back untouched (the merged weights are a copy), so a decode inside training changes nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.decoding import BeamResult, LiveBeams, pruned_beam_search

if TYPE_CHECKING:
    from genrec.models.lm_rec import LMInputs, LMRecModule

COMPACT_FRACTION = 0.75
"""Slot buffers drop finished users once this fraction or fewer of the users they hold are live."""


class PrefixKV:
    """Reference decoder state: the prompt's keys/values per layer (``[B, kv_heads, S, d]``,
    shared by a user's beams) and the generated tokens' per layer (``[R, kv_heads, t, d]``, per beam)."""

    def __init__(self, prompt_mask: Tensor) -> None:
        self.prompt_mask = prompt_mask.bool()  # [B, S], False at left padding
        self.prefix: dict[int, tuple[Tensor, Tensor]] = {}
        self.generated: dict[int, tuple[Tensor, Tensor]] = {}
        self.parents: Tensor | None = None  # [R]: the previous step's row of each beam, set per step


class SlotKV:
    """Slot decoder state (module docstring): per-user key/value buffers and beam ancestry.

    Args:
        prompt_mask: ``[B, S]``, nonzero at the prompts' real tokens (left-padded).
        width: ``W`` beam slots per user.
        capacity: ``T``, the most tokens a beam feeds (the trie's depth).
    """

    def __init__(self, prompt_mask: Tensor, width: int, capacity: int) -> None:
        B, S = prompt_mask.shape
        device = prompt_mask.device
        self.users = torch.arange(B, device=device)  # [U] the batch rows the buffers hold, ascending
        self.prompt_mask = prompt_mask.bool()  # [U, S]
        self.lengths = self.prompt_mask.sum(1)  # [U] real prompt tokens
        self.width, self.capacity, self.prompt_width = width, max(capacity, 1), S
        self.columns = -(-(S + self.capacity * width) // 8) * 8  # aligned for the fused kernels
        self.keys: dict[int, Tensor] = {}  # layer -> [U, kv_heads, columns, d]
        self.values: dict[int, Tensor] = {}
        self.ancestry = torch.zeros(B, width, self.capacity, dtype=torch.long, device=device)  # [U, W, T]
        self.step = 0  # tokens fed per beam so far
        self.fed = 0  # beam tokens fed so far (the full search feeds B * W per step)
        # Set per step by slot_step: the live beams' user (index into users), slot and buffer column.
        self.user = self.slot = self.column = torch.zeros(0, dtype=torch.long, device=device)
        self._bias: Tensor | None = None
        self._queries: Tensor | None = None
        self._query_index: tuple[Tensor, Tensor, Tensor] | None = None

    def used_columns(self) -> int:
        """Buffer columns in use at this step: the prompt and ``step`` tokens of every slot."""
        return self.prompt_width + self.step * self.width

    def bias(self, groups: int, dtype: torch.dtype) -> Tensor:
        """The additive attention mask of this step, ``[U, 1, W * groups, used_columns]`` (0 or
        ``-inf``; row ``w * groups + j`` is query head ``j`` of beam slot ``w``): the prompt's
        real tokens and the slot's ancestors' columns. Built once per step, shared by the layers."""
        if self._bias is None or self._bias.dtype != dtype:
            U, W, t, used = self.users.numel(), self.width, self.step, self.used_columns()
            own = self.ancestry[:, :, :t, None] == torch.arange(W, device=self.ancestry.device)  # [U, W, t, W]
            visible = torch.cat([self.prompt_mask[:, None, :].expand(U, W, -1), own.reshape(U, W, t * W)], dim=2)
            # Allocated at the aligned width, then sliced: the memory-efficient kernel wants
            # an aligned row stride and would otherwise pad a copy at every layer.
            bias = torch.empty(U, W, groups, self.columns, dtype=dtype, device=visible.device)
            zero = torch.zeros((), dtype=dtype, device=visible.device)
            bias[..., :used] = torch.where(visible, zero, float("-inf"))[:, :, None, :]
            self._bias = bias.view(U, 1, W * groups, self.columns)[..., :used]
        return self._bias

    def queries(self, query: Tensor, kv_heads: int) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The live beams' queries ``[R, H, d]`` laid out per user and kv head, ``[U, kv_heads,
        W * g, d]`` (zeros at slots without a beam), and the index of each live query in it.
        The buffer and the index are made once per step; each layer overwrites the live rows."""
        R, H, d = query.shape
        g = H // kv_heads
        if self._queries is None or self._queries.dtype != query.dtype:
            device = query.device
            heads = torch.arange(kv_heads, device=device)[None, :, None]
            index = (self.user[:, None, None], heads, (self.slot * g)[:, None, None] + torch.arange(g, device=device))  # [R, kvh, g] each
            self._queries = query.new_zeros(self.users.numel(), kv_heads, self.width * g, d)
            self._query_index = index
        self._queries[self._query_index] = query.reshape(R, kv_heads, g, d)
        return self._queries, self._query_index

    def compact(self, active: Tensor) -> None:
        """Keep only the users of ``active`` (``[A]`` batch rows, ascending, a subset of ``users``)."""
        keep = torch.searchsorted(self.users, active)
        self.users = active
        self.prompt_mask, self.lengths, self.ancestry = (x.index_select(0, keep) for x in (self.prompt_mask, self.lengths, self.ancestry))
        for buffers in (self.keys, self.values):
            for layer, buffer in buffers.items():
                buffers[layer] = buffer.index_select(0, keep)

    def advance(self, beams: LiveBeams) -> None:
        """Take the beams of the next step: drop finished users when few are left, copy each
        beam's ancestry from its parent and add its own slot."""
        if beams.active.numel() <= COMPACT_FRACTION * self.users.numel():
            self.compact(beams.active)
        self.step += 1
        t, W = self.step, self.width
        self.user = torch.searchsorted(self.users, beams.rows // W)
        self.slot = beams.rows % W
        if t > 1:
            self.ancestry[self.user, self.slot, : t - 1] = self.ancestry[self.user, beams.parent_slots, : t - 1]
        self.ancestry[self.user, self.slot, t - 1] = self.slot
        self.column = self.prompt_width + (t - 1) * W + self.slot
        self.fed += beams.rows.numel()
        self._bias = self._queries = None


@dataclass
class BeamState:
    """Decoder state threaded through a beam search's step function."""

    inputs: LMInputs  # the prompts, [B, S]
    kv: PrefixKV | SlotKV
    generated: int = 0  # reference decoding: tokens fed per beam so far


ACTIVE_KV: contextvars.ContextVar[PrefixKV | SlotKV | None] = contextvars.ContextVar("genrec_lm_beam_kv", default=None)
"""The key/value state of the beam search running in this context (``None``: ordinary attention)."""


def _attend_shared_prefix(query: Tensor, state: PrefixKV, layer: int, key: Tensor, value: Tensor, scaling: float) -> Tensor:
    """Reference decoding: one step's attention of ``R = B * W`` one-token queries over their
    user's prompt and their own beam's generated tokens (``key``/``value`` ``[R, kv_heads, 1, d]``
    of this token are appended to the latter first).

    Args:
        query: ``[R, H, 1, d]`` (rotary embedding applied), ``H = kv_heads * g``.

    Returns:
        ``[R, 1, H, d]``, the layout of ``transformers`` attention functions.
    """
    done = state.generated.get(layer)
    if done is not None:
        gk, gv = done
        if state.parents is not None:
            gk, gv = gk.index_select(0, state.parents), gv.index_select(0, state.parents)
        key, value = torch.cat([gk, key], dim=2), torch.cat([gv, value], dim=2)
    state.generated[layer] = (key, value)
    pk, pv = state.prefix[layer]  # [B, kvh, S, d]
    R, H, _, d = query.shape
    B, kvh, S, _ = pk.shape
    W, g = R // B, H // kvh
    # Prompt part, per user: the W beams x g heads of a kv head are W * g query positions.
    qf = query.reshape(B, W, kvh, g, d).permute(0, 2, 1, 3, 4).reshape(B, kvh, W * g, d)
    prompt = torch.matmul(qf, pk.transpose(-1, -2)).float() * scaling  # [B, kvh, W*g, S]
    prompt = prompt.masked_fill(~state.prompt_mask[:, None, None, :], float("-inf"))
    prompt = prompt.view(B, kvh, W, g, S).permute(0, 2, 1, 3, 4).reshape(R, kvh, g, S)
    own = torch.matmul(query.reshape(R, kvh, g, d), key.transpose(-1, -2)).float() * scaling  # [R, kvh, g, t]
    weights = torch.softmax(torch.cat([prompt, own], dim=-1), dim=-1)
    wp = weights[..., :S].reshape(B, W, kvh, g, S).permute(0, 2, 1, 3, 4).reshape(B, kvh, W * g, S)
    out_prompt = torch.matmul(wp.to(pv.dtype), pv).view(B, kvh, W, g, d).permute(0, 2, 1, 3, 4).reshape(R, kvh, g, d)
    out_own = torch.matmul(weights[..., S:].to(value.dtype), value)  # [R, kvh, g, d]
    return (out_prompt + out_own).reshape(R, 1, H, d)


def _attend_slots(query: Tensor, state: SlotKV, layer: int, key: Tensor, value: Tensor, scaling: float) -> Tensor:
    """Slot decoding: write the ``R`` live beams' keys/values (``[R, kv_heads, 1, d]``) into
    their columns, then attend every slot of every user over its buffer in one fused call.

    Args:
        query: ``[R, H, 1, d]`` (rotary embedding applied), ``H = kv_heads * g``.

    Returns:
        ``[R, 1, H, d]``, the layout of ``transformers`` attention functions.
    """
    keys, values = state.keys[layer], state.values[layer]  # [U, kvh, C, d]
    keys[state.user, :, state.column] = key[:, :, 0]
    values[state.user, :, state.column] = value[:, :, 0]
    R, H, _, d = query.shape
    kvh = keys.shape[1]
    queries, index = state.queries(query[:, :, 0], kvh)  # [U, kvh, W*g, d]
    used = state.used_columns()
    with _masked_kernels(queries.device):
        out = F.scaled_dot_product_attention(
            queries, keys[:, :, :used], values[:, :, :used], attn_mask=state.bias(H // kvh, queries.dtype), scale=scaling
        )  # [U, kvh, W*g, d]
    return out[index].reshape(R, 1, H, d)


def _masked_kernels(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """On CUDA, the slot attention's kernels: the memory-efficient one (an additive mask, any
    strides with a contiguous last dimension), else the plain math one; the CPU chooses its own."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _keep_prompt(state: PrefixKV | SlotKV, layer: int, key: Tensor, value: Tensor) -> None:
    """At the prefill: keep a layer's prompt keys/values ``[B, kv_heads, S, d]`` (the slot
    buffers are allocated here, at the dtype the model computes in)."""
    if isinstance(state, PrefixKV):
        state.prefix[layer] = (key, value)
        return
    B, kvh, S, d = key.shape
    for buffers, x in ((state.keys, key), (state.values, value)):
        # Zeros, not empty: a masked column still enters the fused kernel as 0 * value, and
        # uninitialised memory may hold NaN.
        buffer = x.new_zeros(B, kvh, state.columns, d)
        buffer[:, :, :S] = x
        buffers[layer] = buffer


def _with_beam_kv(inner: Callable[..., tuple[Tensor, Any]]) -> Callable[..., tuple[Tensor, Any]]:
    """Wrap a ``transformers`` attention function: unchanged unless a beam search is active
    (:data:`ACTIVE_KV`); then the prefill keeps each layer's prompt keys/values and the
    decoding steps attend as :func:`_attend_slots` or :func:`_attend_shared_prefix`."""

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any):
        # Only the training forward is compiled, never inside a beam search (LMRecModule.forward),
        # and Dynamo cannot trace a ContextVar's get(): reading ACTIVE_KV while compiling broke
        # the compiled forward into pieces at every layer.
        state = None if torch.compiler.is_compiling() else ACTIVE_KV.get()
        if state is None:
            return inner(module, query, key, value, attention_mask, **kwargs)
        layer = module.layer_idx
        if layer not in (state.prefix if isinstance(state, PrefixKV) else state.keys):
            _keep_prompt(state, layer, key, value)
            return inner(module, query, key, value, attention_mask, **kwargs)
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        attend = _attend_shared_prefix if isinstance(state, PrefixKV) else _attend_slots
        return attend(query, state, layer, key, value, scaling), None

    return attention


def shared_prefix_attention(name: str) -> str:
    """Register (once) and return the ``transformers`` attention implementation
    ``genrec_prefix_<name>``: ``name`` (``sdpa``, ``eager``, ...) outside beam search, the
    shared-prompt attention of the active decoder (module docstring) in it."""
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        eager_mask,
        sdpa_mask,
    )
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if name.startswith("genrec_prefix_"):
        return name
    key = f"genrec_prefix_{name}"
    if key not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        if name == "eager":
            from transformers.models.llama.modeling_llama import eager_attention_forward as inner
        else:
            inner = ALL_ATTENTION_FUNCTIONS[name]
        AttentionInterface.register(key, _with_beam_kv(inner))
        mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(name, sdpa_mask if name != "eager" else eager_mask)
        AttentionMaskInterface.register(key, mask)
    return key


@contextlib.contextmanager
def active(kv: PrefixKV | SlotKV) -> Iterator[None]:
    """Make ``kv`` the beam state that the model's attention uses inside the block."""
    token = ACTIVE_KV.set(kv)
    try:
        yield
    finally:
        ACTIVE_KV.reset(token)


def _log_probs(logits: Tensor) -> Tensor:
    """``[R, 1, V]`` logits of any float dtype -> ``[R, V]`` float32 log-probs."""
    return torch.log_softmax(logits[:, -1], dim=-1, dtype=torch.float32)


def reference_step(module: LMRecModule, tokens: Tensor | None, parents: Tensor | None, state: BeamState) -> tuple[Tensor, BeamState]:
    """The :class:`genrec.decoding.StepFn` of reference decoding (module docstring).

    First call: prefill the left-padded prompts ``[B, S]`` once, ``[B, V]`` log-probs of the first
    title token. Later calls: feed ``tokens`` ``[R]`` (``R = B * W``, beam ``w`` of user ``b`` at row
    ``b * W + w``) at position ``prompt length + generated - 1``; ``[R, V]`` float32 log-probs.
    """
    kv = state.kv
    assert isinstance(kv, PrefixKV)
    with active(kv):
        if tokens is None:
            return _log_probs(module(state.inputs, logits_to_keep=1)), state
        # The first decoding step's parents point at the B prefill rows: no beam tokens to reorder yet.
        kv.parents = parents if state.generated else None
        state.generated += 1
        lengths = state.inputs.attention_mask.sum(1)
        positions = (lengths.repeat_interleave(tokens.shape[0] // lengths.shape[0]) + state.generated - 1)[:, None]
        return _log_probs(module.model(input_ids=tokens[:, None], position_ids=positions, use_cache=False).logits), state


def slot_step(module: LMRecModule, beams: LiveBeams | None, state: BeamState) -> tuple[Tensor, BeamState]:
    """The :class:`genrec.decoding.LiveStepFn` of slot decoding (module docstring).

    First call (``beams`` None): prefill the left-padded prompts ``[B, S]`` once into the slot
    buffers, ``[B, V]`` float32 log-probs of the first title token. Later calls: feed the ``R``
    live beams' tokens at position ``prompt length + step - 1``, ``[R, V]`` float32 log-probs.
    """
    kv = state.kv
    assert isinstance(kv, SlotKV)
    with active(kv):
        if beams is None:
            return _log_probs(module(state.inputs, logits_to_keep=1)), state
        kv.advance(beams)
        positions = (kv.lengths[kv.user] + kv.step - 1)[:, None]
        return _log_probs(module.model(input_ids=beams.tokens[:, None], position_ids=positions, use_cache=False).logits), state


def slot_decode(module: LMRecModule, inputs: LMInputs, width: int, num_results: int) -> tuple[BeamResult, int, int]:
    """Title-constrained beam search of ``inputs`` (``[B, S]`` prompts) by slot decoding, LoRA
    merged for its duration: the :class:`~genrec.decoding.BeamResult` (``[B, K]``), the decoding
    steps and the beam tokens fed."""
    trie = module.trie()
    state = BeamState(inputs=inputs, kv=SlotKV(inputs.attention_mask, width, trie.max_depth))
    with merged_lora(module.model):
        result = pruned_beam_search(functools.partial(slot_step, module), trie, batch_size=inputs.input_ids.shape[0],
                                    beam_width=width, num_results=num_results, state=state)
    return result, state.kv.step, state.kv.fed


@contextlib.contextmanager
def scaled_adapters(model: nn.Module, scale: float) -> Iterator[None]:
    """Inside the block, every peft LoRA adapter of ``model`` weighs ``scale`` times its trained
    weight (each layer's ``scaling``, which its forward and its merged delta ``scale * B @ A``
    both use; ``LoraSettings.decode_scale``); the trained scalings are put back afterwards,
    exactly. ``scale`` 1 changes nothing."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(getattr(m, "scaling", None), dict)] if scale != 1 else []
    saved = [(m, dict(m.scaling)) for m in layers]
    for m, scalings in saved:
        for name, value in scalings.items():
            m.scaling[name] = value * scale
    try:
        yield
    finally:
        for m, scalings in saved:
            m.scaling.update(scalings)


@contextlib.contextmanager
def merged_lora(model: nn.Module) -> Iterator[bool]:
    """Inside the block, run a peft LoRA model as one weight per projection: each adapted
    ``nn.Linear``'s float32 weight is replaced by a merged copy (``W + scale * B @ A``) and the
    adapters are disabled; the original weights are put back afterwards (not un-merged by
    subtraction, so they come back bit for bit). Yields whether it merged: not for a model
    without LoRA, nor for base weights that are not float32 (a bf16 merge would round the
    adapter away), 4-bit or otherwise not plain ``nn.Linear``, which run unmerged.
    """
    disable = getattr(model, "disable_adapter", None)
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")] if disable else []
    mergeable = bool(layers) and all(
        type(m.base_layer) is nn.Linear and m.base_layer.weight.dtype == torch.float32 and not m.merged and not getattr(m, "lora_variant", None)
        for m in layers
    )
    if not mergeable:
        yield False
        return
    originals = []
    with torch.no_grad():
        for m in layers:
            base = m.base_layer
            delta = sum(m.get_delta_weight(name) for name in m.active_adapters if name in m.lora_A)
            originals.append((base, base.weight))
            base.weight = nn.Parameter(base.weight + delta, requires_grad=False)
    try:
        with disable():
            yield True
    finally:
        for base, weight in originals:
            base.weight = weight


__all__ = ["BeamState", "PrefixKV", "SlotKV", "merged_lora", "reference_step", "scaled_adapters", "shared_prefix_attention", "slot_step"]
