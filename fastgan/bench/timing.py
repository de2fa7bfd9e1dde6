"""Timing: the median time of one call, the way docs/baselines.md measured.

On a GPU (`measure`), every call is bracketed by CUDA events, the L2 cache is flushed (a 256 MiB
buffer is zeroed) before each call, and the median over the repeats is reported: the method of
`triton.testing.do_bench`. On CPU, `time.perf_counter` around each call, median of the repeats.
Warm-up calls (which also trigger any compilation) come first.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

L2_FLUSH_BYTES = 256 * 2**20  # well above the 50 MiB L2 of an H100 / H200


@dataclass
class Timing:
    """Statistics of the timed calls, in ms, and the timer used ("cuda-events+l2flush", ...)."""

    median_ms: float
    min_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        """Returns: the record fields ms, ms_min, ms_p20, ms_p80, reps, timer."""
        return {"ms": self.median_ms, "ms_min": self.min_ms, "ms_p20": self.p20_ms,
                "ms_p80": self.p80_ms, "reps": self.reps, "timer": self.method}


_flush_buffers: dict[str, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    key = str(device)
    buf = _flush_buffers.get(key)
    if buf is None:
        buf = _flush_buffers[key] = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)
    buf.zero_()


def _quantile(sorted_vals: list[float], q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _summarize(times_ms: list[float], method: str) -> Timing:
    s = sorted(times_ms)
    return Timing(statistics.median(s), s[0], _quantile(s, 0.2), _quantile(s, 0.8), len(s), method)


def measure(fn: Callable[[], Any], device: str | torch.device, *, warmup_ms: float = 25.0,
            rep_ms: float = 100.0, min_reps: int = 5, max_reps: int = 1000,
            flush_l2: bool = True) -> Timing:
    """Median time of one call of `fn()`, in ms.

    CUDA: each call between two CUDA events, L2 flushed before each call (unless flush_l2=False),
    all events read after one final synchronize. CPU: perf_counter around each call.

    Args:
        fn: the call to time (its result is discarded).
        device: where it runs ("cuda" selects the CUDA-event timer).
        warmup_ms, rep_ms: about how long the warm-up and the timed repeats last; the number of
            calls comes from a first estimate, clamped to [min_reps, max_reps].
        flush_l2: CUDA only, zero a 256 MiB buffer before each timed call.
    Returns:
        a Timing."""
    device = torch.device(device)
    if device.type == "cuda":
        fn()  # first call: compilation, autotuning, allocator warm-up
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        est = max(start.elapsed_time(end) / 5, 1e-3)
        n_warm = max(1, int(warmup_ms / est))
        n_rep = max(min_reps, min(max_reps, int(rep_ms / est)))
        for _ in range(n_warm):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
        for i in range(n_rep):
            if flush_l2:
                _flush_l2(device)
            starts[i].record()
            fn()
            ends[i].record()
        torch.cuda.synchronize(device)
        method = "cuda-events" + ("+l2flush" if flush_l2 else "")
        return _summarize([s.elapsed_time(e) for s, e in zip(starts, ends)], method)

    # CPU: the first calls of a new shape are slow (page faults until glibc's malloc stops
    # returning big blocks to the OS, thread pools waking up): warm up for 0.2 s (3..500 calls).
    t_end = time.perf_counter() + 0.2
    est = float("inf")
    for i in range(500):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        est = min(est, (t1 - t0) * 1e3)
        if t1 > t_end and i >= 2:
            break
    est = max(est, 1e-3)
    n_rep = max(min_reps, min(max_reps, int(rep_ms / est)))
    times = []
    for _ in range(n_rep):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _summarize(times, "perf_counter")


def cuda_sync_timer() -> float:
    """perf_counter after torch.cuda.synchronize(): a wall-clock timer for pytest-benchmark that
    waits for queued GPU work, so a timed region ends when its kernels have finished."""
    torch.cuda.synchronize()
    return time.perf_counter()
