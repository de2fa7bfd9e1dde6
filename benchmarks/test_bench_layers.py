"""One equalized-lr layer of ProGAN, forward+backward and the gradient-penalty pass, and
bias_act on channels_last activations. `pytest benchmarks/test_bench_layers.py --benchmark-only`.

Layer cases (batch 16 on a GPU): 512ch at 4..32 px, 256ch at 64, 128ch at 128, 64ch at 256, with
a 3x3 conv (padding 1), leaky ReLU 0.2, equalized lr (weight scale sqrt(2)/sqrt(fan_in)), as
    conv3x3        the conv alone at that resolution
    up             nearest 2x upsample of an input at half the resolution, then the conv
    down           the conv at that resolution, then a 2x2 average pool (official ProGAN order:
                   pool before bias and activation)
    up_unfused, down_unfused   the same layers with fastgan's EqualConv2d(fused_resample=False):
                   how much of the gain is the fused 4x4 stride-2 form (eager and compile rows
                   repeat those of up / down, for a self-contained table)
(up and down from 8 px on: ProGAN has no 2 px map; --fastgan-quick: 512ch 32 px, 128ch 128 px,
64ch 256 px, and no *_unfused kinds; --fastgan-largest: 64ch 256 px, no *_unfused kinds).
Passes: "fwdbwd" = y = layer(x), then the gradients of x, weight and bias for a fixed dy; "gp" = the penalty's path: g = dy-weighted
d layer(x)/dx with create_graph, then d sum(g^2)/d(weight, bias).
Providers, same weights and inputs:
    eager     the layer as usually written in PyTorch: w * scale, (F.interpolate), F.conv2d,
              (F.avg_pool2d), + bias, F.leaky_relu, each a separate op
    compile   torch.compile(eager function, fullgraph=True, dynamic=False) ("gp": torch.compile
              refuses double backward: recorded as skipped with torch's error, tried once)
    triton    fastgan.nn.EqualConv2d, backend "triton" (bias_act's Triton kernels, convolutions
              whose derivatives are convolutions, fused resampling)
    cuda      the same with backend "cuda" (skipped unless the extension is built with bias_act)
dtypes: fp32 and bf16 (torch.autocast, fp32 parameters; eager casts the bias to the conv
output's dtype so that every provider stays in bf16).

bias_act_cl cases: bias + leaky ReLU + gain alone on channels_last activations (the layout of a
channels_last model; test_bench_bias_act.py times NCHW), same shapes, passes "fwd" and
"fwdbwd", with bytes moved and GB/s per fastgan.bench's byte model (fwd 2|x| + |b|; fwdbwd
5|x| + 3|b|).

Each non-eager provider is first compared with eager on the same inputs (TF32 off for that check;
fp32 within 1e-4, bf16 within 3e-2 of the largest reference value); a mismatch fails the test,
and the timing is still recorded. Timing as the other suites: on a GPU, ms = median CUDA-event
time with the L2 flushed (fastgan.bench.measure), TF32 as the process has it (recorded), and
pytest-benchmark's synchronized wall clock; on CPU only eager runs, at small shapes, timed by
pytest-benchmark, and the summary says the GPU providers were skipped. Options
(benchmarks/conftest.py): --fastgan-quick, --fastgan-largest, --fastgan-providers, --fastgan-dtypes,
--fastgan-records=PATH (one JSON line per test, timed or skipped).
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
import fastgan.functional as FF
from fastgan.bench.cases import SHORT, parse_dtypes, parse_list
from fastgan.bench.providers import PROVIDERS, provider_status, tolerance
from fastgan.bench.report import format_table
from fastgan.bench.specs import SPECS
from fastgan.bench.timing import cuda_sync_timer, measure
from fastgan.nn import EqualConv2d
from fastgan.ops.bias_act import bias_act_ref

from ._step_bench import tf32, time_on_cpu
from .conftest import record, shape_set, summarize_at_end

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ("conv3x3", "up", "down", "up_unfused", "down_unfused")
KINDS_QUICK = ("conv3x3", "up", "down")
LAYER_PASSES = ("fwdbwd", "gp")
BIAS_ACT_PASSES = ("fwd", "fwdbwd")
# (channels, resolution): the output resolution of "up", the input resolution of the others.
GPU_SHAPES = [(512, 4), (512, 8), (512, 16), (512, 32), (256, 64), (128, 128), (64, 256)]
GPU_SHAPES_QUICK = [(512, 32), (128, 128), (64, 256)]
CPU_SHAPES = [(32, 16), (16, 32)]
CPU_SHAPES_QUICK = [(16, 32)]
ALPHA, SQRT2 = 0.2, math.sqrt(2.0)

_RESULTS: list[dict] = []
_COMPILE_GP_FAILURE: list[str] = []  # torch.compile's double-backward error, met once per session


def _dtypes(config) -> list[torch.dtype]:
    text = config.getoption("--fastgan-dtypes")
    if text == "auto":
        return [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]
    return parse_dtypes(text, DEVICE)


def _batch() -> int:
    return 16 if DEVICE == "cuda" else 2


def _shapes(config):
    """(channels, resolution) pairs of the shape set the options ask for."""
    chosen = shape_set(config)
    full, quick = ((GPU_SHAPES, GPU_SHAPES_QUICK) if DEVICE == "cuda"
                   else (CPU_SHAPES, CPU_SHAPES_QUICK))
    if chosen == "largest":
        return [max(full, key=lambda cr: cr[0] * cr[1] ** 2)]
    return quick if chosen == "quick" else full


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    if "layer_case" not in names and "bias_act_case" not in names:
        return
    config = metafunc.config
    providers = parse_list(config.getoption("--fastgan-providers"), PROVIDERS,
                              "--fastgan-providers")
    kinds = KINDS if shape_set(config) == "all" else KINDS_QUICK
    params, ids = [], []
    for c, r in _shapes(config):
        for dt in _dtypes(config):
            if "layer_case" in names:
                for kind in kinds:
                    if kind != "conv3x3" and r < 8:
                        continue
                    for pass_ in LAYER_PASSES:
                        for p in providers:
                            params.append(((kind, c, r, dt, pass_), p))
                            ids.append(f"{kind}-{c}ch-{r}px-{SHORT[dt]}-{pass_}-{p}")
            else:
                for pass_ in BIAS_ACT_PASSES:
                    for p in providers:
                        params.append(((c, r, dt, pass_), p))
                        ids.append(f"{c}ch-{r}px-{SHORT[dt]}-{pass_}-{p}")
    metafunc.parametrize(("layer_case" if "layer_case" in names else "bias_act_case", "provider"),
                         params, ids=ids)


# ---------------------------------------------------------------------------------------------
# Steps

def _randn(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)


def _eager_layer(kind: str, scale: float):
    def layer(x, w, b):
        if kind.startswith("up"):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        y = F.conv2d(x, w * scale, None, 1, 1)
        if kind.startswith("down"):
            y = F.avg_pool2d(y, 2)
        y = y + b.to(y.dtype).view(1, -1, 1, 1)
        return F.leaky_relu(y, ALPHA)
    return layer


def _layer_step(kind, c, r, dtype, pass_, provider):
    """(step, check, info): step() runs one timed iteration, check() returns what to compare."""
    n = _batch()
    r_in = r // 2 if kind.startswith("up") else r
    x = _randn((n, c, r_in, r_in), torch.float32, 1).requires_grad_()
    w = _randn((c, c, 3, 3), torch.float32, 2).requires_grad_()
    b = (_randn((c,), torch.float32, 3) * 0.1).requires_grad_()
    scale = SQRT2 / math.sqrt(c * 9)
    amp = dtype != torch.float32
    scope = contextlib.nullcontext
    if provider in ("eager", "compile"):
        f = _eager_layer(kind, scale)
        if provider == "compile":
            torch._dynamo.reset()
            f = torch.compile(f, fullgraph=True, dynamic=False)
        call = lambda: f(x, w, b)  # noqa: E731
        params = (w, b)
    else:
        resample = None if kind == "conv3x3" else kind.split("_")[0]
        layer = EqualConv2d(c, c, 3, padding=1, activation="lrelu", alpha=ALPHA,
                            resample=resample, fused_resample=False if "unfused" in kind else None)
        with torch.no_grad():
            layer.weight.copy_(w)
            layer.bias.copy_(b)
        layer.to(DEVICE)
        call = lambda: layer(x)  # noqa: E731
        params = (layer.weight, layer.bias)
        scope = lambda: fastgan.use_backend(provider)  # noqa: E731
    y0 = None
    with torch.no_grad(), torch.autocast(DEVICE, dtype=dtype, enabled=amp):
        y0 = call()
    dy = _randn(y0.shape, y0.dtype, 4)
    del y0

    def run():
        with scope(), torch.autocast(DEVICE, dtype=dtype, enabled=amp):
            y = call()
            if pass_ == "fwdbwd":
                return [y, *torch.autograd.grad(y, (x, *params), dy)]
            (g,) = torch.autograd.grad(y, x, dy, create_graph=True)
            grads = torch.autograd.grad(g.float().square().sum(), params, allow_unused=True)
            return [g, *(torch.zeros_like(p) if t is None else t for t, p in zip(grads, params))]

    names = ["y", "dx", "dweight", "dbias"] if pass_ == "fwdbwd" else \
        ["dD/dx", "dGP/dweight", "dGP/dbias"]
    y_numel = n * c * r * r if kind.startswith("up") else \
        (n * c * (r // 2) ** 2 if kind.startswith("down") else n * c * r * r)
    item = torch.empty((), dtype=dtype).element_size()
    x_bytes, y_bytes = x.numel() * item, y_numel * item
    # nominal multiply-adds of the layer as written (3x3 conv at the conv's resolution)
    conv_px = (r * r if kind.startswith("up") else r_in * r_in)
    flops = 2 * n * c * c * 9 * conv_px * (3 if pass_ == "fwdbwd" else 1)
    info = {"min_bytes": 3 * x_bytes + 2 * y_bytes if pass_ == "fwdbwd" else 0,
            "nominal_flops": flops, "shape": [n, c, r_in, r_in], "names": names}
    return run, info


def _bias_act_step(c, r, dtype, pass_, provider):
    n = _batch()
    shape = (n, c, r, r)
    x = _randn(shape, dtype, 5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(pass_ == "fwdbwd")
    b = _randn((c,), dtype, 6).requires_grad_(pass_ == "fwdbwd")
    dy = _randn(shape, dtype, 7).contiguous(memory_format=torch.channels_last)
    scope = contextlib.nullcontext
    if provider in ("eager", "compile"):
        f = lambda x, b: bias_act_ref(x, b, "lrelu", ALPHA, SQRT2, 1)  # noqa: E731
        if provider == "compile":
            torch._dynamo.reset()
            f = torch.compile(f, fullgraph=True, dynamic=False)
    else:
        f = lambda x, b: FF.bias_act(x, b, "lrelu", ALPHA, SQRT2, 1)  # noqa: E731
        scope = lambda: fastgan.use_backend(provider)  # noqa: E731

    def run():
        with scope():
            y = f(x, b)
            return [y] if pass_ == "fwd" else [y, *torch.autograd.grad(y, (x, b), dy)]

    item = torch.empty((), dtype=dtype).element_size()
    info = {"min_bytes": SPECS["bias_act"].min_bytes(shape, item, pass_), "shape": list(shape),
            "names": ["y", "dx", "db"], "nominal_flops": 0}
    return run, info


# ---------------------------------------------------------------------------------------------
# Running, checking, recording

_REFERENCE: dict = {}  # case key -> eager's outputs (one case held at a time)


def _reference(key, make):
    """Eager's outputs for this case (computed once per case, TF32 off)."""
    if _REFERENCE.get("key") != key:
        _REFERENCE.clear()
        with tf32(False):
            run, _ = make("eager")
            _REFERENCE.update(key=key, outs=[t.detach().float() for t in run()])
    return _REFERENCE["outs"]


