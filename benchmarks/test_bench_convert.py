"""The WGAN-GP discriminator step of pro_gan_pytorch's own Discriminator (pro-gan-pth 3.4),
unconverted against `fastgan.convert`ed. `pytest benchmarks/test_bench_convert.py --benchmark-only`.

Case: resolution (GPU: 128 and 256 at the port's widths, batch 16; CPU: 8 at tiny widths, batch
4) x dtype (fp32; bf16 autocast). One step = D(real), D(fake), the penalty (weight 10, target 1,
the port's WganGP form, with one fixed interpolation epsilon for every provider), drift 1e-3,
backward; the port's down blocks run in its own order (conv, lrelu, conv, lrelu, avgpool).
Providers, all on the same weights and inputs:
    eager               the port's D as it is; the penalty as the port writes it
                        (autograd.grad(create_graph=True), then the norm)
    compile             torch.compile(D) for every pass: fp32 raises ("does not currently
                        support double backward"); bf16 autocast runs with the penalty's gradient
                        silently dropped. Recorded as it happens ("skipped" with the error, or
                        "mismatch" with the dropped gradient).
    compile_workaround  torch.compile(D) for D(real)/D(fake), the eager D for the penalty pass
    triton / cuda       fastgan.convert(D) with that backend, fastgan.penalties.gradient_penalty
    triton_cl / cuda_cl the same, model and images channels_last (one more line of user code)
Each records ms (median CUDA-event time, L2 flushed), peak MiB, and the relative error of the
parameter gradients and the loss against an fp64 eager step. A converted provider fails when its
gradient error exceeds 10x eager's (and 1e-2). The goals (issue 14, from BASELINES.md's 219.9 ms
fp32 eager at 256 px on an H100): converted >= 2.5x eager in fp32 (<= 88 ms) and >= 3x under
bf16, with no larger gradient error; the summary states each against the run's own eager.

On CPU only "eager" runs, at the tiny resolution (indicative only); every other provider is
skipped with the reason: they are timed on a GPU only. Options as benchmarks/test_bench_penalty.py.
"""

from __future__ import annotations

import contextlib
import math
import time

import pytest
import torch

import fastgan
import fastgan.penalties as P
from fastgan import bench as B

from .conftest import record, summarize_at_end
from .test_bench_penalty import (_dtypes, _eager_penalty, _flat_grads, _loss, _quick, _rel,
                                 _skip_reason, DEVICE, GP_WEIGHT)

pytest.importorskip("pro_gan_pytorch", reason="times pro_gan_pytorch's Discriminator: pip "
                    "install --no-deps pro-gan-pth==3.4")
from pro_gan_pytorch import networks as PN  # noqa: E402

OP = "progan_pth_d_step_gp"
PROVIDERS = ("eager", "compile", "compile_workaround", "triton", "triton_cl", "cuda", "cuda_cl")
GPU_RES, GPU_RES_QUICK, CPU_RES = (128, 256), (256,), (8,)
GOALS = {"fp32": 2.5, "bf16": 3.0}  # converted speed-up over eager

_RESULTS: list[dict] = []
_FP64: dict = {}


def pytest_generate_tests(metafunc):
    if "convert_case" not in metafunc.fixturenames:
        return
    res = CPU_RES if DEVICE == "cpu" else (GPU_RES_QUICK if _quick(metafunc.config) else GPU_RES)
    names = {s.strip() for s in metafunc.config.getoption("--fastgan-providers").split(",")}
    providers = [p for p in PROVIDERS if p in names or p.split("_")[0] in names] or ["eager"]
    params = [((r, dt), p) for r in res for dt in _dtypes(metafunc.config) for p in providers]
    metafunc.parametrize(("convert_case", "provider"), params,
                         ids=[f"{r}-{B.SHORT[dt]}-{p}" for (r, dt), p in params])


