"""The decoder's weights as the static-shape LM decoder uses them (:mod:`genrec.models.lm_graphs`).

:class:`DecoderWeights` copies a Llama / Qwen3 ``*ForCausalLM``'s weights (peft LoRA merged) into
tensors in the compute dtype that the decoder's CUDA graphs keep the addresses of, and writes the
decoder layer's arithmetic out once: RMSNorm, fused q/k/v and gate/up projections, rotary embedding,
SiLU MLP, as ``transformers`` computes them (float32 norms and rotary embedding under autocast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.models.lm_decoding import merged_lora

if TYPE_CHECKING:
    from genrec.models.lm_rec import LMRecModule


def linear_weight(linear: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A projection's weight ``[out, in]`` and bias (``None``), through a peft LoRA wrapper's base layer."""
    base = getattr(linear, "base_layer", linear)
    return base.weight, base.bias


def causal_lm(model: nn.Module) -> nn.Module:
    """The ``*ForCausalLM`` inside a peft wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


@dataclass
class LayerWeights:
    """One decoder layer's weights in the compute dtype (norm weights as the model keeps them)."""

    input_norm: Tensor  # [h]
    qkv: Tensor  # [(H + 2 kvh) d, h]
    qkv_bias: Tensor | None
    q_norm: Tensor | None  # [d] (Qwen3)
    k_norm: Tensor | None
    o: Tensor  # [h, H d]
    o_bias: Tensor | None
    post_norm: Tensor  # [h]
    gate_up: Tensor  # [2 I, h]
    down: Tensor  # [h, I]


