"""Providers: who computes a case, and how each is checked against the plain-torch reference.

    eager     the op's plain-torch reference, `fastgan.ops.<op>.<op>_ref` (what users run today)
    compile   `torch.compile(reference, fullgraph=True, dynamic=False)`, default mode (GPU only)
    triton    `fastgan.functional.<op>` with backend "triton" (GPU only: the Triton interpreter
              that runs the kernels on CPU in the tests is far too slow to mean anything here)
    cuda      `fastgan.functional.<op>` with backend "cuda" (GPU only, extension already built)

Passes: "fwd" (y = f(x), inputs need no grad) and "fwdbwd" (y = f(x), then
`torch.autograd.grad(y, inputs, dy)` for a fixed random dy; inputs are x, and for bias_act also b).
Before timing, each non-eager provider's outputs (and gradients) are compared with eager's;
a mismatch is reported, never hidden.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import torch

from .cases import SHORT, Case
from .timing import measure

PROVIDERS = ("eager", "compile", "triton", "cuda")


def provider_status(provider: str, device: str) -> tuple[bool, str]:
    """Whether `provider` can be timed here; never compiles or builds anything.

    Args:
        provider: a name from PROVIDERS; device: "cuda" or "cpu".
    Returns:
        (runs here, why not / how it runs)."""
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
    other threads), restoring what was there.

    Args:
        name: a fastgan backend ("triton", "cuda", ...)."""
    import fastgan

    previous = fastgan.get_backend()
    fastgan.set_backend(name)
    try:
        with fastgan.use_backend(name):
            yield
    finally:
        fastgan.set_backend(previous)


def build_call(case: Case, provider: str, inputs: list[torch.Tensor]) -> Callable[[], Any]:
    """The forward of `case.op` by `provider`.

    Args:
        case: the Case; provider: a name from PROVIDERS; inputs: from the op spec's make_inputs.
    Returns:
        a zero-argument function returning the op's output. Raises LookupError when the op is
        not there yet."""
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
    """The timed step of a case and what to compare.

    Args:
        case: the Case; provider: a name from PROVIDERS; device: where the inputs live;
        seed: for the inputs and dy (the same for every provider).
    Returns:
        (step, check): `step()` runs one timed iteration of the case; `check()` returns the
        tensors to compare across providers (output, and gradients for fwdbwd)."""
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
    """Args: dtype the case ran in. Returns: (atol, rtol-of-max) for comparing a provider with
    eager in the benchmarks (a sanity check; the tests hold the tight tolerances)."""
    return (1e-4, 1e-4) if dtype in (torch.float32, torch.float64) else (3e-2, 3e-2)


def compare(got: list[torch.Tensor], want: list[torch.Tensor], dtype) -> tuple[bool, float, str]:
    """Compare a provider's outputs with eager's within `tolerance(dtype)`.

    Args:
        got, want: the tensors of `check()` (y, dx, db), the provider's and eager's.
        dtype: the dtype the case ran in.
    Returns:
        (within tolerance, worst max-abs error, what differed: "" when nothing)."""
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
    """Check one (case, provider) against eager, then time it.

    Args:
        case, provider, device: what to run where.
        quick: shorter timing; flush_l2: see `timing.measure`.
        reference: eager's outputs, to compare with (None for eager itself).
    Returns:
        (record, outputs): the record is JSON-able (status "ok", "mismatch", "skipped" or
        "error", with "reason"); outputs (of eager) serve as the reference for the others."""
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
    """Returns: the JSON record of (case, provider, device) before it runs: status "ok", the
    case's minimum bytes and byte model."""
    return {"op": case.op, "shape": list(case.shape), "dtype": SHORT[case.dtype],
            "pass": case.pass_, "provider": provider, "device": device, "status": "ok",
            "min_bytes": case.min_bytes(), "byte_model": case.spec.byte_model}
