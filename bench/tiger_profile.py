"""Where a TIGER training step spends its time: raw step time (eager and ``torch.compile``) and the
profiler's top operators.

    python -m bench.tiger_profile --data configs/data/amazon-beauty.yaml \
        --model configs/tiger/amazon-beauty.yaml --sids checkpoints/amazon-beauty/sids/rqvae.safetensors

Takes the model and training batches exactly as ``train.py fit`` builds them (same configs), then
runs plain PyTorch training steps (forward, loss, backward, clipping, AdamW; no Lightning) under
bf16 autocast: ``--steps`` timed steps per variant after ``--warmup``, and one profiled stretch of
the eager variant whose top operators by device time and by host time are printed. Variants:
``eager``; ``compile`` (``torch.compile``, dynamic shapes); ``graphs`` (history padded to the data
module's ``max_history`` so every batch has one shape, ``torch.compile(mode="reduce-overhead")``:
CUDA graphs, what ``TigerModule(compile=True, compile_mode="reduce-overhead", pad_history=...)``
does in training); ``compile-graphs`` (dynamic shapes and CUDA graphs, one recorded per distinct
batch shape, no padding: ``TigerModule(compile=True, compile_mode="reduce-overhead")``). Comparing the
raw step time with the step time of ``bench.tiger_train`` shows the trainer's own overhead.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench.record import record, set_flags
from genrec.quantize.semantic_ids import SemanticIDs
from genrec.stages.fit import GenRecCLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sids", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--variant", action="append", choices=["eager", "compile", "graphs", "compile-graphs"],
                        help="eager; compile (dynamic shapes); graphs (history padded to max_history, CUDA graphs); "
                        "compile-graphs (dynamic shapes, CUDA graphs per shape). Default eager, graphs")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    args = parser.parse_args()
    torch.set_float32_matmul_precision("high")
    overrides = set_flags(args.set)
    cli = GenRecCLI(args=["--config", args.data, "--config", args.model, f"--model.init_args.sids={args.sids}", "--trainer.logger=false", *overrides], run=False)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm, module = cli.datamodule, cli.model
    dm.setup("fit")
    module.to(device).train()
    module.attach(dm.data.catalog, SemanticIDs.load(args.sids), dm.data.train_item_counts())
    batches = [b.to(device) if hasattr(b, "to") else b for b in itertools.islice(dm.train_dataloader(), args.warmup + args.steps)]
    rows = []
    for variant in args.variant or ["eager", "graphs"]:
        torch._dynamo.reset()  # each compiled variant starts from an empty cache
        # graphs: history padded to max_history (one shape) and torch.compile with CUDA graphs.
        pad = dm.max_history if variant == "graphs" else None
        if variant == "eager":
            forward = module.model
        elif variant in ("compile", "compile-graphs"):
            mode = "reduce-overhead" if variant == "compile-graphs" and device.type == "cuda" else None
            forward = torch.compile(module.model, dynamic=True, mode=mode)
        else:
            forward = torch.compile(module.model, dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)
        optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def step(batch, forward=forward, optimizer=optimizer, pad=pad) -> None:  # noqa: ANN001
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = module.training_loss(batch, forward, pad)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        started = time.perf_counter()
        for batch in batches[: args.warmup]:
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        for batch in batches[args.warmup :]:
            step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - started) / args.steps * 1000
        samples = sum(len(b) for b in batches[args.warmup :])
        rows.append({"variant": variant, "batch": dm.batch_size, "ms/step": f"{ms:.1f}", "samples/s": f"{samples / (ms * args.steps / 1000):,.0f}", "warm-up s": f"{warm_s:.1f}"})
        print(rows[-1], flush=True)
        if variant == "eager":
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch.profiler.profile(activities=activities) as prof:
                for batch in batches[args.warmup : args.warmup + 10]:
                    step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
            key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=20), flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    record("TIGER raw training step", [{"preset": module.hparams.preset, **r} for r in rows],
           note="Plain PyTorch steps (no Lightning) on the batches `train.py fit` builds; bf16 autocast on GPU.")


if __name__ == "__main__":
    main()
