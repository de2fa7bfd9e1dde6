"""`python -m fastgan.bench`: every fastgan op, reference against each available backend.

Prints one row per (op, shape, dtype, pass) and one column group per provider:

    eager     the op's plain-torch reference, `fastgan.ops.<op>.<op>_ref` (what users run today)
    compile   `torch.compile(reference, fullgraph=True, dynamic=False)`, default mode (GPU only)
    triton    `fastgan.functional.<op>` with backend "triton" (GPU only: the Triton interpreter
              that runs the kernels on CPU in the tests is far too slow to mean anything here)
    cuda      `fastgan.functional.<op>` with backend "cuda" (GPU only, extension already built)

with the time in ms, the achieved bandwidth in GB/s and speedups ("x eager", "x compile"; above 1
means faster). Passes: "fwd" (y = f(x), inputs need no grad) and "fwdbwd" (y = f(x), then
`torch.autograd.grad(y, inputs, dy)` for a fixed random dy; inputs are x, and for bias_act also b).
Before timing, each non-eager provider's outputs (and gradients) are compared with eager's;
a mismatch is reported, never hidden.

Timing (`measure`): on a GPU, every call is bracketed by CUDA events, the L2 cache is flushed
(a 256 MiB buffer is zeroed) before each call, and the median over the repeats is reported; this is
the method of `triton.testing.do_bench`, used for docs/baselines.md. On CPU, `time.perf_counter` around
each call, median of the repeats. Warm-up calls (which also trigger any compilation) come first.

Minimum bytes moved (GB/s = those bytes / median time; 1 GB = 1e9 bytes), with |t| the size
in bytes of a tensor t:
    pixel_norm       fwd: |x| read + |y| write = 2|x|;  fwdbwd: 2|x| + bwd (read x, dy; write dx) = 5|x|
    bias_act         fwd: 2|x| + |b|;  fwdbwd: 5|x| + 3|b|  (b read by fwd and bwd, db written)
    minibatch_stddev fwd: |x| read + |y| write, |y| = |x| (C+F)/C;
                     fwdbwd: fwd + bwd (read dy = |y|, read x, write dx = |x|) = 3|x| + 2|y|
    grad_penalty     fwd: |g| read (p and the norms are N floats);  fwdbwd: 3|g| (+ read g, write dg)
Intermediate tensors an unfused implementation writes and reads back are not counted: that is the
point of fusing.

Options: --device {auto,cpu,cuda}, --dtype (float32, bfloat16, float16, a comma list, or auto:
float32 on CPU, float32,bfloat16 on GPU), --quick (fewer shapes and repeats), --json PATH,
--ops, --providers, --passes, --no-flush. Exit status 1 when a triton or cuda provider raised or
disagreed with eager. On CPU the command restarts itself once with OMP_WAIT_POLICY=PASSIVE (unless
set): spinning OpenMP threads made small-op timings erratic on small VMs. CPU numbers are
indicative only. The benchmark suite (`pytest benchmarks/ --benchmark-only`) and
`scripts/gpu_check.py` use the same cases, byte model and timer.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

PROVIDERS = ("eager", "compile", "triton", "cuda")
PASSES = ("fwd", "fwdbwd")
OPS = ("pixel_norm", "minibatch_stddev", "bias_act", "grad_penalty")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
FROM_SHORT = {v: k for k, v in SHORT.items()}

SQRT2 = math.sqrt(2.0)
L2_FLUSH_BYTES = 256 * 2**20  # well above the 50 MiB L2 of an H100 / H200


# ---------------------------------------------------------------------------------------------
# Ops: inputs, calls, byte model


class OpSpec:
    """How to build inputs for an op, call its reference and its public function, and count bytes."""

    name: str
    byte_model: str

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape)

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype

    def make_inputs(self, shape, dtype, device, requires_grad: bool, seed: int = 0):
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        x = torch.randn(tuple(shape), dtype=dtype, device=device, generator=g)
        return [x.requires_grad_(requires_grad)]

    def ref_fn(self) -> Callable:
        """The op's reference; LookupError when the op (module or function) is not there yet."""
        modname = f"fastgan.ops.{self.name}"
        if importlib.util.find_spec(modname) is None:
            raise LookupError(f"{modname} does not exist yet")
        ref = getattr(importlib.import_module(modname), f"{self.name}_ref", None)
        if ref is None:
            raise LookupError(f"{modname} has no {self.name}_ref yet")
        return ref

    def ff_fn(self) -> Callable:
        import fastgan.functional as FF

        fn = getattr(FF, self.name, None)
        if fn is None:
            raise LookupError(f"fastgan.functional has no {self.name} yet")
        return fn

    def call_ref(self, ref, inputs):  # pragma: no cover - overridden
        raise NotImplementedError

    def call_ff(self, ff, inputs):  # pragma: no cover - overridden
        raise NotImplementedError

    def min_bytes(self, shape, itemsize: int, pass_: str) -> int:  # pragma: no cover
        raise NotImplementedError


