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
from typing import Any

import torch
from lightning.pytorch import Callback

from bench.common import Timeline, batch_cell, run_info, sync
from bench.profiling import busy_seconds, kinds_report
from bench.record import metric_columns, record, set_flags
from genrec.artifacts import write_json
from genrec.stages.fit import GenRecCLI


def real_tokens(module: Any, batch: Any) -> torch.Tensor:
    """The real (unpadded) prompt + target tokens of an LM recommender's training batch: a 0-d
    tensor on the batch's device (no sync)."""
    _, lines, keep = module.history_lines(batch.history)
    fixed = len(batch) * (module.prompt_prefix.numel() + module.prompt_suffix.numel())
    return (lines * keep).sum() + module.target_lengths[batch.targets].sum() + fixed


class TokenTimeline(Timeline):
    """:class:`bench.common.Timeline` counting the LM's real prompt + target tokens (on the device)."""

    count_names = ("samples", "tokens")
    train_peak_bytes = 0
    """The most GPU memory a training step allocated (validation excluded; 0 off CUDA)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.count("samples", len(batch))
        self.count("tokens", real_tokens(module, batch))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
        if torch.cuda.is_available():
            self.train_peak_bytes = max(self.train_peak_bytes, torch.cuda.max_memory_allocated())


class StepProfiler(Callback):
    """Profile training steps ``start .. start + steps - 1`` (counted from 0, after compilation and
    warm-up) and print their operators by device time (CPU time off CUDA), then the split that
    says whether the step waits on the GPU or on the host: the wall time of the profiled steps
    against the device time of their kernels.

    Args:
        start: the first profiled training step.
        steps: how many steps to profile.
    """

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.steps = start, steps
        self.profiler: Any = None
        self.wall = 0.0
        self.report = ""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.start and self.profiler is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            sync()
            self.profiler = profile(activities=activities)
            self.profiler.start()
            self.wall = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.profiler is None or self.report or trainer.global_step < self.start + self.steps:
            return
        sync()
        wall = time.perf_counter() - self.wall
        self.profiler.stop()
        cuda = torch.cuda.is_available()
        events = self.profiler.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        busy = busy_seconds(events, cuda)  # each kernel once (operator rows repeat their kernels' time)
        self.report = (f"[profile] training steps {self.start}..{self.start + self.steps - 1}: {wall / self.steps * 1e3:.1f} ms "
                       f"a step, {busy / self.steps * 1e3:.1f} ms of it {'on the GPU' if cuda else 'in operators'} "
                       f"({busy / wall:.0%} busy)")
        print(events.table(sort_by=key, row_limit=40), flush=True)
        if cuda:
            print(f"[profile] kernel time by kind, per step:\n{kinds_report(events, per=self.steps, unit='step')}", flush=True)
        print(self.report, flush=True)

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        if self.profiler is not None and not self.report:
            self.profiler.stop()
            self.report = f"[profile] training ended at step {trainer.global_step}, before step {self.start + self.steps - 1}: nothing printed"
            print(self.report, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--target", type=float, default=0.0655, help="val Recall@10 to time")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    parser.add_argument("--out", default=None, help="also write the timeline JSON here")
    parser.add_argument("--profile-steps", nargs=2, type=int, default=None, metavar=("START", "N"),
                        help="profile training steps START .. START+N-1 and print their operators (StepProfiler)")
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
    if args.profile_steps:
        cli.trainer.callbacks.append(StepProfiler(*args.profile_steps))
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
