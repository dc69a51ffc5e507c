"""TIGER training and test benchmark: quality, time to a target, throughput, MFU, test-pass time.

    python -m bench.tiger_train --data configs/data/amazon-beauty.yaml \
        --model configs/tiger/amazon-beauty.yaml --sids checkpoints/amazon-beauty/sids/rqvae.safetensors \
        --target 0.0655 [--set trainer.max_epochs=40 --set model.init_args.lr=0.003 ...]

Runs ``fit`` exactly as ``train.py fit`` would (same configs, LightningCLI), with a callback that
records, at every validation, the wall time since training started and val Recall@10; then
``test`` on the best checkpoint (by val NDCG@10), timed. Records in docs/benchmarks.md:
test Recall/NDCG@5/10 (overall and cold-start), popularity baseline, wall time until val
Recall@10 first reached ``--target``, training throughput (samples/s, validation excluded) and
model-FLOPs utilisation, and the test-pass time over all users.

A run longer than one sitting (e.g. a machine lent 10 minutes per command) goes in segments:
``--fit-only --out seg1.json`` trains until ``trainer.max_time`` and writes the counts; the next
segment, with the same settings plus ``--ckpt-path .../last.ckpt --prior seg1.json``, resumes the
schedule from the checkpoint, adds its time, samples and tokens to the earlier ones, then tests
and records one row for the whole run. ``trainer.max_time`` counts all segments (Lightning
restores its timer from the checkpoint): raise it for each later segment.

MFU counts ``6 * parameters * tokens`` for the real (unpadded) encoder and decoder tokens of
every training sample, plus the output layer on decoder tokens, over the GPU's dense bf16 peak
(H100 SXM: 989 TFLOP/s as NVIDIA lists it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import Timeline, batch_cell, peak_flops, run_info, sync
from bench.record import metric_columns, record, set_flags
from genrec.artifacts import read_json, write_json
from genrec.stages.fit import GenRecCLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sids", required=True)
    parser.add_argument("--target", type=float, default=0.0655, help="val Recall@10 to time")
    parser.add_argument("--test-target", type=float, default=None,
                        help="also measure test Recall/NDCG@10 at every validation (reporting only) and time when test "
                        "Recall@10 first reaches this (e.g. 0.0648, TIGER's published number)")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    parser.add_argument("--out", default=None, help="also write the timeline JSON here")
    parser.add_argument("--fit-only", action="store_true",
                        help="one segment of a longer run: train, write --out, no test and no row")
    parser.add_argument("--ckpt-path", default=None, help="resume training from this checkpoint (e.g. the last.ckpt of a --fit-only segment)")
    parser.add_argument("--prior", default=None, help="the --out JSON of the earlier segment: its time, samples and timeline carry over")
    args = parser.parse_args()
    if args.fit_only and not args.out:
        raise SystemExit("--fit-only needs --out (the next segment's --prior)")
    torch.set_float32_matmul_precision("high")
    overrides = set_flags(args.set)
    cli = GenRecCLI(args=["--config", args.data, "--config", args.model, f"--model.init_args.sids={args.sids}", *overrides], run=False)
    prior = read_json(args.prior)["state"] if args.prior else None
    timeline = Timeline(args.target, prior, args.test_target)
    cli.trainer.callbacks.append(timeline)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    sync()
    train_s = timeline.train_seconds()
    world = cli.trainer.world_size
    if args.fit_only:
        if cli.trainer.is_global_zero:
            write_json(args.out, {"run": run_info(cli), "state": timeline.state()})
        print(f"segment done: epoch {cli.trainer.current_epoch}, {train_s:.0f} s of training so far; resume with "
              f"--ckpt-path <last.ckpt> --prior {args.out}", flush=True)
        return
    checkpoint = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=checkpoint or None)[0]
    started = time.perf_counter()  # a second pass, weights loaded and kernels warm: the pass itself
    again = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    sync()
    test_s = time.perf_counter() - started
    if abs(again.get("test/recall@10", 0) - results.get("test/recall@10", 0)) > 1e-6:
        raise RuntimeError(f"two test passes disagree: {again} vs {results}")
    if not cli.trainer.is_global_zero:
        return

    model = cli.model
    n_params = sum(p.numel() for p in model.model.parameters())
    enc_params = sum(p.numel() for p in model.model.encoder.parameters())
    dec_params = sum(p.numel() for p in model.model.decoder.parameters())
    head = model.model.config.d_model * model.vocab_size
    flops = 6 * (enc_params * timeline.enc_tokens + (dec_params + head) * timeline.dec_tokens)
    peak = peak_flops()
    mfu = f"{100 * flops / train_s / (peak * world):.1f} %" if peak else "n/a (no GPU peak known)"
    hp = model.hparams
    dm = cli.datamodule
    row = {
        "data": dm.name,
        "preset": f"{hp.preset} ({n_params / 1e6:.1f}M)",
        "sids": Path(args.sids).name,
        "epochs": cli.trainer.current_epoch,
        "batch": batch_cell(cli),
        "lr": hp.lr,
        "precision": cli.trainer.precision,
        **metric_columns(results),
        f"wall s to val R@10 >= {args.target}": f"{timeline.reached:.0f}" if timeline.reached else "not reached",
        **({f"wall s to test R@10 >= {args.test_target}": f"{timeline.test_reached:.0f}" if timeline.test_reached else "not reached"}
           if args.test_target is not None else {}),
        "train s (no val)": f"{train_s:.0f}",
        "samples/s": f"{timeline.samples / train_s:.0f}",
        "MFU": mfu,
        f"test pass s ({len(dm.dataset('test')):,} users, beam {hp.beam_width})": f"{test_s:.1f}",
    }
    record(
        "TIGER",
        [row],
        note="TIGER (T5 over semantic IDs) trained by `train.py fit` settings; test on the best val "
        "NDCG@10 checkpoint; Recall/NDCG over the full catalogue with constrained beam search. "
        "MFU = 6 x params x real tokens / train time / dense bf16 peak.",
    )
    if args.out:
        run = {**run_info(cli), "checkpoint": checkpoint}  # the best by val NDCG@10, what the test used
        write_json(args.out, {"row": row, "run": run, "timeline": timeline.points, "test": results, "state": timeline.state()})


if __name__ == "__main__":
    main()
