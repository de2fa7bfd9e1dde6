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

import torch

import fastgan
import fastgan.penalties as P
from fastgan.bench.cases import SHORT
from fastgan.models import Discriminator, PlainDiscriminator

from ._step_bench import (DEVICE, GP_WEIGHT, batch, d_loss, flat_grads, plain_penalty,
                          run_d_step, selected_providers, short_run, step_dtypes, step_record,
                          step_resolutions)
from .conftest import summarize_at_end

OP = "d_step_gp"
# In the order they run (per resolution and layer order, each for every dtype): eager first (the
# others' gradient error is judged against it), then fastgan and the best workaround without it,
# so that a run cut short has the comparison that matters; the compiled variants last.
PROVIDERS = ("eager", "triton", "cuda", "compile_workaround", "triton_cl", "cuda_cl",
             "triton_compile", "compile")
GPU_WIDTHS, CPU_WIDTHS = dict(fmap_base=8192, fmap_max=512), dict(fmap_base=64, fmap_max=16)

_RESULTS: list[dict] = []
_FP64: dict = {}  # (res, order) -> (loss, grads) of the fp64 eager step


def pytest_generate_tests(metafunc):
    if "penalty_case" not in metafunc.fixturenames:
        return
    short = short_run(metafunc.config) or DEVICE == "cpu"
    orders = ("official",) if short else ("official", "port")
    params, ids = [], []
    for r in step_resolutions(metafunc.config):
        for order in orders:
            for p in selected_providers(metafunc.config, PROVIDERS):
                if order == "port" and p == "compile":
                    continue  # the naive compile's outcome does not depend on the order
                for dt in step_dtypes(metafunc.config):
                    params.append(((r, dt, order), p))
                    ids.append(f"{r}-{SHORT[dt]}-{order}-{p}")
    metafunc.parametrize(("penalty_case", "provider"), params, ids=ids)


# ---------------------------------------------------------------------------------------------
# Steps

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


def _make(provider, res, order, dtype):
    """(step, params, probe_dropped, info), as `run_d_step` wants them."""
    widths = GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS
    state = _state(res, order)
    real, fake, eps = _inputs(res, batch())
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
            return plain_penalty(d, real, fake, eps)
    elif provider == "compile":
        plain_pass = torch.compile(d)

        def penalty():
            return plain_penalty(plain_pass, real, fake, eps)
    else:  # compile_workaround
        plain_pass = torch.compile(d)

        def penalty():
            return plain_penalty(d, real, fake, eps)

    def step():
        for p in params:
            p.grad = None
        with scope(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            rs, fs = plain_pass(real), plain_pass(fake)
            loss = d_loss(rs, fs, penalty())
            loss.backward()
        return loss.detach()

    def probe_dropped():
        """Whether the input gradient of the penalty pass comes back without a graph."""
        x = real.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            (g,) = torch.autograd.grad(plain_pass(x).sum(), x, create_graph=True)
        return g.grad_fn is None

    return step, params, probe_dropped, info


def _fp64_reference(res, order):
    key = (res, order)
    if key not in _FP64:
        _FP64.clear()  # one held at a time
        widths = GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS
        d = PlainDiscriminator(res, down_order=order, **widths)
        d.load_state_dict(_state(res, order))
        d = d.to(DEVICE, torch.float64)
        real, fake, eps = (t.double() for t in _inputs(res, batch()))
        loss = d_loss(d(real), d(fake), plain_penalty(d, real, fake, eps))
        loss.backward()
        _FP64[key] = (loss.detach(), flat_grads(d.parameters()))
        del d
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return _FP64[key]


# ---------------------------------------------------------------------------------------------

def test_d_step_gradient_penalty(benchmark, penalty_case, provider, request):
    res, dtype, order = penalty_case
    rec = step_record(request, OP, batch(), res, dtype, f"D step, {order} order", provider)
    benchmark.group = f"D step + GP {res}px {SHORT[dtype]} {order}"
    run_d_step(benchmark, request, rec, _RESULTS,
               make=lambda: _make(provider, res, order, dtype),
               reference=lambda: _fp64_reference(res, order),
               checked=provider not in ("eager", "compile"))


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