class PixelNormSpec(OpSpec):
    name = "pixel_norm"
    byte_model = "fwd 2|x| (read x, write y); fwdbwd 5|x| (+ read x, dy; write dx)"
    eps = 1e-8

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.eps, 1)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], eps=self.eps, dim=1)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        return 2 * n if pass_ == "fwd" else 5 * n


class BiasActSpec(OpSpec):
    name = "bias_act"
    byte_model = "fwd 2|x| + |b|; fwdbwd 5|x| + 3|b| (x, dy read, dx written; b read twice, db written)"
    act, alpha, gain = "lrelu", 0.2, SQRT2

    def make_inputs(self, shape, dtype, device, requires_grad, seed=0):
        (x,) = super().make_inputs(shape, dtype, device, requires_grad, seed)
        g = torch.Generator(device=device)
        g.manual_seed(seed + 1)
        b = torch.randn((shape[1],), dtype=dtype, device=device, generator=g)
        return [x, b.requires_grad_(requires_grad)]

    def call_ref(self, ref, inputs):
        x, b = inputs
        return ref(x, b, self.act, self.alpha, self.gain, 1)

    def call_ff(self, ff, inputs):
        x, b = inputs
        return ff(x, b, act=self.act, alpha=self.alpha, gain=self.gain, dim=1)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        c = shape[1] * itemsize
        return 2 * n + c if pass_ == "fwd" else 5 * n + 3 * c


class MinibatchStddevSpec(OpSpec):
    name = "minibatch_stddev"
    byte_model = "fwd |x| + |y| (y = [N, C+F, H, W]); fwdbwd 3|x| + 2|y| (+ read dy, x; write dx)"
    group_size, num_features, eps, layout, unbiased = 4, 1, 1e-8, "strided", False

    def out_shape(self, shape):
        n, c, *rest = shape
        return (n, c + self.num_features, *rest)

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.group_size, self.num_features, self.eps, self.layout,
                   self.unbiased)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], group_size=self.group_size, num_features=self.num_features,
                  eps=self.eps, layout=self.layout, unbiased=self.unbiased)

    def min_bytes(self, shape, itemsize, pass_):
        nx = math.prod(shape) * itemsize
        ny = math.prod(self.out_shape(shape)) * itemsize
        return nx + ny if pass_ == "fwd" else 3 * nx + 2 * ny


class GradPenaltySpec(OpSpec):
    name = "grad_penalty"
    byte_model = "fwd |g| (read g; p is N floats); fwdbwd 3|g| (+ read g, write dg)"
    weight, target, mode = 10.0, 1.0, "gp"

    def out_shape(self, shape):
        return (shape[0],)

    def out_dtype(self, dtype):
        return torch.float64 if dtype == torch.float64 else torch.float32

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.weight, self.target, self.mode)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], self.weight, self.target, self.mode)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        return n if pass_ == "fwd" else 3 * n


SPECS: dict[str, OpSpec] = {s.name: s for s in (PixelNormSpec(), MinibatchStddevSpec(),
                                                 BiasActSpec(), GradPenaltySpec())}


# ---------------------------------------------------------------------------------------------
# Cases

# Activation shapes of ProGAN training at batch 16: 512 channels at 4..32 px, then 256 at 64,
# 128 at 128, 64 at 256.
GPU_ACT_SHAPES = [(16, 512, r, r) for r in (4, 8, 16, 32)] + [
    (16, 256, 64, 64), (16, 128, 128, 128), (16, 64, 256, 256)]
