"""Training throughput and model-FLOPs utilisation of a from-scratch causal LM (random init).

    python -m bench.lm_throughput --preset qwen3-0.6b --seq-len 2048 --batch 8 \
        --variant bf16-mixed --variant bf16-true --variant bf16-true+compile

Builds the LM recommender's model from a size preset (:class:`genrec.models.presets.LMRecConfig`,
default the Qwen3-0.6B shape at its own 151,936-token vocabulary), feeds random token sequences
of ``--seq-len`` tokens (no padding: the layout of packed pre-training, an upper bound for the
recommender's left-padded prompts), and times full training steps — forward, the causal-LM loss
over every position, backward, fused AdamW — with CUDA events after ``--warmup`` steps. Each
``--variant`` is one row:

* ``bf16-mixed``: float32 weights and optimizer, bf16 autocast (Lightning's ``bf16-mixed``);
* ``bf16-true``: bf16 weights and optimizer state (Lightning's ``bf16-true``);
* ``+compile``: ``torch.compile`` of the model (default mode);
* ``+chunked``: the output layer and loss run 4,096 positions at a time under activation
  checkpointing (:func:`chunked_cross_entropy`), so the ``[tokens, vocab]`` logits never exist
  whole: less memory, room for larger batches;
* ``+liger``: Liger's Triton kernels (``liger-kernel``, GPU only) patched into the model: RMSNorm,
  RoPE, SwiGLU, and the output layer fused with the cross-entropy (the logits never exist; the
  model is called with ``shift_labels``, i.e. the same next-token targets as the other rows).

Model FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B): ``6 * N + 12 * L * H * Q * T``
with ``N`` the parameters of every matrix multiply (non-embedding parameters plus the output
layer ``d x V``, which is tied to the input embedding here but still a matmul), ``L`` layers,
``H`` heads of size ``Q`` and ``T`` the sequence length (attention counted without the causal
halving, as PaLM does). MFU = model FLOPs / step time / the GPU's dense bf16 peak (H100 SXM:
989 TFLOP/s).
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bench.common import peak_flops
from bench.record import record
from genrec.models.lm_rec import apply_liger
from genrec.models.presets import LMRecConfig, count_lm_parameters


def flops_per_token(config: LMRecConfig, seq_len: int) -> float:
    """PaLM's model FLOPs of one trained token (forward + backward), see the module docstring."""
    non_embedding = count_lm_parameters(config, embeddings=False)
    head = config.hidden_size * config.vocab_size
    head_dim = config.head_dim or config.hidden_size // config.num_heads
    attention = 12 * config.num_layers * config.num_heads * head_dim * seq_len
    return 6 * (non_embedding + head) + attention


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), labels, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of ``hidden [T, d] @ head.weight.T`` against ``labels [T]``, ``chunk``
    positions at a time with activation checkpointing: the ``[T, V]`` logits (5 GB in float32
    for 8k tokens over Qwen3's 152k vocabulary) never exist at once."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        end = start + chunk
        total = total + checkpoint(_chunk_loss, hidden[start:end], head.weight, labels[start:end], use_reentrant=False)
    return total / labels.numel()


def measure(config: LMRecConfig, variant: str, batch: int, seq_len: int, steps: int, warmup: int) -> dict[str, object]:
    """Train ``steps`` timed steps of ``variant`` on random tokens; the row of the table."""
    torch.manual_seed(0)
    model = config.build().cuda()
    true_bf16 = variant.startswith("bf16-true")
    if true_bf16:
        model = model.to(torch.bfloat16)
    model.train()
    flags = set(variant.split("+")[1:])
    chunked, liger = "chunked" in flags, "liger" in flags
    if liger:
        apply_liger(model, fused_loss=True)
    body = model.model if chunked else model  # chunked: the decoder stack only; the head runs per chunk below
    forward = torch.compile(body) if "compile" in flags else body
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device="cuda")
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()  # liger's loss views labels flat

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not true_bf16):
            if chunked:
                hidden = forward(input_ids=inputs).last_hidden_state.flatten(0, 1)
                loss = chunked_cross_entropy(hidden, model.lm_head, labels.flatten())
            elif liger:
                loss = forward(input_ids=inputs, shift_labels=labels).loss
            else:
                logits = forward(input_ids=inputs).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.reset_peak_memory_stats()
    start.record()
    for _ in range(steps):
        loss = step()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / steps
    tokens_per_s = batch * seq_len / seconds
    peak = peak_flops()
    mfu = flops_per_token(config, seq_len) * tokens_per_s / peak if peak else float("nan")
    row = {
        "model": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "variant": variant,
        "batch x seq": f"{batch} x {seq_len}",
        "step ms": f"{seconds * 1000:.1f}",
        "tokens/s": f"{tokens_per_s:,.0f}",
        "MFU": f"{100 * mfu:.1f} %",
        "peak GiB": f"{torch.cuda.max_memory_allocated() / 2**30:.1f}",
        "final loss": f"{float(loss):.3f}",
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen3-0.6b")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variant", action="append", help="bf16-mixed or bf16-true, optionally +compile and +chunked or +liger (e.g. bf16-true+compile+chunked)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.lm_throughput needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    config = LMRecConfig.from_name(args.preset)
    rows = []
    variants = args.variant or ["bf16-mixed", "bf16-true+compile"]
    for variant in variants:
        base, *flags = variant.split("+")
        if base not in ("bf16-mixed", "bf16-true") or not set(flags) <= {"compile", "chunked", "liger"}:
            raise SystemExit(f"unknown variant {variant!r}: bf16-mixed or bf16-true, optionally +compile, +chunked or +liger")
        if {"chunked", "liger"} <= set(flags):
            raise SystemExit(f"variant {variant!r}: +chunked and +liger both replace the loss; pick one")
    for variant in variants:
        try:
            rows.append({"preset": args.preset, **measure(config, variant, args.batch, args.seq_len, args.steps, args.warmup)})
        except torch.OutOfMemoryError as error:
            rows.append({"preset": args.preset, "variant": variant, "batch x seq": f"{args.batch} x {args.seq_len}", "step ms": f"OOM: {error}"[:60]})
            torch.cuda.empty_cache()
        print(rows[-1], flush=True)
        gc.collect()  # the model and optimizer of the variant are gone with measure()'s frame
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    record(
        "LM recommender training throughput",
        rows,
        note="Random-init causal LM of the preset's shape on random full-length sequences; forward + loss over every "
        "position + backward + fused AdamW, CUDA-event timed. MFU = PaLM model FLOPs (6N + 12LHQT per token, N incl. "
        "the output layer) / step time / dense bf16 peak.",
    )


if __name__ == "__main__":
    main()
