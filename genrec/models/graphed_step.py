"""A whole training step (forward, backward, gradient clipping, AdamW) replayed as one CUDA graph.

A small model's eager training step is bound by the host: TIGER 13m issues about 1,300 kernels a
step, and at batch 512 the GPU waits on Python most of the time (docs/benchmarks.md). Captured
once per input shape and replayed, the step costs one launch.

How it fits Lightning: the module turns ``automatic_optimization`` off and, in its training step,
calls ``self.optimizers().step(closure)`` with a closure that replays the graph. The optimizer is
a :class:`GraphedAdamW`, an ordinary ``AdamW`` (checkpoints, learning-rate schedulers and monitors
see nothing different) whose ``step(closure)`` only runs the closure while the update itself
happens inside the graph. Lightning therefore counts steps, calls its hooks and saves the
optimizer state as usual. The learning rate the scheduler sets is copied into a device tensor
before every replay, which the captured fused AdamW reads.

Captures happen lazily, on the first batch of each input shape, after any checkpoint has been
restored (the graph holds the addresses of the weights and of the optimizer state). A new
optimizer state is created by one zero-gradient, zero-learning-rate step and its step count
reset, so weights and moments start as an eager run's would. Dropout works inside the graph (the
CUDA generator advances its offset on every replay).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class GraphedAdamW(torch.optim.AdamW):
    """``AdamW`` whose update can live inside a captured graph (:class:`GraphedTrainStep`).

    While ``replaying`` is set, :meth:`step` runs its closure only (the closure replays the graph,
    which contains the real update); otherwise it is ``AdamW.step``.
    """

    replaying = False

    def step(self, closure: Callable[[], object] | None = None):  # type: ignore[override]
        if self.replaying:
            return closure() if closure is not None else None
        return super().step(closure)


class GraphedTrainStep:
    """Capture and replay ``loss_fn`` + backward + clipping + optimizer step, one graph per shape.

    Args:
        loss_fn: ``loss_fn(*inputs) -> scalar loss``; must not synchronise with the host (no
            ``.item()``, no data-dependent shapes).
        params: the trained parameters (all with ``requires_grad``).
        optimizer: a fused, ``capturable`` :class:`GraphedAdamW` over ``params``.
        max_norm: clip the gradients' global L2 norm to this (``None``: no clipping).
        autocast_dtype: run ``loss_fn`` under CUDA autocast to this dtype (``None``: no autocast).
        warmup: eager forward/backward passes on a side stream before each capture (allocator
            and library warm-up; their gradients are discarded).
    """

    def __init__(
        self,
        loss_fn: Callable[..., Tensor],
        params: Sequence[torch.nn.Parameter],
        optimizer: GraphedAdamW,
        max_norm: float | None = None,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
        warmup: int = 2,
    ) -> None:
        if not isinstance(optimizer, GraphedAdamW):
            raise TypeError(f"GraphedTrainStep needs a GraphedAdamW, got {type(optimizer).__name__}")
        for group in optimizer.param_groups:
            if not (group.get("capturable") and group.get("fused")):
                raise ValueError("GraphedTrainStep needs an optimizer built with fused=True and capturable=True")
        self.loss_fn = loss_fn
        self.params = list(params)
        self.optimizer = optimizer
        self.max_norm = max_norm
        self.autocast_dtype = autocast_dtype
        self.warmup = warmup
        device = self.params[0].device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need parameters on a CUDA device, not {device}")
        self.lr = [torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups]
        self.graphs: dict[tuple[tuple[int, ...], ...], tuple[torch.cuda.CUDAGraph, list[Tensor], Tensor]] = {}

    def __call__(self, *inputs: Tensor) -> Tensor:
        """One training step on ``inputs`` (device tensors of a shape seen before or new).

        Returns:
            the step's loss, a new float32 scalar tensor on the device (no host sync).
        """
        key = tuple(tuple(x.shape) for x in inputs)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs)
        graph, static, loss = self.graphs[key]
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value, non_blocking=True)
        for tensor, group in zip(self.lr, self.optimizer.param_groups, strict=True):
            tensor.fill_(float(group["lr"]))
        graph.replay()
        return loss.detach().clone()

    def _forward_backward(self, static: list[Tensor]) -> Tensor:
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None, cache_enabled=False):
            loss = self.loss_fn(*static)
        loss.backward()
        return loss

    def _capture(self, inputs: Sequence[Tensor]) -> tuple[torch.cuda.CUDAGraph, list[Tensor], Tensor]:
        static = [x.detach().clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._forward_backward(static)
                for p in self.params:
                    p.grad = None
            if not self.optimizer.state:
                self._init_state()
        torch.cuda.current_stream().wait_stream(side)

        # The captured update reads the learning rate from a device tensor (copied in before
        # every replay); the groups get their scheduler-owned floats back after the capture.
        floats = [group["lr"] for group in self.optimizer.param_groups]
        for tensor, group in zip(self.lr, self.optimizer.param_groups, strict=True):
            group["lr"] = tensor
        for p in self.params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # a private memory pool per shape: graphs never share buffers
                loss = self._forward_backward(static)
                if self.max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
                torch.optim.AdamW.step(self.optimizer)
        finally:
            for value, group in zip(floats, self.optimizer.param_groups, strict=True):
                group["lr"] = value
        return graph, static, loss.detach()

    def _init_state(self) -> None:
        """Create the optimizer state as an eager first step would find it: zero moments, step 0,
        weights untouched (a zero-gradient step at learning rate 0, then the counts reset)."""
        saved = [group["lr"] for group in self.optimizer.param_groups]
        for p in self.params:
            p.grad = torch.zeros_like(p)
        for group in self.optimizer.param_groups:
            group["lr"] = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        torch.optim.AdamW.step(self.optimizer)
        for value, group in zip(saved, self.optimizer.param_groups, strict=True):
            group["lr"] = value
        for state in self.optimizer.state.values():
            state["step"].zero_()
        for p in self.params:
            p.grad = None


__all__ = ["GraphedAdamW", "GraphedTrainStep"]
