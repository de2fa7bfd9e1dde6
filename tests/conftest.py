"""Shared test setup.

Without a GPU, Triton kernels run through the interpreter: TRITON_INTERPRET=1 must be set before
triton is first imported, which is why it happens here, at the top of the first conftest.
"""

import importlib.util
import os
import pathlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgan  # noqa: E402
from fastgan._backend import triton_interpreter_on  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

# (device, backend) pairs that can run here: CPU runs the reference and, through the interpreter,
# the Triton kernels; a GPU runs the Triton kernels and the CUDA extension.
_CPU_CASES = [("cpu", "ref")] + ([("cpu", "triton")] if triton_interpreter_on() else [])
_GPU_CASES = [pytest.param("cuda", b, marks=pytest.mark.cuda, id=f"cuda-{b}")
              for b in ("triton", "cuda")]
DEVICE_BACKENDS = [pytest.param(d, b, id=f"{d}-{b}") for d, b in _CPU_CASES] + _GPU_CASES
KERNEL_DEVICE_BACKENDS = [pytest.param(d, b, id=f"{d}-{b}") for d, b in _CPU_CASES
                          if b != "ref"] + _GPU_CASES

# Relative tolerances against the reference (docs/testing.md): fp32 1e-5, fp16/bf16 1e-2.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_backend():
    """Every test starts on the default backend and leaves none behind."""
    fastgan.set_backend("auto")
    yield
    fastgan.set_backend("auto")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Second-order paths are compared with TF32 off (docs/baselines.md: TF32 costs ~1% already)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 name: str = "") -> None:
    """Max abs error within rtol * max|expected| (a scale-aware relative check, robust to
    elements near zero), with rtol from the dtype the computation ran in."""
    rtol = RTOL[dtype or actual.dtype]
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(expected.double().abs().max().item(), 1e-12) if expected.numel() else 1.0
    assert err <= rtol * scale, f"{name}: max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


def load_script(name: str):
    """scripts/<name>.py as a module (the developer scripts are not part of the package)."""
    path = pathlib.Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
