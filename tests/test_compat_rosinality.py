"""fastgan.compat.rosinality and fastgan.convert against rosinality/progressive-gan-pytorch.

The port is not packaged, so its layers are written here from its published math and key layout
(model.py): an `EqualLR` forward pre-hook that renames the layer's `weight` to `weight_orig` and
sets weight = weight_orig * sqrt(2 / fan_in) before each call (keys conv.weight_orig,
conv.bias); pixel norm x / sqrt(mean x^2 + 1e-8); ConvBlock = nn.Sequential of (conv,
[PixelNorm,] LeakyReLU(0.2)) twice. The classes carry the port's names, which is what convert
recognizes.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
import fastgan.penalties as P
from fastgan.compat import rosinality as R
from compat_checks import F64, compare, compare_penalty_steps, randn
from helpers import _CPU_CASES

CPU_BACKENDS = [b for _, b in _CPU_CASES]


class EqualLR:
    def __init__(self, name):
        self.name = name

    def __call__(self, module, inputs):
        orig = getattr(module, self.name + "_orig")
        setattr(module, self.name, orig * math.sqrt(2 / orig[0].numel()))


def _equal_lr(layer):
    weight = layer.weight
    del layer._parameters["weight"]
    layer.register_parameter("weight_orig", nn.Parameter(weight.data.normal_()))
    nn.init.zeros_(layer.bias)
    layer.register_forward_pre_hook(EqualLR("weight"))
    return layer


class EqualConv2d(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = _equal_lr(nn.Conv2d(*args, **kwargs))

    def forward(self, x):
        return self.conv(x)


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = _equal_lr(nn.Linear(in_dim, out_dim))

    def forward(self, x):
        return self.linear(x)


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class ConvBlock(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, padding, kernel_size2=None,
                 padding2=None, pixel_norm=True):
        super().__init__()
        layers = []
        for cin, k, p in ((in_channel, kernel_size, padding),
                          (out_channel, kernel_size2 or kernel_size,
                           padding if padding2 is None else padding2)):
            layers += [EqualConv2d(cin, out_channel, k, padding=p)]
            layers += [PixelNorm()] if pixel_norm else []
            layers += [nn.LeakyReLU(0.2)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv(x)


class RosD(nn.Module):
    """A small discriminator laid out as the port's: ConvBlocks without pixel norm, functional
    2x2 pools, the batch std appended before a 4x4 block, a dense head (an EqualLinear)."""

    def __init__(self, c=6):
        super().__init__()
        self.from_rgb = EqualConv2d(3, c, 1)
        self.block = ConvBlock(c, c, 3, 1, pixel_norm=False)
        self.final = ConvBlock(c + 1, c, 3, 1, 4, 0, pixel_norm=False)
        self.linear = EqualLinear(c, 1)

    def forward(self, x):
        y = F.avg_pool2d(self.block(self.from_rgb(x)), 2)
        std = y.std(0).mean().expand(y.shape[0], 1, 4, 4)
        return self.linear(self.final(torch.cat([y, std], 1)).flatten(1))


class RosG(nn.Module):
    """A small generator laid out as the port's: pixel-normed ConvBlocks with an upsample."""

    def __init__(self, c=6):
        super().__init__()
        self.code_norm = PixelNorm()
        self.first = ConvBlock(c, c, 4, 3, 3, 1)
        self.second = ConvBlock(c, c, 3, 1)

    def forward(self, z):
        y = self.first(self.code_norm(z)[:, :, None, None])
        return self.second(F.interpolate(y, scale_factor=2))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cls,args,kwargs,shape", [
    ("EqualConv2d", (5, 4, 3), dict(padding=1), (3, 5, 6, 7)),
    ("EqualConv2d", (5, 4, (3, 1)), dict(stride=2), (2, 5, 7, 6)),
    ("EqualLinear", (7, 3), {}, (4, 7)),
    ("ConvBlock", (5, 4, 4, 3, 3, 1), {}, (2, 5, 1, 1)),
    ("ConvBlock", (5, 4, 3, 1), dict(pixel_norm=False), (2, 5, 6, 6)),
])
def test_layer_equals_port(backend, cls, args, kwargs, shape):
    torch.manual_seed(0)
    ref = globals()[cls](*args, **kwargs).to(F64)
    mine = getattr(R, cls)(*args, **kwargs).to(F64)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert any(k.endswith("weight_orig") for k in mine.state_dict())
    mine.load_state_dict(ref.state_dict())
    with fastgan.use_backend(backend):
        compare(ref, mine, randn(*shape), name=cls)


