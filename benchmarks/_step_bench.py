"""What the training-step benchmarks share (test_bench_penalty.py, test_bench_convert.py,
test_bench_train.py; test_bench_layers.py the TF32 switch and CPU timing): case options, the
plain WGAN-GP penalty and D loss, errors against fp64, skip reasons, the timing of one step, and
`run_d_step`, the whole run of one D-step benchmark against its fp64 reference.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import pytest
import torch

from fastgan.bench.cases import SHORT, parse_dtypes
from fastgan.bench.providers import provider_status
from fastgan.bench.timing import cuda_sync_timer, measure

from .conftest import record, shape_set

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GP_WEIGHT, DRIFT = 10.0, 1e-3
D_STEP_BYTE_MODEL = "compute-bound (convolutions and their double backward): no byte floor"
GPU_ONLY = ("no CUDA GPU present (torch.cuda.is_available() is False): torch.compile and "
            "fastgan's kernels are timed on a GPU only")
CPU_TIMER = "perf_counter (pytest-benchmark median)"


def short_run(config) -> bool:
    """Args: pytest config. Returns: whether --fastgan-quick or --fastgan-largest asks for the
    short set (on a GPU: 256 px only)."""
    return shape_set(config) != "all"


def step_resolutions(config) -> tuple[int, ...]:
    """Args: pytest config. Returns: the resolutions to run: GPU 128 and 256 (256 alone in a
    short run), CPU 8."""
    if DEVICE == "cpu":
        return (8,)
    return (256,) if short_run(config) else (128, 256)


def step_dtypes(config) -> list[torch.dtype]:
    """Args: pytest config. Returns: the dtypes to run: fp32 alone on a CPU; on a GPU fp32 and
    bf16 (autocast) unless --fastgan-dtypes names others."""
    if DEVICE == "cpu":
        return [torch.float32]
    text = config.getoption("--fastgan-dtypes")
    return [torch.float32, torch.bfloat16] if text == "auto" else parse_dtypes(text, DEVICE)


def selected_providers(config, providers: tuple[str, ...]) -> list[str]:
    """Args: pytest config; a module's providers in run order. Returns: those --fastgan-providers
    names, by full name or by the part before "_" ("triton" selects triton_cl); "compile"
    selects every provider with "compile" in its name; ["eager"] when none is left."""
    names = {s.strip() for s in config.getoption("--fastgan-providers").split(",") if s.strip()}
    picked = [p for p in providers if p in names or p.split("_")[0] in names
              or ("compile" in p and "compile" in names)]
    return picked or ["eager"]


def batch() -> int:
    """Returns: the batch of a step: 16 on a GPU, 4 on a CPU."""
    return 16 if DEVICE == "cuda" else 4


def plain_penalty(d: Callable, real, fake, eps):
    """The gradient penalty as usually written: autograd.grad(create_graph=True), then the norm.

    Args: d, the discriminator (a callable); real, fake, images; eps, [N] mixing weights.
    Returns: GP_WEIGHT * mean((||dD/dx|| - 1)^2)."""
    e = eps.view(-1, 1, 1, 1).to(real.dtype)
    x = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return GP_WEIGHT * (g.flatten(1).norm(dim=1) - 1.0).square().mean()


def d_loss(rs, fs, gp):
    """Args: D's scores of real and fake images, the penalty. Returns: the WGAN-GP D loss with
    drift, in fp32."""
    rs, fs = rs.float(), fs.float()
    return fs.mean() - rs.mean() + gp + DRIFT * rs.square().mean()


def flat_grads(params) -> torch.Tensor:
    """Args: parameters. Returns: their gradients (zeros where None), fp64, concatenated."""
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).detach().double()
                      .flatten() for p in params])


def rel_err(a, b) -> float:
    """Args: two tensors. Returns: ||a - b|| / ||b|| in fp64."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def skip_reason(provider: str, cpu_providers: tuple[str, ...] = ("eager",),
                cuda_kernels: str | None = "grad_penalty") -> str | None:
    """Args: a provider; those that run on a CPU; the op whose kernels the CUDA extension must
    have for the cuda providers (None: no such check). Returns: why it cannot run here, or None."""
    if DEVICE != "cuda":
        return None if provider in cpu_providers else GPU_ONLY
    for backend in ("triton", "cuda"):
        if provider.startswith(backend):
            ok, why = provider_status(backend, DEVICE)
            if not ok:
                return why
    if provider.startswith("cuda") and cuda_kernels:
        from fastgan import _backend

        if not _backend.has_cuda_kernels(cuda_kernels):
            return f"the CUDA extension has no {cuda_kernels} kernels yet"
    return None


@contextlib.contextmanager
def tf32(enabled: bool):
    """Args: whether cuDNN and matmul may use TF32 inside the block (restored after it)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def time_on_cpu(benchmark, step: Callable, rec: dict, rounds: int) -> None:
    """Time `step` with pytest-benchmark's perf_counter rounds; sets rec's ms, ms_min, reps and
    timer (nothing when the benchmark is disabled).

    Args: pytest-benchmark's fixture; the step; its record; how many rounds."""
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    st = benchmark.stats.stats if benchmark.stats is not None else None
    if st is not None:
        rec.update(ms=st.median * 1e3, ms_min=st.min * 1e3, reps=rounds, timer=CPU_TIMER)


