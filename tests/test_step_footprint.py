"""What the steps of fastgan's ProGAN run and keep at activation size, without timing anything.

What runs: every aten or fastgan op is recorded with the shapes it returns (a TorchDispatchMode
sees the fastgan custom ops as single ops, not their insides). An activation is a 4-d tensor whose
first dim is the batch (N = 5, which no weight of this model has as its first dim). On fastgan's
kernels a step must compute activations only with convolutions and fastgan ops; the rest is the
interpolation (one lerp), allocations and views, and under autocast the casts of the 3-channel
images for the first conv. A leaky ReLU, a bias add, a zero fill or a cast of a feature map is an
unfused pass over memory: exactly what the fused path exists to remove.

What is kept: the bytes of the tensors autograd has saved and still holds when the D step's loss
is complete, just before its backward, which is where the step's memory peaks (docs/baselines.md: the
eager step peaks at 11175 MiB at 256x256 fp32, where this count gives 10699 MiB). Counted by
scripts/step_traffic.py under FakeTensorMode at the benchmark's real size (256x256, batch 16,
official widths) without allocating it.
"""

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
import fastgan.penalties as P
from helpers import KERNEL_DEVICE_BACKENDS, load_script
from fastgan.models.progan import Discriminator, Generator

N, RES = 5, 16
aten = torch.ops.aten
# compute ops allowed on activations on the fused path (the lerp and image casts checked apart)
FUSED_PATH_OPS = {aten.convolution.default, aten.convolution_backward.default}
ALLOCATIONS = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
               aten.new_empty.default, aten.new_empty_strided.default}


class ActivationOps(TorchDispatchMode):
    """Counts the non-view ops that return a batch-leading 4-d tensor, by (op, channels)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func not in ALLOCATIONS:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            for t in outs:
                if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == N:
                    self.ops[(func, t.shape[1])] += 1
        return out


def _discriminator(device):
    return Discriminator(resolution=RES, fmap_base=64, fmap_max=16, mbstd_group_size=N).to(device)


def _step_ops(step, device, backend, autocast):
    with fastgan.use_backend(backend), \
            torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        with ActivationOps() as census:
            step().backward()
    return census.ops


def _penalty_step_ops(device, backend, autocast):
    torch.manual_seed(0)
    D = _discriminator(device)
    real, fake = torch.randn(2, N, 3, RES, RES, device=device)
    return _step_ops(lambda: P.gradient_penalty(D, real, fake) + 0 * D(real).sum(), device,
                     backend, autocast)


def _unfused(ops):
    """The recorded ops that have no place on the fused path."""
    bad = {}
    for (func, channels), count in ops.items():
        if func in FUSED_PATH_OPS or func.namespace == "fastgan":
            continue
        if func is aten.lerp.Tensor and channels == 3 and count == 1:
            continue  # the interpolation of the images
        if func is aten._to_copy.default and channels == 3:
            continue  # autocast casts the images for the first conv, and their gradient back
        bad[f"{func} ({channels} channels)"] = count
    return bad


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_penalty_step_computes_activations_only_in_convs_and_fused_ops(device, backend, autocast):
    ops = _penalty_step_ops(device, backend, autocast)
    assert _unfused(ops) == {}
    fused = {str(f) for f, _ in ops if f.namespace == "fastgan"}
    # forward, backward and double backward of bias+lrelu and of minibatch stddev, and the
    # backward of the fused penalty, each on its kernels
    for op in ("bias_act", "minibatch_stddev"):
        for order in ("", "_backward", "_double_backward"):
            assert f"fastgan.{op}{order}.default" in fused
    assert "fastgan.grad_penalty_backward.default" in fused


def test_census_sees_unfused_passes():
    """The same step on the plain-torch reference shows its separate elementwise passes."""
    bad = _unfused(_penalty_step_ops("cpu", "ref", False))
    assert any("leaky_relu_backward" in k for k in bad)
    assert any(k.startswith("aten.add.Tensor") for k in bad)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_generator_step_computes_activations_only_in_convs_and_fused_ops(device, backend,
                                                                        autocast):
    """-D(G(z)).mean() backward: upsampling fused into the convs, pixel norm and bias+lrelu on
    their kernels."""
    torch.manual_seed(0)
    G = Generator(resolution=RES, latent_size=16, fmap_base=64, fmap_max=16).to(device)
    D = _discriminator(device)
    z = torch.randn(N, 16, device=device)
    ops = _step_ops(lambda: -D(G(z)).mean(), device, backend, autocast)
    assert _unfused(ops) == {}
    fused = {str(f) for f, _ in ops if f.namespace == "fastgan"}
    assert {"fastgan.pixel_norm.default", "fastgan.pixel_norm_backward.default"} <= fused


# --- what is kept --------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_penalty_step_keeps_at_most_55_percent_of_eager(device, backend, autocast):
    """Issue 8's memory goal (-45% peak) as the bytes autograd keeps for the official-order D
    at 256x256, batch 16: fastgan's layers and penalty against the same D in plain torch."""
    plain, fused = (load_script("step_traffic").step(f, 256, 16, autocast, "official", device,
                                                     backend)[1] for f in (False, True))
    mib = 2**20
    assert fused <= 0.55 * plain, (f"fastgan keeps {fused / mib:.0f} MiB, plain torch "
                                   f"{plain / mib:.0f} MiB ({fused / plain:.2f}x)")
