"""Decoding throughput of the LM recommender: title-constrained beam search, users per second.

    python -m bench.lm_decode --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml \
        --batch 64 --beam 20 [--batches 32] [--set model.init_args.preset=50m ...]

Builds the model and the test loader exactly as ``train.py test`` would (same configs; weights as
configured: pretrained, or freshly initialised for a preset — speed does not depend on them),
then times :meth:`genrec.models.LMRecModule.recommend` over ``--batches`` test batches of
``--batch`` users (all of them with ``--batches 0``) after decoding the first once as a warm-up, bf16 autocast on a
GPU. Records users/s, the prompt length, peak GPU memory and every returned list's validity
(K distinct catalogue items per user).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench.record import record, set_flags
from genrec.cli import GenRecCLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=64, help="users per decoding batch")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--batches", type=int, default=32, help="timed batches (0: the whole test set)")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    args = parser.parse_args()
    overrides = set_flags(args.set)
    cli = GenRecCLI(args=["--config", args.data, "--config", args.model, "--trainer.logger=false",
                          f"--data.init_args.eval_batch_size={args.batch}", f"--model.init_args.beam_width={args.beam}", *overrides], run=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm, module = cli.datamodule, cli.model
    dm.setup("test")
    module.to(device).eval()
    module.attach_items(dm.data.catalog, dm.data.train_item_counts())
    if dm.sort_eval_by_length and args.batches % 16:
        # test users come in blocks of 16 batches sorted by history length (length_sorted_blocks):
        # a partial block would time only its short histories
        raise SystemExit(f"--batches {args.batches}: with sort_eval_by_length, time whole blocks (a multiple of 16, or 0 for all)")
    loader = dm.test_dataloader()
    batches = list(itertools.islice(loader, args.batches)) if args.batches else list(loader)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def decode(batch):  # noqa: ANN001, ANN202
        with torch.no_grad(), autocast:
            return module.recommend(batch.to(device))

    decode(batches[0])  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timed = batches  # the warm-up batch is timed again: the timed users are whole length blocks
    users, valid, prompt = 0, 0, 0
    started = time.perf_counter()
    for batch in timed:
        items = decode(batch).items
        users += len(batch)
        valid += sum(len(set(row)) == module.num_results and min(row) >= 0 for row in items.tolist())
        prompt = max(prompt, int(module.lm_inputs(batch.to(device), with_target=False).input_ids.shape[1]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    hp = module.hparams
    total = sum(p.numel() for p in module.parameters())
    row = {
        "data": dm.name,
        "model": f"{hp.preset or hp.model} ({total / 1e6:.1f}M)",
        "users": users,
        "batch": args.batch,
        "beam": args.beam,
        "K": module.num_results,
        "longest prompt (tokens)": prompt,
        "users/s": f"{users / seconds:.1f}",
        "lists valid": f"{valid}/{users}",
        "peak GiB": f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "n/a",
    }
    record("LM recommender decoding throughput", [row],
           note="Title-constrained beam search (prompt keys/values shared by a user's beams), timed after one warm-up batch; "
           "'lists valid' counts users whose K items are distinct catalogue items.")


if __name__ == "__main__":
    main()
