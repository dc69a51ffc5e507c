"""Decoding throughput of the LM recommender (title-constrained beam search, users per second),
its test quality, and a side-by-side check against the reference decoder.

    python -m bench.lm_decode --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml \\
        [--ckpt CKPT] --beams 20 --users all [--batch 1024] [--compare-reference 512] [--set key=value ...]

Builds the data module and the model as ``train.py test`` would (same configs; with ``--ckpt`` the
settings and weights of that LMRecModule checkpoint, else the configured weights: pretrained, or
freshly initialised for a preset, which decodes as fast but scores nothing), takes the first
``--users`` test users in the test loader's order (``all``: every one) and decodes them with
:meth:`genrec.models.LMRecModule.recommend` in batches of ``--batch`` users, bf16 autocast on a
GPU, after a warm-up on part of the first batch. Records users/s, test Recall/NDCG@10 overall and
on cold items, how often cold items are recommended (:func:`genrec.metrics.cold_exposure`), the
share of the full search's beam tokens the pruned search fed, every list's validity (K distinct
catalogue items) and peak GPU memory.

``--compare-reference N`` first decodes the first N of those users with both decoders (the
reference: every beam every step, the decoder before issue 20) in float32 (no autocast, no TF32)
and stops unless they agree: every item both decoders rank for a user has the same score
(within 1e-3), and at most 1 % of the users' lists differ other than by items of tied scores
swapping places (a near-tie of two partial titles at the edge of the beam may keep different
beams; in exact arithmetic the lists are equal). It then compares
them again at the timed precision and reports that agreement without asserting it (bf16
rounding differs between any two batch layouts, and a beam search below exhaustive width can
then keep other beams and find other items), with the largest score difference of an item both
ranked (a few hundredths in bf16; a decoder bug shows as more) and both decoders' users/s.
Each batch's users, steps and seconds are printed after the timed pass. ``--profile``, after
it, decodes one of its batches again (``--profile-batch``, default the first) as that pass did (graph
replays) and prints how busy the GPU was (kernel time against the unprofiled wall time), the
kernel time of a step by kind (:mod:`bench.profiling`) and the kernels by device time
(torch.profiler), then the operators of a quarter of that batch decoded eagerly with the same
padding, grouped by operator and input shape.

The decoder is the static-shape one (:mod:`genrec.models.lm_graphs`: CUDA graphs on a GPU) unless
``--decoder slot`` (the eager slot decoder). Before the timed pass, ``--warmup`` users (default:
the first batch) are decoded once, so that the graphs of the usual shapes are captured outside
the timed pass (``--warmup all``: every user, so the timed pass is the steady state of a
decoder that has met every shape); their capture time is reported separately, as are the host operators per
decoding step (aten operators dispatched from Python, counted on one batch after the warm-up;
a graph replay counts as none of them, its kernels run on the device).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.profiling import busy_seconds, kinds_report
from bench.record import record, set_flags
from genrec.data.datamodule import SeqBatch
from genrec.decoding import BeamResult
from genrec.metrics import RecEvaluation, cold_exposure
from genrec.models import LMRecModule
from genrec.models.lm_graphs import GraphDecoder, unsupported_reason
from genrec.models.lm_weights import DecoderWeights
from genrec.models.settings import BUILD_SETTINGS, ENGINE_SETTINGS
from genrec.stages.fit import GenRecCLI

TIE = 1e-3
"""Score difference (summed log-probs, float32) within which two decoders' items count as tied."""
DIFFERENT_SHARE = 0.01
"""Share of users whose float32 lists may differ beyond ties: where two partial titles score
within float32 rounding of each other at the edge of the beam, the decoders may keep different
ones and so find different items (both scored alike, as the same-item check asserts)."""


def agreement(fast: BeamResult, reference: BeamResult, tie: float = TIE) -> tuple[int, int, int]:
    """Per user: ``(identical, tied, different)`` counts of two decoders' ranked lists.

    A list is *identical* with the same items in the same order; *tied* when the items differ
    but every rank's score agrees within ``tie`` (items of equal score swapped); *different*
    otherwise (an item missed or scored differently).
    """
    same = (fast.items == reference.items).all(1)
    both = torch.isfinite(fast.scores) & torch.isfinite(reference.scores)
    close = torch.where(both, (fast.scores - reference.scores).abs() <= tie, fast.scores == reference.scores).all(1)
    identical = int(same.sum())
    tied = int((~same & close).sum())
    return identical, tied, len(same) - identical - tied


