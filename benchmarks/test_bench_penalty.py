"""One full WGAN-GP discriminator step of ProGAN: D(real), D(fake), gradient penalty, drift,
backward. `pytest benchmarks/test_bench_penalty.py --benchmark-only`.

Case: resolution (GPU: 128 and 256 at official widths, batch 16; CPU: 8 at tiny widths, batch 4)
x dtype (fp32; bf16 autocast) x down-layer order ("official": conv, pool, bias, lrelu; "port":
conv, bias, lrelu, pool, as PyTorch ports write it). Providers, all on the same weights, inputs
and interpolation epsilon:
    eager               plain-torch D (fastgan.models.PlainDiscriminator), the penalty as usually
                        written (autograd.grad(create_graph=True), then the norm)
    compile             torch.compile(plain D) used for every pass, same penalty code: what a user
                        who compiles D gets. fp32: torch raises ("does not currently support
                        double backward"); bf16 autocast: it runs and the input gradient has no
                        graph, i.e. the penalty is silently dropped. Recorded as it happens:
                        "skipped" with the error, or "mismatch" with the dropped gradient.
    compile_workaround  the best a user can do today: compiled plain D for D(real)/D(fake), the
                        eager plain D for the penalty pass
    triton / cuda       fastgan: models.progan.Discriminator + fastgan.penalties.gradient_penalty
                        and drift_penalty, with that backend (cuda: skipped unless the extension
                        is built and has the kernels); NCHW
    triton_cl / cuda_cl the same, model and images channels_last
    triton_compile      fastgan D compiled for the plain passes; the penalty pass runs its eager
                        original on fastgan kernels (what fastgan.penalties does with compiled D)
Each records (benchmark.extra_info and the --fastgan-records file): ms (median CUDA-event time
of one step, L2 flushed, as fastgan.bench.measure), peak MiB (torch.cuda.max_memory_allocated over
one step, weights and inputs included), the relative error ||grad - grad64|| / ||grad64|| of the
concatenated parameter gradients and of the loss against an fp64 eager run on the same weights
(TF32 mode as the process has it: recorded in "tf32"), and what happened ("status"/"reason").
A fastgan provider fails when its gradient error exceeds 10x eager's (and 1e-2): the error itself
is the thing to read, since TF32 and bf16 make every path approximate (docs/baselines.md).

On CPU only "eager" runs, at the tiny resolution, timed with perf_counter by pytest-benchmark;
every other provider is skipped with the reason (timed on a GPU only), and the module's summary
says so. Options (benchmarks/conftest.py): --fastgan-quick or --fastgan-largest (GPU: 256 px only,
official order: the fp32 and bf16 rows scripts/gpu_check.py runs),
--fastgan-dtypes=fp32,bf16, --fastgan-providers (names above; "compile" also selects
compile_workaround and triton_compile), --fastgan-records=PATH.
"""

from __future__ import annotations

import contextlib
import math
import time

import pytest
import torch

import fastgan
import fastgan.penalties as P
from fastgan.bench.cases import SHORT, parse_dtypes
from fastgan.bench.providers import provider_status
from fastgan.bench.timing import cuda_sync_timer, measure
from fastgan.models import Discriminator, PlainDiscriminator

from .conftest import record, shape_set, summarize_at_end

OP = "d_step_gp"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# In the order they run (per resolution and layer order, each for every dtype): eager first (the
# others' gradient error is judged against it), then fastgan and the best workaround without it,
# so that a run cut short has the comparison that matters; the compiled variants last.
PROVIDERS = ("eager", "triton", "cuda", "compile_workaround", "triton_cl", "cuda_cl",
             "triton_compile", "compile")
GPU_RES, GPU_RES_QUICK, CPU_RES = (128, 256), (256,), (8,)
GPU_WIDTHS, CPU_WIDTHS = dict(fmap_base=8192, fmap_max=512), dict(fmap_base=64, fmap_max=16)
GP_WEIGHT, DRIFT = 10.0, 1e-3

