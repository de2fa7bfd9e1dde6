"""fastgan.functional.conv2d / conv_transpose2d / conv2d_resample: exact against torch's own
convolutions to the second derivative, with derivatives made of plain convolutions only."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import fastgan
import fastgan.functional as FF
from fastgan.ops import conv2d as cv
from helpers import assert_close

# The conv has no kernels of its own: "ref" is torch's convolution and every other backend runs
# the Functions. On CPU "triton" selects them; on a GPU, "triton" and "cuda" do.
BACKENDS = [pytest.param("cpu", "triton", id="cpu-fastgan")] + [
    pytest.param("cuda", "triton", marks=pytest.mark.cuda, id="cuda-fastgan")]


def _randn(shape, device, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _first_and_second(fn, x, w, seed):
    """y; dx, dw for cotangent dy; and the gradients of <gx, dx> + <gw, dw> w.r.t. x, w and dy."""
    y = fn(x, w)
    dy = _randn(y.shape, y.device, seed, y.dtype).requires_grad_()
    dx, dw = torch.autograd.grad(y, (x, w), dy, create_graph=True)
    gx = _randn(dx.shape, dx.device, seed + 1, dx.dtype)
    gw = _randn(dw.shape, dw.device, seed + 2, dw.dtype)
    second = torch.autograd.grad((dx * gx).sum() + (dw * gw).sum(), (x, w, dy), allow_unused=True)
    return (y, dx, dw) + tuple(torch.zeros_like(t) if g is None else g
                                for g, t in zip(second, (x, w, dy)))


NAMES = ("y", "dx", "dw", "d2/dx", "d2/dw", "d2/ddy")

CONV_CASES = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0, 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 2, 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 0, 1, 1),
    ((2, 3, 7, 6), (4, 3, 3, 3), 2, 1, 1, 1),
    ((2, 3, 8, 9), (5, 3, 5, 5), 2, 2, 1, 1),
    ((1, 4, 9, 8), (6, 2, 3, 1), (2, 1), (1, 0), 1, 2),
    ((1, 2, 9, 9), (3, 2, 3, 3), 1, 2, 2, 1),
]
TRANSPOSED_CASES = [  # (x shape, w shape, stride, padding, output_padding)
    ((2, 3, 4, 5), (3, 4, 4, 4), 2, 1, 0),
    ((2, 3, 4, 5), (3, 4, 3, 3), 2, 1, 1),
    ((2, 3, 5, 4), (3, 2, 3, 3), 2, 0, (1, 0)),
    ((1, 2, 3, 3), (2, 3, 3, 3), 1, 1, 0),
]


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch_to_second_order(device, backend, case):
    xs, ws, stride, padding, dilation, groups = case
    x = _randn(xs, device, 1).requires_grad_()
    w = _randn(ws, device, 2).requires_grad_()
    with fastgan.use_backend(backend):
        got = _first_and_second(lambda x, w: FF.conv2d(x, w, None, stride, padding, dilation,
                                                       groups), x, w, 3)
    want = _first_and_second(lambda x, w: F.conv2d(x, w, None, stride, padding, dilation,
                                                   groups), x, w, 3)
    for g, e, n in zip(got, want, NAMES):
        assert_close(g, e, name=n)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("case", TRANSPOSED_CASES)
def test_conv_transpose2d_matches_torch_to_second_order(device, backend, case):
    xs, ws, stride, padding, out_pad = case
    x = _randn(xs, device, 4).requires_grad_()
    w = _randn(ws, device, 5).requires_grad_()
    with fastgan.use_backend(backend):
        got = _first_and_second(lambda x, w: FF.conv_transpose2d(x, w, None, stride, padding,
                                                                 out_pad), x, w, 6)
    want = _first_and_second(lambda x, w: F.conv_transpose2d(x, w, None, stride, padding,
                                                             out_pad), x, w, 6)
    for g, e, n in zip(got, want, NAMES):
        assert_close(g, e, name=n)


GRADCHECK_CASES = [  # (transposed, stride, padding, output_padding)
    (False, 1, 0, 0), (False, 1, 1, 0), (False, 1, 2, 0), (False, 2, 0, 0), (False, 2, 1, 0),
    (False, 2, 2, 0), (True, 2, 1, 0), (True, 2, 1, 1), (True, 2, 0, 1),
]


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("transposed,stride,padding,out_pad", GRADCHECK_CASES)
def test_gradcheck_gradgradcheck_fp64(device, backend, transposed, stride, padding, out_pad):
    # tiny (the output of a stride-2 transposed conv is 4x its input, and gradgradcheck's cost
    # grows with every element of inputs and output)
    x = _randn((1, 2, 3, 2) if transposed else (1, 2, 5, 4), device, 7).requires_grad_()
    w = _randn((2, 1, 3, 3) if transposed else (2, 2, 3, 3), device, 8).requires_grad_()
    b = _randn((w.shape[1] if transposed else 2,), device, 9).requires_grad_()

    def f(x, w, b):
        with fastgan.use_backend(backend):
            if transposed:
                return FF.conv_transpose2d(x, w, b, stride, padding, out_pad)
            return FF.conv2d(x, w, b, stride, padding)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.ops.append(("convolution_backward", tuple(args[-1])))
        elif "convolution" in func.__name__:
            self.ops.append((func.__name__.split(".")[0], None))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("leaf_weight", [True, False])
def test_penalty_path_is_plain_convolutions_and_skips_unused_weight_grads(device, backend,
                                                                         leaf_weight):
    """dD/dx computes no weight gradient; the penalty's backward never reaches torch's generic
    convolution double backward, asks convolution_backward for weight gradients only, and gives
    torch's values. Weights used directly (leaves) or scaled first (as EqualConv2d does)."""
    w0 = _randn((4, 3, 3, 3), device, 10, torch.float32).requires_grad_()
    w1 = _randn((2, 4, 3, 3), device, 11, torch.float32).requires_grad_()
    x = _randn((2, 3, 8, 8), device, 12, torch.float32).requires_grad_()
    s0, s1 = (1.0, 1.0) if leaf_weight else (0.5, 0.25)

    def penalty_grads(conv, log=None):
        def D(x):
            h = conv(x, w0 if leaf_weight else w0 * s0, None, 1, 1)
            h = conv(F.leaky_relu(h, 0.2), w1 if leaf_weight else w1 * s1, None, 2, 1)
            return h.square().sum((1, 2, 3))

        first, second = _OpLog(), _OpLog()
        with first:
            (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        gp = (g.flatten(1).norm(dim=1) - 1).square().mean()
        with second:
            grads = torch.autograd.grad(gp, (w0, w1))
        return grads, first.ops, second.ops

    with fastgan.use_backend(backend):
        (gw0, gw1), first, second = penalty_grads(FF.conv2d)
    assert not any(op == "convolution_backward" for op, _ in first), first
    assert not any("double_backward" in op for op, _ in second), second
    masks = {m for op, m in second if op == "convolution_backward"}
    assert masks == {(False, True, False)}, second
    (gw0r, gw1r), _, second_ref = penalty_grads(F.conv2d)
    assert_close(gw0, gw0r, name="dGP/dw0")
    assert_close(gw1, gw1r, name="dGP/dw1")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_weight_grad_only_when_asked(device, backend, monkeypatch):
    calls = []
    fwd = cv._ConvWeightGrad.forward
    monkeypatch.setattr(cv._ConvWeightGrad, "forward",
                        staticmethod(lambda *a: calls.append(1) or fwd(*a)))
    x = _randn((1, 2, 5, 5), device, 13).requires_grad_()
    w = _randn((3, 2, 3, 3), device, 14).requires_grad_()
    with fastgan.use_backend(backend):
        torch.autograd.grad(FF.conv2d(x, w, None, 1, 1).sum(), x)
        assert calls == []
        FF.conv2d(x, w, None, 1, 1).sum().backward(inputs=[x])
        assert calls == []
        (gw,) = torch.autograd.grad(FF.conv2d(x, w, None, 1, 1).sum(), w)  # a leaf input
        assert calls == [1]
        FF.conv2d(x, w, None, 1, 1).sum().backward()
        assert calls == [1, 1] and w.grad is not None and x.grad is not None
    assert_close(gw, torch.autograd.grad(F.conv2d(x, w, None, 1, 1).sum(), w)[0], name="dw")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_channels_last_and_autocast_bf16(device, backend):
    x = _randn((2, 3, 6, 7), device, 15, torch.float32).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = _randn((4, 3, 3, 3), device, 16, torch.float32).requires_grad_()
    with fastgan.use_backend(backend):
        y = FF.conv2d(x, w, None, 1, 1)
        dx, dw = torch.autograd.grad(y.square().sum(), (x, w))
        with torch.autocast(device, dtype=torch.bfloat16):
            yb = FF.conv2d(x, w, None, 2, 1)
            (gb,) = torch.autograd.grad(yb.float().square().sum(), x, create_graph=True)
            gwb = torch.autograd.grad(gb.square().sum(), w)[0]
    assert y.is_contiguous(memory_format=torch.channels_last)
    yr = F.conv2d(x, w, None, 1, 1)
    dxr, dwr = torch.autograd.grad(yr.square().sum(), (x, w))
    assert_close(y, yr, name="y")
    assert_close(dx, dxr, name="dx")
    assert_close(dw, dwr, name="dw")
    assert yb.dtype == torch.bfloat16 and gb.dtype == x.dtype and gwb.dtype == w.dtype
    with torch.autocast(device, dtype=torch.bfloat16):
        ybr = F.conv2d(x, w, None, 2, 1)
        (gbr,) = torch.autograd.grad(ybr.float().square().sum(), x, create_graph=True)
        gwbr = torch.autograd.grad(gbr.square().sum(), w)[0]
    assert ybr.dtype == torch.bfloat16
    assert_close(yb, ybr, torch.bfloat16, "y (bf16)")
    assert_close(gb, gbr, torch.bfloat16, "dx (bf16)")
    assert_close(gwb, gwbr, torch.bfloat16, "d2/dw (bf16)")


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_compile_fullgraph(device, backend):
    x = _randn((2, 3, 6, 5), device, 17, torch.float32).requires_grad_()
    w = _randn((4, 3, 3, 3), device, 18, torch.float32).requires_grad_()

    def f(x, w):
        with fastgan.use_backend(backend):
            return FF.conv2d_resample(x, w, "down", padding=1)

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, w)
    dx, dw = torch.autograd.grad(y.square().sum(), (x, w))
    yr = cv.conv2d_resample_ref(x, w, "down", 1, 1)
    dxr, dwr = torch.autograd.grad(yr.square().sum(), (x, w))
    for g, e, n in ((y, yr, "y"), (dx, dxr, "dx"), (dw, dwr, "dw")):
        assert_close(g, e, name=n)


