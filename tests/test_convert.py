"""fastgan.convert's behaviour on models it only partly knows: what it converts, what it leaves
alone and says so, what it fuses, and what it never does (change keys, parameters or a model it
was told not to touch). The layers are the real pro_gan_pytorch ones (pro-gan-pth 3.4)."""

import copy

import pytest
import torch
from torch import nn

import fastgan
from fastgan.compat import akanimax as A
from compat_checks import F64, close, compare, randn
from helpers import _CPU_CASES

# The real port, a test-only dependency that .ci/run installs; a machine without it (the GPU
# machine installs nothing) reports these tests as skipped, with the line that installs it.
pytest.importorskip("pro_gan_pytorch", reason="needs pro-gan-pth: pip install --no-deps "
                    "pro-gan-pth==3.4 (.ci/run does)")
from pro_gan_pytorch import custom_layers as PC, modules as PM  # noqa: E402


class Unknown(nn.Module):
    """A layer no rule knows."""

    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class HalvedConv(PC.EqualizedConv2d):
    """A subclass that changes forward: not the port's math any more."""

    def forward(self, x):
        return super().forward(x) / 2


class NamedConv(PC.EqualizedConv2d):
    """A subclass that only adds an __init__ argument: still the port's math."""

    def __init__(self, *args, tag="", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = PC.EqualizedConv2d(3, 4, 3, padding=1)
        self.unknown = Unknown(4)
        self.halved = HalvedConv(4, 4, 1)
        self.named = NamedConv(4, 4, 3, padding=1, tag="x")
        self.seq = nn.Sequential(PC.EqualizedConv2d(4, 4, 3, padding=1), nn.AvgPool2d(2),
                                 nn.LeakyReLU(0.1), PC.EqualizedConv2d(4, 4, 3, padding=1),
                                 nn.LeakyReLU(0.2), nn.AvgPool2d(2),
                                 PC.EqualizedConv2d(4, 2, 1, stride=2), nn.AvgPool2d(2))
        self.block = PM.DisGeneralConvBlock(2, 2, True)

    def forward(self, x):
        return self.block(self.seq(self.named(self.halved(self.unknown(self.a(x))))))


def _mixed(seed=0):
    torch.manual_seed(seed)
    return Mixed().to(F64)


def test_converts_only_what_it_recognizes_and_keeps_the_numbers():
    model = _mixed()
    ref = copy.deepcopy(model)
    report = fastgan.convert(model)
    replaced = {p for p, _, _ in report.replaced}
    assert replaced == {"a", "named", "seq.0", "seq.3", "seq.6", "block.conv_1", "block.conv_2",
                        "block"}
    assert type(model.unknown) is Unknown and type(model.halved) is HalvedConv
    assert model.named.tag == "x"
    (path, cls, why), = report.left_alone
    assert path == "halved" and cls.endswith("HalvedConv") and "redefines forward" in why
    assert [(p, w) for p, w in report.fused] == [
        ("seq", "[1] AvgPool2d(2) folded into [0]"), ("seq", "[2] LeakyReLU(0.1) folded into [0]"),
        ("seq", "[4] LeakyReLU(0.2) folded into [3]"),
        ("block", "bias + lrelu of conv_1 and conv_2 (the pool follows the lrelu: not fusable)")]
    # the pool after a lrelu stays, and so does the one after a stride-2 conv
    assert [type(m).__name__ for m in model.seq] == [
        "EqualizedConv2d", "Identity", "Identity", "EqualizedConv2d", "Identity", "AvgPool2d",
        "EqualizedConv2d", "AvgPool2d"]
    assert model.seq[0].fused_resample == "down" and model.seq[3].fused_resample is None
    assert list(model.state_dict()) == list(ref.state_dict())
    compare(ref, model, randn(2, 3, 32, 32), name="mixed model")


def test_converting_twice_changes_nothing():
    model = _mixed()
    fastgan.convert(model)
    before = {n: (type(m), dict(vars(m))) for n, m in model.named_modules()}
    report = fastgan.convert(model)
    assert report.replaced == [] and report.fused == []
    assert [p for p, _, _ in report.left_alone] == ["halved"]
    after = {n: (type(m), dict(vars(m))) for n, m in model.named_modules()}
    assert after.keys() == before.keys()
    for name in before:
        assert after[name][0] is before[name][0], name
        assert after[name][1].keys() == before[name][1].keys(), name


def test_dry_run_prints_and_changes_nothing(capsys):
    model = _mixed()
    types = [type(m) for m in model.modules()]
    report = fastgan.convert(model, dry_run=True)
    out = capsys.readouterr().out
    assert out.strip() == str(report)
    assert "dry run" in out and "halved" in out and "redefines forward" in out
    assert [type(m) for m in model.modules()] == types
    assert report.model is model and len(report.replaced) == 8


def test_inplace_false_leaves_the_model_alone():
    model = _mixed()
    report = fastgan.convert(model, inplace=False)
    assert type(model.a) is PC.EqualizedConv2d and type(report.model.a) is A.EqualizedConv2d
    assert report.model.a.weight is not model.a.weight


def test_hooks_and_instance_forwards_are_left_alone():
    hooked = PC.EqualizedConv2d(2, 2, 1)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    patched = PC.EqualizedConv2d(2, 2, 1)
    patched.forward = lambda x: x
    odd_scale = PC.EqualizedConv2d(2, 2, 1)
    odd_scale.scale = 0.5  # the port's is sqrt(2)/sqrt(2) = 1
    model = nn.ModuleDict(dict(hooked=hooked, patched=patched, odd_scale=odd_scale))
    report = fastgan.convert(model)
    reasons = {p: r for p, _, r in report.left_alone}
    assert "hooks" in reasons["hooked"] and "instance" in reasons["patched"]
    assert "scale" in reasons["odd_scale"]
    assert all(type(m) is PC.EqualizedConv2d for m in model.values())


def test_block_with_an_unconverted_child_is_left_alone():
    block = PM.DisGeneralConvBlock(2, 2, True)
    block.conv_1 = HalvedConv(2, 2, 3, padding=1)
    report = fastgan.convert(block)
    reasons = {p: r for p, _, r in report.left_alone}
    assert "conv_1" in reasons["(root)"] and type(block) is PM.DisGeneralConvBlock
    assert type(block.conv_2) is A.EqualizedConv2d


def test_report_text_lists_all_three():
    report = fastgan.convert(_mixed())
    text = str(report)
    assert text.splitlines()[0] == "fastgan.convert: 8 replaced, 4 fused, 1 left alone"
    for section in ("replaced:", "fused:", "left alone:"):
        assert section in text


@pytest.mark.parametrize("kwargs,error", [(dict(inplace=1), "inplace"),
                                          (dict(dry_run="yes"), "dry_run")])
def test_bad_arguments(kwargs, error):
    with pytest.raises(TypeError, match=error):
        fastgan.convert(nn.Linear(2, 2), **kwargs)
    with pytest.raises(TypeError, match="model"):
        fastgan.convert(lambda x: x)


def test_lean_import():
    """fastgan.convert and fastgan.compat load on first use."""
    import subprocess
    import sys
    code = ("import sys, fastgan; assert 'fastgan.compat' not in sys.modules; "
            "fastgan.convert; assert 'fastgan.compat' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", [b for _, b in _CPU_CASES])
def test_fused_sequential_equals_unfused(backend):
    torch.manual_seed(0)
    seq = nn.Sequential(PC.EqualizedConv2d(3, 4, 3, padding=1), nn.AvgPool2d(2),
                        nn.LeakyReLU(0.2), nn.Flatten(), PC.EqualizedLinear(24, 2),
                        nn.LeakyReLU(0.3)).to(F64)
    ref = copy.deepcopy(seq)
    fastgan.convert(seq)
    assert seq[4].fused_negative_slope == 0.3
    with fastgan.use_backend(backend):
        compare(ref, seq, randn(2, 3, 6, 4), name=backend)


@pytest.mark.slow
def test_converted_model_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = nn.Sequential(PC.EqualizedConv2d(3, 4, 1), nn.LeakyReLU(0.2),
                          PM.DisGeneralConvBlock(4, 4, True), PC.MinibatchStdDev()).to(F64)
    ref = copy.deepcopy(model)
    fastgan.convert(model)
    backend = [b for _, b in _CPU_CASES][-1]  # the kernels, where the interpreter runs them
    torch._dynamo.reset()
    x = randn(4, 3, 8, 8)
    with fastgan.use_backend(backend):
        out = torch.compile(model, fullgraph=True)(x)
    close(out, ref(x), "compiled")


class SharedConv(nn.Module):
    """One conv in two places: in a Sequential before a LeakyReLU, and called alone."""

    def __init__(self):
        super().__init__()
        self.conv = PC.EqualizedConv2d(3, 3, 3, padding=1)
        self.seq = nn.Sequential(self.conv, nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.seq(x) + self.conv(x)


def test_a_layer_used_elsewhere_is_not_fused():
    torch.manual_seed(0)
    model = SharedConv().to(F64)
    twice = nn.Sequential(PC.EqualizedConv2d(3, 3, 1), nn.LeakyReLU(0.2)).to(F64)
    twice.append(twice[0])  # the same conv again, with no activation after it
    ref, ref_twice = copy.deepcopy(model), copy.deepcopy(twice)
    report = fastgan.convert(model)
    fastgan.convert(twice)
    assert type(model.conv) is A.EqualizedConv2d and not report.fused
    assert twice[0].fused_negative_slope is None and type(twice[1]) is nn.LeakyReLU
    x = randn(2, 3, 5, 5)
    close(model(x), ref(x), "shared conv")
    close(twice(x), ref_twice(x), "conv twice")


def test_a_compat_layer_with_hooks_is_not_fused():
    seq = nn.Sequential(A.EqualizedConv2d(3, 3, 1), nn.LeakyReLU(0.2)).to(F64)
    seen = []
    seq[0].register_forward_hook(lambda m, i, o: seen.append(o))
    report = fastgan.convert(seq)
    assert not report.fused and type(seq[1]) is nn.LeakyReLU
    x = randn(2, 3, 4, 4)
    seq(x)
    close(seen[0], nn.functional.conv2d(x, seq[0].weight * seq[0].scale, seq[0].bias), "hook")


class EqualizedConv2d(nn.Conv2d):
    """Another codebase's class with the port's name, the port's `scale`, and a learning-rate
    multiplier of its own: not the port's layer."""

    def __init__(self, *args, lr_mul=0.5, **kwargs):
        super().__init__(*args, **kwargs)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.scale = 2 ** 0.5 / fan_in ** 0.5
        self.lr_mul = lr_mul

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.scale * self.lr_mul, self.bias)


def test_a_namesake_with_attributes_of_its_own_is_left_alone():
    model = nn.Sequential(EqualizedConv2d(3, 3, 3, padding=1)).to(F64)
    report = fastgan.convert(model)
    assert type(model[0]) is EqualizedConv2d and report.left_alone and not report.replaced
    assert "lr_mul" in report.left_alone[0][2]


def test_an_activation_with_a_backward_pre_hook_is_not_absorbed():
    seq = nn.Sequential(PC.EqualizedConv2d(3, 3, 1), nn.LeakyReLU(0.2)).to(F64)
    calls = []
    seq[1].register_full_backward_pre_hook(lambda m, g: calls.append(1))
    report = fastgan.convert(seq)
    assert not report.fused and type(seq[1]) is nn.LeakyReLU
    seq(randn(2, 3, 4, 4).requires_grad_()).sum().backward()
    assert calls == [1]


class PixelNorm(nn.Module):
    """Another codebase's PixelNorm: stateless like rosinality's, but over the last dim."""

    def forward(self, x):
        return x / torch.sqrt(torch.mean(x ** 2, dim=-1, keepdim=True) + 1e-8)


class MinibatchStdDev(nn.Module):
    """Another codebase's minibatch stddev with akanimax's name and attribute, but consecutive
    groups (sample n in group n // G)."""

    def __init__(self, group_size=2):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        n, c, h, w = x.shape
        y = x.view(n // self.group_size, self.group_size, c, h, w)
        s = (y.var(1, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))
        s = s.repeat_interleave(self.group_size).view(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, s], 1)


def test_stateless_namesakes_that_compute_otherwise_are_left_alone():
    model = nn.Sequential(PixelNorm(), MinibatchStdDev()).to(F64)
    state = torch.get_rng_state()
    report = fastgan.convert(model)
    assert torch.equal(torch.get_rng_state(), state)  # the check draws from its own generator
    assert type(model[0]) is PixelNorm and type(model[1]) is MinibatchStdDev
    assert not report.replaced and len(report.left_alone) == 2
    x = randn(4, 3, 2, 2)
    close(model(x), model[1](model[0](x)), "unchanged")
    port = nn.Sequential(PC.PixelwiseNorm(), PC.MinibatchStdDev())
    assert len(fastgan.convert(port).replaced) == 2