_RESULTS: list[dict] = []
_FP64: dict = {}  # (res, order) -> (loss, grads) of the fp64 eager step


def _selected_providers(config) -> list[str]:
    names = {s.strip() for s in config.getoption("--fastgan-providers").split(",") if s.strip()}
    out = []
    for p in PROVIDERS:
        base = p.split("_")[0]
        if p in names or base in names or (p.endswith("compile") or p == "compile_workaround") \
                and "compile" in names:
            out.append(p)
    return out or ["eager"]


def _dtypes(config) -> list[torch.dtype]:
    if DEVICE == "cpu":
        return [torch.float32]
    text = config.getoption("--fastgan-dtypes")
    return [torch.float32, torch.bfloat16] if text == "auto" else parse_dtypes(text, DEVICE)


def pytest_generate_tests(metafunc):
    if "penalty_case" not in metafunc.fixturenames:
        return
    short = shape_set(metafunc.config) != "all"  # quick or largest: 256 px, official order
    res = CPU_RES if DEVICE == "cpu" else (GPU_RES_QUICK if short else GPU_RES)
    orders = ("official",) if short or DEVICE == "cpu" else ("official", "port")
    params, ids = [], []
    for r in res:
        for order in orders:
            for p in _selected_providers(metafunc.config):
                if order == "port" and p == "compile":
                    continue  # the naive compile's outcome does not depend on the order
                for dt in _dtypes(metafunc.config):
                    params.append(((r, dt, order), p))
                    ids.append(f"{r}-{SHORT[dt]}-{order}-{p}")
    metafunc.parametrize(("penalty_case", "provider"), params, ids=ids)


# ---------------------------------------------------------------------------------------------
# Steps

def _batch(res):
    return 16 if DEVICE == "cuda" else 4


def _inputs(res, n):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(n, 3, res, res, generator=g).clamp_(-1, 1).to(DEVICE)
    fake = torch.randn(n, 3, res, res, generator=g).mul_(0.5).to(DEVICE)
    eps = torch.rand(n, generator=g).to(DEVICE)
    return real, fake, eps


def _state(res, order):
    """One set of D weights per (res, order), shared by every provider."""
    torch.manual_seed(0)
    widths = GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS
    with torch.device("cpu"):
        return PlainDiscriminator(res, down_order=order, **widths).state_dict()


def _eager_penalty(d, real, fake, eps):
    e = eps.view(-1, 1, 1, 1).to(real.dtype)
    x = (e * real + (1 - e) * fake).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return GP_WEIGHT * (g.flatten(1).norm(dim=1) - 1.0).square().mean()


def _loss(rs, fs, gp):
    rs, fs = rs.float(), fs.float()
    return fs.mean() - rs.mean() + gp + DRIFT * rs.square().mean()