def head(batch: SeqBatch, n: int) -> SeqBatch:
    """The first ``n`` users of ``batch``."""
    return SeqBatch(batch.users[:n], batch.history[:n], batch.lengths[:n], batch.targets[:n])


def common_item_gap(fast: BeamResult, reference: BeamResult) -> float:
    """The largest score difference of an item that both decoders ranked for the same user
    (0 without one): a decoder bug shows here even when rounding lets the searches find
    different items."""
    same = (fast.items[:, :, None] == reference.items[:, None, :]) & (fast.items[:, :, None] >= 0)  # [B, K, K]
    gaps = (fast.scores[:, :, None] - reference.scores[:, None, :]).abs()
    return float(gaps[same].max()) if bool(same.any()) else 0.0


SWITCHES = (
    ("--head", ("fused", "log-softmax"), GraphDecoder, "FUSED_HEAD",
     "static decoders' steps return logits and row log-normalisers (fused; meant with --compile), or float32 log-probs"),
    ("--attention", ("cudnn", "efficient"), GraphDecoder, "CUDNN_ATTENTION",
     "static decoders' attention kernel: cuDNN first, or the memory-efficient one"),
    ("--prefill", ("causal", "masked"), GraphDecoder, "CAUSAL_PREFILL",
     "static decoders' prefill: right-padded rows under causal flash attention without a mask, or left-padded rows with a [B, S, S] mask"),
    ("--compile-dims", ("rows", "all"), DecoderWeights, "ROWS_ONLY_DYNAMIC",
     "with --compile: only the row dimensions dynamic and the feature widths static, or every dimension symbolic"),
)
"""The decoder's switches: flag, (the value that turns the class attribute on, the one that turns
it off), the class and attribute, help. Each flag's default is the attribute's default; a new
switch is a row here."""

NUMBERS = (
    ("--prefill-elements", GraphDecoder, "PREFILL_ELEMENTS", 1, False, "prefill chunks < {:.3g} elements",
     "static decoders: prefill chunks of users below N activation elements (a huge N prefills each batch at once)"),
    ("--capture-after", GraphDecoder, "CAPTURE_AFTER", 1, True, "capture at use {}",
     "graphed steps: capture a shape at its N-th use, eager before"),
    ("--prompt-bucket", GraphDecoder, "PROMPT_BUCKET", 8, True, "prompt columns from a multiple of {}",
     "graphed steps: attend from a multiple of N prompt columns (N >= the prompt width: always from column 0, so "
     "batches of every prompt length share one set of graphs)"),
)
"""The decoder's numeric settings: flag, class and attribute, the multiple a value must be,
whether only graphed (CUDA) steps use it, the decoder column's words when it is given, help. A
new one is a row here."""


def apply_setting(module: LMRecModule, owner: type, attr: str, value: Any) -> None:
    """A :data:`SWITCHES` or :data:`NUMBERS` value onto the module when it is one of its
    ``decoding`` settings (``GraphDecoder.PROMPT_BUCKET``: ``module.decode_prompt_bucket``, as
    ``decoding.prompt_bucket`` in a config sets it; every switch and number so far), else onto the
    class attribute (process-wide)."""
    if attr.lower() in (*ENGINE_SETTINGS, *BUILD_SETTINGS):
        setattr(module, f"decode_{attr.lower()}", value)
    else:
        setattr(owner, attr, value)


def setting(module: LMRecModule, owner: type, attr: str) -> Any:
    """The value a :data:`SWITCHES` or :data:`NUMBERS` setting decodes with: the module's
    ``decode_<name>`` (its config's ``decoding.<name>`` or a flag), else the class attribute."""
    value = getattr(module, f"decode_{attr.lower()}", None)
    return getattr(owner, attr) if value is None else value


def given(args: argparse.Namespace, flag: str) -> Any:
    """The parsed value of a :data:`SWITCHES` or :data:`NUMBERS` flag (``--prompt-bucket``: ``args.prompt_bucket``)."""
    return getattr(args, flag[2:].replace("-", "_"))