class DecoderWeights:
    """The decoder's weights, copied once into static tensors (graphs hold their addresses) and
    refreshed in place by :meth:`load` before each batch.

    Args:
        module: the recommender; its ``model`` must pass :func:`unsupported_reason`.
        dtype: the compute dtype of the projections (bf16 under autocast, else the weights').
    """

    def __init__(self, module: LMRecModule, dtype: torch.dtype) -> None:
        lm = causal_lm(module.model)
        config = lm.config
        self.dtype = dtype
        self.num_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        from transformers.activations import ACT2FN

        self.act = ACT2FN[config.hidden_act]  # (Liger's SwiGLU MLP keeps no act_fn)
        self.scaling = lm.model.layers[0].self_attn.scaling
        self.rotary = lm.model.rotary_emb
        self.layers: list[LayerWeights] = []
        self.embed = self.final_norm = self.lm_head = torch.empty(0)
        self.compiled = False
        self.rows_only_dynamic = False  # set by :meth:`compile`
        self.load(module)

    def _tensors(self, module: LMRecModule) -> dict[str, Any]:
        """The current (LoRA-merged, when inside :func:`merged_lora`) weights, cast."""
        lm = causal_lm(module.model)
        dt = self.dtype

        def cat(*linears: nn.Module) -> tuple[Tensor, Tensor | None]:
            weights, biases = zip(*(linear_weight(x) for x in linears), strict=True)
            bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)])
            return torch.cat(weights).to(dt), None if bias is None else bias.to(dt)

        layers = []
        for layer in lm.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = cat(attn.q_proj, attn.k_proj, attn.v_proj)
            o, o_bias = linear_weight(attn.o_proj)
            gate_up, gate_up_bias = cat(mlp.gate_proj, mlp.up_proj)
            down, down_bias = linear_weight(mlp.down_proj)
            if gate_up_bias is not None or down_bias is not None:
                raise ValueError("graph decoding: MLP biases are not supported")
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            layers.append(LayerWeights(
                input_norm=layer.input_layernorm.weight.detach(), qkv=qkv, qkv_bias=qkv_bias,
                q_norm=None if q_norm is None else q_norm.weight.detach(), k_norm=None if k_norm is None else k_norm.weight.detach(),
                o=o.detach().to(dt), o_bias=None if o_bias is None else o_bias.detach().to(dt),
                post_norm=layer.post_attention_layernorm.weight.detach(), gate_up=gate_up, down=down.detach().to(dt),
            ))
        return {"layers": layers, "embed": lm.get_input_embeddings().weight.detach(), "final_norm": lm.model.norm.weight.detach(),
                "lm_head": linear_weight(lm.get_output_embeddings())[0].detach().to(dt)}

    @torch.no_grad()
    def load(self, module: LMRecModule) -> None:
        """Copy the module's current weights (LoRA merged) into the static tensors."""
        adapted = any(hasattr(m, "lora_A") for m in module.model.modules())
        with merged_lora(module.model) as merged:
            if adapted and not merged:
                raise RuntimeError("graph decoding: the LoRA adapters could not be merged (see unsupported_reason)")
            fresh = self._tensors(module)
        if not self.layers:
            # Own copies (the embeddings and norms too): the graphs keep these addresses, and
            # merged_lora's merged weights are temporaries.
            self.layers = [LayerWeights(**{k: None if v is None else v.clone() for k, v in vars(x).items()}) for x in fresh["layers"]]
            self.embed, self.final_norm, self.lm_head = (fresh[k].clone() for k in ("embed", "final_norm", "lm_head"))
            return
        for mine, new in zip(self.layers, fresh["layers"], strict=True):
            for key, value in vars(new).items():
                if value is not None:
                    getattr(mine, key).copy_(value)
        for key in ("embed", "final_norm", "lm_head"):
            getattr(self, key).copy_(fresh[key])

    def norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """``transformers``' RMSNorm: in float32, scaled back in ``x``'s dtype. ``F.rms_norm`` is
        one fused kernel on CUDA (five for the written-out ``x * rsqrt(mean(x^2) + eps)``) and that
        very formula on a CPU, where the tests check it bit for bit against ``transformers``."""
        return weight * self._rms(x)

    def _rms(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def norm_cast(self, x: Tensor, weight: Tensor) -> Tensor:
        """:meth:`norm` written straight in the compute dtype (for a projection's input): the
        weight's product rounded once on store, as ``.to(dtype)`` after it would, one kernel less."""
        normed = self._rms(x)
        if torch.compiler.is_compiling():
            # Traced: a cast after the product fuses into it, while ``out=`` and ``result_type``
            # (a dtype, not a tensor) each broke the compiled graph in two.
            return (weight * normed).to(self.dtype)
        if torch.result_type(weight, normed) == self.dtype:
            return weight * normed
        return torch.mul(weight, normed, out=torch.empty(normed.shape, dtype=self.dtype, device=normed.device))

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x.to(self.dtype), weight, bias)

    def qkv(self, layer: LayerWeights, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``[..., H, d]``, keys and values ``[..., kvh, d]`` of hidden states ``x [..., h]``
        (rotary embedding ``cos`` / signed ``sin`` ``[..., d]`` float32 of :meth:`rotary_table`
        applied, as ``transformers`` does under autocast: in float32, then cast)."""
        self._rows_dynamic(x, cos, sin)
        return self._qkv(x, cos, sin, layer.input_norm, layer.qkv, layer.qkv_bias, layer.q_norm, layer.k_norm)

    def _qkv(self, x: Tensor, cos: Tensor, sin: Tensor, input_norm: Tensor, qkv_weight: Tensor, qkv_bias: Tensor | None,
             q_norm: Tensor | None, k_norm: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        # The layer's tensors as arguments: one compiled function serves every layer (:meth:`compile`).
        H, kvh, d = self.num_heads, self.kv_heads, self.head_dim
        qkv = self.linear(self.norm_cast(x, input_norm), qkv_weight, qkv_bias)
        q, k, v = qkv.split([H * d, kvh * d, kvh * d], dim=-1)
        q, k, v = q.unflatten(-1, (H, d)), k.unflatten(-1, (kvh, d)), v.unflatten(-1, (kvh, d))
        if q_norm is not None:
            q, k = self.norm(q, q_norm), self.norm(k, k_norm)
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
        # sin signed: swap_halves(q) * sin = rotate_half(q) * sin bit for bit; the sum rounded to the
        # compute dtype on store (as .to(dtype) after it would)
        if torch.compiler.is_compiling():  # traced: the cast fuses into the sum (``out=`` breaks the graph)
            return (q * cos + _swap_halves(q) * sin).to(self.dtype), (k * cos + _swap_halves(k) * sin).to(self.dtype), v.to(self.dtype)
        q = torch.add(q * cos, _swap_halves(q) * sin, out=torch.empty(q.shape, dtype=self.dtype, device=q.device))
        k = torch.add(k * cos, _swap_halves(k) * sin, out=torch.empty(k.shape, dtype=self.dtype, device=k.device))
        return q, k, v.to(self.dtype)

    def finish_layer(self, layer: LayerWeights, x: Tensor, attended: Tensor) -> Tensor:
        """Residual stream ``x [..., h]`` after the attention output ``attended [..., H * d]`` and the MLP."""
        self._rows_dynamic(x, attended)
        return self._finish(x, attended, layer.o, layer.o_bias, layer.post_norm, layer.gate_up, layer.down)

    def _finish(self, x: Tensor, attended: Tensor, o: Tensor, o_bias: Tensor | None, post_norm: Tensor, gate_up: Tensor,
                down: Tensor) -> Tensor:
        # x + y with y in the compute dtype: promoted inside the add (exactly: bf16 -> float32 is
        # exact), as the separate .to(x.dtype) before it did, one kernel less
        x = x + self.linear(attended, o, o_bias)
        gate, up = self.linear(self.norm_cast(x, post_norm), gate_up).chunk(2, dim=-1)
        return x + self.linear(self.act(gate) * up, down)

    ROWS_ONLY_DYNAMIC = True
    """With ``True`` (the default), :meth:`compile` makes only the row dimensions dynamic (each
    tensor's leading dimensions: beams in a step, users and tokens in the prefill) and keeps the
    feature widths (hidden size, heads, MLP width, vocabulary) static, so Inductor can use
    persistent reductions for the norms and constant strides in the pointwise kernels. On the
    H200, the trained SmolLM2 LoRA on the whole Beauty test set: 977.6 users/s against 760.2 with
    every dimension symbolic (+29 %, same call, docs/benchmarks.md, thirteenth hold), and every
    batch's step faster (the last 90 against 139 ms). ``False``: every dimension symbolic
    (``torch.compile(dynamic=True)``), ``bench.lm_decode --compile-dims all``."""

    def compile(self, backend: str | Any = "inductor", rows_only_dynamic: bool | None = None) -> None:
        """Run each layer's two halves (:meth:`qkv`, :meth:`finish_layer`) and the head's
        :meth:`log_normaliser` through ``torch.compile``: one compilation per half serves every
        layer and every bucket (the rows dynamic, :attr:`ROWS_ONLY_DYNAMIC`), and the norms, rotary
        embedding, casts and residual adds (most of a step's ~40 small kernels per layer,
        docs/benchmarks.md) fuse into a few. Compiled on the first call, so outside any graph
        capture (the graphs' warm-up run). ``backend``: ``torch.compile``'s (tests record graphs);
        ``rows_only_dynamic``: ``None``, the class's :attr:`ROWS_ONLY_DYNAMIC`."""
        self.rows_only_dynamic = bool(self.ROWS_ONLY_DYNAMIC if rows_only_dynamic is None else rows_only_dynamic)
        dynamic = None if self.rows_only_dynamic else True
        self._qkv = torch.compile(self._qkv, dynamic=dynamic, backend=backend)
        self._finish = torch.compile(self._finish, dynamic=dynamic, backend=backend)
        self._lse = torch.compile(self._lse, dynamic=dynamic, backend=backend)
        self.compiled = True

    def _rows_dynamic(self, *tensors: Tensor) -> None:
        """Compiled with :attr:`ROWS_ONLY_DYNAMIC`: mark each tensor's leading dimensions (all but the
        last, the features) dynamic, so the first compilation is already the one for every row count."""
        if self.compiled and self.rows_only_dynamic:
            for t in tensors:
                torch._dynamo.maybe_mark_dynamic(t, list(range(t.dim() - 1)))

    def logits(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """``[R, h]`` last hidden states -> ``[R, V]`` logits in the compute dtype (written into
        ``out`` if given: F.linear's own product, with ``out=``)."""
        normed = self.norm_cast(x, self.final_norm)
        if out is None:
            return self.linear(normed, self.lm_head)
        return torch.mm(normed, self.lm_head.t(), out=out)

    def log_normaliser(self, logits: Tensor) -> Tensor:
        """``[R, V]`` logits (compute dtype) -> ``[R]`` float32 ``logsumexp`` of each row, computed in
        float32. Compiled (:meth:`compile`), the cast fuses into the reduction: the logits are read
        in the compute dtype and no float32 ``[R, V]`` copy is written."""
        self._rows_dynamic(logits)
        return self._lse(logits)

    @staticmethod
    def _lse(logits: Tensor) -> Tensor:
        return torch.logsumexp(logits.float(), dim=-1)

    def log_probs(self, x: Tensor) -> Tensor:
        """``[R, h]`` last hidden states -> ``[R, V]`` float32 next-token log-probs."""
        return torch.log_softmax(self.logits(x), dim=-1, dtype=torch.float32)

    def rotary_table(self, positions: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``cos`` and signed ``sin`` ``[positions, d]`` float32 of positions ``0 .. positions - 1``:
        ``sin`` with its first half negated, so that ``transformers``' ``rotate_half(x) * sin`` is
        ``swap_halves(x) * signed`` (exactly: only signs move), one kernel less per use."""
        ids = torch.arange(positions, device=device)[None]
        cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32, device=device), ids)
        sin = sin[0].float()
        half = sin.shape[-1] // 2
        return cos[0].float(), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _swap_halves(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


__all__ = ["DecoderWeights", "LayerWeights", "causal_lm", "linear_weight"]
