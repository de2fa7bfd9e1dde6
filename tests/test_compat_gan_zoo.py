"""fastgan.compat.gan_zoo and fastgan.convert against pytorch_GAN_zoo's layers.

The port is not packaged, so its layers are written here from its published math and key layout
(models/networks/custom_layers.py, mini_batch_stddev_module.py): a torch layer held as `module`
(keys module.weight / module.bias), weight N(0,1)/lrMul, output *after the bias* times
c = sqrt(2/fan_in) * lrMul; pixel norm x * rsqrt(mean x^2 + eps); minibatch stddev over
consecutive groups with the unbiased variance. The classes carry the port's names, which is
what convert recognizes.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
import fastgan.penalties as P
from fastgan.compat import gan_zoo as Z
from compat_checks import F64, close, compare, compare_penalty_steps, randn
from helpers import _CPU_CASES

CPU_BACKENDS = [b for _, b in _CPU_CASES]


class ConstrainedLayer(nn.Module):
    def __init__(self, module, equalized=True, lrMul=1.0, initBiasToZero=True):
        super().__init__()
        self.module, self.equalized = module, equalized
        if initBiasToZero:
            nn.init.zeros_(module.bias)
        if equalized:
            with torch.no_grad():
                module.weight.normal_().div_(lrMul)
            self.weight = lrMul * math.sqrt(2.0 / module.weight[0].numel())

    def forward(self, x):
        y = self.module(x)
        return y * self.weight if self.equalized else y


class EqualizedConv2d(ConstrainedLayer):
    def __init__(self, nChannelsPrevious, nChannels, kernelSize, padding=0, bias=True, **kw):
        super().__init__(nn.Conv2d(nChannelsPrevious, nChannels, kernelSize, padding=padding,
                                   bias=bias), **kw)


class EqualizedLinear(ConstrainedLayer):
    def __init__(self, nChannelsPrevious, nChannels, bias=True, **kw):
        super().__init__(nn.Linear(nChannelsPrevious, nChannels, bias=bias), **kw)


class NormalizationLayer(nn.Module):
    def forward(self, x, epsilon=1e-8):
        return x / torch.sqrt((x * x).mean(1, keepdim=True) + epsilon)


def mini_batch_std_dev(x, subGroupSize=4):
    n, _, h, w = x.shape
    g = min(n, subGroupSize)
    if n % g:
        g = n
    if g == 1:
        return torch.cat([x, x.new_zeros(n, 1, h, w)], 1)
    groups = x.reshape(n // g, g, -1)
    std = (groups.var(1, unbiased=True) + 1e-8).sqrt().mean(1)  # [n // g]
    return torch.cat([x, std.repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, h, w)], 1)


class ZooD(nn.Module):
    """A small discriminator laid out as GAN_zoo's DNet: fromRGB, a down block, minibatch
    stddev (a function in the port: `mbstd`), a 3x3 conv and a dense decision, activations
    called functionally; the down block is an nn.Sequential (conv, pool, lrelu) for convert's
    fusion."""

    def __init__(self, mbstd, c=6, lrMul=1.0):
        super().__init__()
        self.mbstd = mbstd
        self.fromRGB = EqualizedConv2d(3, c, 1, lrMul=lrMul)
        self.down = nn.Sequential(EqualizedConv2d(c, c, 3, padding=1), nn.AvgPool2d(2),
                                  nn.LeakyReLU(0.2))
        self.conv = EqualizedConv2d(c + 1, c, 3, padding=1)
        self.dense = EqualizedLinear(c * 16, c)
        self.decision = EqualizedLinear(c, 1, lrMul=lrMul)

    def forward(self, x):
        y = F.leaky_relu(self.fromRGB(x), 0.2)
        y = self.down(y)
        y = F.leaky_relu(self.conv(self.mbstd(y)), 0.2)
        y = F.leaky_relu(self.dense(y.flatten(1)), 0.2)
        return self.decision(y)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cls,args,kwargs,shape", [
    ("EqualizedConv2d", (5, 4, 3), dict(padding=1), (3, 5, 6, 7)),
    ("EqualizedConv2d", (5, 4, 3), dict(bias=True, lrMul=0.1), (2, 5, 4, 4)),
    ("EqualizedConv2d", (5, 4, 1), dict(equalized=False), (2, 5, 4, 4)),
    ("EqualizedLinear", (7, 3), dict(lrMul=0.01), (4, 7)),
])
def test_layer_equals_port(backend, cls, args, kwargs, shape):
    torch.manual_seed(0)
    ref = globals()[cls](*args, **kwargs).to(F64)
    mine = getattr(Z, cls)(*args, **kwargs).to(F64)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert list(mine.state_dict())[0] == "module.weight"
    if kwargs.get("equalized", True):
        assert math.isclose(mine.weight, ref.weight, rel_tol=1e-15)
    mine.load_state_dict(ref.state_dict())
    with fastgan.use_backend(backend):
        compare(ref, mine, randn(*shape), name=cls)


def test_bias_is_scaled_with_the_output():
    """The quirk kept: the output, bias included, is multiplied by the He constant."""
    layer = Z.EqualizedLinear(4, 2).to(F64)
    with torch.no_grad():
        layer.module.weight.zero_()
        layer.module.bias.fill_(1.0)
    close(layer(randn(3, 4)), torch.full((3, 2), math.sqrt(2 / 4), dtype=F64))


@pytest.mark.parametrize("n,group", [(8, 4), (8, 2), (6, 4), (4, 4), (5, 1), (3, 8)])
def test_minibatch_stddev_equals_port(n, group):
    compare(lambda x: mini_batch_std_dev(x, group), lambda x: Z.miniBatchStdDev(x, group),
            randn(n, 3, 4, 5), name=f"miniBatchStdDev n={n} group={group}")
    with pytest.raises(ValueError, match="subGroupSize"):
        Z.miniBatchStdDev(randn(4, 3, 4, 4), 0)


def test_normalization_layer_equals_port():
    compare(NormalizationLayer(), Z.NormalizationLayer(), randn(3, 5, 4, 4), name="norm")
    compare(NormalizationLayer(), Z.NormalizationLayer(), randn(3, 5, 4, 4), 1e-3, name="eps")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_converted_d_equals_port_with_penalty(backend):
    torch.manual_seed(0)
    ref = ZooD(mini_batch_std_dev, lrMul=0.5).to(F64)
    D = ZooD(Z.miniBatchStdDev, lrMul=0.5).to(F64)  # the user switches the function's import
    D.load_state_dict(ref.state_dict())
    report = fastgan.convert(D)
    assert {p for p, _, _ in report.replaced} == {"fromRGB", "down.0", "conv", "dense",
                                                   "decision"}
    assert [w for _, w in report.fused] == ["[1] AvgPool2d(2) folded into [0]",
                                            "[2] LeakyReLU(0.2) folded into [0]"]
    assert list(D.state_dict()) == list(ref.state_dict())
    real, fake, eps = randn(8, 3, 8, 8, seed=2), randn(8, 3, 8, 8, seed=3), randn(8, seed=4)
    with fastgan.use_backend(backend):
        compare(ref, D, real, name="D")
        compare_penalty_steps(ref, D, lambda m: P.gradient_penalty(
            m, real, fake, epsilon=eps.abs() / 4) + m(real).mean() - m(fake).mean(), "WGAN-GP")


def test_converted_generator_head_equals_port():
    """GAN_zoo's G starts with a dense layer, a leaky ReLU and its NormalizationLayer."""
    torch.manual_seed(0)
    ref = nn.Sequential(EqualizedLinear(5, 12), nn.LeakyReLU(0.2), NormalizationLayer(),
                        nn.Unflatten(1, (3, 2, 2)), EqualizedConv2d(3, 4, 3, padding=1),
                        nn.LeakyReLU(0.2), NormalizationLayer()).to(F64)
    G = copy.deepcopy(ref)
    report = fastgan.convert(G)
    assert [p for p, _, _ in report.replaced] == ["0", "2", "4", "6"]
    assert [type(m).__name__ for m in G] == ["EqualizedLinear", "Identity",
                                             "NormalizationLayer", "Unflatten",
                                             "EqualizedConv2d", "Identity", "NormalizationLayer"]
    compare(ref, G, randn(3, 5), name="G head")
