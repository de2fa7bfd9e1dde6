"""Backend registry and selection.

Backends:
  "ref"     plain differentiable PyTorch; the definition of every op; runs anywhere.
  "triton"  Triton kernels; CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 was set
            before triton was imported (how machines without a GPU test them).
  "cuda"    the compiled extension fastgan._C (csrc/).
  "auto"    per tensor: CUDA tensors use "cuda" when the extension is already built, else
            "triton" (warning once, with the reason); CPU tensors use "ref". Never compiles.

Selection: `set_backend(name)`, the context manager `use_backend(name)`, or the environment
variable FASTGAN_BACKEND (read at import). Asking explicitly for a backend that cannot run on the
given tensor raises RuntimeError saying why.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
import warnings

import torch

# Looked up once: dynamo (torch 2.11) refuses to trace importlib, and triton is not imported here.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None

BACKENDS = ("auto", "cuda", "triton", "ref")
KERNEL_BACKENDS = ("triton", "cuda")


class BackendFallbackWarning(UserWarning):
    """`auto` chose a slower backend than the best one for the device, for the reason given."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


_state = threading.local()
_default = _check_name(os.environ.get("FASTGAN_BACKEND", "auto"))
_warned: set[str] = set()
_auto_gpu_choice: str | None = None  # what "auto" picks for CUDA tensors, decided once


def get_backend() -> str:
    """The backend requested now: the innermost `use_backend`, else `set_backend`'s."""
    return getattr(_state, "override", None) or _default


def set_backend(name: str) -> None:
    """Set the process-wide backend: "auto" | "cuda" | "triton" | "ref"."""
    global _default, _auto_gpu_choice
    _default = _check_name(name)
    _auto_gpu_choice = None


@contextlib.contextmanager
def use_backend(name: str):
    """Use `name` inside the block (this thread only), then restore what was there."""
    _check_name(name)
    previous = getattr(_state, "override", None)
    _state.override = name
    try:
        yield
    finally:
        _state.override = previous


def triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_status(device_type: str) -> tuple[bool, str]:
    if not _TRITON_INSTALLED:
        return False, "triton is not installed"
    if device_type == "cuda":
        return True, "Triton kernels on CUDA tensors"
    if triton_interpreter_on():
        return True, "Triton interpreter (TRITON_INTERPRET=1) on CPU tensors"
    return False, (
        "Triton kernels need CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
        "triton is imported"
    )


def _cuda_status() -> tuple[bool, str]:
    from . import _ext

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    return _ext.status()


def available_backends() -> dict[str, tuple[bool, str]]:
    """{name: (usable now, why)} for "ref", "triton" and "cuda". Never compiles anything."""
    gpu = torch.cuda.is_available()
    cuda_ok, cuda_why = _cuda_status()
    if cuda_ok and not gpu:
        cuda_ok, cuda_why = False, f"no CUDA device visible ({cuda_why})"
    return {
        "ref": (True, "plain PyTorch"),
        "triton": _triton_status("cuda" if gpu else "cpu"),
        "cuda": (cuda_ok, cuda_why),
    }


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, BackendFallbackWarning, stacklevel=4)


def _auto_choice() -> str:
    global _auto_gpu_choice
    if _auto_gpu_choice is None:
        ok, why = _cuda_status()
        if ok:
            from . import _ext

            try:
                _ext.load()
            except RuntimeError as err:
                ok, why = False, str(err)
        if not ok:
            _warn_once("auto-cuda", f"fastgan: CUDA extension unavailable ({why}); using Triton "
                       "kernels. Build it with `python -m fastgan.build`.")
        _auto_gpu_choice = "cuda" if ok else "triton"
    return _auto_gpu_choice


def resolve(tensor: torch.Tensor, op: str, *, kernels: bool = True) -> str:
    """The concrete backend that runs `op` on `tensor` now.

    Args:
        tensor: the op's main input (its device decides "auto").
        op: the op's name, e.g. "pixel_norm" (its CUDA kernels: fastgan_cuda::<op>_forward, ...).
        kernels: False for an op whose non-reference path is made of torch ops only (conv2d):
            every backend can run it, on any device; "auto" off CUDA still gives "ref".

    Returns:
        "ref" | "triton" | "cuda". Raises RuntimeError, saying why, when the requested backend
        cannot run `op` on this tensor.
    """
    return _resolve(get_backend(), tensor.device.type, op, kernels)


def _compile_constant(fn):
    """`torch.compiler.assume_constant_result(fn)` without importing torch._dynamo (~1.5 s, which
    that function imports first): under torch.compile, dynamo calls `fn` at trace time and bakes
    its result into the graph instead of tracing it. The decorator only sets this attribute
    (torch 2.0 to 2.14); tests/test_import.py checks that it still does."""
    fn._dynamo_marked_constant = True
    return fn


# Under torch.compile the choice is made once at trace time and baked into the graph (dynamo
# guards on the requested backend and the device); tracing through it instead would reach the
# extension loader, warnings and dispatcher queries, which dynamo refuses in fullgraph mode.
@_compile_constant
def _resolve(name: str, device: str, op: str, kernels: bool) -> str:
    if name == "ref":
        return "ref"
    if name == "auto":
        if device != "cuda":
            return "ref"
        if not kernels:
            return "cuda"
        if _auto_choice() == "cuda":
            if has_cuda_kernels(op):
                return "cuda"
            _warn_once(f"{op}-cuda", f"fastgan: {_missing_kernels(op)}; using Triton kernels.")
        return "triton"
    if not kernels:
        return name
    if device not in ("cuda", "cpu"):
        raise RuntimeError(f"fastgan backend {name!r} cannot run {op} on {device} tensors")
    if name == "triton":
        ok, why = _triton_status(device)
        if not ok:
            raise RuntimeError(f"fastgan backend 'triton' cannot run {op}: {why}")
        return "triton"
    # name == "cuda": an explicit request may build the extension.
    if device != "cuda":
        raise RuntimeError(f"fastgan backend 'cuda' cannot run {op} on a {device} tensor")
    from . import _ext

    _ext.load(build=True)
    if not has_cuda_kernels(op):
        raise RuntimeError(f"fastgan backend 'cuda' cannot run {op}: {_missing_kernels(op)}")
    return "cuda"


def has_cuda_kernels(op: str) -> bool:
    """Whether the loaded extension registers CUDA kernels for `op` (an extension built from
    older sources may lack a newer op's). Never builds or loads anything."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgan_cuda::{op}_forward", "CUDA")
    except RuntimeError:  # schema not defined
        return False


def _missing_kernels(op: str) -> str:
    return (f"the loaded fastgan CUDA extension has no {op} kernels (fastgan_cuda::{op}_forward); "
            "rebuild it with `python -m fastgan.build`")
