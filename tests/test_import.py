"""`import fastgan` stays lean (no torch._dynamo, ~1.5 s of import) and torch.compile still
traces fastgan layers without graph breaks. Each check runs in a fresh interpreter: in this test
process other tests may have imported torch._dynamo already."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

from fastgan._backend import triton_interpreter_on

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter at the repository root; return its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=_ROOT,
                          env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.parametrize("modules", ["fastgan", "fastgan.nn, fastgan.functional",
                                     "fastgan.nn, fastgan.functional, fastgan.models"])
def test_import_leaves_dynamo_out(modules):
    out = _python(f"""
        import sys
        import {modules}
        print(sorted(m for m in sys.modules if m.split(".")[:2] == ["torch", "_dynamo"]))
    """)
    assert out.strip() == "[]", f"import {modules} imported {out.strip()}"


def test_lazy_attributes_load_on_first_use():
    out = _python("""
        import sys
        import fastgan
        lazy = ("compat", "losses", "metrics", "penalties")
        print([f"fastgan.{m}" in sys.modules for m in lazy])
        print(callable(fastgan.metrics.sliced_wasserstein), callable(fastgan.convert),
              callable(fastgan.penalties.gradient_penalty), callable(fastgan.losses.wgan_d_loss))
    """)
    assert out.split("\n")[:2] == ["[False, False, False, False]", "True True True True"], out


def test_backend_choice_is_marked_the_way_torch_marks_constants():
    """_backend marks its resolver as torch.compiler.assume_constant_result would, without
    importing dynamo: the decorator must still set exactly that attribute, and nothing else."""
    from fastgan import _backend

    def probe():
        return 0

    marked = torch.compiler.assume_constant_result(probe)
    assert vars(marked) == {"_dynamo_marked_constant": True}
    assert vars(_backend._resolve) == vars(marked)


@pytest.mark.parametrize("backend", ["ref"] + (["triton"] if triton_interpreter_on() else []))
def test_layer_stack_compiles_fullgraph_after_a_lean_import(backend):
    """fastgan imported first (no dynamo), then torch.compile(fullgraph=True) of PixelNorm,
    EqualConv2d (fused down-sampling conv) and FusedLeakyReLU (bias_act): no graph break, the
    same output and parameter gradients as eager."""
    out = _python(f"""
        import sys
        import torch
        import fastgan
        assert "torch._dynamo" not in sys.modules
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            fastgan.nn.PixelNorm(),
            fastgan.nn.EqualConv2d(3, 5, 3, padding=1, resample="down"),
            fastgan.nn.FusedLeakyReLU(5),
            fastgan.nn.EqualConv2d(5, 4, 1, activation="lrelu"),
        ).double()
        x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
        with fastgan.use_backend({backend!r}):
            eager = model(x)
            eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
            compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
            grads = torch.autograd.grad(compiled.square().sum(), list(model.parameters()))
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        print("ok", len(grads))
    """)
    assert out.split() == ["ok", "5"]  # 2 + 1 + 2 parameters