def _make(provider, res, order, dtype):
    """(step, params, info): step() runs one D step (zeroing grads first) and returns the loss."""
    widths = GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS
    state = _state(res, order)
    real, fake, eps = _inputs(res, _batch(res))
    amp = dtype == torch.bfloat16
    info = {"memory_format": "nchw", "backend": None}
    fast = provider.startswith(("triton", "cuda"))
    cls = Discriminator if fast else PlainDiscriminator
    d = cls(res, down_order=order, **widths)
    d.load_state_dict(state)
    d = d.to(DEVICE)
    if provider.endswith("_cl"):
        d = d.to(memory_format=torch.channels_last)
        real = real.contiguous(memory_format=torch.channels_last)
        fake = fake.contiguous(memory_format=torch.channels_last)
        info["memory_format"] = "channels_last"
    params = list(d.parameters())
    scope = contextlib.nullcontext
    if fast:
        backend = provider.split("_")[0]
        scope = lambda: fastgan.use_backend(backend)  # noqa: E731
        info["backend"] = backend
        plain_pass = torch.compile(d) if provider == "triton_compile" else d

        def penalty():
            return P.gradient_penalty(plain_pass, real, fake, weight=GP_WEIGHT, epsilon=eps)
    elif provider == "eager":
        plain_pass = d

        def penalty():
            return _eager_penalty(d, real, fake, eps)
    elif provider == "compile":
        plain_pass = torch.compile(d)

        def penalty():
            return _eager_penalty(plain_pass, real, fake, eps)
    else:  # compile_workaround
        plain_pass = torch.compile(d)

        def penalty():
            return _eager_penalty(d, real, fake, eps)

    def step():
        for p in params:
            p.grad = None
        with scope(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            rs, fs = plain_pass(real), plain_pass(fake)
            loss = _loss(rs, fs, penalty())
            loss.backward()
        return loss.detach()

    def probe_dropped():
        """Whether the input gradient of the penalty pass comes back without a graph."""
        x = real.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            (g,) = torch.autograd.grad(plain_pass(x).sum(), x, create_graph=True)
        return g.grad_fn is None

    return step, params, info, probe_dropped


def _fp64_reference(res, order):
    key = (res, order)
    if key not in _FP64:
        _FP64.clear()  # one held at a time
        widths = GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS
        d = PlainDiscriminator(res, down_order=order, **widths)
        d.load_state_dict(_state(res, order))
        d = d.to(DEVICE, torch.float64)
        real, fake, eps = (t.double() for t in _inputs(res, _batch(res)))
        loss = _loss(d(real), d(fake), _eager_penalty(d, real, fake, eps))
        loss.backward()
        _FP64[key] = (loss.detach(), _flat_grads(d.parameters()))
        del d
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return _FP64[key]


def _flat_grads(params):
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).detach().double()
                      .flatten() for p in params])


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _skip_reason(provider) -> str | None:
    if DEVICE != "cuda":
        if provider == "eager":
            return None
        return ("no CUDA GPU present (torch.cuda.is_available() is False): torch.compile and "
                "fastgan's kernels are timed on a GPU only")
    if provider.startswith("cuda"):
        ok, why = provider_status("cuda", DEVICE)
        if not ok:
            return why
        from fastgan import _backend

        if not _backend.has_cuda_kernels("grad_penalty"):
            return "the CUDA extension has no grad_penalty kernels yet"
    if provider.startswith("triton"):
        ok, why = provider_status("triton", DEVICE)
        if not ok:
            return why
    return None


# ---------------------------------------------------------------------------------------------

