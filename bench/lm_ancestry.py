"""How many of the beam columns a user's live beams still attend: the union of their ancestors
against the columns written, step by step, on the static-shape decoder
(:mod:`genrec.models.lm_graphs`), to size a decoder that drops the dead columns.

    python -m bench.lm_ancestry --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml --users 32 --batch 16

Each step feeds one token to each live beam and writes its key and value in a new column; every
later step attends all written beam columns, masked to each beam's own ancestors. A column no
live beam descends from is never read again. The table gives, per step ``t``, the beam columns
written (``t x W``), the union of the live beams' ancestors (mean over the users still searching,
and the largest: padded CUDA graphs attend to the largest), and the live beams a user has.
Printed, not recorded: it decides a design, it is not a speed or quality row.
"""

from __future__ import annotations

import argparse
import collections

import torch

from bench.lm_decode import load_for_test, take_users
from genrec.decoding import LiveBeams
from genrec.models import LMRecModule
from genrec.models.lm_graphs import GraphDecoder


def ancestry(module: LMRecModule, batches: list, beams: int) -> dict[int, list[tuple[int, float, int, float]]]:
    """Decode ``batches`` (static decoder, eager); per step ``t``: one ``(written columns, users'
    live-ancestor columns [U] mean, largest, live beams mean)`` tuple per batch."""
    found: dict[int, list] = collections.defaultdict(list)
    step = GraphDecoder.step

    def measured(self: GraphDecoder, live: LiveBeams):
        out = step(self, live)
        t, W, U = self.step_index, self.width, self.held.numel()
        user = torch.searchsorted(self.held, live.rows // W)
        alive = torch.zeros(U, W, dtype=torch.bool, device=self.device)
        alive[user, live.rows % W] = True
        union = (self.beam_seen[:U, :, : t * W] & alive[:, :, None]).any(1).sum(1).float()  # [U]
        searching = alive.any(1)
        union, per_user = union[searching], alive.sum(1)[searching].float()
        found[t].append((t * W, union.mean().item(), int(union.max()), per_user.mean().item()))
        return out

    GraphDecoder.step = measured
    try:
        with torch.no_grad():
            for batch in batches:
                module.recommend(batch, k=module.num_results, beam_width=beams)
    finally:
        GraphDecoder.step = step
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ckpt", default=None, help="an LMRecModule checkpoint; default: the configured model")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--beams", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    dm, module = load_for_test(args.data, args.model, args.ckpt, args.batch, args.set, torch.device("cpu"))
    module.decode_graphs = False  # the columns do not depend on graphs or padding
    found = ancestry(module, take_users(iter(dm.test_dataloader()), args.users), args.beams)
    print(f"{args.users} users of {dm.name}, beam {args.beams}, batches of {args.batch}")
    print("| step | beam columns written | live-ancestor columns, mean | largest | share of written (largest) | live beams a user |")
    print("|---|---|---|---|---|---|")
    for t in sorted(found):
        rows = found[t]
        written, mean = rows[0][0], sum(r[1] for r in rows) / len(rows)
        largest, live = max(r[2] for r in rows), sum(r[3] for r in rows) / len(rows)
        print(f"| {t} | {written} | {mean:.1f} | {largest} | {largest / written:.0%} | {live:.1f} |")


if __name__ == "__main__":
    main()
