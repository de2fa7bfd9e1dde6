"""Backend selection: names, scoping, availability, and what happens when a backend can't run."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastgan
from fastgan import _backend, _ext


def test_names_and_scoping():
    assert fastgan.get_backend() == "auto"
    fastgan.set_backend("ref")
    with fastgan.use_backend("triton"):
        assert fastgan.get_backend() == "triton"
        with fastgan.use_backend("auto"):
            assert fastgan.get_backend() == "auto"
        assert fastgan.get_backend() == "triton"
    assert fastgan.get_backend() == "ref"
    with pytest.raises(ValueError, match="backend must be one of"):
        fastgan.set_backend("fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastgan.use_backend("cudnn"):
            pass


def test_available_backends_reports_reasons():
    status = fastgan.available_backends()
    assert set(status) == {"ref", "triton", "cuda"}
    for ok, why in status.values():
        assert isinstance(ok, bool) and isinstance(why, str) and why
    assert status["ref"][0]
    if not torch.cuda.is_available():
        assert not status["cuda"][0]


def test_auto_uses_reference_on_cpu():
    x = torch.randn(2, 3)
    assert _backend.resolve(x, "pixel_norm") == "ref"


@pytest.mark.parametrize("op", ["pixel_norm", "bias_act", "grad_penalty"])
def test_extension_without_an_ops_kernels(monkeypatch, op):
    """An extension built from older sources lacks a newer op: "auto" warns once and uses
    Triton, an explicit "cuda" raises saying how to rebuild."""
    fake_cuda = type("T", (), {"device": torch.device("cuda", 0)})()
    monkeypatch.setattr(_backend, "_auto_choice", lambda: "cuda")
    monkeypatch.setattr(_backend, "has_cuda_kernels", lambda name: False)
    monkeypatch.setattr(_backend, "_warned", set())
    with pytest.warns(fastgan.BackendFallbackWarning, match=f"no {op} kernels"):
        assert _backend.resolve(fake_cuda, op) == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert _backend.resolve(fake_cuda, op) == "triton"
    monkeypatch.setattr(_ext, "load", lambda build=False: "test")
    with fastgan.use_backend("cuda"), pytest.raises(RuntimeError, match="fastgan.build"):
        _backend.resolve(fake_cuda, op)


def test_environment_variable_sets_the_default():
    code = "import fastgan; print(fastgan.get_backend())"
    env = {**os.environ, "FASTGAN_BACKEND": "ref"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ref"