def _compare(got, want, names, dtype):
    atol, rtol = tolerance(dtype)
    worst, bad = 0.0, []
    for a, b, name in zip(got, want, names):
        a32 = a.detach().float()
        if a32.shape != b.shape:
            return float("inf"), [f"{name}: shape {tuple(a32.shape)} != {tuple(b.shape)}"]
        err = (a32 - b).abs().max().item() if b.numel() else 0.0
        scale = b.abs().max().item() if b.numel() else 0.0
        worst = max(worst, err) if math.isfinite(err) else float("inf")
        if not math.isfinite(err) or err > atol + rtol * scale:
            bad.append(f"{name}: max abs err {err:.3g} (max |ref| {scale:.3g})")
    return worst, bad


def _run(benchmark, request, op, key, shape, make, dtype, pass_, provider):
    """Check `make(provider)`'s step against eager's, then time it; record either way."""
    config = request.config
    run, info = None, None
    rec = {"op": op, "shape": shape, "dtype": SHORT[dtype], "pass": pass_, "provider": provider,
           "device": DEVICE, "status": "ok", "test": request.node.nodeid,
           "byte_model": ("bias_act: " + SPECS["bias_act"].byte_model) if op == "bias_act_cl"
           else "layer fwdbwd: 3|x| + 2|y| of activations (weights not counted); gp: none",
           "tf32": bool(torch.backends.cudnn.allow_tf32) if DEVICE == "cuda" else None}
    benchmark.group = f"{op} {'x'.join(map(str, shape))} {SHORT[dtype]} {pass_}"

    def skip(reason):
        rec.update(status="skipped", reason=reason, min_bytes=0)
        record(rec, config, _RESULTS)
        pytest.skip(reason)

    ok, why = provider_status(provider, DEVICE)
    if not ok:
        skip(why)
    if provider == "compile" and pass_ == "gp" and _COMPILE_GP_FAILURE:
        skip(f"torch.compile of the eager layer failed on the first gp case: "
             f"{_COMPILE_GP_FAILURE[0]}")
    if provider == "cuda" and not _cuda_has("bias_act"):
        skip("the CUDA extension has no bias_act kernels yet")
    mismatch = None
    try:
        run, info = make(provider)
        rec.update(shape=info["shape"], min_bytes=info["min_bytes"])
        if provider != "eager":
            ref = _reference(key, make)
            with tf32(False):
                got = run()
            rec["max_abs_err"], bad = _compare(got, ref, info["names"], dtype)
            del got
            if bad:
                mismatch = f"{provider} differs from eager: " + "; ".join(bad)
                rec.update(status="mismatch", reason=mismatch)
        else:
            run()
    except Exception as err:
        msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        if provider == "compile":  # torch.compile of the eager layer: not fastgan's to fix
            if pass_ == "gp":
                _COMPILE_GP_FAILURE.append(msg)
            skip(f"torch.compile of the eager layer failed: {msg}")
        rec.update(status="error", reason=msg, min_bytes=rec.get("min_bytes", 0))
        record(rec, config, _RESULTS)
        raise
    if DEVICE == "cuda":
        timing = measure(run, DEVICE, rep_ms=100.0, warmup_ms=10.0)
        rec.update(timing.as_dict())
        benchmark._timer = cuda_sync_timer
        iterations = max(1, min(50, int(1.0 / max(rec["ms"], 1e-3))))
        benchmark.pedantic(run, rounds=10, iterations=iterations, warmup_rounds=1)
    else:
        time_on_cpu(benchmark, run, rec, rounds=5)
    if "ms" in rec and rec["min_bytes"]:  # no byte model (the gp pass): no GB/s
        rec["gbps"] = rec["min_bytes"] / (rec["ms"] * 1e-3) / 1e9
    if "ms" in rec and info["nominal_flops"]:
        rec["nominal_tflops"] = info["nominal_flops"] / (rec["ms"] * 1e-3) / 1e12
    benchmark.extra_info.update({k: rec[k] for k in (
        "op", "shape", "dtype", "pass", "provider", "device", "status", "min_bytes", "ms", "gbps",
        "nominal_tflops", "max_abs_err", "tf32", "reason") if k in rec})
    record(rec, config, _RESULTS)
    if mismatch:
        pytest.fail(mismatch)