def load_for_test(data: str, model: str, ckpt: str | None, eval_batch_size: int, sets: list[str], device: torch.device) -> tuple[Any, LMRecModule]:
    """The data module (test split set up) and the LM recommender as ``train.py test`` builds them
    (``ckpt``: that checkpoint's settings and weights), attached to the catalogue, on ``device``
    in eval mode; ``sets``: ``--set key=value`` overrides."""
    cli = GenRecCLI(args=["--config", data, "--config", model, "--trainer.logger=false",
                          f"--data.init_args.eval_batch_size={eval_batch_size}", *set_flags(sets)], run=False)
    dm = cli.datamodule
    module = LMRecModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True) if ckpt else cli.model
    dm.setup("test")
    module.attach(dm.data.catalog, train_counts=dm.data.train_item_counts())
    module.give_item_costs(dm)  # the test order by prompt tokens, as LMRecModule.setup does
    return dm, module.to(device).eval()


def take_users(loader: Iterator[SeqBatch], limit: int | None) -> list[SeqBatch]:
    """The first ``limit`` users of ``loader`` (all with ``None``), as its batches; the last cut short."""
    batches, count = [], 0
    for batch in loader:
        if limit is not None and count + len(batch) >= limit:
            batches.append(head(batch, limit - count))
            return batches
        batches.append(batch)
        count += len(batch)
    return batches


def by_prompt_length(module: LMRecModule, batches: list[SeqBatch], batch_size: int) -> list[SeqBatch]:
    """The users of ``batches`` re-batched in ``batch_size`` groups, shortest prompt first: a
    batch's prompts are left-padded to its longest, so users of similar prompt length waste
    less of the prefill and of the attention on padding. Each user's result does not depend on
    the others in a batch (up to rounding), and the metrics do not depend on the order."""
    width = max(b.history.shape[1] for b in batches)
    history = torch.cat([torch.nn.functional.pad(b.history, (0, width - b.history.shape[1]), value=-1) for b in batches])
    users, lengths, targets = (torch.cat([getattr(b, name) for b in batches]) for name in ("users", "lengths", "targets"))
    _, line_len, keep = module.history_lines(history.to(module.line_lengths.device))
    order = (line_len * keep).sum(1).cpu().argsort(stable=True)
    return [SeqBatch(users[i], history[i], lengths[i], targets[i]) for i in order.split(batch_size)]


