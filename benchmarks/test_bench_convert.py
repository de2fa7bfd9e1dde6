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
gradient error exceeds 10x eager's (and 1e-2). The goals (issue 14, from docs/baselines.md's 219.9 ms
fp32 eager at 256 px on an H100): converted >= 2.5x eager in fp32 (<= 88 ms) and >= 3x under
bf16, with no larger gradient error; the summary states each against the run's own eager.

On CPU only "eager" runs, at the tiny resolution (indicative only); every other provider is
skipped with the reason: they are timed on a GPU only. Options as benchmarks/test_bench_penalty.py.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import fastgan
import fastgan.penalties as P
from fastgan import bench as B

from ._step_bench import (DEVICE, GP_WEIGHT, batch, d_loss, flat_grads, plain_penalty,
                          run_d_step, selected_providers, step_dtypes, step_record,
                          step_resolutions)
from .conftest import summarize_at_end

pytest.importorskip("pro_gan_pytorch", reason="times pro_gan_pytorch's Discriminator: pip "
                    "install --no-deps pro-gan-pth==3.4")
from pro_gan_pytorch import networks as PN  # noqa: E402

OP = "progan_pth_d_step_gp"
PROVIDERS = ("eager", "compile", "compile_workaround", "triton", "triton_cl", "cuda", "cuda_cl")
GOALS = {"fp32": 2.5, "bf16": 3.0}  # converted speed-up over eager

_RESULTS: list[dict] = []
_FP64: dict = {}


def pytest_generate_tests(metafunc):
    if "convert_case" not in metafunc.fixturenames:
        return
    providers = selected_providers(metafunc.config, PROVIDERS)
    params = [((r, dt), p) for r in step_resolutions(metafunc.config)
              for dt in step_dtypes(metafunc.config) for p in providers]
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


def _fp64_reference(res):
    if res not in _FP64:
        _FP64.clear()
        d = _discriminator(res, torch.float64)
        depth = int(math.log2(res))
        real, fake, eps = _inputs(res, batch(), torch.float64)

        def run(x):
            return d(x, depth, 1.0)
        loss = d_loss(run(real), run(fake), plain_penalty(run, real, fake, eps))
        loss.backward()
        _FP64[res] = (loss.detach(), flat_grads(d.parameters()))
        del d
    return _FP64[res]


def _make(provider, res, dtype):
    """(step, params, probe_dropped, info), as `run_d_step` wants them."""
    d = _discriminator(res)
    depth = int(math.log2(res))
    real, fake, eps = _inputs(res, batch())
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
            return plain_penalty(plain if provider == "compile" else eager, real, fake, eps)

    def step():
        for p in params:
            p.grad = None
        with scope(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = d_loss(plain(real), plain(fake), penalty())
            loss.backward()
        return loss.detach()

    def probe_dropped():
        x = real.detach().clone().requires_grad_(True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            (g,) = torch.autograd.grad(plain(x).sum(), x, create_graph=True)
        return g.grad_fn is None

    return step, params, probe_dropped, {}


def test_converted_d_step(benchmark, convert_case, provider, request):
    res, dtype = convert_case
    rec = step_record(request, OP, batch(), res, dtype, "D step, port order", provider)
    benchmark.group = f"pro-gan-pth D step + GP {res}px {B.SHORT[dtype]}"
    run_d_step(benchmark, request, rec, _RESULTS, make=lambda: _make(provider, res, dtype),
               reference=lambda: _fp64_reference(res),
               checked=provider.startswith(("triton", "cuda")))


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