def _cuda_has(op_name: str) -> bool:
    try:
        from fastgan import _backend

        return _backend.has_cuda_kernels(op_name)
    except Exception:
        return False


def test_layer(benchmark, layer_case, provider, request):
    kind, c, r, dtype, pass_ = layer_case
    key = ("layer", kind, c, r, SHORT[dtype], pass_)
    r_in = r // 2 if kind.startswith("up") else r
    _run(benchmark, request, f"layer_{kind}", key, [_batch(), c, r_in, r_in],
         lambda p: _layer_step(kind, c, r, dtype, pass_, p), dtype, pass_, provider)


def test_bias_act_channels_last(benchmark, bias_act_case, provider, request):
    c, r, dtype, pass_ = bias_act_case
    key = ("bias_act_cl", c, r, SHORT[dtype], pass_)
    _run(benchmark, request, "bias_act_cl", key, [_batch(), c, r, r],
         lambda p: _bias_act_step(c, r, dtype, pass_, p), dtype, pass_, provider)


# ---------------------------------------------------------------------------------------------
# Summary

def _write_summary(tr):
    tr.write_sep("=", "fastgan: equalized-lr layers and channels_last bias_act")
    skipped, other = {}, {}
    for r in _RESULTS:
        if r["status"] != "skipped":
            continue
        if r["provider"] != "eager" and not provider_status(r["provider"], DEVICE)[0]:
            skipped.setdefault(r["provider"], r["reason"])
        else:
            other.setdefault(f"{r['op']} {r['pass']} {r['provider']}", r["reason"])
    if DEVICE == "cpu":
        tr.write_line("device: CPU, no CUDA GPU present: eager only, small shapes, batch 2 "
                      "(indicative only)")
    else:
        tr.write_line(f"device: {torch.cuda.get_device_name(0)}; cuDNN TF32 "
                      f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; ms = median "
                      "CUDA-event time per call, L2 flushed")
    if skipped:
        tr.write_line("SKIPPED providers: " + ", ".join(
            "torch.compile" if p == "compile" else p for p in skipped))
        for p, why in skipped.items():
            tr.write_line(f"  {p}: {why}")
    for what, why in other.items():
        tr.write_line(f"SKIPPED {what}: {why}")
    timed = [r for r in _RESULTS if "ms" in r]
    if timed:
        tr.write_line("")
        for line in format_table(timed).splitlines():
            tr.write_line(line)


summarize_at_end(_RESULTS, _write_summary)