@contextlib.contextmanager
def _port_widths():
    """On the CPU, the port's nf() with tiny widths (16, 16, 8, ...); on a GPU, its own."""
    if DEVICE == "cuda":
        yield
        return
    own = PN.nf
    PN.nf = lambda stage, **kw: max(2, 16 >> max(stage - 2, 0))
    try:
        yield
    finally:
        PN.nf = own


def _discriminator(res, dtype=torch.float32):
    torch.manual_seed(0)
    with _port_widths():
        d = PN.Discriminator(depth=int(math.log2(res)), latent_size=512 if DEVICE == "cuda"
                             else 16)
    return d.to(DEVICE, dtype)


def _inputs(res, n, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(n, 3, res, res, generator=g).clamp_(-1, 1)
    fake = torch.randn(n, 3, res, res, generator=g).mul_(0.5)
    eps = torch.rand(n, generator=g)
    return real.to(DEVICE, dtype), fake.to(DEVICE, dtype), eps.to(DEVICE, dtype)


def _batch():
    return 16 if DEVICE == "cuda" else 4


def _fp64_reference(res):
    if res not in _FP64:
        _FP64.clear()
        d = _discriminator(res, torch.float64)
        depth = int(math.log2(res))
        real, fake, eps = _inputs(res, _batch(), torch.float64)

        def run(x):
            return d(x, depth, 1.0)
        loss = _loss(run(real), run(fake), _eager_penalty(run, real, fake, eps))
        loss.backward()
        _FP64[res] = (loss.detach(), _flat_grads(d.parameters()))
        del d
    return _FP64[res]


def _make(provider, res, dtype):
    """(step, params, probe_dropped): step() runs one D step and returns the loss."""
    d = _discriminator(res)
    depth = int(math.log2(res))
    real, fake, eps = _inputs(res, _batch())
    amp = dtype == torch.bfloat16
    scope = contextlib.nullcontext
    converted = provider.startswith(("triton", "cuda"))
    if converted:
        fastgan.convert(d)
        backend = provider.split("_")[0]
        scope = lambda: fastgan.use_backend(backend)  # noqa: E731
    if provider.endswith("_cl"):
        d = d.to(memory_format=torch.channels_last)
        real, fake = (t.contiguous(memory_format=torch.channels_last) for t in (real, fake))
    compiled = torch.compile(d) if "compile" in provider else d
    params = list(d.parameters())

    def plain(x):
        return compiled(x, depth, 1.0)

    def eager(x):
        return d(x, depth, 1.0)

    if converted:
        def penalty():
            return P.gradient_penalty(eager, real, fake, weight=GP_WEIGHT, epsilon=eps)
    else:
        def penalty():
            return _eager_penalty(plain if provider == "compile" else eager, real, fake, eps)

    def step():
        for p in params:
            p.grad = None
        with scope(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = _loss(plain(real), plain(fake), penalty())
            loss.backward()
        return loss.detach()

    def probe_dropped():
        x = real.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            (g,) = torch.autograd.grad(plain(x).sum(), x, create_graph=True)
        return g.grad_fn is None

    return step, params, probe_dropped


def test_converted_d_step(benchmark, convert_case, provider, request):
    res, dtype = convert_case
    rec = {"op": OP, "shape": [_batch(), 3, res, res], "dtype": B.SHORT[dtype],
           "pass": "D step, port order", "provider": provider, "device": DEVICE,
           "status": "ok", "min_bytes": 0, "test": request.node.nodeid,
           "byte_model": "compute-bound (convolutions and their double backward): no byte floor",
           "tf32": bool(torch.backends.cudnn.allow_tf32) if DEVICE == "cuda" else None}
    benchmark.group = f"pro-gan-pth D step + GP {res}px {B.SHORT[dtype]}"

    def skip(reason):
        rec.update(status="skipped", reason=reason)
        record(rec, request.config, _RESULTS)
        pytest.skip(reason)

    why = _skip_reason(provider)
    if why:
        skip(why)
    if "compile" in provider:
        torch._dynamo.reset()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    ref_loss, ref_grads = _fp64_reference(res)
    step, params, probe_dropped = _make(provider, res, dtype)
    t0 = time.perf_counter()
    try:
        loss = step()
    except Exception as err:
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        if provider == "compile":
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
                      and "grad_rel_err" in r), None)
    failure = None
    if provider.startswith(("triton", "cuda")):
        if not math.isfinite(rec["grad_rel_err"]):
            failure = f"non-finite gradients ({rec['grad_rel_err']})"
        elif eager_err is not None and rec["grad_rel_err"] > max(10 * eager_err, 1e-2):
            failure = (f"gradient error {rec['grad_rel_err']:.2e} vs fp64 is over 10x eager's "
                       f"({eager_err:.2e})")
        if failure:
            rec.update(status="mismatch", reason=failure)
    if DEVICE == "cuda":
        rec.update(B.measure(step, DEVICE, warmup_ms=200.0, rep_ms=1000.0).as_dict())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        rec["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        benchmark._timer = B.cuda_sync_timer
        rounds = max(3, min(20, int(1.0 / max(rec["ms"] * 1e-3, 1e-4))))
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
        st = benchmark.stats.stats if benchmark.stats is not None else None
        if st is not None:
            rec.update(ms=st.median * 1e3, ms_min=st.min * 1e3, reps=5,
                       timer="perf_counter (pytest-benchmark median)")
    benchmark.extra_info.update({k: rec[k] for k in (
        "op", "shape", "dtype", "pass", "provider", "device", "status", "tf32", "loss_rel_err",
        "grad_rel_err", "first_call_s", "ms", "peak_mib", "reason", "penalty_dropped")
        if k in rec})
    record(rec, request.config, _RESULTS)
    if failure:
        pytest.fail(failure)


def _write_summary(tr):
    tr.write_sep("=", "fastgan.convert: pro-gan-pth D step with gradient penalty")
    if DEVICE == "cpu":
        tr.write_line("device: CPU, no CUDA GPU present: eager only, tiny widths (indicative "
                      "only); SKIPPED providers: " + ", ".join(PROVIDERS[1:])
                      + " (timed on a GPU only)")
    else:
        tr.write_line(f"device: {torch.cuda.get_device_name(0)}; cuDNN TF32 "
                      f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; ms = median "
                      "CUDA-event time of one step; err = param-grad error vs fp64")
    eager = {(r["shape"][2], r["dtype"]): r for r in _RESULTS
             if r["provider"] == "eager" and "ms" in r}
    for r in _RESULTS:
        key = (r["shape"][2], r["dtype"])
        head = f"{r['shape'][2]:>4}px {r['dtype']} {r['provider']:<19}"
        if "ms" not in r:
            tr.write_line(f"{head} {r['status']}: {r.get('reason', '')}")
            continue
        speed = eager[key]["ms"] / r["ms"] if key in eager else None
        mem = f"{r['peak_mib']:7.0f} MiB" if "peak_mib" in r else ""
        note = f"  [{r['status']}: {r.get('reason', '')}]" if r["status"] != "ok" else ""
        goal = ""
        if r["provider"].startswith(("triton", "cuda")) and speed is not None and DEVICE == "cuda":
            met = (speed >= GOALS[r["dtype"]]
                   and r["grad_rel_err"] <= eager[key]["grad_rel_err"])
            goal = (f"  goal {GOALS[r['dtype']]}x eager with no larger error: "
                    f"{'met' if met else 'NOT met'}")
        tr.write_line(f"{head} {r['ms']:8.2f} ms "
                      f"{f'{speed:5.2f}x eager' if speed else ''} {mem} "
                      f"err {r['grad_rel_err']:.1e}{note}{goal}")


summarize_at_end(_RESULTS, _write_summary)
