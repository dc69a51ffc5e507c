"""What the training benchmarks share (bench/tiger_train.py, bench/lm_train.py,
bench/lm_throughput.py): the GPU's peak FLOP/s, a device sync for timing, the
:class:`Timeline` callback (validation points, samples, wall and training time, resumable over
segments), test metrics of the current weights, and a run's description."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import lightning as L
import torch

from bench.record import command_line
from genrec.stages.fit import GenRecCLI

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def sync() -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), so a wall-clock reading covers it."""
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
        sync()
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
        sync()
        self.val_started = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:  # noqa: ANN001
        sync()
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
    """Test Recall/NDCG@10 (all, cold and warm targets) of the module's current weights (with an
    :class:`~genrec.ema.EMAWeights` callback: its average, as validation sees), by its own
    ``recommend`` over the data module's test split (single process)."""
    from genrec.ema import EMAWeights
    from genrec.metrics import RecEvaluation

    dm = trainer.datamodule
    evaluation = RecEvaluation((10,), module.evaluation.cold_start_max_count).to(module.device)
    evaluation.attach(dm.data.train_item_counts(), dm.data.num_items)
    ema = next((c for c in trainer.callbacks if isinstance(c, EMAWeights)), None)
    was_training = module.training
    module.eval()
    with ema.applied(module) if ema is not None else contextlib.nullcontext(), trainer.precision_plugin.forward_context():
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
