"""How far bf16 moves an item's score, per decoder: the teacher-forced log-prob of each user's
test target (its title tokens + EOS, summed) in float32 and under bf16 autocast, computed three
ways: the plain forward pass (``transformers``, fused attention), the reference decoder's steps
(:func:`genrec.models.lm_decoding.reference_step`) and the static-shape decoder's steps
(:mod:`genrec.models.lm_graphs`, one beam slot per user).

    python -m bench.lm_decode_noise --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml --users 8

In float32 the three agree to rounding (the exactness tests); in bf16 each differs from the
float32 score by its own rounding. The ``--compare-reference`` check of ``bench.lm_decode``
reports the largest score difference of an item both decoders ranked: this script says how
large that difference is expected to be from rounding alone (the spread of each decoder's
bf16-minus-fp32 error over the users), so a gap well beyond it points at a defect.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from bench.lm_decode import load_for_test, take_users
from genrec.data.datamodule import SeqBatch
from genrec.decoding import LiveBeams
from genrec.models import LMRecModule
from genrec.models.lm_graphs import decoder_for


def plain_scores(module: LMRecModule, batch: SeqBatch) -> torch.Tensor:
    """``[B]`` summed log-probs of the targets, one forward pass over prompt + target."""
    inputs = module.lm_inputs(batch, with_target=True)
    width = inputs.target_width
    logits = module(inputs, logits_to_keep=width + 1)[:, :-1]
    labels = inputs.labels[:, -width:]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    return picked.masked_fill(labels == -100, 0.0).sum(1)


def _targets(module: LMRecModule, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return module.target_tokens[batch.targets], module.target_lengths[batch.targets]  # [B, T], [B]


def reference_scores(module: LMRecModule, batch: SeqBatch) -> torch.Tensor:
    """``[B]`` the same sums through the reference decoder's steps (one beam per user)."""
    tokens, lengths = _targets(module, batch)
    state = module.initial_state(batch)
    log_probs, state = module.beam_step(None, None, state)
    B = tokens.shape[0]
    rows = torch.arange(B, device=tokens.device)
    total = log_probs.float().gather(1, tokens[:, :1])[:, 0]
    for t in range(1, int(lengths.max())):
        log_probs, state = module.beam_step(tokens[:, t - 1], rows, state)
        total = total + torch.where(lengths > t, log_probs.float().gather(1, tokens[:, t : t + 1])[:, 0], 0.0)
    return total


def static_scores(module: LMRecModule, batch: SeqBatch) -> torch.Tensor:
    """``[B]`` the same sums through the static-shape decoder's prefill and steps (width 1)."""
    tokens, lengths = _targets(module, batch)
    inputs = module.lm_inputs(batch, with_target=False)
    B, S = inputs.input_ids.shape
    steps = int(lengths.max())
    decoder = decoder_for(module, B, 1, steps, max(module.prompt.max_tokens, S))
    rows = torch.arange(B, device=tokens.device)
    with torch.autocast(decoder.device.type, enabled=False):
        log_probs = decoder.prefill(module, inputs)
        total = log_probs.gather(1, tokens[:, :1])[:, 0]
        for t in range(1, steps):
            beams = LiveBeams(tokens=tokens[:, t - 1], rows=rows, parents=rows, parent_slots=torch.zeros_like(rows), active=rows, width=1)
            log_probs = decoder.step(beams)
            total = total + torch.where(lengths > t, log_probs.gather(1, tokens[:, t : t + 1])[:, 0], 0.0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm, module = load_for_test(args.data, args.model, args.ckpt, args.users, args.set, device)
    batch = take_users(iter(dm.test_dataloader()), args.users)[0].to(device)
    ways = {"plain": plain_scores, "reference": reference_scores, "static": static_scores}
    scores = {}
    for precision in ("fp32", "bf16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            for name, way in ways.items():
                scores[precision, name] = way(module, batch).float().cpu()
    truth = scores["fp32", "plain"]
    print(f"{len(truth)} users, target score (fp32, plain) mean {truth.mean():.3f}")
    for (precision, name), value in scores.items():
        error = value - truth
        print(f"{precision:5s} {name:10s} minus fp32 plain: mean {error.mean():+.4f}, sd {error.std():.4f}, max |.| {error.abs().max():.4f}")
    for a, b in (("static", "reference"), ("static", "plain"), ("reference", "plain")):
        gap = (scores["bf16", a] - scores["bf16", b]).abs()
        print(f"bf16 {a} vs {b}: mean |gap| {gap.mean():.4f}, max {gap.max():.4f}")


if __name__ == "__main__":
    main()
