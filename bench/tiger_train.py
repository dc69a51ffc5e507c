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
from typing import Any

import lightning as L
import torch

from bench.record import metric_columns, record, set_flags
from genrec.artifacts import read_json, write_json
from genrec.cli import GenRecCLI

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timeline(L.Callback):
    """Wall time of training (validation excluded), token counts, and val metrics over time."""

    def __init__(self, target: float, prior: dict[str, Any] | None = None) -> None:
        """``prior``: the ``state`` of an earlier segment of the same training (see :meth:`state`),
        whose time, samples and tokens this one continues from (a run resumed from its checkpoint)."""
        prior = prior or {}
        self.target = target
        self.start = 0.0
        self.val_started = 0.0
        self.val_seconds = 0.0
        self.wall_offset = float(prior.get("wall_s", 0.0))
        self.train_offset = float(prior.get("train_s", 0.0))
        self.samples = int(prior.get("samples", 0))
        self._enc_tokens = None
        self.enc_offset = int(prior.get("enc_tokens", 0))
        self.dec_tokens = int(prior.get("dec_tokens", 0))
        self.points: list[dict[str, float]] = list(prior.get("points", []))
        self.reached: float | None = prior.get("reached")

    def on_fit_start(self, trainer, module) -> None:  # noqa: ANN001
        _sync()
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        # Counted on the device: an int() here would sync the GPU every step and stall the pipeline.
        self.samples += len(batch)
        tokens = batch.lengths.sum() * module.tokens_per_item + len(batch)
        self._enc_tokens = tokens if self._enc_tokens is None else self._enc_tokens + tokens
        self.dec_tokens += len(batch) * module.tokens_per_item

    @property
    def enc_tokens(self) -> int:
        return self.enc_offset + (int(self._enc_tokens) if self._enc_tokens is not None else 0)

    def wall_seconds(self, now: float | None = None) -> float:
        return self.wall_offset + (now or time.perf_counter()) - self.start

    def state(self) -> dict[str, Any]:
        """Everything a later segment needs to continue the counts (``--prior``)."""
        return {"wall_s": self.wall_seconds(), "train_s": self.train_seconds(), "samples": self.samples,
                "enc_tokens": self.enc_tokens, "dec_tokens": self.dec_tokens, "points": self.points, "reached": self.reached}

    def on_validation_start(self, trainer, module) -> None:  # noqa: ANN001
        _sync()
        self.val_started = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:  # noqa: ANN001
        _sync()
        now = time.perf_counter()
        self.val_seconds += now - self.val_started
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        recall = metrics.get("val/recall@10", 0.0)
        self.points.append({"epoch": trainer.current_epoch, "wall_s": self.wall_seconds(now), "train_s": self.train_seconds(now), **metrics})
        if self.reached is None and recall >= self.target:
            self.reached = self.wall_seconds(now)
        print(f"[timeline] epoch {trainer.current_epoch} wall {self.wall_seconds(now):.1f}s val/recall@10 {recall:.4f} ndcg@10 {metrics.get('val/ndcg@10', 0):.4f}", flush=True)

    def train_seconds(self, now: float | None = None) -> float:
        return self.train_offset + (now or time.perf_counter()) - self.start - self.val_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sids", required=True)
    parser.add_argument("--target", type=float, default=0.0655, help="val Recall@10 to time")
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
    timeline = Timeline(args.target, prior)
    cli.trainer.callbacks.append(timeline)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=args.ckpt_path)
    _sync()
    train_s = timeline.train_seconds()
    if args.fit_only:
        write_json(args.out, {"state": timeline.state()})
        print(f"segment done: epoch {cli.trainer.current_epoch}, {train_s:.0f} s of training so far; resume with "
              f"--ckpt-path <last.ckpt> --prior {args.out}", flush=True)
        return
    checkpoint = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=checkpoint or None)[0]
    started = time.perf_counter()  # a second pass, weights loaded and kernels warm: the pass itself
    again = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    _sync()
    test_s = time.perf_counter() - started
    if abs(again.get("test/recall@10", 0) - results.get("test/recall@10", 0)) > 1e-6:
        raise RuntimeError(f"two test passes disagree: {again} vs {results}")

    model = cli.model
    n_params = sum(p.numel() for p in model.model.parameters())
    enc_params = sum(p.numel() for p in model.model.encoder.parameters())
    dec_params = sum(p.numel() for p in model.model.decoder.parameters())
    head = model.model.config.d_model * model.vocab_size
    flops = 6 * (enc_params * timeline.enc_tokens + (dec_params + head) * timeline.dec_tokens)
    peak = peak_flops()
    mfu = f"{100 * flops / train_s / peak:.1f} %" if peak else "n/a (no GPU peak known)"
    hp = model.hparams
    dm = cli.datamodule
    row = {
        "data": dm.name,
        "preset": f"{hp.preset} ({n_params / 1e6:.1f}M)",
        "sids": Path(args.sids).name,
        "epochs": cli.trainer.current_epoch,
        "batch": dm.batch_size,
        "lr": hp.lr,
        "precision": cli.trainer.precision,
        **metric_columns(results),
        f"wall s to val R@10 >= {args.target}": f"{timeline.reached:.0f}" if timeline.reached else "not reached",
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
        write_json(args.out, {"row": row, "timeline": timeline.points, "test": results, "state": timeline.state()})


if __name__ == "__main__":
    main()
