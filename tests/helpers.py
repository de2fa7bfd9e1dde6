"""What the tests share: device/backend parameters, tolerances, `assert_close`, `load_script`.

    from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close

(tests/ is on sys.path under pytest's default import mode, as for conftest). Import it from test
modules only: tests/conftest.py sets TRITON_INTERPRET=1 on a machine without a GPU before this
module imports triton, and the CPU Triton cases below exist only with the interpreter on.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
import torch

from fastgan._backend import triton_interpreter_on

HAS_CUDA = torch.cuda.is_available()
SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "scripts"

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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None,
                 name: str = "") -> None:
    """Max abs error within rtol * max|expected| (a scale-aware relative check, robust to
    elements near zero).

    Args:
        actual, expected: tensors of the same shape.
        dtype: the dtype the computation ran in, which picks rtol from RTOL (default: actual's).
        name: what is compared, for the failure message.
    Returns:
        None; raises AssertionError with the error and the bound when they differ."""
    rtol = RTOL[dtype or actual.dtype]
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    scale = max(expected.double().abs().max().item(), 1e-12) if expected.numel() else 1.0
    assert err <= rtol * scale, f"{name}: max abs error {err:.3e} > {rtol:g} * {scale:.3e}"


def load_script(name: str):
    """A developer script as a module (scripts/ is not part of the package).

    Args:
        name: the file name in scripts/, without ".py".
    Returns:
        the loaded module, also in sys.modules under `name` (dataclasses look their module up
        there). scripts/ goes on sys.path first, so that a script imports its sibling modules
        by name, as when it is run."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
