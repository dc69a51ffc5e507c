"""The LM recommender's own training step, timed: eager against compiled variants, side by side.

    python -m bench.lm_step --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml \
        --variant eager --variant layers --steps 30 --warmup 10 [--set data.init_args.batch_size=128 ...]

Each ``--variant`` trains ``--warmup + --steps`` steps through ``trainer.fit`` exactly as
``train.py fit`` runs them (the configs' callbacks, precision and length buckets; validation and
checkpoints off), in this one process, one variant after the other. Every variant starts from
the same seed, so it sees the same batches from the same initial weights:

* ``eager``: ``compile: false``;
* ``layers``: ``compile: true``, each decoder layer compiled on its own
  (:class:`~genrec.models.lm_loading.LayerCompile`, what ``compile: true`` does);
* ``whole``: the whole LM's forward compiled as one graph (what ``compile: true`` did from
  2026-12-04, 879b7d3, until ``LayerCompile``);
* ``liger``: ``liger: true`` (Liger's Triton kernels; CUDA only).

One row per variant: the first step's seconds (compilation included), then over the timed steps
(after ``--warmup``) ms a step, samples/s and real (unpadded) prompt + target tokens/s, the
graphs Dynamo made and its graph breaks, peak GPU memory, and the last step's loss (the same
batches and weights: the variants should agree to bf16 rounding). ``--backend aot_eager`` times
Dynamo's and AOTAutograd's tracing without Inductor's code generation (a CPU can afford it).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from typing import Any

import torch
from lightning.pytorch import Callback

from bench.common import sync
from bench.lm_train import real_tokens
from bench.record import record, set_flags
from genrec.models.lm_loading import LayerCompile
from genrec.stages.fit import GenRecCLI

VARIANTS: dict[str, list[str]] = {
    "eager": ["model.init_args.compile=false"],
    "layers": ["model.init_args.compile=true"],
    "whole": ["model.init_args.compile=true"],
    "liger": ["model.init_args.compile=false", "model.init_args.liger=true"],
}


class WholeModelCompile(LayerCompile):
    """The whole LM as one compiled call (the ``whole`` variant), with :class:`LayerCompile`'s
    ``active()``: in force for the training forward only."""

    def __init__(self, model: torch.nn.Module, dynamic: bool = True, backend: str | Any = "inductor") -> None:
        self.layers = [model]
        self.calls = [torch.compile(model._call_impl, dynamic=dynamic, backend=backend)]


class StepClock(Callback):
    """The first step's wall seconds (from the start of fit: compilation included), and the
    samples, real tokens and wall seconds of the steps from ``warmup`` on; the last step's loss."""

    def __init__(self, warmup: int, variant: str = "eager", backend: str = "inductor") -> None:
        self.warmup, self.variant, self.backend = warmup, variant, backend
        self.fit_start = self.start = self.end = 0.0
        self.first_step_s = float("nan")
        self.samples = 0
        self.tokens: torch.Tensor | int = 0
        self.loss: torch.Tensor | None = None
        self.peak_bytes = 0

    def on_fit_start(self, trainer, module) -> None:  # noqa: ANN001
        if self.variant == "whole":
            module._compiled_layers = WholeModelCompile(module.model, backend=self.backend)
        elif self.variant == "layers" and self.backend != "inductor":
            module._compiled_layers = LayerCompile(module.model, backend=self.backend)
        sync()
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.warmup and not self.start:
            sync()
            self.start = time.perf_counter()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        if self.start:
            self.samples += len(batch)
            self.tokens = self.tokens + real_tokens(module, batch)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == 0:
            sync()
            self.first_step_s = time.perf_counter() - self.fit_start
        self.loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()

    def on_train_end(self, trainer, module) -> None:  # noqa: ANN001
        sync()
        self.end = time.perf_counter()
        if torch.cuda.is_available():
            self.peak_bytes = torch.cuda.max_memory_allocated()


def measure(data: str, model: str, variant: str, warmup: int, steps: int, overrides: list[str], backend: str = "inductor") -> dict[str, object]:
    """Train ``warmup + steps`` steps of ``variant``; the row of the table."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    with tempfile.TemporaryDirectory() as root:
        cli = GenRecCLI(
            args=["--config", data, "--config", model, "--trainer.logger=false", "--trainer.enable_checkpointing=false",
                  "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                  f"--trainer.max_steps={warmup + steps}", f"--trainer.default_root_dir={root}",
                  *set_flags(VARIANTS[variant]), *overrides],
            run=False,
        )
        clock = StepClock(warmup, variant, backend)
        cli.trainer.callbacks.append(clock)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if not clock.start:
        raise SystemExit(f"{variant}: training ended before step {warmup} (an epoch holds fewer batches): lower --warmup")
    timed = cli.trainer.global_step - warmup
    seconds = clock.end - clock.start
    hp = cli.model.hparams
    return {
        "data": cli.datamodule.name,
        "model": f"{hp.preset or hp.model} ({sum(p.numel() for p in cli.model.parameters()) / 1e6:.1f}M)"
                 + (f", LoRA r {hp.lora['r']}" if hp.lora["enabled"] else ""),
        "variant": variant + (f" ({backend})" if backend != "inductor" and variant in ("layers", "whole") else ""),
        "batch": cli.datamodule.batch_size,
        "precision": cli.trainer.precision,
        "first step s (compile included)": f"{clock.first_step_s:.1f}",
        "timed steps": timed,
        "ms a step": f"{seconds / max(timed, 1) * 1e3:.1f}",
        "samples/s": f"{clock.samples / seconds:.1f}",
        "real tokens/s": f"{int(clock.tokens) / seconds:,.0f}",
        "graphs / breaks": f"{counters['stats'].get('unique_graphs', 0)} / {sum(counters['graph_break'].values())}",
        "peak GiB": f"{clock.peak_bytes / 2**30:.1f}" if torch.cuda.is_available() else "n/a",
        "last loss": f"{float(clock.loss):.4f}" if clock.loss is not None else "n/a",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="eager, layers, whole or liger (repeatable; default: eager and layers)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile's backend for layers and whole (aot_eager: Dynamo and AOTAutograd's tracing alone, no code generation)")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")
    import torch._dynamo as dynamo

    if args.backend not in dynamo.list_backends(exclude_tags=()):
        raise SystemExit(f"--backend {args.backend!r} is not a torch.compile backend here (e.g. inductor, aot_eager, eager)")
    variants = args.variant or ["eager", "layers"]
    if "liger" in variants and not torch.cuda.is_available():
        raise SystemExit("--variant liger needs a CUDA device (Liger's kernels are Triton)")
    torch.set_float32_matmul_precision("high")
    overrides = set_flags(args.set)
    rows = []
    for variant in variants:
        rows.append(measure(args.data, args.model, variant, args.warmup, args.steps, overrides, args.backend))
        print(rows[-1], flush=True)
        gc.collect()  # the variant's model and optimizer state, before the next one's
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record(
        "LM recommender training step",
        rows,
        note="The LM recommender's training step (`trainer.fit` as `train.py fit` runs it, validation off), variants side by side "
        "in one process from the same seed and batches; first step includes compilation; the rest over the timed steps.",
    )


if __name__ == "__main__":
    main()
