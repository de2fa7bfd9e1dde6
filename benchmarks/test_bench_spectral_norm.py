"""The spectral-norm overhead of one discriminator training step.
`pytest benchmarks/test_bench_spectral_norm.py --benchmark-only`.

Step: loss = D(x1).mean() - D(x2).mean() + D(x3).mean() (three training forwards, as a D step
plus a G step see it), then loss.backward() for D's parameters. Models (the GPU sizes):
    sngan    SNGAN's CIFAR-10 CNN (Miyato et al. 2018, table 3), batch 64, 32x32: conv3x3 3-64,
             conv4x4/2 64-64, conv3x3 64-128, conv4x4/2 128-128, conv3x3 128-256, conv4x4/2
             256-256, conv3x3 256-512, linear 8192-1 (8 SN layers, 2.93 M weights)
    biggan   BigGAN-128-like (Brock et al. 2019, ch=96, no attention), batch 32, 128x128: five
             down blocks 3-96-192-384-768-1536 and one 1536-1536 block, each conv3x3 in-out,
             conv3x3 out-out and a 1x1 shortcut (none in the last block), ReLU, 2x2 average
             pool; sum pooling, linear 1536-1 and a projection embedding 1000x1536 (19 SN
             layers; `_biggan_shapes()` lists them)
On a CPU: widths / 8, batch 2, 16x16 (sngan) and 32x32 (biggan), fewer layers' cost, timing
only the plain-torch rows; the GPU rows are reported as skipped.
Providers, same weights and inputs:
    none       D without spectral normalization (the floor the overhead is measured from)
    torch      torch.nn.utils.parametrizations.spectral_norm on every layer
    compile    torch.compile(the torch-SN D, fullgraph=True)
    ref        fastgan's spectral_norm, backend "ref" (torch's ops; the CPU row)
    triton     fastgan's spectral_norm + fuse_spectral_norm(D), backend "triton"
    cuda       the same with backend "cuda" (when the extension has the kernels)
Each SN provider is first checked against torch's (loss, every parameter gradient, u, v after
the step). Recorded per row: ms (median), overhead_ms = ms - none's ms, and the bytes floor of
the power iterations (each weight read twice per iteration per forward: 3 * 2 * n * |W|) as
floor_ms at the copy rate measured in the same run. Goals (H100/H200): overhead <= 0.3 ms
(sngan) / 0.5 ms (biggan), >= 10x below torch's, <= 2x the floor.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as TP

import fastgan
from fastgan import bench as B
from fastgan.nn.utils import fuse_spectral_norm, spectral_norm

from ._step_bench import skip_recorded
from .conftest import record, summarize_at_end

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = ("sngan", "biggan")
PROVIDERS = ("none", "torch", "compile", "ref", "triton", "cuda")
GOAL_MS = {"sngan": 0.3, "biggan": 0.5}
_RESULTS: list[dict] = []
_COPY_GBPS: list[float] = []


class _SNGAN(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        chans = [(3, w, 3, 1), (w, w, 4, 2), (w, 2 * w, 3, 1), (2 * w, 2 * w, 4, 2),
                 (2 * w, 4 * w, 3, 1), (4 * w, 4 * w, 4, 2), (4 * w, 8 * w, 3, 1)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, padding=1) for i, o, k, s in chans)
        self.fc = None
        self.width = 8 * w

    def forward(self, x):
        for c in self.convs:
            x = F.leaky_relu(c(x), 0.1)
        x = x.flatten(1)
        if self.fc is None:
            raise RuntimeError("call build(resolution) first")
        return self.fc(x)

    def build(self, resolution: int):
        self.fc = nn.Linear(self.width * (resolution // 8) ** 2, 1)
        return self


class _DBlock(nn.Module):
    def __init__(self, i: int, o: int, down: bool):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(i, o, 3, padding=1), nn.Conv2d(o, o, 3, padding=1)
        self.sc = nn.Conv2d(i, o, 1) if (i != o or down) else None
        self.down, self.pre = down, i != 3

    def forward(self, x):
        h = self.c2(F.relu(self.c1(F.relu(x) if self.pre else x)))
        s = x if self.sc is None else self.sc(x)
        if self.down:
            h, s = F.avg_pool2d(h, 2), F.avg_pool2d(s, 2)
        return h + s


class _BigGAN(nn.Module):
    def __init__(self, ch: int, classes: int = 1000):
        super().__init__()
        widths = [3, ch, 2 * ch, 4 * ch, 8 * ch, 16 * ch]
        self.blocks = nn.ModuleList(_DBlock(i, o, True) for i, o in zip(widths, widths[1:]))
        self.blocks.append(_DBlock(16 * ch, 16 * ch, False))
        self.fc = nn.Linear(16 * ch, 1)
        self.embed = nn.Embedding(classes, 16 * ch)

    def forward(self, x, y):
        for b in self.blocks:
            x = b(x)
        h = F.relu(x).sum((2, 3))
        return self.fc(h).squeeze(1) + (self.embed(y) * h).sum(1)


def _biggan_shapes(ch: int = 96, classes: int = 1000) -> list[tuple[int, ...]]:
    """The weight shapes of `_BigGAN(ch)`'s SN layers, in module order (without building it)."""
    widths = [3, ch, 2 * ch, 4 * ch, 8 * ch, 16 * ch, 16 * ch]
    shapes = []
    for k, (i, o) in enumerate(zip(widths, widths[1:])):
        shapes += [(o, i, 3, 3), (o, o, 3, 3)] + ([(o, i, 1, 1)] if k < 5 else [])
    return shapes + [(1, 16 * ch), (classes, 16 * ch)]