def test_d_step_gradient_penalty(benchmark, penalty_case, provider, request):
    res, dtype, order = penalty_case
    n = _batch(res)
    rec = {"op": OP, "shape": [n, 3, res, res], "dtype": SHORT[dtype],
           "pass": f"D step, {order} order", "provider": provider, "device": DEVICE,
           "status": "ok", "min_bytes": 0,
           "byte_model": "compute-bound (convolutions and their double backward): no byte floor",
           "test": request.node.nodeid,
           "tf32": bool(torch.backends.cudnn.allow_tf32) if DEVICE == "cuda" else None}
    benchmark.group = f"D step + GP {res}px {SHORT[dtype]} {order}"

    def skip(reason):
        rec.update(status="skipped", reason=reason)
        record(rec, request.config, _RESULTS)
        pytest.skip(reason)

    why = _skip_reason(provider)
    if why:
        skip(why)
    if provider in ("compile", "compile_workaround", "triton_compile"):
        torch._dynamo.reset()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    ref_loss, ref_grads = _fp64_reference(res, order)
    step, params, info, probe_dropped = _make(provider, res, order, dtype)
    rec.update(info)
    t0 = time.perf_counter()
    try:
        loss = step()  # compiles where there is something to compile
    except Exception as err:
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        if provider == "compile":  # the baseline's outcome, not fastgan's failure
            skip(f"torch.compile(D) with the gradient penalty raises: {msg}")
        rec.update(status="error", reason=msg)
        record(rec, request.config, _RESULTS)
        raise
    rec["first_call_s"] = time.perf_counter() - t0
    rec["loss_rel_err"] = _rel(loss, ref_loss)
    rec["grad_rel_err"] = _rel(_flat_grads(params), ref_grads)
    if provider == "compile" and probe_dropped():
        rec.update(status="mismatch", penalty_dropped=True,
                   reason="runs, but the input gradient has no graph: the penalty's gradient is "
                          "silently dropped")
    eager_err = next((r["grad_rel_err"] for r in _RESULTS if r["provider"] == "eager"
                      and r["shape"] == rec["shape"] and r["dtype"] == rec["dtype"]
                      and r["pass"] == rec["pass"] and "grad_rel_err" in r), None)
    failure = None
    if provider not in ("eager", "compile"):
        if not math.isfinite(rec["grad_rel_err"]):
            failure = f"non-finite gradients ({rec['grad_rel_err']})"
        elif eager_err is not None and rec["grad_rel_err"] > max(10 * eager_err, 1e-2):
            failure = (f"gradient error {rec['grad_rel_err']:.2e} vs fp64 is over 10x eager's "
                       f"({eager_err:.2e})")
        if failure:
            rec.update(status="mismatch", reason=failure)

    if DEVICE == "cuda":
        timing = measure(step, DEVICE, warmup_ms=200.0, rep_ms=1000.0)
        rec.update(timing.as_dict())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        rec["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        benchmark._timer = cuda_sync_timer
        rounds = max(3, min(20, int(1.0 / max(rec["ms"] * 1e-3, 1e-4))))
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
        st = benchmark.stats.stats if benchmark.stats is not None else None
        if st is not None:
            rec.update(ms=st.median * 1e3, ms_min=st.min * 1e3, reps=5,
                       timer="perf_counter (pytest-benchmark median)")
    benchmark.extra_info.update({k: rec[k] for k in (
        "op", "shape", "dtype", "pass", "provider", "device", "status", "memory_format",
        "backend", "tf32", "loss_rel_err", "grad_rel_err", "first_call_s") if k in rec})
    for k in ("ms", "peak_mib", "reason", "penalty_dropped"):
        if k in rec:
            benchmark.extra_info[k] = rec[k]
    record(rec, request.config, _RESULTS)
    if failure:
        pytest.fail(failure)


def _write_summary(tr):
    tr.write_sep("=", "fastgan: D step with gradient penalty")
    if DEVICE == "cpu":
        tr.write_line("device: CPU, no CUDA GPU present: eager only, tiny widths (indicative only);"
                      " SKIPPED providers: " + ", ".join(p for p in PROVIDERS if p != "eager")
                      + " (timed on a GPU only)")
    else:
        tr.write_line(f"device: {torch.cuda.get_device_name(0)}; cuDNN TF32 "
                      f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; ms = median "
                      "CUDA-event time of one step; err = param-grad error vs fp64")
    eager_ms = {(r["shape"][2], r["dtype"], r["pass"]): r["ms"] for r in _RESULTS
                if r["provider"] == "eager" and "ms" in r}
    for r in _RESULTS:
        key = (r["shape"][2], r["dtype"], r["pass"])
        head = f"{r['shape'][2]:>4}px {r['dtype']} {r['pass']:<22} {r['provider']:<19}"
        if "ms" not in r:
            tr.write_line(f"{head} {r['status']}: {r.get('reason', '')}")
            continue
        speed = f"{eager_ms[key] / r['ms']:5.2f}x eager" if key in eager_ms else ""
        mem = f"{r['peak_mib']:7.0f} MiB" if "peak_mib" in r else ""
        note = f"  [{r['status']}: {r.get('reason', '')}]" if r["status"] != "ok" else ""
        tr.write_line(f"{head} {r['ms']:8.2f} ms {speed} {mem} err {r['grad_rel_err']:.1e}{note}")


summarize_at_end(_RESULTS, _write_summary)
