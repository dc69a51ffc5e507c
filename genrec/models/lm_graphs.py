"""Static-shape slot decoding of the LM recommender, each step one CUDA-graph replay (issue 20).

The slot decoder of :mod:`genrec.models.lm_decoding` runs the ``transformers`` model on the live
beams of every step: about 25 operators per layer, each a kernel launch and some 80 us of
Python, with shapes that change every step. On an H200 its GPU waited on the host five times
over. This decoder computes the same thing with static shapes, so that a step is one graph:

* **The model's own arithmetic, written out once** (:class:`~genrec.models.lm_weights.DecoderWeights`): the Llama / Qwen3
  decoder layer (RMSNorm, fused q/k/v and gate/up projections, rotary embedding, SiLU MLP) on
  weight copies in the compute dtype, LoRA merged (:func:`~genrec.models.lm_decoding.merged_lora`),
  refreshed before every batch (so a decode inside training sees the current weights).
* **Static buffers per engine** (:class:`GraphDecoder`, ``cap`` users, ``W`` slots, ``T``
  steps): per layer one key and one value buffer ``[cap + 1, kv_heads, C, d]``, the prompt
  right-aligned in columns ``0 .. P-1`` (``P``: the widest prompt the module makes) and the
  token of slot ``w`` at step ``t`` in column ``P + t * W + w``, as the slot decoder lays them
  out; row ``cap`` and the last column take the writes of padding rows and are never visible to
  a real beam. Which columns a slot sees (its prompt and its ancestors) is a boolean table,
  updated from the parents each step; the attention mask of the step is built from it inside
  the graph.
* **Buckets**: the ``R`` live beams of a step are padded to ``R_b``, a power of two; the users
  still in the search are packed into the first ``U_b`` rows (a power of two, compacted when
  half or fewer are left). One graph per ``(U_b, R_b)``, captured on first use and replayed.
  Nothing in a step syncs with the host except the search's own row count.
* Off CUDA (or with ``graphs=False``) the same step runs eagerly. Static shapes then buy
  nothing and cost padding, so by default the eager step takes the exact sizes instead (``R``
  rows, the held users, compacted as the slot decoder does, and the columns in use); with
  ``padded=True`` it pads as the graphs do. The exactness tests run both on the CPU against
  brute force and the reference decoder; a CUDA test checks the replayed graphs against eager
  padded steps.

Switches (attributes of :class:`~genrec.models.LMRecModule`, set from its ``decoding`` argument,
:class:`~genrec.models.settings.DecodingSettings`):
``static_decoding`` (default on: this decoder when the model is one it runs, else the slot
decoder), ``decode_graphs`` (default on: CUDA graphs on a GPU), ``decode_padded`` (default:
as ``decode_graphs`` on the module's device), ``decode_compile`` (default: on a CUDA device; each layer's
elementwise work fused by ``torch.compile``, :meth:`~genrec.models.lm_weights.DecoderWeights.compile`;
on the H200 +19 % users/s for 8-24 s of compiling, an understatement: until 2026-12-04 the
benchmark's operator count switched the compiled code off after its warm-up, docs/benchmarks.md) and ``decode_forced``
(default off): a user whose live beams are all in *forced* title suffixes (one item below each;
71 % of Beauty's title tokens are, ``bench.title_trie``) leaves the steps, and
:meth:`GraphDecoder.finish` scores the rest of those titles in one eager causal pass
(:func:`~genrec.decoding.pruned_beam_search`'s ``finish``), so a batch runs as many graphed steps
as its users need choices, not as its longest title has tokens. Measured on the H200 it runs 25 %
fewer steps but is half as fast (235 against 447 users/s on Beauty, batch 1,024): the eager pass
over every forced token with its prompt and ancestors costs more than the steps it saves.

Class attributes measured on the H200 (docs/benchmarks.md, tenth hold): :attr:`GraphDecoder.FUSED_HEAD`
(on) makes the steps return logits and row log-normalisers (:class:`~genrec.decoding.HeadScores`)
instead of float32 ``[R, V]`` log-probs (``bench.lm_decode --head log-softmax`` turns it off);
:attr:`GraphDecoder.CUDNN_ATTENTION` (on; ``--attention efficient`` turns it off) runs the steps'
attention through cuDNN where it can. :attr:`GraphDecoder.CAPTURE_AFTER`
(default 1; 2 measured 7 % slower) runs a step shape eagerly until its N-th use, then captures it.

The prefill (eager: one call per batch) rolls the left-padded prompts to right padding, where
plain causal attention is exact for every real token, and runs each layer's attention as one
flash kernel with no mask (:attr:`GraphDecoder.CAUSAL_PREFILL`; the masked attention it replaced took about 15 % of a
long-prompt batch's kernel time on the H200), in chunks of users small enough for
Inductor's 32-bit indexing (:attr:`GraphDecoder.PREFILL_ELEMENTS`).

Attention in a step is one fused ``scaled_dot_product_attention`` per layer over ``[U_b + 1, kv_heads,
W * g, hi - lo]`` with the additive mask (the memory-efficient kernel on CUDA; the flash kernel
takes no mask). Prompt and beam columns share the call. Only the columns in use are attended
(:meth:`GraphDecoder.span`): from the batch's widest prompt (length-sorted batches are much
narrower than ``P``) to the beam columns written so far, in buckets of 128 columns when graphed (the graphs are
keyed by ``(U_b, R_b, lo, hi)``). Over all ``C`` columns, attention was a third of the GPU time
of a step (H200 profile, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.decoding import BeamResult, HeadScores, LiveBeams, pruned_beam_search
from genrec.models.lm_decoding import COMPACT_FRACTION
from genrec.models.lm_weights import DecoderWeights, causal_lm
from genrec.models.settings import BUILD_SETTINGS, ENGINE_SETTINGS

if TYPE_CHECKING:
    from genrec.models.lm_rec import LMInputs, LMRecModule

SUPPORTED = ("llama", "qwen3")
"""``config.model_type`` values whose decoder layer :class:`DecoderWeights` reproduces."""


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def unsupported_reason(model: nn.Module) -> str | None:
    """Why :class:`GraphDecoder` cannot run ``model`` (a ``*ForCausalLM``, possibly peft-wrapped),
    or ``None`` when it can: a Llama or Qwen3 decoder with plain float ``nn.Linear``
    projections, LoRA mergeable in float32."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED:
        return f"model type {getattr(config, 'model_type', None)!r} (supported: {', '.join(SUPPORTED)})"
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if hasattr(module, "lora_A"):
            if type(base) is not nn.Linear or base.weight.dtype != torch.float32 or getattr(module, "lora_variant", None):
                return "LoRA on weights that are not float32 nn.Linear (not mergeable exactly)"
            if module.merged:
                return "LoRA adapters merged in place"
        elif isinstance(module, nn.Linear) and not module.weight.dtype.is_floating_point:
            return f"quantised weights ({module.weight.dtype})"
    names = [type(m).__name__ for m in model.modules()]
    if any("4bit" in n.lower() or "8bit" in n.lower() for n in names):
        return "quantised (bitsandbytes) weights"
    if any("FullyShard" in n or n.startswith("FSDP") for n in names) or any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "sharded (FSDP) weights"
    return None