GPU_ACT_SHAPES_QUICK = [(16, 512, 32, 32), (16, 128, 128, 128), (16, 64, 256, 256)]
GPU_MBSTD_SHAPES = [(16, 512, 4, 4), (128, 512, 4, 4)]
# The gradient a penalty reduces has the images' shape: batch 16 of RGB at 128 and 256 px.
GPU_GRAD_SHAPES = [(16, 3, 128, 128), (16, 3, 256, 256)]
CPU_GRAD_SHAPES = [(16, 3, 64, 64)]
# CPU: small, so that a 2-core machine finishes in seconds.
CPU_ACT_SHAPES = [(8, 64, 16, 16), (4, 32, 64, 64)]
CPU_ACT_SHAPES_QUICK = [(4, 32, 64, 64)]
CPU_MBSTD_SHAPES = [(16, 128, 4, 4)]


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    pass_: str

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    @property
    def id(self) -> str:
        return f"{self.op}-{'x'.join(map(str, self.shape))}-{SHORT[self.dtype]}-{self.pass_}"

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    def min_bytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.spec.min_bytes(self.shape, itemsize, self.pass_)


def shapes_for(op: str, device: str, quick: bool) -> list[tuple[int, ...]]:
    gpu = device == "cuda"
    if op == "minibatch_stddev":
        return GPU_MBSTD_SHAPES if gpu else CPU_MBSTD_SHAPES
    if op == "grad_penalty":
        return GPU_GRAD_SHAPES if gpu else CPU_GRAD_SHAPES
    if gpu:
        return GPU_ACT_SHAPES_QUICK if quick else GPU_ACT_SHAPES
    return CPU_ACT_SHAPES_QUICK if quick else CPU_ACT_SHAPES


def default_dtypes(device: str) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]


def make_cases(ops: Sequence[str], device: str, dtypes: Sequence[torch.dtype], quick: bool,
               passes: Sequence[str] = PASSES) -> list[Case]:
    return [Case(op, tuple(shape), dtype, p)
            for op in ops for shape in shapes_for(op, device, quick)
            for dtype in dtypes for p in passes]


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    method: str

    def as_dict(self) -> dict[str, Any]:
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
    Repeats are chosen from a first estimate so that warm-up lasts about `warmup_ms` and the
    timed repeats about `rep_ms` (clamped to [min_reps, max_reps])."""
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


# ---------------------------------------------------------------------------------------------
# Providers


def provider_status(provider: str, device: str) -> tuple[bool, str]:
    """(runs here, why not / how): never compiles or builds anything."""
    if provider == "eager":
        return True, "plain-torch reference"
    if device != "cuda":
        why = {
            "compile": "torch.compile is timed on a GPU only",
            "triton": "Triton kernels are timed on a GPU only (on CPU they run in the Triton "
                      "interpreter: a correctness tool, not a timing)",
            "cuda": "the CUDA extension needs a GPU",
        }[provider]
        return False, f"no CUDA GPU present (torch.cuda.is_available() is False): {why}"
    if provider == "compile":
        return True, "torch.compile(reference, fullgraph=True, dynamic=False)"
    if provider == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return False, "TRITON_INTERPRET is set: Triton would run in its interpreter, not timed"
    try:
        import fastgan

        ok, why = fastgan.available_backends()[provider]
    except Exception as err:  # the registry itself failing is a result too
        return False, f"fastgan.available_backends() failed: {type(err).__name__}: {err}"
    # "cuda" is ok only when the extension is loaded or loadable without compiling
    # (fastgan._ext.status()): benchmarks never start a multi-minute nvcc build;
    # `python -m fastgan.build` (or scripts/gpu_check.py) does that first.
    return bool(ok), why


@contextlib.contextmanager
def backend_scope(name: str):
    """Process-wide and thread-local backend `name` for the block (autograd runs backward on
    other threads), restoring what was there."""
    import fastgan

    previous = fastgan.get_backend()
    fastgan.set_backend(name)
    try:
        with fastgan.use_backend(name):
            yield
    finally:
        fastgan.set_backend(previous)


def build_call(case: Case, provider: str, inputs: list[torch.Tensor]) -> Callable[[], Any]:
    """A zero-argument function computing `case.op` with `provider` on `inputs` (forward only).
    Raises LookupError when the op is not there yet."""
    spec = case.spec
    if provider in ("eager", "compile"):
        ref = spec.ref_fn()

        def f(*ins):
            return spec.call_ref(ref, ins)

        if provider == "compile":
            import torch._dynamo

            torch._dynamo.reset()  # fresh caches: no recompile limit, no stale graph
            f = torch.compile(f, fullgraph=True, dynamic=False)
        return lambda: f(*inputs)
    import fastgan

    ff = spec.ff_fn()

    def g():
        with fastgan.use_backend(provider):
            return spec.call_ff(ff, inputs)

    return g


def make_step(case: Case, provider: str, device: str, seed: int = 0):
    """(step, check): `step()` runs one timed iteration of the case; `check()` returns the tensors
    to compare across providers (output, and gradients for fwdbwd)."""
    spec = case.spec
    grad = case.pass_ == "fwdbwd"
    inputs = spec.make_inputs(case.shape, case.dtype, device, grad, seed)
    call = build_call(case, provider, inputs)
    if not grad:
        return call, lambda: [call()]
    g = torch.Generator(device=device)
    g.manual_seed(seed + 7)
    dy = torch.randn(spec.out_shape(case.shape), dtype=spec.out_dtype(case.dtype), device=device,
                     generator=g)

    def step():
        y = call()
        return torch.autograd.grad(y, inputs, dy)

    def check():
        y = call()
        return [y.detach(), *torch.autograd.grad(y, inputs, dy)]

    return step, check


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol-of-max) for comparing a provider with eager in the benchmarks (a sanity check;
    the tests hold the tight tolerances)."""
    return (1e-4, 1e-4) if dtype in (torch.float32, torch.float64) else (3e-2, 3e-2)