def _setup(model: str):
    gpu = DEVICE == "cuda"
    if model == "sngan":
        n, r = (64, 32) if gpu else (2, 16)
        d = _SNGAN(64 if gpu else 8).build(r)
        inputs = [(torch.randn(n, 3, r, r),) for _ in range(3)]
    else:
        n, r = (32, 128) if gpu else (2, 32)
        d = _BigGAN(96 if gpu else 12, 1000 if gpu else 10)
        classes = d.embed.num_embeddings
        inputs = [(torch.randn(n, 3, r, r), torch.randint(0, classes, (n,))) for _ in range(3)]
    return d.to(DEVICE), [tuple(t.to(DEVICE) for t in xs) for xs in inputs], n, r


def _sn_layers(d):
    return [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]


def _make(model: str, provider: str):
    """(step, state) for one provider; step() runs one D step and returns loss and grads."""
    torch.manual_seed(0)
    base, inputs, n, r = _setup(model)
    d = copy.deepcopy(base)
    scope = contextlib.nullcontext
    if provider in ("torch", "compile"):
        for m in _sn_layers(d):
            TP.spectral_norm(m)
    elif provider != "none":
        for m in _sn_layers(d):
            spectral_norm(m)
        if provider != "ref":
            fuse_spectral_norm(d)
        scope = lambda: fastgan.use_backend(provider)  # noqa: E731
    f = torch.compile(d, fullgraph=True) if provider == "compile" else d
    params = [p for p in d.parameters()]

    def step():
        with scope():
            loss = f(*inputs[0]).mean() - f(*inputs[1]).mean() + f(*inputs[2]).mean()
            return [loss, *torch.autograd.grad(loss, params)]

    return step, d, n, r


