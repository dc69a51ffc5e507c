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

from bench.record import command_line, metric_columns, record, set_flags
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
    """Wall time of training (validation excluded), sample and token counts, the training loss of
    every step, and val metrics over time.

    Counts are kept on the device while training (an ``int()`` per step would sync the GPU and
    stall the pipeline). Under DDP or FSDP every rank counts its own batches; at the end of
    training the counts become sums over the ranks and the losses means over the ranks (the
    loss of the global batch), on every rank.
    """

    def __init__(self, target: float, prior: dict[str, Any] | None = None, test_target: float | None = None) -> None:
        """``prior``: the ``state`` of an earlier segment of the same training (see :meth:`state`),
        whose time, samples, tokens and losses this one continues from (a run resumed from its
        checkpoint). ``test_target``: also measure test Recall/NDCG@10 at every validation (for
        reporting only: checkpoints are still chosen on val) and note the wall time at which test
        Recall@10 first reached it."""
        prior = prior or {}
        self.target = target
        self.test_target = test_target
        self.test_reached: float | None = prior.get("test_reached")
        self.start = 0.0
        self.val_started = 0.0
        self.val_seconds = 0.0
        self.wall_offset = float(prior.get("wall_s", 0.0))
        self.train_offset = float(prior.get("train_s", 0.0))
        self.prior_counts = {name: int(prior.get(name, 0)) for name in self.count_names}
        self.counts: dict[str, torch.Tensor | int] = dict.fromkeys(self.count_names, 0)  # this segment, this rank
        self.prior_losses = [float(x) for x in prior.get("losses", [])]
        self._losses: list[torch.Tensor] = []
        self.losses: list[float] | None = None  # all steps (earlier segments first), set when training ends
        self.points: list[dict[str, float]] = list(prior.get("points", []))
        self.reached: float | None = prior.get("reached")

    count_names = ("samples", "enc_tokens", "dec_tokens")

    def count(self, name: str, value: torch.Tensor | int) -> None:
        self.counts[name] = self.counts[name] + value

    def total(self, name: str) -> int:
        """Everything counted under ``name`` so far, earlier segments included."""
        return self.prior_counts[name] + int(self.counts[name])

    @property
    def samples(self) -> int:
        return self.total("samples")

    @property
    def enc_tokens(self) -> int:
        return self.total("enc_tokens")

    @property
    def dec_tokens(self) -> int:
        return self.total("dec_tokens")

    def on_fit_start(self, trainer, module) -> None:  # noqa: ANN001
        _sync()
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        self.count("samples", len(batch))
        self.count("enc_tokens", batch.lengths.sum() * module.tokens_per_item + len(batch))
        self.count("dec_tokens", len(batch) * module.tokens_per_item)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._losses.append(loss.detach().float())

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        device = module.device
        counts = torch.stack([torch.as_tensor(self.counts[name], device=device).to(torch.float64) for name in self.count_names])
        losses = torch.stack(self._losses).to(device) if self._losses else torch.zeros(0, device=device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            losses = trainer.strategy.reduce(losses, reduce_op="mean")
        self.counts = {name: int(round(value)) for name, value in zip(self.count_names, counts.tolist(), strict=True)}
        self.losses = self.prior_losses + losses.tolist()

    def wall_seconds(self, now: float | None = None) -> float:
        return self.wall_offset + (now or time.perf_counter()) - self.start

    def state(self) -> dict[str, Any]:
        """Everything a later segment needs to continue the counts (``--prior``); after training."""
        return {"wall_s": self.wall_seconds(), "train_s": self.train_seconds(), **{name: self.total(name) for name in self.count_names},
                "losses": self.losses if self.losses is not None else self.prior_losses, "points": self.points, "reached": self.reached,
                "test_reached": self.test_reached}

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
        if self.test_target is not None:
            metrics.update(test_metrics(trainer, module))
            if self.test_reached is None and metrics["test/recall@10"] >= self.test_target:
                self.test_reached = self.wall_seconds(now)
        recall = metrics.get("val/recall@10", 0.0)
        self.points.append({"epoch": trainer.current_epoch, "wall_s": self.wall_seconds(now), "train_s": self.train_seconds(now), **metrics})
        if self.reached is None and recall >= self.target:
            self.reached = self.wall_seconds(now)
        if trainer.is_global_zero:
            test = f" test/recall@10 {metrics['test/recall@10']:.4f} ndcg@10 {metrics['test/ndcg@10']:.4f}" if "test/recall@10" in metrics else ""
            print(f"[timeline] epoch {trainer.current_epoch} wall {self.wall_seconds(now):.1f}s val/recall@10 {recall:.4f} "
                  f"ndcg@10 {metrics.get('val/ndcg@10', 0):.4f}{test}", flush=True)
        self.val_seconds += time.perf_counter() - now  # the test pass is not training time

    def train_seconds(self, now: float | None = None) -> float:
        return self.train_offset + (now or time.perf_counter()) - self.start - self.val_seconds


@torch.no_grad()
def test_metrics(trainer: L.Trainer, module: L.LightningModule) -> dict[str, float]:
    """Test Recall/NDCG@10 (all, cold and warm targets) of the module's current weights, by its own
    ``recommend`` over the data module's test split (single process)."""
    from genrec.metrics import RecEvaluation

    dm = trainer.datamodule
    evaluation = RecEvaluation((10,), module.evaluation.cold_start_max_count).to(module.device)
    evaluation.attach(dm.data.train_item_counts(), dm.data.num_items)
    was_training = module.training
    module.eval()
    with trainer.precision_plugin.forward_context():
        for batch in dm.test_dataloader():
            batch = batch.to(module.device)
            evaluation.update("test", module.recommend(batch).items, batch.targets)
    module.train(was_training)
    out: dict[str, float] = {}
    for i in range(3):
        out.update({k: float(v) for k, v in evaluation.metrics[f"test_{i}"].compute().items()})
    return out


def run_info(cli: GenRecCLI) -> dict[str, Any]:
    """How a run was spread: devices, strategy, per-device batch, precision (for --out files)."""
    trainer, hp = cli.trainer, cli.model.hparams
    return {"data": cli.datamodule.name, "model": hp.get("preset") or hp.get("model"), "devices": trainer.world_size, "strategy": type(trainer.strategy).__name__,
            "batch": cli.datamodule.batch_size, "precision": trainer.precision, "command": command_line()}


def batch_cell(cli: GenRecCLI) -> str | int:
    """The ``batch`` column: the per-device batch, as ``devices x batch (strategy)`` on several devices."""
    info = run_info(cli)
    return f"{info['devices']} x {info['batch']} ({info['strategy']})" if info["devices"] > 1 else info["batch"]


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
    _sync()
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
    _sync()
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
        write_json(args.out, {"row": row, "run": run_info(cli), "timeline": timeline.points, "test": results, "state": timeline.state()})


if __name__ == "__main__":
    main()
