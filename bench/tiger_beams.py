"""How much quality TIGER's constrained beam search leaves on the table, and what wider beams cost.

    python -m bench.tiger_beams --data configs/data/amazon-beauty.yaml --model configs/tiger/amazon-beauty.yaml \
        --sids checkpoints/amazon-beauty/sids/rqkmeans.safetensors --ckpt CHECKPOINT \
        --beams 10,20,50,100 [--exact-users 2048]

Loads a trained checkpoint, then for every beam width runs the val and test passes exactly as
``train.py test`` does (same data module, metrics and cold-start slice), timed. With
``--exact-users N`` it also ranks every catalogue item for the first ``N`` val users by its
teacher-forced SID log-prob (:func:`genrec.decoding.score_all_items`, the exact top-K that an
unbounded beam would return) and reports, per beam width, the share of the exact top-10 that
the beam's list recovers and the exact list's Recall@10 on those users. Records one row per
beam width in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench.record import record, set_flags
from genrec.decoding import score_all_items
from genrec.models import TigerModule
from genrec.stages.fit import GenRecCLI


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def exact_overlap(module: TigerModule, batches: list, beams: list[int], k: int = 10) -> tuple[float, dict[int, float]]:
    """Recall@k of the exact ranking and, per beam width, the share of the exact top-k found.

    Args:
        batches: val batches (``SeqBatch``) on the module's device.

    Returns:
        ``(exact recall@k, {beam width: mean |beam top-k ∩ exact top-k| / k})`` over the users.
    """
    trie = module.trie()
    hits, users = 0, 0
    found = dict.fromkeys(beams, 0)
    with torch.no_grad(), torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=module.device.type == "cuda"):
        for batch in batches:
            ids, mask = module.encoder_inputs(batch)
            encoder_out = module.encode(ids, mask)
            scores = score_all_items(module.beam_step, trie, len(batch), state=module.initial_state(encoder_out, mask))
            exact = trie.items[scores.topk(k, dim=1).indices]  # [B, k]
            hits += int((exact == batch.targets[:, None]).any(1).sum())
            for width in beams:
                items = module.search(encoder_out, mask, num_results=k, beam_width=width).items
                found[width] += int((items[:, :, None] == exact[:, None, :]).any(2).sum())
            users += len(batch)
    return hits / users, {width: found[width] / users / k for width in beams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sids", required=True)
    parser.add_argument("--ckpt", required=True, help="a TigerModule checkpoint trained on these SIDs")
    parser.add_argument("--beams", default="10,20,50,100", help="comma-separated beam widths (each >= max(ks))")
    parser.add_argument("--exact-users", type=int, default=0, help="val users ranked exhaustively (0: skip)")
    parser.add_argument("--exact-batch", type=int, default=16, help="users per exhaustive batch (rows = users x items)")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    args = parser.parse_args()
    beams = [int(b) for b in args.beams.split(",")]
    torch.set_float32_matmul_precision("high")
    cli = GenRecCLI(args=["--config", args.data, "--config", args.model, f"--model.init_args.sids={args.sids}",
                          "--trainer.logger=false", "--trainer.enable_progress_bar=false", *set_flags(args.set)], run=False)
    dm, trainer = cli.datamodule, cli.trainer
    module = TigerModule.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
    rows, results = [], {}
    for width in beams:
        module.hparams.beam_width = width
        trainer.validate(module, datamodule=dm, verbose=False)  # also warms the kernels up for this width
        val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        _sync()
        started = time.perf_counter()
        test = trainer.test(module, datamodule=dm, verbose=False)[0]
        _sync()
        results[width] = (val, test, time.perf_counter() - started)
    overlap: dict[int, float] = {}
    exact_recall = None
    if args.exact_users:
        module.to(trainer.strategy.root_device).eval()
        dm.eval_batch_size = args.exact_batch
        batches = [b.to(module.device) for b in itertools.islice(dm.val_dataloader(), -(-args.exact_users // args.exact_batch))]
        exact_recall, overlap = exact_overlap(module, batches, beams)
    for width in beams:
        val, test, seconds = results[width]
        rows.append({
            "data": dm.name,
            "preset": module.hparams.preset,
            "sids": args.sids.rsplit("/", 1)[-1],
            "beam": width,
            "val R@10": f"{val.get('val/recall@10', float('nan')):.4f}",
            "val N@10": f"{val.get('val/ndcg@10', float('nan')):.4f}",
            "test R@5": f"{test.get('test/recall@5', float('nan')):.4f}",
            "test N@5": f"{test.get('test/ndcg@5', float('nan')):.4f}",
            "test R@10": f"{test.get('test/recall@10', float('nan')):.4f}",
            "test N@10": f"{test.get('test/ndcg@10', float('nan')):.4f}",
            "cold R@10": f"{test.get('test/cold/recall@10', float('nan')):.4f}",
            f"exact top-10 found ({args.exact_users} val users)": f"{overlap[width]:.3f}" if overlap else "n/a",
            "exact R@10 (same users)": f"{exact_recall:.4f}" if exact_recall is not None else "n/a",
            f"test pass s ({len(dm.dataset('test')):,} users)": f"{seconds:.1f}",
        })
    record(
        "TIGER beam width",
        rows,
        note="One trained checkpoint evaluated with several beam widths (constrained beam search, val and test as "
        "`train.py test` runs them); 'exact top-10 found' is the share of the exhaustive ranking's top 10 (every "
        "item scored by teacher forcing) that the beam's list contains.",
    )


if __name__ == "__main__":
    main()