def _copy_gbps() -> float:
    """The device's copy rate (read + write bytes per second), measured once per run."""
    if not _COPY_GBPS:
        a = torch.empty(64 * 2**20 // 4, device=DEVICE)
        b = torch.empty_like(a)
        t = B.measure(lambda: b.copy_(a), DEVICE)
        _COPY_GBPS.append(2 * a.numel() * 4 / (t.ms * 1e-3) / 1e9)
    return _COPY_GBPS[0]


def _buffers(d):
    return {k: v for k, v in d.state_dict().items() if k.endswith(("_u", "_v"))}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("model", MODELS)
def test_spectral_norm_step(benchmark, model, provider, request):
    rec = {"op": f"spectral_norm_{model}", "provider": provider, "device": DEVICE,
           "status": "ok", "test": request.node.nodeid}
    benchmark.group = f"spectral_norm {model} D step"

    def skip(reason):
        skip_recorded(rec, reason, request.config, _RESULTS)

    if DEVICE == "cpu" and provider not in ("none", "torch", "ref"):
        skip("no CUDA GPU present: only the plain-torch rows (none, torch, ref) run on a CPU")
    if DEVICE == "cuda" and provider == "ref":
        skip("the ref row is the CPU stand-in for fastgan")
    if provider == "cuda":
        from fastgan import _backend

        if not _backend.has_cuda_kernels("spectral_norm"):
            skip("the CUDA extension has no spectral_norm kernels loaded")
    step, d, n, r = _make(model, provider)
    weights = [p for name, p in d.named_parameters() if "bias" not in name]
    rec.update(batch=n, resolution=r, layers=len(_sn_layers(d)),
               weight_bytes=sum(w.numel() * w.element_size() for w in weights))
    if provider not in ("none", "torch"):
        want_step, want_d, _, _ = _make(model, "torch")
        want = want_step()
        got = step()
        err = max(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))
                  .item() for a, b in zip(got, want))
        for (k, a), b in zip(_buffers(d).items(), _buffers(want_d).values()):
            err = max(err, (a - b).abs().max().item())
        rec["max_rel_err"] = err
        if err > 1e-4:
            rec.update(status="mismatch", reason=f"differs from torch's SN by {err:.3g}")
            record(rec, request.config, _RESULTS)
            pytest.fail(rec["reason"])
    if DEVICE == "cuda":
        rec.update(B.measure(step, DEVICE, rep_ms=200.0).as_dict())
        benchmark._timer = B.cuda_sync_timer
        benchmark.pedantic(step, rounds=10, iterations=5, warmup_rounds=1)
        rec["copy_gbps"] = _copy_gbps()
        rec["floor_ms"] = 3 * 2 * rec["weight_bytes"] / (rec["copy_gbps"] * 1e9) * 1e3
    else:
        benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
        rec.update(ms=benchmark.stats.stats.median * 1e3,
                   timer="perf_counter (pytest-benchmark median)")
    record(rec, request.config, _RESULTS)


def _write_summary(tr):
    tr.write_sep("=", "fastgan: spectral-norm overhead of a D step (3 forwards + backward)")
    if DEVICE == "cpu":
        tr.write_line("device: CPU, no CUDA GPU: none / torch / ref rows at small sizes (widths "
                      "/ 8, batch 2); the compile, triton and cuda rows need a GPU")
    for model in MODELS:
        rows = {r["provider"]: r for r in _RESULTS if r["op"] == f"spectral_norm_{model}"}
        base = rows.get("none", {}).get("ms")
        torch_over = rows["torch"]["ms"] - base if base and "ms" in rows.get("torch", {}) else None
        tr.write_line(f"{model}: goal overhead <= {GOAL_MS[model]} ms on an H100/H200")
        tr.write_line(f"  {'provider':9} {'ms':>9} {'overhead':>9} {'x torch':>8} {'floor ms':>9}"
                      "  status")
        for p in PROVIDERS:
            r = rows.get(p)
            if r is None:
                continue
            if "ms" not in r:
                tr.write_line(f"  {p:9} {'-':>9} {'-':>9} {'-':>8} {'-':>9}  {r['status']}: "
                              f"{r.get('reason', '')}")
                continue
            over = r["ms"] - base if base is not None else float("nan")
            ratio = torch_over / over if torch_over and over > 0 else float("nan")
            floor = r.get("floor_ms", float("nan"))
            tr.write_line(f"  {p:9} {r['ms']:9.3f} {over:9.3f} {ratio:8.1f} {floor:9.4f}  "
                          f"{r['status']}")
    tr.write_line("BigGAN-128-like SN weight shapes (ch=96): " + ", ".join(
        "x".join(map(str, s)) for s in _biggan_shapes()))


summarize_at_end(_RESULTS, _write_summary)
