"""Multi-GPU agreement and scaling: does a run on N devices follow the one-device loss curve,
and how much faster is it?

    # one device, then two with the same global batch (half the per-device batch):
    python -m bench.tiger_train --data D --model M --sids S --set data.init_args.batch_size=4096 --out one.json
    python -m bench.tiger_train --data D --model M --sids S --set data.init_args.batch_size=2048 \\
        --set trainer.devices=2 --set trainer.strategy=ddp --out two.json
    python -m bench.multi_gpu one.json two.json

``bench.lm_train --fit-only --out`` files work the same way (e.g. FSDP runs of a Qwen3-0.6B-shaped
LM). The first file is the reference. Per run: devices, strategy, optimizer steps, samples/s and
tokens/s, speed-up over the reference, the mean loss of the last window, and how far its loss
curve is from the reference's: both curves are cut into windows of ``--window`` steps, and
``|dloss|`` is the mean over windows of the absolute difference of the window means. ``noise`` is
the standard error of that difference from the step-to-step spread of the two curves
(sqrt(s1^2 + s2^2) / sqrt(window), with s^2 = mean squared difference of consecutive steps / 2,
which a slow trend barely moves); ``within noise`` means ``|dloss| <= 2 noise``. Runs with
test metrics (``bench.tiger_train``) also show test R@10 / N@10.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from bench.record import record
from genrec.artifacts import read_json


def step_noise(losses: torch.Tensor) -> float:
    """Variance of one step's loss around the curve, from consecutive differences (``[T]`` losses)."""
    if losses.numel() < 2:
        return float("nan")
    return float((losses.diff() ** 2).mean() / 2)


def curve_agreement(reference: list[float], other: list[float], window: int) -> dict[str, float]:
    """Window-mean distance of two loss curves and the noise it should be compared with.

    Returns:
        ``steps`` compared (the common prefix, whole windows), ``delta`` (mean absolute difference
        of window means) and ``noise`` (standard error of a window-mean difference).
    """
    steps = min(len(reference), len(other)) // window * window
    if steps == 0:
        raise ValueError(f"the curves have {len(reference)} and {len(other)} steps: fewer than one window of {window}")
    a = torch.tensor(reference[:steps], dtype=torch.float64)
    b = torch.tensor(other[:steps], dtype=torch.float64)
    delta = (a.view(-1, window).mean(1) - b.view(-1, window).mean(1)).abs().mean()
    noise = math.sqrt((step_noise(a) + step_noise(b)) / window)
    return {"steps": steps, "delta": float(delta), "noise": noise}


def row_of(run: dict[str, Any], reference: dict[str, Any], window: int) -> dict[str, object]:
    """The table row of one run file (``reference``: the first file)."""
    info, state = run["run"], run["state"]
    losses = state["losses"]
    if not losses:
        raise ValueError("the run file has no per-step losses (written by an older bench version?)")
    tokens = state.get("tokens", state.get("enc_tokens", 0) + state.get("dec_tokens", 0))
    speed = state["samples"] / state["train_s"]
    ref_speed = reference["state"]["samples"] / reference["state"]["train_s"]
    last = sum(losses[-window:]) / len(losses[-window:])
    row: dict[str, object] = {
        "data": info["data"],
        "model": info["model"] + (f" ({info['parameters'] / 1e6:.1f}M)" if "parameters" in info else ""),
        "devices x batch": f"{info['devices']} x {info['batch']}",
        "strategy": info["strategy"],
        "precision": info["precision"],
        "steps": len(losses),
        "samples/s": f"{speed:,.0f}",
        "tokens/s": f"{tokens / state['train_s']:,.0f}",
        "speed-up": f"{speed / ref_speed:.2f}x",
        f"loss, last {window} steps": f"{last:.4f}",
    }
    if run is reference:
        row.update({"mean abs dloss": "reference", "noise": "", "within noise": ""})
    else:
        agreement = curve_agreement(reference["state"]["losses"], losses, window)
        row.update({
            "mean abs dloss": f"{agreement['delta']:.4f} ({agreement['steps']} steps)",
            "noise": f"{agreement['noise']:.4f}",
            "within noise": "yes" if agreement["delta"] <= 2 * agreement["noise"] else "no",
        })
    test = run.get("test") or {}
    row["test R@10"] = f"{test['test/recall@10']:.4f}" if "test/recall@10" in test else "n/a"
    row["test N@10"] = f"{test['test/ndcg@10']:.4f}" if "test/ndcg@10" in test else "n/a"
    row["run command"] = f"`{info['command']}`"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="--out files of bench.tiger_train / bench.lm_train; the first is the reference")
    parser.add_argument("--window", type=int, default=50, help="optimizer steps per window of the loss curves")
    args = parser.parse_args()
    if len(args.runs) < 2:
        raise SystemExit("give the reference run and at least one other")
    runs = [read_json(path) for path in args.runs]
    for path, run in zip(args.runs, runs, strict=True):
        if "run" not in run or "losses" not in run.get("state", {}):
            raise SystemExit(f"{path}: not a run file of bench.tiger_train / bench.lm_train --out")
    rows = [row_of(run, runs[0], args.window) for run in runs]
    record(
        "Multi-GPU training",
        rows,
        note="One run per row from its `--out` file; the first row is the reference. Loss curves compared "
        "in windows of optimizer steps (`bench/multi_gpu.py` says how); speed-up = samples/s over the reference's.",
    )


if __name__ == "__main__":
    main()