def test_conv_block_fuses_only_conv_then_lrelu():
    plain = R.ConvBlock(4, 4, 3, 1, pixel_norm=False)
    assert [type(m).__name__ for m in plain.conv] == ["EqualConv2d", "Identity"] * 2
    assert plain.conv[0].fused_negative_slope == 0.2
    normed = R.ConvBlock(4, 4, 3, 1)
    assert [type(m).__name__ for m in normed.conv] == ["EqualConv2d", "PixelNorm",
                                                       "LeakyReLU"] * 2
    with pytest.raises(ValueError, match="spectral_norm"):
        R.ConvBlock(4, 4, 3, 1, spectral_norm=True)


def test_pixel_norm_equals_port():
    compare(PixelNorm(), R.PixelNorm(), randn(3, 5, 4, 4), name="PixelNorm")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_converted_models_equal_port(backend):
    torch.manual_seed(0)
    D, G = RosD().to(F64), RosG().to(F64)
    ref_D, ref_G = RosD().to(F64), RosG().to(F64)
    ref_D.load_state_dict(D.state_dict())
    ref_G.load_state_dict(G.state_dict())
    D(randn(2, 3, 8, 8))  # the hooks have set `weight` on each layer once
    keys = list(D.state_dict())
    report = fastgan.convert(D)
    fastgan.convert(G)
    assert list(D.state_dict()) == keys and not report.left_alone
    assert all("weight" not in vars(m) for m in D.modules())  # no stale hook product
    assert all(not m._forward_pre_hooks for m in D.modules())
    assert sum("LeakyReLU" in w for _, w in report.fused) == 4
    real, fake, eps = randn(8, 3, 8, 8, seed=2), randn(8, 3, 8, 8, seed=3), randn(8, seed=4)
    with fastgan.use_backend(backend):
        compare(ref_G, G, randn(4, 6, seed=5), name="G")
        compare(ref_D, D, real, name="D")
        compare_penalty_steps(ref_D, D, lambda m: P.gradient_penalty(
            m, real, fake, epsilon=eps.abs() / 4) + m(real).mean() - m(fake).mean(), "WGAN-GP")


def test_inplace_false_copies_a_model_that_has_run():
    # after a forward, each layer holds the hook's product `weight`, a tensor with a graph,
    # which copy.deepcopy refuses: convert(inplace=False) must still copy the model
    torch.manual_seed(0)
    D = RosD().to(F64)
    x = randn(2, 3, 8, 8)
    ref = D(x)
    report = fastgan.convert(D, inplace=False)
    assert report.model is not D and not report.left_alone
    assert all(type(m).__module__ != "fastgan.compat.rosinality" for m in D.modules())
    assert all(m._forward_pre_hooks for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    close = torch.testing.assert_close
    close(report.model(x), ref)
    close(D(x), ref)


def test_a_torch_layer_held_twice_is_left_alone():
    # two EqualLinear wrappers around the same hooked nn.Linear (tied layers), and a plain
    # module that calls a hooked conv directly: removing a hook would break the other holder
    torch.manual_seed(0)
    a, b = EqualLinear(4, 4), EqualLinear(4, 4)
    b.linear = a.linear
    eq = EqualConv2d(3, 3, 1)
    convs = nn.ModuleDict(dict(eq=eq, raw=eq.conv))
    model = nn.ModuleDict(dict(seq=nn.Sequential(a, nn.LeakyReLU(0.2), b), convs=convs)).to(F64)
    ref = copy.deepcopy(model)
    report = fastgan.convert(model)
    assert not report.replaced and len(report.left_alone) == 3
    assert all("also held" in r for _, _, r in report.left_alone)
    x, y = randn(3, 4), randn(2, 3, 4, 4)
    torch.testing.assert_close(model["seq"](x), ref["seq"](x))
    torch.testing.assert_close(model["convs"]["raw"](y), ref["convs"]["raw"](y))
    two = fastgan.convert(nn.Sequential(a, b).to(F64))  # the prepare of each tolerates the other
    assert len(two.left_alone) == 2
