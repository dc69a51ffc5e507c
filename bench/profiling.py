"""What the profiling benchmarks share (bench/lm_decode.py ``--profile``, bench/lm_train.py
``--profile-steps``): the device time of ``torch.profiler`` events counted once, and that time
by kind of kernel.

A ``key_averages()`` list holds both the operators (``aten::mm``) and the kernels they launch,
and an operator's row repeats its kernels' device time as its own "self" time. Summing
``self_device_time_total`` over every row therefore counts most kernel time twice; only the rows
of device events (the kernels, with ``device_type`` CUDA) add up to the time the GPU was busy,
which is what the profiler's own table prints as "Self CUDA time total".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch.autograd import DeviceType

KINDS: tuple[tuple[str, str], ...] = (
    ("fused (Triton)", r"^triton_"),
    ("attention", r"sdpa|fmha|flash|attention"),
    ("matrix products", r"nvjet|gemm|cutlass|xmma|cublas|splitk"),
    ("index / gather / scatter", r"index|scatter|gather"),
    ("copy / cat", r"copy|catarray|cat_"),
    ("reductions (sum, max, top-k, sort, norms)", r"reduce|softmax|norm|topk|sort|radix|scan"),
    ("elementwise (aten)", r"elementwise"),
)
"""Kernel kinds, the first whose pattern matches a kernel's name (case-insensitive) wins; a
kernel that matches none is "other"."""


def device_events(events: Iterable[Any]) -> list[Any]:
    """The kernel rows of ``events`` (a ``key_averages()`` list): device events, not operators
    and not user annotations."""
    return [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]


def busy_seconds(events: Iterable[Any], cuda: bool) -> float:
    """Seconds of kernel time in ``events`` (``cuda``), each kernel once; on a CPU the operators'
    own (self) time, which is also counted once."""
    events = list(events)
    if cuda:
        return sum(e.self_device_time_total for e in device_events(events)) / 1e6
    return sum(e.self_cpu_time_total for e in events) / 1e6


def kernel_kind(name: str) -> str:
    """The :data:`KINDS` entry of a kernel name, or ``"other"``."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return kind
    return "other"


def kernel_kinds(events: Iterable[Any]) -> list[tuple[str, float, int]]:
    """``(kind, seconds, kernels launched)`` of the kernels in ``events``, most time first."""
    totals: dict[str, list[float]] = {}
    for event in device_events(events):
        entry = totals.setdefault(kernel_kind(event.key), [0.0, 0])
        entry[0] += event.self_device_time_total / 1e6
        entry[1] += event.count
    return sorted(((k, s, int(n)) for k, (s, n) in totals.items()), key=lambda x: -x[1])


def kinds_report(events: Iterable[Any], per: int = 1, unit: str = "batch") -> str:
    """One line per kernel kind: milliseconds and kernels per ``unit`` (``per`` of them were
    profiled) and the share of all kernel time; empty when ``events`` hold no kernels (a CPU)."""
    kinds = kernel_kinds(events)
    total = sum(s for _, s, _ in kinds)
    return "\n".join(f"  {kind}: {s / per * 1e3:.1f} ms a {unit} ({s / total:.0%}), {n / per:.0f} kernels"
                     for kind, s, n in kinds)


__all__ = ["KINDS", "busy_seconds", "device_events", "kernel_kind", "kernel_kinds", "kinds_report"]
