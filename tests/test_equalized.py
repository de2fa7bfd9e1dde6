"""fastgan.nn.EqualConv2d / EqualLinear / FusedLeakyReLU against the formulas in plain torch."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import fastgan
from fastgan.nn import EqualConv2d, EqualLinear, FusedLeakyReLU
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close


def _randn(shape, device="cpu", seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _act(y, m):
    if m.activation == "relu":
        y = F.relu(y)
    elif m.activation == "lrelu":
        y = F.leaky_relu(y, m.alpha)
    return y * m.act_gain


def conv_formula(m: EqualConv2d, x, weight=None, bias=None):
    """docs/math.md's EqualConv2d, op by op: scale, (upsample), conv, (pool), bias, act, gain."""
    weight = m.weight if weight is None else weight
    bias = m.bias if bias is None else bias
    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    w = weight * (m.gain * m.lr_mul / math.sqrt(fan_in))
    if m.resample == "up":
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    y = F.conv2d(x, w, None, m.stride, m.padding)
    if m.resample == "down":
        y = F.avg_pool2d(y, 2)
    if bias is not None:
        y = y + (bias * m.lr_mul).view(1, -1, 1, 1)
    return _act(y, m)


def linear_formula(m: EqualLinear, x):
    w = m.weight * (m.gain * m.lr_mul / math.sqrt(m.in_features))
    y = x @ w.t()
    if m.bias is not None:
        y = y + m.bias * m.lr_mul
    return _act(y, m)


CONV_CONFIGS = [  # kwargs of EqualConv2d(3, 4, ...)
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding=1, activation="lrelu", lr_mul=0.01, bias_init=0.5, act_gain=2.0),
    dict(kernel_size=1, activation="relu", bias=False, gain=1.0),
    dict(kernel_size=3, stride=2, padding=1, activation="lrelu"),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="up"),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="up", fused_resample=False),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="down", bias_init=0.1),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="down", fused_resample=False),
    dict(kernel_size=(1, 3), padding=(0, 2), resample="down", lr_mul=0.5, bias_init=-0.3),
    dict(kernel_size=1, padding=1, resample="up"),  # cannot fuse: falls back, still exact
]