# ---------------------------------------------------------------------------------------------
# Resampling: fused == unfused == the definition, in fp64.

RESAMPLE_CASES = [  # (kernel, padding, H, W)
    (3, 1, 6, 6), (3, 1, 5, 7), (3, 0, 6, 5), (1, 0, 4, 5), (5, 2, 7, 6), (5, 1, 8, 8),
    ((3, 5), (1, 2), 6, 7), (3, 2, 4, 4),
]


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("resample", ["up", "down"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kernel,padding,h,w", RESAMPLE_CASES)
def test_resample_matches_definition(device, backend, resample, fused, kernel, padding, h, w):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = _randn((2, 3, h, w), device, 19).requires_grad_()
    wt = _randn((4, 3, kh, kw), device, 20).requires_grad_()
    with fastgan.use_backend(backend):
        got = _first_and_second(lambda x, wt: FF.conv2d_resample(x, wt, resample, 1, padding,
                                                                 fused), x, wt, 21)
    want = _first_and_second(lambda x, wt: cv.conv2d_resample_ref(x, wt, resample, 1, padding),
                             x, wt, 21)
    for g, e, n in zip(got, want, NAMES):
        assert_close(g, e, name=n)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("resample", ["up", "down"])
def test_resample_gradgradcheck(device, backend, resample):
    x = _randn((1, 2, 3, 2) if resample == "up" else (1, 2, 4, 4), device, 22).requires_grad_()
    w = _randn((1, 2, 3, 3), device, 23).requires_grad_()

    def f(x, w):
        with fastgan.use_backend(backend):
            return FF.conv2d_resample(x, w, resample, 1, 1, True)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


def test_fused_weights_are_the_identities():
    """The 4x4 kernels, written out for a 3x3 one (down: averaged shifts; up: flipped, summed
    shifts, in/out swapped)."""
    w = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    down = cv.fused_down_weight(w)[0, 0]
    up = cv.fused_up_weight(w)[0, 0]
    wp = F.pad(w[0, 0], (1, 1, 1, 1))
    for s in range(4):
        for t in range(4):
            box = wp[s, t] + wp[s + 1, t] + wp[s, t + 1] + wp[s + 1, t + 1]
            assert down[s, t] == box / 4
            flip = F.pad(w[0, 0].flip(0, 1), (1, 1, 1, 1))
            assert up[s, t] == flip[s, t] + flip[s + 1, t] + flip[s, t + 1] + flip[s + 1, t + 1]
    w2 = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    assert cv.fused_up_weight(w2).shape == (3, 5, 4, 4)
    assert cv.fused_down_weight(w2).shape == (5, 3, 4, 4)


@pytest.mark.parametrize("fn", ["fused_down_weight", "fused_up_weight"])
def test_fused_weight_derivatives(fn):
    """The weight maps and their adjoints (each other's backward) to second order, on a
    non-square kernel."""
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(getattr(cv, fn), (w,))
    assert torch.autograd.gradgradcheck(getattr(cv, fn), (w,))


def test_why_not_fusable():
    assert cv.why_not_fusable("down", 3, 1, 1) is None
    assert cv.why_not_fusable("up", 3, 1, 2) is None
    assert cv.why_not_fusable("down", 1, 1, 5) is None
    assert "stride" in cv.why_not_fusable("down", 3, 2, 1)
    assert "negative" in cv.why_not_fusable("up", 1, 1, 1)
    assert "negative" in cv.why_not_fusable("up", (3, 1), 1, (1, 1))
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 1, 1)
    with pytest.raises(ValueError, match="cannot fuse resample='up' exactly"):
        FF.conv2d_resample(x, w, "up", 1, 1, fused=True)
    # auto falls back to the unfused path there, and stays exact
    torch.testing.assert_close(FF.conv2d_resample(x, w, "up", 1, 1),
                               cv.conv2d_resample_ref(x, w, "up", 1, 1))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_bad_input(device, backend):
    x, w = _randn((2, 3, 5, 5), device, 24), _randn((4, 3, 3, 3), device, 25)
    with fastgan.use_backend(backend):
        with pytest.raises(ValueError, match="x has 2 channels but weight.shape"):
            FF.conv2d(x[:, :2], w)
        with pytest.raises(ValueError, match="x must be 4-D"):
            FF.conv2d(x[0], w)
        with pytest.raises(ValueError, match="padding must be an int or a pair"):
            FF.conv2d(x, w, None, 1, "same")
        with pytest.raises(ValueError, match=r"bias must have shape \[4\]"):
            FF.conv2d(x, w, torch.zeros(3, dtype=x.dtype, device=device))
        with pytest.raises(ValueError, match="output_padding must be in"):
            FF.conv_transpose2d(x, w.transpose(0, 1), None, 2, 1, 2)
        with pytest.raises(ValueError, match="resample must be one of"):
            FF.conv2d_resample(x, w, "bilinear")
        with pytest.raises(TypeError, match="weight must be float"):
            FF.conv2d(x, w.long())