def _attention_kernels(device: torch.device, cudnn: bool = False, flash: bool = False) -> contextlib.AbstractContextManager[None]:
    """CUDA: the memory-efficient kernel (takes an additive mask), else the math one; with
    ``flash`` (no mask: the causal prefill) flash attention before them, and with ``cudnn``
    cuDNN's fused attention first (Hopper kernels; it takes an additive mask too), each falling
    back to the next for a shape it does not run."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION] * cudnn + [SDPBackend.FLASH_ATTENTION] * flash + [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


class GraphDecoder:
    """Static buffers, the prefill and the graphed step of one decoding shape (module docstring).

    Args:
        weights: the decoder's weights.
        capacity: ``cap``, the most users a batch holds.
        width: ``W`` beam slots per user.
        steps: ``T``, the most tokens a beam feeds (the trie's depth).
        prompt_width: ``P``, the widest prompt (``prompt.max_tokens``).
        graphs: capture and replay CUDA graphs (ignored off CUDA: the step runs eagerly).
        padded: pad to the buckets (always with graphs); else exact sizes (module docstring).
    """

    PROMPT_BUCKET = 128
    """Padded (graphed) steps start attending at a multiple of this many prompt columns (a multiple
    of 8). The start column is part of each graph's key, so a batch whose longest prompt crosses a
    multiple needs new graphs (4.0 of a 22.9 s test pass went to captures on the H200, thirteenth
    hold); at least the prompt width, every batch attends from column 0 (the columns before its
    prompts masked) and one set of graphs serves every prompt length
    (``bench.lm_decode --prompt-bucket``), no faster on the H200 (fourteenth hold: the wider
    attention costs what the captures saved)."""
    BEAM_BUCKET = 128
    """Padded (graphed) steps attend the beam columns written so far rounded up to a multiple of
    this (at least 64). Powers of two (before) attended 1,024 columns where 520-660 were written."""
    ROWS_PER_OCTAVE = 1
    """(Default of ``LMRecModule.decode_rows_per_octave``, ``decoding.rows_per_octave`` in the
    config, which sets it per engine, as ``decoding.prompt_bucket``, ``capture_after``,
    ``causal_prefill`` and ``prefill_elements`` set the attributes below.) Padded (graphed) steps feed the live beams rounded up to one of this many row buckets per
    power of two (above :attr:`FINE_ROWS`; below, powers of two): 1 = powers of two (up to 2x the
    rows fed), 4 = 1.25, 1.5, 1.75, 2 x 2^k (at most 1.25x, four times the graphs of that range).
    :meth:`rows` gives the bucket; ``fed_padded`` counts what the steps fed."""
    FINE_ROWS = 1024
    """Row counts above which :attr:`ROWS_PER_OCTAVE` applies."""
    CUDNN_ATTENTION = True
    """The steps' attention through cuDNN's fused kernel where it runs the shape (Hopper
    instructions; the memory-efficient kernel is an sm80 one, and attention was 23 % of a step in
    the H200 profile at batch 2,048), else the memory-efficient one. On the H200 +8 % users/s
    over the memory-efficient kernel, same call (docs/benchmarks.md, tenth hold;
    ``bench.lm_decode --attention efficient`` turns it off). On by default since its CUDA tests
    passed on the H200 (eleventh hold: graphs against eager steps and the reference decoder, and
    the kernel alone on the steps' shapes against float32 attention): cuDNN's attention has had
    silent-correctness bugs (PyTorch issues on mask dtypes and on few key/value heads), so a new
    GPU or PyTorch version should run those tests first (``bench/hold/run.sh gputests``)."""
    CAPTURE_AFTER = 1
    """Graphed steps capture a ``(U_b, R_b, lo, hi)`` shape the ``CAPTURE_AFTER``-th time it comes
    and before that run it eagerly (the same computation on the same static buffers, which the
    CUDA tests compare with the replayed graphs). A capture costs a warm-up run, the recording
    and a sync, about two steps; the best decoder spent 4.8 s of a 39.7 s test pass capturing
    shapes it met for the first time (docs/benchmarks.md, tenth hold), and a shape met once is
    cheaper eager. 1, the default: capture at first use; 2 was 7 % slower on the H200 (965.9
    against 1,035.3 users/s, the eleventh hold: the timed pass ran steps eagerly that a warm-up
    had captured before). ``bench.lm_decode --capture-after N``."""
    CAUSAL_PREFILL = True
    """The prefill attends right-padded rows with plain causal attention (flash, no mask; with
    :attr:`CUDNN_ATTENTION` cuDNN's kernel first) instead of left-padded rows with a ``[B, S, S]``
    mask (the memory-efficient kernel, key/value heads repeated): :meth:`prefill`.
    ``bench.lm_decode --prefill masked`` is the old way."""
    PREFILL_ELEMENTS = 2**31 - 1
    """The prefill runs its users in equal chunks small enough that no activation (the widest:
    ``[users * S, 2 * intermediate]`` of the MLP) reaches this many elements. Past ``2^31``,
    Inductor's 32-bit indexing does not hold and the compiled layer half recompiles for 64-bit
    indices in the middle of a test pass (on the H200, Beauty's widest prompts: 1,883 users x 510
    tokens x 3,072 = 2.95e9; the benchmark's per-batch times jump there)."""
    FUSED_HEAD = True
    """Steps return :class:`~genrec.decoding.HeadScores` (the logits in the compute dtype and each
    row's float32 log-normaliser, :meth:`~genrec.models.lm_weights.DecoderWeights.log_normaliser`)
    instead of float32 ``[R, V]`` log-probs: the search gathers the trie's children from the
    logits, and no float32 ``[R, V]`` cast or log-softmax output is written (9 % of a step in the
    H200 profile at batch 2,048, docs/benchmarks.md). Meant with ``decode_compile``, which fuses
    the normaliser's cast into its reduction; eagerly the normaliser costs about what the
    log-softmax did. On the H200, compiled, +7 % users/s, same call (docs/benchmarks.md, tenth
    hold); ``bench.lm_decode --head log-softmax`` is off."""

    def __init__(self, weights: DecoderWeights, capacity: int, width: int, steps: int, prompt_width: int, device: torch.device,
                 graphs: bool = True, padded: bool | None = None, fused_head: bool | None = None,
                 cudnn_attention: bool | None = None) -> None:
        self.w, self.capacity, self.width, self.steps, self.prompt_width = weights, capacity, width, max(steps, 1), prompt_width
        self.device = device
        self.graphs = graphs and device.type == "cuda"
        self.padded = self.graphs or bool(padded)
        kvh, d, H = weights.kv_heads, weights.head_dim, weights.num_heads
        self.groups = H // kvh
        generated = self.steps * width + 1  # the beams' columns and the padding rows' one
        self.columns = -(-(prompt_width + generated) // 8) * 8  # aligned rows for the fused kernel
        self.trash = self.columns - 1  # written by padding rows, seen by no real beam
        rows, dt = capacity + 1, weights.dtype
        # Zeros: every value ever written is finite, so masked columns never carry NaN into 0 * v.
        self.keys = [torch.zeros(rows, kvh, self.columns, d, dtype=dt, device=device) for _ in weights.layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.prompt_seen = torch.zeros(rows, prompt_width, dtype=torch.bool, device=device)  # [cap+1, P]
        self.beam_seen = torch.zeros(rows, width, self.columns - prompt_width, dtype=torch.bool, device=device)  # [cap+1, W, C-P]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # [cap+1] real prompt tokens
        self.bias = torch.zeros(rows, width, self.groups, self.columns, dtype=dt, device=device)
        self.queries = torch.zeros(rows, kvh, width * self.groups, d, dtype=dt, device=device)
        most = capacity * width
        self.inputs = torch.zeros(5, most, dtype=torch.long, device=device)  # token, position, user, slot, column
        # None: the class's (FUSED_HEAD, CUDNN_ATTENTION)
        self.fused_head = bool(self.FUSED_HEAD if fused_head is None else fused_head)
        self.cudnn_attention = bool(self.CUDNN_ATTENTION if cudnn_attention is None else cudnn_attention)
        # The graphs' static output (eager steps return fresh ones instead): [cap * W, V] float32
        # log-probs, or with the fused head [cap * W, V] logits in the compute dtype and [cap * W]
        # float32 log-normalisers.
        vocab, static = weights.embed.shape[0], most if self.graphs else 0
        self.out = torch.zeros(0 if self.fused_head else static, vocab, dtype=torch.float32, device=device)
        self.logits_out = torch.zeros(static if self.fused_head else 0, vocab, dtype=dt, device=device)
        self.lse_out = torch.zeros(static if self.fused_head else 0, dtype=torch.float32, device=device)
        self.cos, self.sin = weights.rotary_table(prompt_width + self.steps + 1, device)
        self.held: Tensor = torch.zeros(0, dtype=torch.long, device=device)  # batch rows of the packed users
        self.bucket = 0  # U_b
        self.prompt_lo = 0  # the batch's first prompt column (prefill)
        self.step_index = 0
        self.fed = 0
        self.fed_padded = 0  # rows the steps ran, padding included
        self.forced = 0  # suffix tokens :meth:`finish` scored (decode_forced)
        self.graph_cache: dict[tuple[int, int, int, int], Any] = {}
        self.shape_uses: dict[tuple[int, int, int, int], int] = {}  # times each shape ran eagerly before its capture
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None
        self.capture_seconds = 0.0
        self.replays = 0
        self.prefill_chunks = 0  # the last prefill's chunks of users (:attr:`PREFILL_ELEMENTS`)
        self.widest = max(max(layer.qkv.shape[0], layer.gate_up.shape[0]) for layer in weights.layers)  # a token's widest activation

    # ---- prefill -------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, module: LMRecModule, inputs: LMInputs) -> Tensor:
        """Run the ``[B, S]`` left-padded prompts, keep their keys/values right-aligned in the
        buffers' first ``P`` columns, reset the beam state; ``[B, V]`` float32 log-probs of the
        first title token.

        With :attr:`CAUSAL_PREFILL` the rows are first rolled to the right-padded layout (each
        row's real tokens in columns ``0 .. L - 1``), where plain causal attention is exact for
        every real token (a padding token is never before a real one), so the attention is one
        flash kernel with no mask and no key/value heads repeated; the keys and values are rolled
        back into the buffers' left-padded columns. Without it, the left-padded rows attend with
        a ``[B, S, S]`` mask (the memory-efficient kernel on CUDA)."""
        B, S = inputs.input_ids.shape
        P = self.prompt_width
        mask = inputs.attention_mask.bool()
        self.prompt_seen.zero_()
        self.prompt_seen[:B, P - S:] = mask
        self.prompt_seen[B:, P - 1] = True  # rows without a user see one (zero) column: finite
        self.beam_seen.zero_()
        self.lengths.zero_()
        self.lengths[:B] = mask.sum(1)
        granule = self.PROMPT_BUCKET if self.padded else 8
        self.prompt_lo = (P - S) // granule * granule  # the batch's first prompt column, rounded down
        self.held = torch.arange(B, device=self.device)
        self.bucket = min(_next_pow2(B), self.capacity) if self.padded else B
        self.step_index = self.fed = self.fed_padded = self.forced = 0
        x = module.embed(inputs)  # [B, S, h]
        users = max(1, self.PREFILL_ELEMENTS // (S * self.widest))  # per chunk: no activation reaches 2^31 elements
        chunks = -(-B // users)
        users = -(-B // chunks)  # the same size for all chunks but the last
        self.prefill_chunks = chunks
        return torch.cat([self._prefill_rows(x[a : a + users], inputs.position_ids[a : a + users], mask[a : a + users], a)
                          for a in range(0, B, users)])

    def _prefill_rows(self, x: Tensor, positions: Tensor, mask: Tensor, first: int) -> Tensor:
        """:meth:`prefill` of batch rows ``first .. first + n - 1``: their input embeddings
        ``x [n, S, h]``, positions and mask ``[n, S]``; ``[n, V]`` float32 log-probs."""
        (n, S), P, w, rows = mask.shape, self.prompt_width, self.w, slice(first, first + mask.shape[0])
        if self.CAUSAL_PREFILL:
            lengths = self.lengths[rows]
            columns = torch.arange(S, device=self.device)
            # Right-padded column c holds left-padded column (c + pad) mod S; left-padded column c
            # holds right-padded column (c - pad) mod S (pad = S - L: a pure roll of each row).
            right = (columns[None] + (S - lengths)[:, None]) % S  # [n, S]
            left = (columns[None] - (S - lengths)[:, None]) % S  # [n, S]
            x = x.gather(1, right[..., None].expand_as(x))
            positions = positions.gather(1, right)
            back = left[:, None, :, None].expand(n, w.kv_heads, S, w.head_dim)  # [n, kvh, S, d]
        else:
            causal = torch.ones(S, S, dtype=torch.bool, device=self.device).tril()
            # Padding queries see themselves too: their rows stay finite (their keys are never seen).
            allowed = (causal & mask[:, None, :]) | torch.eye(S, dtype=torch.bool, device=self.device)  # [n, S, S]
        cos, sin = self.cos[positions], self.sin[positions]  # [n, S, d]
        for layer, keys, values in zip(w.layers, self.keys, self.values, strict=True):
            q, k, v = w.qkv(layer, x, cos, sin)  # [n, S, heads, d]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [n, heads, S, d]
            if self.CAUSAL_PREFILL:
                keys[rows, :, P - S : P] = k.gather(2, back)
                values[rows, :, P - S : P] = v.gather(2, back)
                with _attention_kernels(self.device, self.cudnn_attention, flash=True):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=w.scaling, enable_gqa=self.groups > 1)
            else:
                keys[rows, :, P - S : P] = k
                values[rows, :, P - S : P] = v
                if self.groups > 1:
                    k, v = k.repeat_interleave(self.groups, dim=1), v.repeat_interleave(self.groups, dim=1)
                with _attention_kernels(self.device):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=w.scaling)  # [n, H, S, d]
            x = w.finish_layer(layer, x, out.transpose(1, 2).flatten(2))
        if self.CAUSAL_PREFILL:
            return w.log_probs(x[torch.arange(n, device=self.device), self.lengths[rows] - 1])
        return w.log_probs(x[:, -1])

    # ---- one step ------------------------------------------------------------------------------

    def _run(self, users: int, rows: int, lo: int, hi: int) -> Tensor | HeadScores:
        """The step on the static buffers (the graph body): ``users`` = ``U_b``, ``rows`` = ``R_b``,
        attending over columns ``lo .. hi - 1`` (the batch's prompt columns and the beams' so
        far, :meth:`span`); ``[rows, V]`` float32 log-probs, or their :class:`HeadScores` with
        :attr:`FUSED_HEAD` (with graphs: views of the static output)."""
        w, W, g, kvh, d, P = self.w, self.width, self.groups, self.w.kv_heads, self.w.head_dim, self.prompt_width
        token, position, user, slot, column = self.inputs[:, :rows]
        U = users + 1  # the packed users and the padding rows' row
        seen = torch.cat([self.prompt_seen[:U, None, lo:].expand(U, W, -1), self.beam_seen[:U, :, : hi - P]], dim=2)
        zero = torch.zeros((), dtype=self.bias.dtype, device=self.device)
        self.bias[:U, :, :, lo:hi] = torch.where(seen, zero, float("-inf"))[:, :, None, :]  # [U, W, g, hi - lo]
        # Sliced from rows of the full aligned width (and lo a multiple of 8): the fused kernel
        # wants aligned strides and an aligned start.
        bias = self.bias[:U].view(U, 1, W * g, self.columns)[..., lo:hi]
        queries = self.queries[:U]
        slots = queries.view(U, kvh, W, g, d)
        x = w.embed[token]  # [R, h]
        cos, sin = self.cos[position], self.sin[position]
        for layer, keys, values in zip(w.layers, self.keys, self.values, strict=True):
            q, k, v = w.qkv(layer, x, cos, sin)  # [R, H, d], [R, kvh, d]
            keys[user, :, column] = k
            values[user, :, column] = v
            slots[user, :, slot] = q.view(rows, kvh, g, d)
            with _attention_kernels(self.device, self.cudnn_attention):
                out = F.scaled_dot_product_attention(queries, keys[:U, :, lo:hi], values[:U, :, lo:hi], attn_mask=bias, scale=w.scaling)
            attended = out.view(U, kvh, W, g, d)[user, :, slot]  # [R, kvh, g, d]
            x = w.finish_layer(layer, x, attended.reshape(rows, -1))
        if self.fused_head:
            if not self.graphs:
                logits = w.logits(x)
                return HeadScores(logits, w.log_normaliser(logits))
            logits = w.logits(x, out=self.logits_out[:rows])  # straight into the static output
            self.lse_out[:rows] = w.log_normaliser(logits)
            return self._static_out(rows)
        if not self.graphs:
            return w.log_probs(x)
        # Straight into the static output (no [R, V] float32 temporary copied over).
        return torch.ops.aten._log_softmax.out(w.logits(x).float(), -1, False, out=self.out[:rows])

    def _static_out(self, rows: int) -> Tensor | HeadScores:
        """The graphs' output of a ``rows``-row step (views of the static buffers)."""
        if self.fused_head:
            return HeadScores(self.logits_out[:rows], self.lse_out[:rows])
        return self.out[:rows]

    def _replay(self, users: int, rows: int, lo: int, hi: int) -> Tensor | HeadScores:
        if not self.graphs:
            return self._run(users, rows, lo, hi)
        key = (users, rows, lo, hi)
        graph = self.graph_cache.get(key)
        uses = self.shape_uses.get(key, 0)
        if graph is None and uses + 1 < self.CAPTURE_AFTER:
            self.shape_uses[key] = uses + 1
            self._run(users, rows, lo, hi)  # into the static outputs, as a replay would
            return self._static_out(rows)
        if graph is None:
            started = time.perf_counter()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._run(users, rows, lo, hi)  # warm-up (the step is idempotent on its inputs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._run(users, rows, lo, hi)
            self.graph_cache[(users, rows, lo, hi)] = graph
            torch.cuda.synchronize(self.device)
            self.capture_seconds += time.perf_counter() - started
            # Recording ran nothing: the warm-up run left this step's output (and its key/value
            # writes) in the static buffers, so a replay now would compute the same step again.
            return self._static_out(rows)
        graph.replay()
        self.replays += 1
        return self._static_out(rows)

    @property
    def eager_steps(self) -> int:
        """Graphed-mode steps run eagerly before their shape was captured (:attr:`CAPTURE_AFTER`)."""
        return sum(self.shape_uses.values())

    def compact(self, active: Tensor, bucket: int) -> None:
        """Pack the users of ``active`` (``[A]`` batch rows, ascending, a subset of ``held``)
        into the first ``A`` rows; later steps use ``bucket`` (``U_b``) rows."""
        keep = torch.searchsorted(self.held, active)
        A = keep.numel()
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[:A] = buffer.index_select(0, keep)
        for buffer in (self.prompt_seen, self.beam_seen, self.lengths):
            buffer[:A] = buffer.index_select(0, keep)
        self.held, self.bucket = active, bucket

    def span(self, t: int) -> tuple[int, int]:
        """The columns ``lo .. hi - 1`` step ``t`` attends over: the batch's prompt columns
        (``P - S`` on, ``S`` the batch's prompt width, ``lo`` rounded down to a multiple of 8,
        the fused kernel's alignment) and the ``t * W`` beam columns written so far. Padded
        (graphed), ``lo`` is rounded down to a multiple of :attr:`PROMPT_BUCKET` and the beam
        columns up to a multiple of :attr:`BEAM_BUCKET` (at least 64), so that few graphs cover
        every step; the columns added are masked for every beam."""
        P, W = self.prompt_width, self.width
        if not self.padded:
            return self.prompt_lo, min(P + -(-(t * W) // 8) * 8, self.columns)
        beams = 64 if t * W <= 64 else -(-(t * W) // self.BEAM_BUCKET) * self.BEAM_BUCKET
        return self.prompt_lo, min(P + beams, self.columns)

    def rows(self, live: int) -> int:
        """The padded step's row count for ``live`` beams: at least 8, a power of two up to
        :attr:`FINE_ROWS`, above that a multiple of ``2^k / (2 * ROWS_PER_OCTAVE)`` (``2^k`` the
        next power of two), never more than the users' bucket holds (``U_b * W``)."""
        live = max(live, 8)
        top = _next_pow2(live)
        granule = top if top <= self.FINE_ROWS else max(top // (2 * self.ROWS_PER_OCTAVE), 1)
        return min(-(-live // granule) * granule, self.bucket * self.width)

    def step(self, beams: LiveBeams) -> Tensor | HeadScores:
        """Feed the live beams (:class:`~genrec.decoding.LiveBeams`, ``R`` of them); ``[R, V]``
        float32 log-probs, or their :class:`~genrec.decoding.HeadScores` with :attr:`FUSED_HEAD`
        (views of static buffers, valid until the next step)."""
        A = beams.active.numel()
        if self.padded:
            bucket = min(_next_pow2(A), self.capacity)
            if bucket < self.bucket:
                self.compact(beams.active, bucket)
        elif COMPACT_FRACTION * self.bucket >= A:
            self.compact(beams.active, A)
        self.step_index += 1
        t, W, P = self.step_index, self.width, self.prompt_width
        R = beams.rows.numel()
        rows = self.rows(R) if self.padded else R
        lo, hi = self.span(t)
        user = torch.searchsorted(self.held, beams.rows // W)
        slot = beams.rows % W
        column = P + (t - 1) * W + slot
        # The slot's ancestry: its parent's columns, then its own.
        ancestry = self.beam_seen[user, beams.parent_slots]  # [R, C-P]
        self.beam_seen[user, slot] = ancestry
        self.beam_seen[user, slot, column - P] = True
        self.inputs[:, :R] = torch.stack([beams.tokens, self.lengths[user] + t - 1, user, slot, column])
        if rows > R:  # padding rows: token 0 at position 0, into the spare row's spare column
            self.inputs[:, R:rows] = torch.tensor([0, 0, self.bucket, 0, self.trash], dtype=torch.long, device=self.device)[:, None]
        log_probs = self._replay(self.bucket, rows, lo, hi)
        self.fed += R
        self.fed_padded += rows
        return log_probs.head(R) if isinstance(log_probs, HeadScores) else log_probs[:R]


    FINISH_TOKENS = 8192
    """:meth:`finish` runs its forced suffixes in chunks of about this many tokens (each chunk's
    ``[tokens, V]`` float32 log-probs: 1.6 GB at SmolLM2's 49,152-token vocabulary)."""

    @torch.no_grad()
    def finish(self, beams: LiveBeams, chains: Tensor) -> Tensor:
        """Score forced suffixes (:class:`~genrec.decoding.FinishFn`), eagerly: each beam feeds its
        token and its chain but the last token in one causal pass, attending its user's prompt,
        its parent's ancestor columns and its own chain; nothing is written to the buffers (the
        beams leave the search). ``beams`` ``[n]``, ``chains`` ``[n, L]`` (``-1`` padded) ->
        ``[n, L]`` float32 log-probs of the chain tokens."""
        w, W, P, g = self.w, self.width, self.prompt_width, self.groups
        n, L = chains.shape
        t = self.step_index + 1  # the step these beams' tokens would be fed at
        feed = torch.cat([beams.tokens[:, None], chains[:, :-1]], dim=1).clamp(min=0)  # [n, L]
        user = torch.searchsorted(self.held, beams.rows // W)
        # The parent's ancestors: one slot per earlier step, at columns P + s * W + slot.
        seen = self.beam_seen[user, beams.parent_slots, : (t - 1) * W].view(n, t - 1, W)
        ancestors = P + torch.arange(t - 1, device=self.device) * W + seen.long().argmax(-1)  # [n, t - 1]
        lo = self.prompt_lo
        out = torch.empty(n, L, dtype=torch.float32, device=self.device)
        real = torch.arange(L, device=self.device)[None] < (chains >= 0).sum(1, keepdim=True)  # [n, L]
        causal = torch.ones(L, L, dtype=torch.bool, device=self.device).tril()
        chunk = max(1, self.FINISH_TOKENS // L)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            u = user[a:b]
            columns = torch.cat([torch.arange(lo, P, device=self.device).expand(b - a, -1), ancestors[a:b]], dim=1)  # [m, c]
            old = torch.cat([self.prompt_seen[u, lo:], torch.ones(b - a, t - 1, dtype=torch.bool, device=self.device)], dim=1)
            # Padding queries see themselves too (finite rows; their outputs are not read).
            allowed = torch.cat([old[:, None, :].expand(-1, L, -1), causal & real[a:b, None, :] | torch.eye(L, dtype=torch.bool,
                                 device=self.device)], dim=2)[:, None]  # [m, 1, L, c + L]
            positions = self.lengths[u, None] + t - 1 + torch.arange(L, device=self.device)  # [m, L]
            x = w.embed[feed[a:b]]  # [m, L, h]
            cos, sin = self.cos[positions], self.sin[positions]
            for layer, keys, values in zip(w.layers, self.keys, self.values, strict=True):
                q, k, v = w.qkv(layer, x, cos, sin)  # [m, L, H, d], [m, L, kvh, d]
                kk = torch.cat([keys[u[:, None], :, columns].transpose(1, 2), k.transpose(1, 2)], dim=2)  # [m, kvh, c + L, d]
                vv = torch.cat([values[u[:, None], :, columns].transpose(1, 2), v.transpose(1, 2)], dim=2)
                if g > 1:
                    kk, vv = kk.repeat_interleave(g, dim=1), vv.repeat_interleave(g, dim=1)
                with _attention_kernels(self.device):
                    att = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=allowed, scale=w.scaling)  # [m, H, L, d]
                x = w.finish_layer(layer, x, att.transpose(1, 2).flatten(2))
            log_probs = w.log_probs(x.flatten(0, 1))  # [m * L, V]
            out[a:b] = log_probs.gather(1, chains[a:b].clamp(min=0).reshape(-1, 1)).view(b - a, L)
        self.forced += int(real.sum())
        return out


def _compute_dtype(module: LMRecModule, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return causal_lm(module.model).get_input_embeddings().weight.dtype


_BUILD_OWNERS = {"fused_head": GraphDecoder, "cudnn_attention": GraphDecoder, "rows_only_dynamic": DecoderWeights}
"""The class whose attribute (the name in capitals) is each build setting's default."""


def decoder_for(module: LMRecModule, batch_size: int, width: int, steps: int, prompt_width: int) -> GraphDecoder:
    """The module's cached :class:`GraphDecoder` when it fits the shape (the capacity at least
    ``batch_size``, the same width, steps, prompt width, dtype, device), else a new one (the
    old one is dropped first: one engine's buffers at a time). Weights are refreshed."""
    device = module.prompt_prefix.device
    dtype = _compute_dtype(module, device)
    cached: GraphDecoder | None = module._graph_decoder
    graphs = module.decode_graphs
    graphed = graphs and device.type == "cuda"  # what GraphDecoder makes of ``graphs`` on this device
    padded = graphed if module.decode_padded is None else module.decode_padded
    compiled = device.type == "cuda" if module.decode_compile is None else bool(module.decode_compile)
    own = {name: getattr(module, f"decode_{name}") for name in BUILD_SETTINGS}
    built = {name: bool(getattr(_BUILD_OWNERS[name], name.upper()) if value is None else value) for name, value in own.items()}  # the module's, else the class's
    if (cached is None or cached.capacity < batch_size or (cached.width, cached.steps, cached.prompt_width) != (width, max(steps, 1), prompt_width)
            or cached.w.dtype != dtype or cached.device != device or cached.graphs != graphed
            or cached.padded != (padded or graphed) or cached.w.compiled != compiled
            or cached.fused_head != built["fused_head"] or cached.cudnn_attention != built["cudnn_attention"]
            or (compiled and cached.w.rows_only_dynamic != built["rows_only_dynamic"])):
        module._graph_decoder = None
        cached = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with torch.autocast(device.type, enabled=False):
        if cached is None:
            weights = DecoderWeights(module, dtype)
            if compiled:
                weights.compile(rows_only_dynamic=built["rows_only_dynamic"])
            cached = GraphDecoder(weights, _next_pow2(batch_size), width, steps, prompt_width, device, graphs, padded,
                                  fused_head=built["fused_head"], cudnn_attention=built["cudnn_attention"])
            module._graph_decoder = cached
        else:
            cached.w.load(module)
    for name in ENGINE_SETTINGS:  # the module's own (decoding.<name>), else the class's
        value = getattr(module, f"decode_{name}")
        setattr(cached, name.upper(), value if value is not None else getattr(GraphDecoder, name.upper()))
    return cached


def graph_decode(module: LMRecModule, inputs: LMInputs, width: int, num_results: int) -> tuple[BeamResult, GraphDecoder] | None:
    """Title-constrained beam search of ``inputs`` (``[B, S]`` prompts) on the static-shape
    decoder; ``None`` when the model is not one it runs (:func:`unsupported_reason`).

    Returns:
        the search's :class:`~genrec.decoding.BeamResult` (``[B, K]``) and the decoder (its
        counters: ``step_index`` steps, ``fed`` beam tokens, ``replays``, ``capture_seconds``).
    """
    if unsupported_reason(module.model) is not None:
        return None
    trie = module.trie()
    B, S = inputs.input_ids.shape
    decoder = decoder_for(module, B, width, trie.max_depth, max(module.prompt.max_tokens, S))

    def step(beams: LiveBeams | None, state: None) -> tuple[Tensor, None]:
        with torch.autocast(decoder.device.type, enabled=False):
            if beams is None:
                return decoder.prefill(module, inputs), None
            return decoder.step(beams), None

    def finish(beams: LiveBeams, chains: Tensor, state: None) -> tuple[Tensor, None]:
        with torch.autocast(decoder.device.type, enabled=False):
            return decoder.finish(beams, chains), None

    result = pruned_beam_search(step, trie, batch_size=B, beam_width=width, num_results=num_results,
                                finish=finish if module.decode_forced else None)
    return result, decoder


__all__ = ["GraphDecoder", "decoder_for", "graph_decode", "unsupported_reason"]