def time_step(benchmark, step: Callable, rec: dict, *, warmup_ms: float, rep_ms: float,
              rounds: int | None = None, cpu_rounds: int = 5) -> None:
    """Time one training step into rec. GPU: median CUDA-event time with the L2 flushed
    (fastgan.bench.measure), peak MiB over one step, then pytest-benchmark's synchronized wall
    clock; CPU: `time_on_cpu`.

    Args: pytest-benchmark's fixture; the step; its record; measure's warm-up and repeat
    milliseconds; pytest-benchmark rounds on a GPU (None: about one second's worth, 3 to 20);
    rounds on a CPU."""
    if DEVICE != "cuda":
        time_on_cpu(benchmark, step, rec, cpu_rounds)
        return
    rec.update(measure(step, DEVICE, warmup_ms=warmup_ms, rep_ms=rep_ms).as_dict())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    rec["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    benchmark._timer = cuda_sync_timer
    if rounds is None:
        rounds = max(3, min(20, int(1.0 / max(rec["ms"] * 1e-3, 1e-4))))
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)


def step_record(request, op: str, n: int, res: int, dtype: torch.dtype, pass_: str,
                provider: str, byte_model: str = D_STEP_BYTE_MODEL) -> dict:
    """Args: the test's request; op name; batch; resolution; dtype; pass; provider; byte model.
    Returns: the record a step benchmark starts from (status "ok", no byte floor)."""
    return {"op": op, "shape": [n, 3, res, res], "dtype": SHORT[dtype], "pass": pass_,
            "provider": provider, "device": DEVICE, "status": "ok", "min_bytes": 0,
            "byte_model": byte_model, "test": request.node.nodeid,
            "tf32": bool(torch.backends.cudnn.allow_tf32) if DEVICE == "cuda" else None}


def skip_recorded(rec: dict, reason: str, config, results: list) -> None:
    """Record `rec` as skipped with `reason`, then skip the test.

    Args: the record; why; pytest config; the module's results."""
    rec.update(status="skipped", reason=reason)
    record(rec, config, results)
    pytest.skip(reason)


_EXTRA_INFO = ("op", "shape", "dtype", "pass", "provider", "device", "status", "memory_format",
               "backend", "tf32", "loss_rel_err", "grad_rel_err", "first_call_s", "ms",
               "peak_mib", "reason", "penalty_dropped")


def run_d_step(benchmark, request, rec: dict, results: list, *, make: Callable,
               reference: Callable, checked: bool) -> None:
    """Run one D-step benchmark: skip where the provider cannot run, the first step (compiling
    where there is something to compile) against the fp64 reference, the dropped-penalty probe of
    the naive compile, the gradient check against eager's error, the timing, the record.

    Args:
        benchmark, request: the test's fixtures; rec: from `step_record`; results: the
            module's records (eager's error is looked up there).
        make: make() -> (step, params, probe_dropped, info): step() runs one D step (grads
            zeroed first) and returns the loss; probe_dropped() says whether the penalty pass's
            input gradient comes back without a graph; info joins the record.
        reference: reference() -> (loss, flat grads) of the fp64 eager step.
        checked: whether this provider fails when its gradient error exceeds 10x eager's (and
            1e-2) or is not finite."""
    provider, config = rec["provider"], request.config
    why = skip_reason(provider)
    if why:
        skip_recorded(rec, why, config, results)
    if "compile" in provider:
        torch._dynamo.reset()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    ref_loss, ref_grads = reference()
    step, params, probe_dropped, info = make()
    rec.update(info)
    t0 = time.perf_counter()
    try:
        loss = step()
    except Exception as err:
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        if provider == "compile":  # the baseline's outcome, not fastgan's failure
            skip_recorded(rec, f"torch.compile(D) with the gradient penalty raises: {msg}",
                          config, results)
        rec.update(status="error", reason=msg)
        record(rec, config, results)
        raise
    rec["first_call_s"] = time.perf_counter() - t0
    rec["loss_rel_err"] = rel_err(loss, ref_loss)
    rec["grad_rel_err"] = rel_err(flat_grads(params), ref_grads)
    if provider == "compile" and probe_dropped():
        rec.update(status="mismatch", penalty_dropped=True,
                   reason="runs, but the input gradient has no graph: the penalty's gradient is "
                          "silently dropped")
    eager_err = next((r["grad_rel_err"] for r in results if r["provider"] == "eager"
                      and r["shape"] == rec["shape"] and r["dtype"] == rec["dtype"]
                      and r["pass"] == rec["pass"] and "grad_rel_err" in r), None)
    failure = None
    if checked:
        if not math.isfinite(rec["grad_rel_err"]):
            failure = f"non-finite gradients ({rec['grad_rel_err']})"
        elif eager_err is not None and rec["grad_rel_err"] > max(10 * eager_err, 1e-2):
            failure = (f"gradient error {rec['grad_rel_err']:.2e} vs fp64 is over 10x eager's "
                       f"({eager_err:.2e})")
        if failure:
            rec.update(status="mismatch", reason=failure)
    time_step(benchmark, step, rec, warmup_ms=200.0, rep_ms=1000.0)
    benchmark.extra_info.update({k: rec[k] for k in _EXTRA_INFO if k in rec})
    record(rec, config, results)
    if failure:
        pytest.fail(failure)