def decode_all(module: LMRecModule, batches: list[SeqBatch], device: torch.device, beams: int, precision: str,
               reference: bool = False, timeline: list[tuple[int, int, float, str]] | None = None) -> tuple[list[BeamResult], float]:
    """Every batch decoded (``BeamResult`` on the CPU per batch) and the seconds it took; with
    ``timeline``, one ``(users, steps, seconds, engine)`` appended per batch (each batch ends in a
    copy to the host, which waits for it; ``engine``: the static decoder's prompt width, an id
    that changes when it is rebuilt, and the graphs it captured during the batch with their
    seconds, which the batch's time includes; empty for the slot decoder)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    results = []
    _sync(device)
    started = last = time.perf_counter()
    with torch.no_grad(), autocast:
        for batch in batches:
            steps = module.decode_counts.get("steps", 0)
            before = _captures(getattr(module, "_graph_decoder", None))
            result = module.recommend(batch.to(device), beam_width=beams, reference=reference)
            results.append(BeamResult(result.items.cpu(), result.scores.float().cpu()))  # the copy waits for the batch
            if timeline is not None:
                now = time.perf_counter()
                engine = getattr(module, "_graph_decoder", None)
                after = _captures(engine)
                if after[0] != before[0]:  # a new engine: everything it holds was captured in this batch
                    before = (after[0], 0, 0.0)
                timeline.append((len(batch), module.decode_counts.get("steps", 0) - steps, now - last,
                                 "" if engine is None else f"P {engine.prompt_width}, engine {after[0] % 10**4}, "
                                 f"{after[1] - before[1]} captures {after[2] - before[2]:.2f} s"))
                last = now
    return results, time.perf_counter() - started


def _captures(engine: Any) -> tuple[int, int, float]:
    """A static decoder's ``(id, graphs captured, capture seconds)`` (zeros without one)."""
    if engine is None:
        return (0, 0, 0.0)
    return (id(engine), len(engine.graph_cache), engine.capture_seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def float32_matmuls() -> Iterator[None]:
    """Full float32 matrix products inside the block (no TF32), as the exactness check needs."""
    previous = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous[1:]


def compare(module: LMRecModule, batches: list[SeqBatch], device: torch.device, beams: int, precision: str) -> str:
    """The ``--compare-reference`` check (module docstring); raises SystemExit on a float32 mismatch."""
    users = sum(len(b) for b in batches)
    cells = []
    for mode in dict.fromkeys(["fp32", precision]):
        with float32_matmuls() if mode == "fp32" else contextlib.nullcontext():
            for reference in (False, True):  # warm-up: first calls, allocator
                decode_all(module, [head(batches[0], 8)], device, beams, mode, reference=reference)
            fast, fast_s = decode_all(module, batches, device, beams, mode)
            reference, reference_s = decode_all(module, batches, device, beams, mode, reference=True)
        identical, tied, different = (sum(c) for c in zip(*(agreement(f, r) for f, r in zip(fast, reference, strict=True)), strict=True))
        gap = max(common_item_gap(f, r) for f, r in zip(fast, reference, strict=True))
        cell = (f"{mode}: {identical}/{users} identical, {tied} tied, {different} different, same-item score gap {gap:.2g}; "
                f"{users / fast_s:.1f} vs {users / reference_s:.1f} users/s")
        print(f"reference check, {cell}", flush=True)
        if mode == "fp32" and (gap > TIE or different > DIFFERENT_SHARE * users):
            raise SystemExit(f"--compare-reference: the slot and the reference decoder disagree in float32: {different} of {users} "
                             f"users' lists differ, an item both ranked differs by {gap:.3g} in score")
        cells.append(cell)
    return "; ".join(cells)


def host_ops_per_step(module: LMRecModule, batch: SeqBatch, device: torch.device, beams: int, precision: str) -> tuple[float, float, int]:
    """Decode ``batch`` once and count the aten operators dispatched from Python: ``(per step
    outside the graphed step body, per step inside it, steps)``. On CUDA the body is one graph
    replay (its operators run as captured kernels, not dispatched); on a CPU, or with the slot
    decoder, everything runs eagerly.

    The count runs with ``torch.compile`` stood down (``set_stance("force_eager")``; compiled
    functions count as their eager operators) and neither captures nor replays a graph: every
    step's body runs eagerly and is counted, so the inside count is the same whichever shapes the
    warm-up captured (before 2026-12-04, thirteenth hold, captured shapes replayed uncounted, and
    a row's count depended on them). A compiled function first called under a ``TorchDispatchMode``
    is never compiled again: before 2026-12-04 this count, run between the warm-up and the
    timed pass, left every later prefill and every graph captured after it with the eager
    layer halves (docs/benchmarks.md, eleventh hold)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from genrec.models.lm_graphs import GraphDecoder

    counts = {"outside": 0, "inside": 0}
    where = ["outside"]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func: Callable, types, args=(), kwargs=None):
            counts[where[-1]] += 1
            return func(*args, **(kwargs or {}))

    replay = GraphDecoder._replay

    def counted(self: GraphDecoder, *args: int) -> Any:  # instead of a replay or a capture: the body, eagerly
        where.append("inside")
        try:
            return self._run(*args)  # graphed, it writes the static outputs and returns their views
        finally:
            where.pop()

    module.decode_counts = {}
    GraphDecoder._replay = counted
    try:
        with torch.compiler.set_stance("force_eager"), Count():
            decode_all(module, [batch], device, beams, precision)
    finally:
        GraphDecoder._replay = replay
    steps = max(module.decode_counts.get("steps", 0), 1)
    return counts["outside"] / steps, counts["inside"] / steps, steps


def profile(module: LMRecModule, batch: SeqBatch, device: torch.device, beams: int, precision: str) -> None:
    """Print where the decoding of ``batch`` spends its time: the batch decoded as the timed pass
    decodes it (its step shapes already met, so graph replays, not captures), timed once without
    and once under the profiler; the kernels' device time against the unprofiled wall time (how
    busy the GPU is), that time by kind of kernel and the kernels most time first. Then a quarter
    of the batch decoded eagerly with the same padding, its aten operators grouped by input shape
    (a graph replay hides which operator and which shapes a kernel belongs to). The graphed
    engine is dropped for the eager pass, so this runs after every timed pass."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    module.decode_counts = {}
    wall = decode_all(module, [batch], device, beams, precision)[1]
    steps = max(module.decode_counts.get("steps", 0), 1)
    with torch_profile(activities=activities) as prof:
        decode_all(module, [batch], device, beams, precision)
    events = prof.key_averages()
    busy = busy_seconds(events, cuda)
    print(f"[profile] {len(batch)} users, {steps} steps: {wall:.2f} s unprofiled ({wall / steps * 1e3:.1f} ms a step), "
          f"{busy:.2f} s {'of kernels' if cuda else 'in operators'} ({busy / wall:.0%} of the unprofiled wall time)", flush=True)
    if cuda:
        print(f"[profile] kernel time by kind, per step:\n{kinds_report(events, per=steps, unit='step')}", flush=True)
    # which torch.compile entries ran, and how often (a graph replay runs none: only the prefill's
    # and eager steps' calls show; with the layer halves compiled, the prefill's are one a layer)
    regions = {e.key.removeprefix("Torch-Compiled Region: "): e.count for e in events if e.key.startswith("Torch-Compiled Region")}
    if regions:
        print(f"[profile] compiled regions run (Dynamo frame/entry: calls): {regions}", flush=True)
    print(events.table(sort_by=key, row_limit=30), flush=True)
    saved = module.decode_graphs, module.decode_padded
    engine = getattr(module, "_graph_decoder", None)
    padded = engine.padded if engine is not None else saved[1]
    # Dropped before the eager engine is built: a reference kept here held the graphed engine's
    # buffers and graph pool (93 GiB at batch 2,048) beside it, and the eager pass ran out of memory.
    del engine
    module._graph_decoder = None
    if cuda:
        torch.cuda.empty_cache()
    module.decode_graphs, module.decode_padded = False, padded
    try:  # a quarter of the batch: a whole one's eager trace is hundreds of thousands of kernels
        with torch_profile(activities=activities, record_shapes=True) as prof:
            decode_all(module, [head(batch, max(len(batch) // 4, 1))], device, beams, precision)
    finally:
        module.decode_graphs, module.decode_padded = saved
    print("a quarter of the batch decoded eagerly (same padding), by operator and input shape:", flush=True)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=40), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ckpt", default=None, help="an LMRecModule checkpoint (settings and weights); default: the configured model")
    parser.add_argument("--batch", type=int, default=None, help="users per decoding batch (default: 1024 on a GPU, 16 on a CPU)")
    parser.add_argument("--beams", "--beam", type=int, default=20)
    parser.add_argument("--users", default="all", help="decode the first N test users, or 'all'")
    parser.add_argument("--compare-reference", type=int, default=0, metavar="N",
                        help="first check the first N users against the reference decoder (module docstring)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--profile", action="store_true", help="after the timed pass: how busy the GPU is decoding one of its batches (--profile-batch), its kernel "
                        "time by kind, its kernels and a quarter of it decoded eagerly, by operator and input shape")
    parser.add_argument("--decoder", choices=["static", "static-eager", "slot"], default="static",
                        help="static: static shapes, CUDA graphs on a GPU (genrec.models.lm_graphs); static-eager: the same "
                        "decoder without graphs, at exact sizes; slot: the eager slot decoder (genrec.models.lm_decoding)")
    parser.add_argument("--rows-per-octave", type=int, default=None, metavar="N",
                        help="graphed steps: row buckets per power of two above 1,024 (decoding.rows_per_octave; default 1)")
    for flag, (on, off), owner, attr, text in SWITCHES:
        parser.add_argument(flag, choices=[on, off], default=None,
                            help=f"{text} (decoding.{attr.lower()}; default: the config's, else {owner.__name__}.{attr}: "
                            f"{on if getattr(owner, attr) else off})")
    for flag, owner, attr, multiple, _, _, text in NUMBERS:
        parser.add_argument(flag, type=int, default=None, metavar="N",
                            help=f"{text} (decoding.{attr.lower()}; default {owner.__name__}.{attr}, {getattr(owner, attr)}; a multiple of {multiple})")
    parser.add_argument("--profile-batch", type=int, default=0, metavar="I",
                        help="--profile this batch of the timed pass (default the first; -1 the last, in loader order the widest prompts)")
    parser.add_argument("--fused-head", dest="head", action="store_const", const="fused",
                        help="the default since 2026-12-04 (kept so that older docs/benchmarks.md commands run)")
    parser.add_argument("--compile", action="store_true",
                        help="static decoders: fuse each layer's elementwise work with torch.compile (LMRecModule.decode_compile)")
    parser.add_argument("--forced", action="store_true",
                        help="static decoders: a user whose live beams are all in forced title suffixes leaves the steps and "
                        "its titles are finished in one pass (LMRecModule.decode_forced)")
    parser.add_argument("--order", choices=["loader", "length"], default="loader",
                        help="decode the users in the test loader's order, or re-batched by prompt length (less padding)")
    parser.add_argument("--warmup", default=None, metavar="N|all",
                        help="users decoded before the timed pass (default: one batch; all: a whole untimed pass first, so that the "
                        "timed pass replays graphs of every shape it meets: the steady state, the row's decoder says so)")
    parser.add_argument("--set", action="append", default=[], help="extra CLI override key=value")
    parser.add_argument("--adapter", default=None, metavar="FILE",
                        help="the trained parameters of an adapter file (python -m bench.lm_adapter CKPT FILE) put on the "
                        "configured model, checked against its base weights; instead of --ckpt")
    parser.add_argument("--decode-scales", default=None, metavar="S,S,...",
                        help="decode the users once per LoRA decode_scale (lora.decode_scale: 1 as trained, 0 the pretrained "
                             "model), one row each; default: the model's own")
    args = parser.parse_args()
    if args.users != "all" and not (args.users.isdigit() and int(args.users) > 0):
        raise SystemExit(f"--users takes a positive number or 'all', got {args.users!r}")
    if args.warmup not in (None, "all") and not (args.warmup.isdigit() and int(args.warmup) > 0):
        raise SystemExit(f"--warmup takes a positive number or 'all', got {args.warmup!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type != "cuda":
        raise SystemExit("--precision bf16 needs a GPU here (CPU bf16 matrix products are slow and not what is measured)")
    batch_size = args.batch or (1024 if device.type == "cuda" else 16)
    if args.adapter and args.ckpt:
        raise SystemExit("--adapter and --ckpt both give trained weights: take one")
    # train.py test's data module and model (the test order by prompt tokens), on the device; an
    # adapter goes on as model.init_args.adapter does in train.py (checked, one line if it does not fit)
    from genrec.errors import ArtifactError

    adapter = [f"model.init_args.adapter={args.adapter}"] if args.adapter else []
    try:
        dm, module = load_for_test(args.data, args.model, args.ckpt, batch_size,
                                   [f"model.init_args.evaluation.beam_width={args.beams}", *adapter, *args.set], device)
    except ArtifactError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        scales = [None] if args.decode_scales is None else [float(x) for x in args.decode_scales.split(",")]
    except ValueError:
        raise SystemExit(f"--decode-scales takes numbers separated by commas, got {args.decode_scales!r}") from None
    if args.beams < module.num_results:
        raise SystemExit(f"--beams {args.beams} is below the {module.num_results} items recommended per user")
    module.static_decoding = args.decoder != "slot"
    module.decode_graphs = args.decoder == "static"
    module.decode_compile = args.compile
    module.decode_forced = args.forced
    for flag, (on, _), owner, attr, _ in SWITCHES:  # a given flag over the config's decoding.<name>
        if given(args, flag) is not None:
            apply_setting(module, owner, attr, given(args, flag) == on)
    for flag, owner, attr, multiple, *_ in NUMBERS:
        value = given(args, flag)
        if value is not None:
            if value < 1 or value % multiple:
                raise SystemExit(f"{flag} takes a positive multiple of {multiple}, got {value}")
            apply_setting(module, owner, attr, value)
    if args.rows_per_octave is not None:
        if args.rows_per_octave < 1:
            raise SystemExit(f"--rows-per-octave must be >= 1, got {args.rows_per_octave}")
        module.decode_rows_per_octave = args.rows_per_octave
    unsupported = unsupported_reason(module.model) if module.static_decoding else None
    if unsupported:
        print(f"the static decoder does not run this model ({unsupported}): decoding with the slot decoder", flush=True)
    batches = take_users(iter(dm.test_dataloader()), None if args.users == "all" else int(args.users))
    if args.order == "length":
        batches = by_prompt_length(module, batches, batch_size)

    if not -len(batches) <= args.profile_batch < len(batches):
        raise SystemExit(f"--profile-batch {args.profile_batch}: the timed pass has {len(batches)} batches")
    check = "not run"
    if args.compare_reference:
        check = compare(module, take_users(iter(batches), args.compare_reference), device, args.beams, precision)
    first = batches[0]
    warm = batches if args.warmup == "all" else take_users(iter(batches), int(args.warmup) if args.warmup else len(first))
    warm_s = decode_all(module, warm, device, args.beams, precision)[1]
    engine = module._graph_decoder
    capture_s = engine.capture_seconds if engine is not None else 0.0
    outside, inside, steps = host_ops_per_step(module, first, device, args.beams, precision)
    ops = f"{outside:.0f}" + (f" + {inside:.0f} in the step body" + (" (one graph replay)" if device.type == "cuda" else " (eager)") if inside else "")
    print(f"warm-up: {sum(len(b) for b in warm)} users in {warm_s:.1f} s (graph capture {capture_s:.1f} s); "
          f"aten operators per step: {ops}, over {steps} steps of a {len(first)}-user batch", flush=True)
    for scale in scales:
        measure(args, module, dm, batches, batch_size, device, precision, ops, capture_s, check, unsupported, scale)
    if args.profile:  # after the timed passes: it drops the graphed engine (see profile)
        profile(module, batches[args.profile_batch], device, args.beams, precision)


def measure(args: argparse.Namespace, module: LMRecModule, dm: Any, batches: list, batch_size: int, device: torch.device,
            precision: str, ops: str, capture_s: float, check: str, unsupported: str | None, scale: float | None) -> None:
    """Decode ``batches`` (timed) at LoRA ``decode_scale`` ``scale`` (``None``: the module's), score
    the lists and record one row."""
    if scale is not None:
        module.lora = dataclasses.replace(module.lora, decode_scale=scale)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    users, total = sum(len(b) for b in batches), len(dm.dataset("test"))
    module.decode_counts = {}
    engine = module._graph_decoder
    before = engine.capture_seconds if engine is not None else 0.0
    eager_before = engine.eager_steps if engine is not None else 0
    timeline: list[tuple[int, int, float, str]] = []
    results, seconds = decode_all(module, batches, device, args.beams, precision, timeline=timeline)
    print("per batch (users, steps, s, ms a step, engine and the graphs it captured in the batch): "
          + "; ".join(f"{u}, {n}, {t:.2f}, {t / max(n, 1) * 1e3:.0f}, {e}" for u, n, t, e in timeline), flush=True)
    if args.compile:  # torch.compile's own count: frames compiled (and how many succeeded), graphs made
        from torch._dynamo.utils import counters

        print(f"dynamo: frames {dict(counters['frames'])}, graphs {dict(counters['stats'])}", flush=True)
    engine = module._graph_decoder
    timed_capture_s = (engine.capture_seconds - before) if engine is not None else 0.0
    timed_eager = (engine.eager_steps - eager_before) if engine is not None else 0

    ranked = torch.cat([r.items for r in results])
    targets = torch.cat([b.targets for b in batches])
    counts = module.evaluation.train_counts.cpu()
    evaluation = RecEvaluation(module.ks, module.eval_config.cold_start_max_count)
    evaluation.attach(counts, len(dm.data.catalog))
    evaluation.update("test", ranked, targets)
    metrics = {k: float(v) for m in (evaluation.test, evaluation.test_cold) for k, v in m.compute().items()}
    exposure = cold_exposure(ranked, targets, counts, module.eval_config.cold_start_max_count, k=module.num_results)
    print("cold items:", {k: round(v, 4) for k, v in exposure.items()}, flush=True)
    valid = int(((ranked >= 0).all(1) & (ranked.sort(1).values.diff(1) != 0).all(1)).sum())
    decoded = module.decode_counts
    hp = module.hparams
    switched = {flag: setting(module, owner, attr) for flag, _, owner, attr, _ in SWITCHES}  # what decoded (config or flag)
    row = {
        "data": dm.name,
        "model": f"{hp.preset or hp.model} ({sum(p.numel() for p in module.parameters()) / 1e6:.1f}M)"
                 + (" ckpt" if args.ckpt else " adapter" if args.adapter else ", random weights" if hp.preset else "")
                 + (f", adapters x{module.lora.decode_scale:g}" if module.lora.decode_scale != 1 else ""),
        "decoder": {"static": "static (pruned, CUDA graphs)" if device.type == "cuda" else "static (pruned)",
                    "static-eager": "static (pruned, eager)", "slot": "slot (pruned)"}[args.decoder if not unsupported else "slot"]
                   + ((", compiled (rows dynamic)" if switched["--compile-dims"] else ", compiled (all dimensions dynamic)")
                      if args.compile and module.static_decoding and not unsupported else "")
                   + (f", {args.rows_per_octave} row buckets/octave" if args.rows_per_octave not in (None, 1) else "")
                   + (", fused head" if switched["--head"] and module.static_decoding and not unsupported else "")
                   + (", cuDNN attention" if switched["--attention"] and device.type == "cuda" and module.static_decoding and not unsupported else "")
                   + (", causal prefill" if switched["--prefill"] and module.static_decoding and not unsupported else "")
                   + "".join(f", {words.format(given(args, flag))}" for flag, _, _, _, graphed, words, _ in NUMBERS
                             if given(args, flag) is not None and module.static_decoding and not unsupported
                             and (not graphed or (device.type == "cuda" and args.decoder == "static")))
                   + (", forced suffixes in one pass" if args.forced and module.static_decoding and not unsupported else "")
                   + (", after a whole untimed pass (steady state)" if args.warmup == "all" else ""),
        "precision": precision,
        "users": f"{users:,} of {total:,}",
        "batch": batch_size if args.order == "loader" else f"{batch_size} by prompt length",
        "beam": args.beams,
        "K": module.num_results,
        "decode s": f"{seconds:.1f}",
        "users/s": f"{users / seconds:.1f}",
        "aten ops/step": ops,
        "graph capture s": f"{capture_s:.1f} warm-up + {timed_capture_s:.1f} timed" + (f", {timed_eager} steps eager before capture" if timed_eager else ""),
        "test R@10": f"{metrics.get('test/recall@10', float('nan')):.4f}",
        "test N@10": f"{metrics.get('test/ndcg@10', float('nan')):.4f}",
        "cold R@10": f"{metrics.get('test/cold/recall@10', float('nan')):.4f}",
        f"cold share top-{module.num_results} / targets": (f"{exposure[f'cold share of top-{module.num_results}']:.3f} / "
                                                          f"{exposure['cold share of targets']:.3f}"),
        "beam tokens fed": f"{decoded['beam tokens'] / max(decoded['full search beam tokens'], 1):.1%} of full search"
                           + (f" (padded {decoded['padded beam tokens'] / max(decoded['full search beam tokens'], 1):.1%})"
                              if decoded.get("padded beam tokens", 0) > decoded["beam tokens"] else "")
                           + f", {decoded['steps'] / max(len(batches), 1):.1f} steps a batch"
                           + (f", + {decoded['forced suffix tokens']:,} forced-suffix tokens in one pass"
                              if decoded.get("forced suffix tokens") else ""),
        "lists valid": f"{valid}/{users}",
        "reference check": check,
        "peak GiB": f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "n/a",
    }
    record("LM recommender decoding throughput", [row],
           note="Title-constrained beam search (prompt keys/values shared by a user's beams), timed after one warm-up batch; "
           "'lists valid' counts users whose K items are distinct catalogue items.")


if __name__ == "__main__":
    main()