def _conv_layer(device, seed=0, **kw):
    torch.manual_seed(seed)
    m = EqualConv2d(3, 4, **kw).double().to(device)
    if m.bias is not None:
        with torch.no_grad():
            m.bias.add_(_randn(m.bias.shape, device, seed + 100))  # nonzero, per channel
    return m


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("cfg", CONV_CONFIGS,
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_conv_matches_formula(device, backend, cfg, channels_last):
    m = _conv_layer(device, 1, **cfg)
    x = _randn((2, 3, 7, 6), device, 2)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    params = [p for p in (m.weight, m.bias) if p is not None]
    with fastgan.use_backend(backend):
        y = m(x)
        dy = _randn(y.shape, device, 3)
        got = torch.autograd.grad(y, [x] + params, dy)
    yr = conv_formula(m, x)
    want = torch.autograd.grad(yr, [x] + params, dy)
    assert_close(y, yr, name="y")
    for g, w, n in zip(got, want, ("dx", "dweight", "dbias")):
        assert_close(g, w, name=n)
    if cfg.get("resample") and cfg.get("fused_resample") is None:
        assert m.fused == (cfg["kernel_size"] != 1 or cfg.get("padding", 0) == 0)
    if channels_last and device == "cpu" or device == "cuda":
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("cfg", [
    dict(),
    dict(activation="lrelu", lr_mul=0.01, bias_init=1.0),
    dict(activation="relu", bias=False, act_gain=math.sqrt(2)),
])
def test_linear_matches_formula(device, backend, cfg):
    torch.manual_seed(4)
    m = EqualLinear(5, 3, **cfg).double().to(device)
    for shape in ((4, 5), (2, 3, 5)):
        x = _randn(shape, device, 5).requires_grad_()
        params = [p for p in (m.weight, m.bias) if p is not None]
        with fastgan.use_backend(backend):
            y = m(x)
            dy = _randn(y.shape, device, 6)
            got = torch.autograd.grad(y, [x] + params, dy)
        yr = linear_formula(m, x)
        want = torch.autograd.grad(yr, [x] + params, dy)
        assert_close(y, yr, name="y")
        for g, w, n in zip(got, want, ("dx", "dweight", "dbias")):
            assert_close(g, w, name=n)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_leaky_relu(device, backend):
    m = FusedLeakyReLU(4, negative_slope=0.1, scale=1.5).double().to(device)
    with torch.no_grad():
        m.bias.copy_(_randn((4,), device, 7))
    x = _randn((2, 4, 3, 5), device, 8).requires_grad_()
    with fastgan.use_backend(backend):
        y = m(x)
        dx, db = torch.autograd.grad(y.square().sum(), (x, m.bias))
        y0 = FusedLeakyReLU(4, bias=False).double().to(device)(x)
    yr = F.leaky_relu(x + m.bias.view(1, -1, 1, 1), 0.1) * 1.5
    dxr, dbr = torch.autograd.grad(yr.square().sum(), (x, m.bias))
    assert_close(y, yr, name="y")
    assert_close(dx, dxr, name="dx")
    assert_close(db, dbr, name="db")
    assert_close(y0, F.leaky_relu(x, 0.2) * math.sqrt(2), name="y (no bias)")
    assert list(FusedLeakyReLU(4, bias=False).state_dict()) == []


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("cfg", [
    dict(kernel_size=3, padding=1, activation="lrelu", lr_mul=0.5),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="up"),
    dict(kernel_size=3, padding=1, activation="lrelu", resample="down"),
    dict(kernel_size=3, padding=1, activation="relu", resample="down", fused_resample=False),
], ids=["plain", "up", "down", "down-unfused"])
def test_conv_layer_gradgradcheck(device, backend, cfg):
    """fp64 gradgradcheck through conv (+ resampling) + bias_act, w.r.t. x, weight and bias."""
    torch.manual_seed(9)
    m = EqualConv2d(2, 2, **cfg).double().to(device)
    with torch.no_grad():
        m.bias.copy_(_randn((2,), device, 10))
    x = _randn((1, 2, 3, 2) if cfg.get("resample") == "up" else (1, 2, 4, 4), device, 11)
    inputs = (x.requires_grad_(), m.weight.detach().clone().requires_grad_(),
              m.bias.detach().clone().requires_grad_())
    # keep the conv output away from the activation's kink (finite differences straddle it)
    with torch.no_grad(), fastgan.use_backend(backend):
        pre = EqualConv2d(2, 2, **{**cfg, "activation": None}).double().to(device)
        pre.load_state_dict(m.state_dict())
        near = pre(x).abs().min().item()
    assert near > 1e-3, "pick another seed: an output sits on the kink"

    def f(x, w, b):
        with fastgan.use_backend(backend):
            return functional_call(m, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


def _discriminator(device, seed, unfused):
    torch.manual_seed(seed)
    layers = torch.nn.ModuleList([
        EqualConv2d(2, 3, 1, activation="lrelu"),                               # fromRGB
        EqualConv2d(3, 3, 3, padding=1, activation="lrelu"),
        EqualConv2d(3, 4, 3, padding=1, activation="lrelu", resample="down",
                    fused_resample=not unfused),
        EqualConv2d(4, 4, 3, padding=1, activation="lrelu", resample="down",
                    fused_resample=False if unfused else None, lr_mul=0.5),
        EqualLinear(4 * 2 * 2, 3, activation="lrelu"),
        EqualLinear(3, 1, gain=1.0),
    ]).double().to(device)
    with torch.no_grad():
        for layer in layers:
            layer.bias.normal_(0, 0.3)
    return layers


def _run_d(layers, x, formula):
    h = x
    for layer in layers[:4]:
        h = conv_formula(layer, h) if formula else layer(h)
    h = h.flatten(1)
    for layer in layers[4:]:
        h = linear_formula(layer, h) if formula else layer(h)
    return h


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("unfused", [False, True], ids=["fused", "unfused"])
def test_gradient_penalty_parameter_grads(device, backend, unfused):
    """WGAN-GP through a small equalized-lr discriminator: the penalty's parameter gradients
    equal plain torch's (||d sum D(x)/dx|| - 1)^2 autograd, in fp64."""
    layers = _discriminator(device, 12, unfused)
    x = _randn((3, 2, 8, 8), device, 13).requires_grad_()
    params = list(layers.parameters())

    def penalty(formula):
        out = _run_d(layers, x, formula)
        (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        gp = (g.flatten(1).norm(dim=1) - 1).square().mean()
        grads = torch.autograd.grad(gp, params, allow_unused=True)  # the last bias is unused
        return out, gp, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]

    with fastgan.use_backend(backend):
        out, gp, grads = penalty(False)
    out_r, gp_r, grads_r = penalty(True)
    assert_close(out, out_r, name="D(x)")
    assert_close(gp, gp_r, name="GP")
    for (name, _), g, r in zip(layers.named_parameters(), grads, grads_r):
        assert_close(g, r, name=f"dGP/d{name}")


def test_initialization_and_scales():
    torch.manual_seed(14)
    for lr_mul in (1.0, 0.01):
        m = EqualConv2d(64, 128, 3, padding=1, lr_mul=lr_mul, bias_init=0.25)
        w = m.weight.detach().double()
        assert abs(w.mean().item()) * lr_mul < 0.02  # 73728 N(0,1) samples: std error 0.0037
        assert abs(w.std().item() * lr_mul - 1) < 0.02
        assert torch.equal(m.bias, torch.full((128,), 0.25))
        assert m.scale == pytest.approx(math.sqrt(2) * lr_mul / math.sqrt(64 * 9), rel=1e-12)
        # what "equalized" means: the runtime weight has std gain/sqrt(fan_in), whatever lr_mul
        assert (w * m.scale).std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
        lin = EqualLinear(512, 256, lr_mul=lr_mul, bias_init=1.0, gain=1.0)
        assert abs(lin.weight.detach().std().item() * lr_mul - 1) < 0.02
        assert lin.scale == pytest.approx(lr_mul / math.sqrt(512), rel=1e-12)
        assert torch.equal(lin.bias, torch.ones(256))
        with torch.no_grad():  # unit-variance input -> output variance gain^2 (= 1 here)
            out = lin(torch.randn(256, 512)) - lin.bias * lr_mul
        assert out.var().item() == pytest.approx(1.0, rel=0.05)
    assert EqualConv2d(3, 4, 3, bias=False).bias is None
    assert FusedLeakyReLU(5).bias.abs().sum() == 0


def test_state_dict_round_trip():
    for make in (lambda: EqualConv2d(3, 4, 3, padding=1, activation="lrelu", resample="down",
                                     lr_mul=0.1, bias_init=0.2),
                 lambda: EqualLinear(6, 2, activation="relu"),
                 lambda: FusedLeakyReLU(3)):
        a, b = make(), make()
        assert set(a.state_dict()) == ({"weight", "bias"} if hasattr(a, "weight") else {"bias"})
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, 3, 6, 6) if not isinstance(a, EqualLinear) else torch.randn(2, 6)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    m = EqualConv2d(3, 4, 3, bias=False)
    assert set(m.state_dict()) == {"weight"}


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_autocast_bf16(device, backend):
    """Under bf16 autocast: bf16 activations, fp32 parameter gradients, values within bf16
    tolerance of the same layer computed in fp64."""
    torch.manual_seed(15)
    for cfg in (dict(), dict(resample="down"), dict(resample="up")):
        m = EqualConv2d(4, 6, 3, padding=1, activation="lrelu", **cfg).to(device)
        with torch.no_grad():
            m.bias.normal_()
        x = _randn((2, 4, 6, 6), device, 16, torch.float32).to(memory_format=torch.channels_last)
        with fastgan.use_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
            y = m(x)
            dw, db = torch.autograd.grad(y.float().square().sum(), (m.weight, m.bias))
        assert y.dtype == torch.bfloat16 and dw.dtype == db.dtype == torch.float32
        m64 = EqualConv2d(4, 6, 3, padding=1, activation="lrelu", **cfg).double().to(device)
        m64.load_state_dict(m.state_dict())
        y64 = conv_formula(m64, x.double())
        dw64, db64 = torch.autograd.grad(y64.square().sum(), (m64.weight, m64.bias))
        assert_close(y, y64, torch.bfloat16, f"y {cfg}")
        assert_close(dw, dw64, torch.bfloat16, f"dweight {cfg}")
        assert_close(db, db64, torch.bfloat16, f"dbias {cfg}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("resample", [None, "up", "down"])
def test_autocast_gpu(backend, dtype, resample):
    torch.manual_seed(17)
    m = EqualConv2d(32, 16, 3, padding=1, activation="lrelu", resample=resample).cuda()
    with torch.no_grad():
        m.bias.normal_()
    x = _randn((4, 32, 16, 16), "cuda", 18, torch.float32).to(memory_format=torch.channels_last)
    x.requires_grad_()
    with fastgan.use_backend(backend), torch.autocast("cuda", dtype=dtype):
        y = m(x)
        (g,) = torch.autograd.grad(y.float().sum(), x, create_graph=True)
        dw, db = torch.autograd.grad(g.square().sum(), (m.weight, m.bias))
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    m64 = EqualConv2d(32, 16, 3, padding=1, activation="lrelu", resample=resample).double().cuda()
    m64.load_state_dict(m.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = conv_formula(m64, x64)
    (g64,) = torch.autograd.grad(y64.sum(), x64, create_graph=True)
    dw64, db64 = torch.autograd.grad(g64.square().sum(), (m64.weight, m64.bias))
    assert_close(y, y64, dtype, "y")
    assert_close(g, g64, dtype, "dD/dx")
    assert_close(dw, dw64, dtype, "dGP/dweight")
    assert_close(db, db64, dtype, "dGP/dbias")


def test_bad_input():
    m = EqualConv2d(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match=r"EqualConv2d\(3, 4\) got x with 5 channels"):
        m(torch.randn(2, 5, 6, 6))
    with pytest.raises(ValueError, match=r"expects x of shape \[N, C, H, W\], got \(3, 6, 6\)"):
        m(torch.randn(3, 6, 6))
    with pytest.raises(ValueError, match="resample must be one of"):
        EqualConv2d(3, 4, 3, resample="bilinear")
    with pytest.raises(ValueError, match="activation must be one of"):
        EqualConv2d(3, 4, 3, activation="tanh")
    with pytest.raises(ValueError, match="activation must be one of"):
        EqualLinear(3, 4, activation="gelu")
    with pytest.raises(ValueError, match="cannot be fused exactly"):
        EqualConv2d(3, 4, 1, padding=1, resample="up", fused_resample=True)
    with pytest.raises(ValueError, match="cannot be fused exactly.*stride"):
        EqualConv2d(3, 4, 3, stride=2, resample="down", fused_resample=True)
    with pytest.raises(ValueError, match="lr_mul must be > 0"):
        EqualConv2d(3, 4, 3, lr_mul=0)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        EqualConv2d(3, 4, "3")
    with pytest.raises(ValueError, match=r"EqualLinear\(3, 4\) expects x of shape \[\*, 3\]"):
        EqualLinear(3, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"FusedLeakyReLU\(3\) expects"):
        FusedLeakyReLU(3)(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="channels must be a positive int"):
        FusedLeakyReLU(0)
