"""Test setup: the Triton interpreter, the GPU-test skip, and per-test fixtures.

Without a GPU, Triton kernels run through the interpreter: TRITON_INTERPRET=1 must be set before
triton is first imported, which is why it happens here, at the top of the first conftest. What
tests share (parameters, tolerances, assert_close, load_script) lives in tests/helpers.py.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgan  # noqa: E402
from helpers import HAS_CUDA  # noqa: E402


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