def compare(got: list[torch.Tensor], want: list[torch.Tensor], dtype) -> tuple[bool, float, str]:
    atol, rtol = tolerance(dtype)
    worst, ok, what = 0.0, True, ""
    names = ["y", "dx", "db"]
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            return False, float("inf"), f"{names[i]} shape {tuple(a.shape)} != {tuple(b.shape)}"
        a32, b32 = a.detach().float(), b.detach().float()
        err = (a32 - b32).abs().max().item() if a32.numel() else 0.0
        scale = b32.abs().max().item() if b32.numel() else 0.0
        if not math.isfinite(err) or err > atol + rtol * scale:
            ok, what = False, f"{names[i]}: max abs err {err:.3g} (max |ref| {scale:.3g})"
        worst = max(worst, err) if math.isfinite(err) else float("inf")
    return ok, worst, what


def run_case(case: Case, provider: str, device: str, *, quick: bool = False, flush_l2: bool = True,
             reference: list[torch.Tensor] | None = None) -> tuple[dict[str, Any], list | None]:
    """Time one (case, provider). Returns (record, outputs): the record is JSON-able; outputs (of
    eager) serve as the reference for the other providers."""
    rec = base_record(case, provider, device)
    ok, why = provider_status(provider, device)
    if not ok:
        rec.update(status="skipped", reason=why)
        return rec, None
    try:
        with backend_scope(provider) if provider in ("triton", "cuda") else contextlib.nullcontext():
            step, check = make_step(case, provider, device)
            outs = [t.detach() for t in check()]
            if reference is not None and provider != "eager":
                good, err, what = compare(outs, reference, case.dtype)
                rec["max_abs_err"] = err
                if not good:
                    rec.update(status="mismatch", reason=f"differs from eager: {what}")
            timing = measure(step, device, flush_l2=flush_l2,
                             rep_ms=40.0 if quick else 100.0, warmup_ms=10.0 if quick else 25.0,
                             max_reps=200 if device == "cpu" else 1000,
                             min_reps=3 if device == "cpu" else 5)
    except LookupError as err:
        rec.update(status="skipped", reason=str(err))
        return rec, None
    except Exception as err:  # noqa: BLE001 - a failing provider is a result, not a crash
        rec.update(status="error", reason=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300])
        return rec, None
    rec.update(timing.as_dict())
    rec["gbps"] = rec["min_bytes"] / (timing.median_ms * 1e-3) / 1e9
    return rec, outs


def base_record(case: Case, provider: str, device: str) -> dict[str, Any]:
    return {"op": case.op, "shape": list(case.shape), "dtype": SHORT[case.dtype],
            "pass": case.pass_, "provider": provider, "device": device, "status": "ok",
            "min_bytes": case.min_bytes(), "byte_model": case.spec.byte_model}


