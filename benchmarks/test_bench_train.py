"""One full ProGAN training iteration: a D step (WGAN loss, gradient penalty, drift, Adam) and a
G step (Adam), fastgan against the same architecture in plain torch.
`pytest benchmarks/test_bench_train.py --benchmark-only`.

Cases: resolution (GPU: 128 and 256 at official widths, batch 16; CPU: 8 at tiny widths, batch
4) x dtype (fp32; bf16 autocast). Providers, all from the same weights (one seed), the same
real images, latents and penalty mixing weights:
    eager           PlainGenerator + PlainDiscriminator (fastgan.models), the penalty as usually
                    written (autograd.grad(create_graph=True), then the norm)
    compile         the plain networks torch.compile'd for their plain passes, the penalty on
                    the eager plain D (compile refuses the double backward)
    ref             fastgan's networks, penalties and losses on the "ref" backend (CPU only: shows
                    the iteration's numbers agree; not timed against the GPU providers)
    triton, cuda    fastgan's networks with that backend, fastgan.penalties; NCHW
    triton_cl, cuda_cl       the same, channels_last networks and images
    triton_compile  fastgan's networks compiled for the plain passes (the penalty pass runs
                    their eager original, as fastgan.penalties does)
Before timing, each provider runs the first STEPS iterations from the same start (TF32 off) and
records its losses; a fastgan provider fails when they leave eager's by more than the dtype's
tolerance. Each record: ms per iteration (GPU: median CUDA-event time, L2 flushed; CPU:
pytest-benchmark's perf_counter), images per second, peak MiB, the loss traces. Goal (issue 15,
H100/H200): >= 3x eager at 256x256 fp32 (docs/baselines.md: eager 289.7 ms per iteration).
Options: --fastgan-quick or --fastgan-largest (GPU: 256 only), --fastgan-dtypes,
--fastgan-providers, --fastgan-records (benchmarks/conftest.py).
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

import fastgan
import fastgan.penalties as P
from fastgan import bench as B
from fastgan.models import Discriminator, Generator, PlainDiscriminator, PlainGenerator

from ._step_bench import (DEVICE, DRIFT, GP_WEIGHT, batch, plain_penalty, selected_providers,
                          skip_reason, skip_recorded, step_dtypes, step_record, step_resolutions,
                          tf32, time_step)
from .conftest import record, summarize_at_end

OP = "train_iteration"
PROVIDERS = ("eager", "compile", "ref", "triton", "triton_cl", "triton_compile", "cuda",
             "cuda_cl")
GPU_WIDTHS, CPU_WIDTHS = dict(fmap_base=8192, fmap_max=512), dict(fmap_base=64, fmap_max=16)
LR, STEPS = 1e-3, 3
LOSS_TOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2}

_RESULTS: list[dict] = []
_EAGER_LOSSES: dict = {}


def pytest_generate_tests(metafunc):
    if "train_case" not in metafunc.fixturenames:
        return
    picked = selected_providers(metafunc.config, PROVIDERS)
    providers = [p for p in PROVIDERS if p in picked or (p == "ref" and DEVICE == "cpu")]
    params, ids = [], []
    for r in step_resolutions(metafunc.config):
        for dt in step_dtypes(metafunc.config):
            for p in providers:
                params.append(((r, dt), p))
                ids.append(f"{r}-{B.SHORT[dt]}-{p}")
    metafunc.parametrize(("train_case", "provider"), params, ids=ids)


# ---------------------------------------------------------------------------------------------

def _widths() -> dict:
    return GPU_WIDTHS if DEVICE == "cuda" else CPU_WIDTHS


def _weights(res):
    """One set of G and D weights per resolution, shared by every provider."""
    torch.manual_seed(0)
    with torch.device("cpu"):
        return (PlainGenerator(res, **_widths()).state_dict(),
                PlainDiscriminator(res, **_widths()).state_dict())


def _inputs(res, latent):
    """STEPS iterations of (real, z for D, z for G, eps), on the device."""
    g = torch.Generator().manual_seed(1)
    n, out = batch(), []
    for _ in range(STEPS):
        real = torch.rand(n, 3, res, res, generator=g) * 2 - 1
        out.append(tuple(t.to(DEVICE) for t in (
            real, torch.randn(n, latent, generator=g), torch.randn(n, latent, generator=g),
            torch.rand(n, generator=g))))
    return out


def _make(provider, res, dtype):
    """(iteration, G, D): iteration(i) runs one D step and one G step on input set i and returns
    (loss_d, loss_g)."""
    fast = provider not in ("eager", "compile")
    g_state, d_state = _weights(res)
    G = (Generator if fast else PlainGenerator)(res, **_widths())
    D = (Discriminator if fast else PlainDiscriminator)(res, **_widths())
    G.load_state_dict(g_state)
    D.load_state_dict(d_state)
    G, D = G.to(DEVICE), D.to(DEVICE)
    fmt = torch.contiguous_format
    if provider.endswith("_cl"):
        fmt = torch.channels_last
        G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
    inputs = [(r.contiguous(memory_format=fmt), *rest) for r, *rest in _inputs(res, G.latent_size)]
    opt_g = torch.optim.Adam(G.parameters(), lr=LR, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR, betas=(0.0, 0.99), eps=1e-8)
    compiled = provider in ("compile", "triton_compile")
    g_run, d_run = (torch.compile(G), torch.compile(D)) if compiled else (G, D)
    if fast:
        scope = functools.partial(fastgan.use_backend, provider.split("_")[0])

        def penalty(real, fake, eps):
            return P.gradient_penalty(d_run, real, fake, weight=GP_WEIGHT, epsilon=eps)
    else:
        scope = contextlib.nullcontext

        def penalty(real, fake, eps):
            return plain_penalty(D, real, fake, eps)  # eager D: compile has no double backward
    amp = functools.partial(torch.autocast, DEVICE, dtype=torch.bfloat16,
                            enabled=dtype == torch.bfloat16)
    d_params = list(D.parameters())

    def iteration(i):
        real, z_d, z_g, eps = inputs[i % STEPS]
        with scope():
            with amp():
                with torch.no_grad():
                    fake = g_run(z_d).to(real.dtype).contiguous(memory_format=fmt)
                rs, fs = d_run(real).float(), d_run(fake).float()
                loss_d = fs.mean() - rs.mean() + penalty(real, fake, eps) + \
                    DRIFT * rs.square().mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            for p in d_params:
                p.requires_grad_(False)
            with amp():
                loss_g = -d_run(g_run(z_g)).float().mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            for p in d_params:
                p.requires_grad_(True)
        return loss_d.detach(), loss_g.detach()

    return iteration


def _skip_reason(provider) -> str | None:
    if DEVICE == "cuda" and provider == "ref":
        return "the ref backend runs on CPU runs of this benchmark only"
    return skip_reason(provider, cpu_providers=("eager", "ref"), cuda_kernels=None)


def _trace(provider, res, dtype):
    """The losses of the first STEPS iterations from the shared start, TF32 off."""
    iteration = _make(provider, res, dtype)
    with tf32(False):
        return torch.stack([torch.stack(iteration(i)) for i in range(STEPS)]).double().cpu()


def test_train_iteration(benchmark, train_case, provider, request):
    res, dtype = train_case
    n = batch()
    rec = step_record(request, OP, n, res, dtype, "D+G step", provider,
                      byte_model="compute-bound: no byte floor")
    benchmark.group = f"ProGAN iteration {res}px {B.SHORT[dtype]}"

    why = _skip_reason(provider)
    if why:
        skip_recorded(rec, why, request.config, _RESULTS)
    if provider.endswith("compile"):
        torch._dynamo.reset()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    try:
        losses = _trace(provider, res, dtype)
    except Exception as err:
        rec.update(status="error", reason=f"{type(err).__name__}: {err}"[:300])
        record(rec, request.config, _RESULTS)
        raise
    rec["losses"] = losses.tolist()
    key = (res, dtype)
    if provider == "eager":
        _EAGER_LOSSES[key] = losses
    failure = None
    if key in _EAGER_LOSSES and provider != "eager":
        want = _EAGER_LOSSES[key]
        rec["loss_rel_diff"] = ((losses - want).abs().max() / want.abs().max()).item()
        if not torch.isfinite(losses).all() or rec["loss_rel_diff"] > LOSS_TOL[dtype]:
            failure = (f"losses of the first {STEPS} iterations leave eager's: max difference "
                       f"{rec['loss_rel_diff']:.2e} of their scale (tolerance {LOSS_TOL[dtype]})")
            rec.update(status="mismatch", reason=failure)

    iteration = _make(provider, res, dtype)
    counter = iter(range(10**9))

    def step():
        return iteration(next(counter))

    time_step(benchmark, step, rec, warmup_ms=300.0, rep_ms=1500.0, rounds=3, cpu_rounds=3)
    rec["img_per_s"] = n / (rec["ms"] * 1e-3)
    benchmark.extra_info.update({k: rec[k] for k in (
        "op", "shape", "dtype", "provider", "device", "status", "tf32", "ms", "img_per_s",
        "peak_mib", "loss_rel_diff") if k in rec})
    record(rec, request.config, _RESULTS)
    if failure:
        pytest.fail(failure)


def _write_summary(tr):
    tr.write_sep("=", "fastgan: one ProGAN training iteration (D step with WGAN-GP + drift, "
                      "G step)")
    if DEVICE == "cpu":
        tr.write_line("device: CPU, no CUDA GPU present: eager and ref only, tiny widths "
                      "(indicative only; the goal is measured on an H100/H200)")
    else:
        tr.write_line(f"device: {torch.cuda.get_device_name(0)}; cuDNN TF32 "
                      f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; ms = median "
                      "CUDA-event time of one iteration, batch 16")
    eager = {(r["shape"][2], r["dtype"]): r["ms"] for r in _RESULTS
             if r["provider"] == "eager" and "ms" in r}
    for r in _RESULTS:
        key = (r["shape"][2], r["dtype"])
        head = f"{r['shape'][2]:>4}px {r['dtype']} {r['provider']:<15}"
        if "ms" not in r:
            tr.write_line(f"{head} {r['status']}: {r.get('reason', '')}")
            continue
        speed = f"{eager[key] / r['ms']:5.2f}x eager" if key in eager else ""
        mem = f"{r['peak_mib']:7.0f} MiB" if "peak_mib" in r else ""
        diff = f"loss diff {r['loss_rel_diff']:.1e}" if "loss_rel_diff" in r else ""
        note = f"  [{r['status']}: {r.get('reason', '')}]" if r["status"] != "ok" else ""
        tr.write_line(f"{head} {r['ms']:8.2f} ms {r['img_per_s']:7.1f} img/s {speed} {mem} "
                      f"{diff}{note}")


summarize_at_end(_RESULTS, _write_summary)
