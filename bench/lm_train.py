"""LM-recommender training and test benchmark: quality (overall and cold-start), tokens/s, decoding users/s.

    python -m bench.lm_train --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml \
        [--set trainer.max_epochs=1 --set model.init_args.optimizer.lr=0.0005 ...]

Runs ``fit`` exactly as ``train.py fit`` would (same configs, LightningCLI) with a callback that
counts the real (unpadded) prompt + target tokens of every training batch and the wall time of
training with validation excluded; then ``test`` on the best checkpoint (by val NDCG@10),
timed: title-constrained beam search over every test user. Records in docs/benchmarks.md test
Recall/NDCG@5/10 overall and on the cold-start slice, the popularity baseline, trainable and
total parameters, training tokens/s and samples/s, and decoding users/s (the timed test pass
includes loading the checkpoint, a few seconds). ``--out`` is written once after training
(``run`` and ``state``) and again, with the row and test metrics, after the test.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import Timeline, batch_cell, run_info, sync
from bench.record import metric_columns, record, set_flags
from genrec.artifacts import write_json
from genrec.stages.fit import GenRecCLI


class TokenTimeline(Timeline):
    """:class:`bench.common.Timeline` counting the LM's real prompt + target tokens (on the device)."""

    count_names = ("samples", "tokens")
    train_peak_bytes = 0
    """The most GPU memory a training step allocated (validation excluded; 0 off CUDA)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.count("samples", len(batch))
        _, lines, keep = module.history_lines(batch.history)
        fixed = len(batch) * (module.prompt_prefix.numel() + module.prompt_suffix.numel())
        self.count("tokens", (lines * keep).sum() + module.target_lengths[batch.targets].sum() + fixed)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if torch.cuda.is_available():
            self.train_peak_bytes = max(self.train_peak_bytes, torch.cuda.max_memory_allocated())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target", type=float, default=0.0655, help="val Recall@10 to time")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    parser.add_argument("--out", default=None, help="also write the timeline JSON here")
    parser.add_argument("--fit-only", action="store_true",
                        help="train only (e.g. a multi-GPU loss-curve run for bench.multi_gpu): write --out, no test and no row")
    args = parser.parse_args()
    if args.fit_only and not args.out:
        raise SystemExit("--fit-only needs --out")
    torch.set_float32_matmul_precision("high")
    overrides = set_flags(args.set)
    cli = GenRecCLI(args=["--config", args.data, "--config", args.model, *overrides], run=False)
    timeline = TokenTimeline(args.target)
    cli.trainer.callbacks.append(timeline)
    # Counted before fit: FSDP shards the parameters.
    total = sum(p.numel() for p in cli.model.parameters())
    trainable = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    sync()
    train_s = timeline.train_seconds()
    # Written before the test pass (minutes for a large LM), so a run stopped during it keeps
    # its training measurement; the full JSON below replaces this one.
    run = {**run_info(cli), "parameters": total, "train peak GiB": round(timeline.train_peak_bytes / 2**30, 1)}
    checkpoint = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    run["checkpoint"] = checkpoint  # the best by val NDCG@10, what the test uses ("" without one)
    if args.out and cli.trainer.is_global_zero:
        write_json(args.out, {"run": run, "state": timeline.state()})
    if args.fit_only:
        if cli.trainer.is_global_zero:
            print(f"[fit-only] {timeline.total('tokens') / train_s:,.0f} train tokens/s, {timeline.samples / train_s:,.1f} samples/s "
                  f"({timeline.samples:,} samples in {train_s:.1f} s, validation excluded; liger={cli.model.hparams.liger})", flush=True)
        return
    started = time.perf_counter()
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=checkpoint or None)[0]
    sync()
    test_s = time.perf_counter() - started
    if not cli.trainer.is_global_zero:
        return

    model = cli.model
    hp = model.hparams
    dm = cli.datamodule
    # Users actually decoded (fewer than the test set under trainer.limit_test_batches).
    users = min(len(dm.dataset("test")), int(sum(cli.trainer.num_test_batches)) * dm.eval_batch_size * cli.trainer.world_size)
    users = int(results.get("test/users", users))  # max_eval_users: the subset decoded
    source = hp.preset or hp.model
    row = {
        "data": dm.name,
        "model": f"{source} ({total / 1e6:.1f}M, {trainable / 1e6:.2f}M trained)",
        "lora": f"r {hp.lora['r']}" if hp.lora["enabled"] else "full",
        "epochs": f"{timeline.samples / len(dm.dataset('train')):.2f}",
        "batch": batch_cell(cli),
        "lr": hp.optimizer["lr"],
        "precision": cli.trainer.precision,
        **metric_columns(results, cold_ndcg=True),
        "train s (no val)": f"{train_s:.0f}",
        "train tokens/s": f"{timeline.total('tokens') / train_s:,.0f}",
        "samples/s": f"{timeline.samples / train_s:.0f}",
        f"test pass s ({users:,} users, beam {hp.evaluation['beam_width']})": f"{test_s:.1f}",
        "decode users/s": f"{users / test_s:.0f}",
        "train peak GiB": f"{run['train peak GiB']:.1f}" if torch.cuda.is_available() else "n/a",
    }
    record(
        "LM recommender (LLM-as-RS)",
        [row],
        note="Causal LM over item titles trained by `train.py fit` settings; test on the best val NDCG@10 checkpoint "
        "with title-constrained beam search (every recommendation a real item). Tokens = real prompt + target tokens.",
    )
    if args.out:
        write_json(args.out, {"row": row, "run": run, "timeline": timeline.points, "test": results, "state": timeline.state()})


if __name__ == "__main__":
    main()