# ---------------------------------------------------------------------------------------------
# Environment and report


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": device,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        import fastgan

        info["fastgan"] = fastgan.__version__
    except Exception as err:
        info["fastgan"] = f"import failed: {err}"
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_threads"] = torch.get_num_threads()
    info["tf32"] = {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    return info


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}"


def _cell(rec: dict | None) -> tuple[str, str]:
    if rec is None:
        return "-", "-"
    if rec["status"] in ("skipped", "error"):
        return rec["status"], ""
    flag = "!" if rec["status"] == "mismatch" else ""
    return _fmt_ms(rec["ms"]) + flag, f"{rec['gbps']:.0f}" if rec["gbps"] >= 10 else f"{rec['gbps']:.2f}"


def format_table(records: list[dict[str, Any]], providers: Sequence[str] | None = None) -> str:
    """Side-by-side text table: a row per (op, shape, dtype, pass), columns per provider."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        key = (r["op"], tuple(r["shape"]), r["dtype"], r["pass"])
        rows.setdefault(key, {})[r["provider"]] = r
    if providers is None:
        providers = [p for p in PROVIDERS if any(
            p in row and row[p]["status"] != "skipped" for row in rows.values())] or ["eager"]
    header = ["op", "shape", "dtype", "pass"]
    for p in providers:
        header += [f"{p} ms", "GB/s"]
        if p != "eager":
            header.append("x eager")
        if p in ("triton", "cuda") and "compile" in providers:
            header.append("x compile")
    lines = [header]
    notes: list[str] = []
    for (op, shape, dtype, pass_), row in rows.items():
        line = [op, "x".join(map(str, shape)), dtype, pass_]
        base = {b: row[b]["ms"] for b in ("eager", "compile")
                if b in row and row[b]["status"] in ("ok", "mismatch")}
        for p in providers:
            rec = row.get(p)
            ms, gb = _cell(rec)
            line += [ms, gb]
            timed = rec is not None and rec["status"] in ("ok", "mismatch")
            if p != "eager":
                line.append(f"{base['eager'] / rec['ms']:.2f}x" if timed and "eager" in base else "-")
            if p in ("triton", "cuda") and "compile" in providers:
                line.append(f"{base['compile'] / rec['ms']:.2f}x" if timed and "compile" in base else "-")
            if rec is not None and rec["status"] in ("error", "mismatch"):
                notes.append(f"{op} {'x'.join(map(str, shape))} {dtype} {pass_} {p}: "
                             f"{rec['status']}: {rec.get('reason', '')}")
        lines.append(line)
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(header))]
    out = []
    for n, l in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(l, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    if notes:
        out.append("")
        out += ["! " + n for n in notes]
    return "\n".join(out)


def unavailable_lines(device: str, providers: Sequence[str] = PROVIDERS) -> list[str]:
    lines = []
    for p in providers:
        ok, why = provider_status(p, device)
        if not ok:
            lines.append(f"  {p}: not timed: {why}")
    return lines


def backend_lines() -> list[str]:
    try:
        import fastgan

        avail = fastgan.available_backends()
    except Exception as err:
        return [f"  fastgan.available_backends() failed: {type(err).__name__}: {err}"]
    return [f"  {name}: {'available' if ok else 'unavailable'}: {why}" for name, (ok, why) in avail.items()]


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_dtypes(text: str, device: str) -> list[torch.dtype]:
    if text == "auto":
        return default_dtypes(device)
    out = []
    for part in text.split(","):
        part = part.strip()
        dt = DTYPES.get(part) or FROM_SHORT.get(part)
        if dt is None:
            raise SystemExit(f"--dtype: unknown dtype {part!r} (choose from {', '.join(DTYPES)})")
        out.append(dt)
    return out


def _parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad} (choose from {', '.join(allowed)})")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fastgan.bench",
        description="Time every fastgan op: plain-torch reference (eager), torch.compile of it, "
                    "and each available fastgan backend, side by side (ms, GB/s, speedups).")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: cuda when a GPU is visible, else cpu")
    ap.add_argument("--dtype", default="auto",
                    help="float32, bfloat16, float16, or a comma list; auto: float32 on CPU, "
                         "float32,bfloat16 on GPU")
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    ap.add_argument("--json", metavar="PATH", help="also write environment and results as JSON")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {', '.join(OPS)}")
    ap.add_argument("--providers", default=",".join(PROVIDERS),
                    help=f"comma list from {', '.join(PROVIDERS)}")
    ap.add_argument("--passes", default=",".join(PASSES), help="fwd, fwdbwd or both")
    ap.add_argument("--no-flush", action="store_true",
                    help="GPU: do not flush the L2 cache before each timed call")
    args = ap.parse_args(argv)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and "OMP_WAIT_POLICY" not in os.environ and argv is None:
        # OpenMP worker threads that spin between parallel regions (libgomp's default) made
        # small-op CPU timings erratic on small VMs (medians off 20x). The policy is read when
        # torch loads OpenMP, so restart once with it set.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "fastgan.bench", *sys.argv[1:]])
    if device == "cuda" and not torch.cuda.is_available():
        print("fastgan.bench: --device cuda, but no CUDA GPU is visible "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    dtypes = _parse_dtypes(args.dtype, device)
    ops = _parse_list(args.ops, OPS, "--ops")
    providers = _parse_list(args.providers, PROVIDERS, "--providers")
    if "eager" not in providers:
        providers.insert(0, "eager")  # the baseline every ratio is against
    passes = _parse_list(args.passes, PASSES, "--passes")

    env = environment(device)
    where = env.get("gpu") or f"CPU ({env.get('cpu')}, {env.get('cpu_threads')} threads)"
    timer = ("CUDA events, L2 flushed before each call" if not args.no_flush else "CUDA events") \
        if device == "cuda" else "perf_counter"
    print(f"fastgan {env.get('fastgan')} bench on {device}: {where}")
    print(f"torch {env['torch']} (CUDA {env['cuda_runtime']}), triton {env['triton']}, "
          f"python {env['python']}; median time per call ({timer})")
    if device == "cpu":
        print(f"CPU threads: {torch.get_num_threads()}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    if device == "cuda":
        print(f"TF32: cudnn.allow_tf32={env['tf32']['cudnn.allow_tf32']}, "
              f"matmul.allow_tf32={env['tf32']['cuda.matmul.allow_tf32']}")
    print("fastgan backends on this machine:")
    for line in backend_lines():
        print(line)
    skipped = unavailable_lines(device, providers)
    if skipped:
        print("providers not timed:")
        for line in skipped:
            print(line)
    print(flush=True)

    cases = make_cases(ops, device, dtypes, args.quick, passes)
    records: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    progress = sys.stderr.isatty()
    for i, case in enumerate(cases):
        if progress:
            print(f"\r[{i + 1}/{len(cases)}] {case.id} ...".ljust(70), end="", file=sys.stderr,
                  flush=True)
        eager_rec, reference = run_case(case, "eager", device, quick=args.quick,
                                        flush_l2=not args.no_flush)
        records.append(eager_rec)
        for p in providers:
            if p == "eager":
                continue
            rec, _ = run_case(case, p, device, quick=args.quick, flush_l2=not args.no_flush,
                              reference=reference)
            records.append(rec)
        if device == "cuda":
            torch.cuda.empty_cache()

    if progress:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    # ops that could not run at all (e.g. not written yet): say so once, not in every row
    missing = {}
    for r in records:
        if r["provider"] == "eager" and r["status"] != "ok":
            missing.setdefault(r["op"], r.get("reason", ""))
    shown = [r for r in records if r["op"] not in missing]
    show_providers = [p for p in providers if any(
        r["provider"] == p and r["status"] != "skipped" for r in shown)] or ["eager"]
    print(format_table(shown, show_providers) if shown else "(no op could be timed)")
    for op, why in missing.items():
        print(f"{op}: not timed: {why}")
    print("\nGB/s = minimum bytes moved / time, with minimum bytes:")
    for spec in SPECS.values():
        if spec.name in ops:
            print(f"  {spec.name}: {spec.byte_model}")
    print("x eager / x compile: that provider's speedup (>1 is faster); '!': output differs "
          "from eager (see the notes under the table).")
    if device == "cpu":
        print("CPU timings are indicative only: fastgan's kernels are for GPUs; run this on a GPU "
              "machine (or scripts/gpu_check.py) for the comparison that matters.")
    print(f"{len(cases)} cases in {time.perf_counter() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "results": records}, fh, indent=1)
        print(f"wrote {args.json}")
    # exit status 1 when a fastgan backend failed or disagreed with eager
    bad = [r for r in records if r["status"] in ("error", "mismatch")
           and r["provider"] in ("triton", "cuda")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
