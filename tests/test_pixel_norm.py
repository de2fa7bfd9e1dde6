"""fastgan.functional.pixel_norm: every backend against the reference, to the third derivative."""

import pytest
import torch

import fastgan
import fastgan.functional as FF
from fastgan.ops import pixel_norm as pn
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close

# (shape, dim, channels_last): odd channel counts, 1x1 spatial, batch 1, [N, C], a non-1 dim,
# and C > 1024, which makes the kernels sweep C in several chunks.
SHAPES = [
    ((3, 5, 4, 7), 1, False),
    ((3, 5, 4, 7), 1, True),
    ((2, 33, 1, 1), 1, True),
    ((1, 1, 3, 3), 1, False),
    ((4, 16), 1, False),
    ((2, 3, 5), -1, False),
    ((2, 1100, 1, 2), 1, False),
]


def _input(shape, channels_last, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _eps(shape, dim):
    """With one channel y = x / sqrt(x^2 + eps) is flat and its derivatives cancel to
    ~eps/|x|^3: a larger eps keeps that case well conditioned."""
    return 1e-8 if shape[dim] > 1 else 0.1


def _closed_form(x, dy, gg, eps, dim):
    """The docstring's backward and double backward, written out."""
    mean = lambda t: t.mean(dim, keepdim=True)  # noqa: E731
    r = torch.rsqrt(mean(x * x) + eps)
    m, a, b = mean(x * dy), mean(gg * dy), mean(gg * x)
    dx = r * dy - x * r**3 * m
    g_dy = r * gg - x * r**3 * b
    g_x = r**3 * (x * (3 * r * r * m * b - a) - dy * b - m * gg)
    return dx, g_dy, g_x


@pytest.mark.parametrize("shape,dim,cl", SHAPES)
def test_closed_forms_match_reference_autograd(shape, dim, cl):
    eps = _eps(shape, dim)
    x = _input(shape, cl, torch.float64, "cpu", 1).requires_grad_()
    dy, gg = torch.randn_like(x), torch.randn_like(x)
    y = pn.pixel_norm_ref(x, eps, dim)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    dyv = dy.clone().requires_grad_()
    (dx2,) = torch.autograd.grad(pn.pixel_norm_ref(x, eps, dim), x, dyv, create_graph=True)
    g_dy, g_x = torch.autograd.grad(dx2, (dyv, x), gg)
    want = _closed_form(x.detach(), dy, gg, eps, dim)
    for got, exp, n in zip((dx, g_dy, g_x), want, ("dx", "d/d dy", "d/d x")):
        assert_close(got.detach(), exp, name=n)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,dim,cl", SHAPES)
def test_kernels_match_reference(device, backend, dtype, shape, dim, cl):
    eps = _eps(shape, dim)
    x = _input(shape, cl, dtype, device, 2).requires_grad_()
    dy, gg = torch.randn_like(x), torch.randn_like(x)
    with fastgan.use_backend(backend):
        y = FF.pixel_norm(x, eps, dim)
        (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
        (gx,) = torch.autograd.grad(dx, x, gg)
    x64 = x.detach().double().requires_grad_()  # the truth: the reference in fp64
    yr = pn.pixel_norm_ref(x64, eps, dim)
    (dxr,) = torch.autograd.grad(yr, x64, dy.double(), create_graph=True)
    (gxr,) = torch.autograd.grad(dxr, x64, gg.double())
    assert y.stride() == x.stride(), "output must keep the input's memory format"
    assert_close(y, yr, dtype, "y")
    assert_close(dx, dxr, dtype, "dx")
    assert_close(gx, gxr, dtype, "d2x")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
def test_half_precision_within_1e2(device, backend, dtype, cl):
    x = _input((2, 24, 3, 5), cl, dtype, device, 3).requires_grad_()
    dy = torch.randn_like(x)
    with fastgan.use_backend(backend):
        y = FF.pixel_norm(x)
        (dx,) = torch.autograd.grad(y, x, dy)
    x32 = x.detach().float().requires_grad_()
    yr = pn.pixel_norm_ref(x32)
    (dxr,) = torch.autograd.grad(yr, x32, dy.float())
    assert y.dtype == dx.dtype == dtype
    assert_close(y, yr, dtype, "y")
    assert_close(dx, dxr, dtype, "dx")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gradcheck_and_gradgradcheck(device, backend):
    x = _input((2, 3, 2, 2), False, torch.float64, device, 4).requires_grad_()
    with fastgan.use_backend(backend):
        fn = lambda t: FF.pixel_norm(t, 1e-3)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_third_derivative_through_reference(device, backend):
    x = _input((2, 4, 3), False, torch.float64, device, 5).requires_grad_()

    def third(fn):
        (g,) = torch.autograd.grad(fn(x).pow(3).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        return torch.autograd.grad(h.sum(), x)[0]

    with fastgan.use_backend(backend):
        got = third(FF.pixel_norm)
    assert_close(got, third(pn.pixel_norm_ref), name="third derivative")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_stride0_grad_and_sliced_input(device, backend):
    base = _input((3, 10, 4, 6), False, torch.float32, device, 6)
    x = base[:, 1:8, :, ::2].detach().requires_grad_()  # non-contiguous, non-collapsible
    with fastgan.use_backend(backend):
        FF.pixel_norm(x).sum().backward()  # the grad arriving is a stride-0 expand
    x2 = x.detach().clone().requires_grad_()
    pn.pixel_norm_ref(x2).sum().backward()
    assert_close(x.grad, x2.grad, name="dx")


def test_triton_backend_launches_kernels(monkeypatch):
    if not fastgan.available_backends()["triton"][0]:
        pytest.fail("triton backend should run here (interpreter or GPU)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launched = []
    real_launch = pn._launch
    monkeypatch.setattr(pn, "_launch", lambda k, *a: (launched.append(k), real_launch(k, *a)))

    def no_reference(*args):
        raise AssertionError("the reference ran instead of the Triton kernels")

    monkeypatch.setattr(pn, "pixel_norm_ref", no_reference)
    x = torch.randn(2, 3, 4, 4, device=device, dtype=torch.float64, requires_grad=True)
    with fastgan.use_backend("triton"):
        (dx,) = torch.autograd.grad(FF.pixel_norm(x).sum(), x, create_graph=True)
        dx.sum().backward()
    assert launched == [pn._pixel_norm_fwd_kernel, pn._pixel_norm_bwd_kernel,
                        pn._pixel_norm_bwd2_kernel]


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_opcheck(device, backend):
    x = _input((2, 5, 3, 3), True, torch.float32, device, 7).requires_grad_()
    dy, gg = torch.randn_like(x), torch.randn_like(x)
    torch.library.opcheck(torch.ops.fastgan.pixel_norm, (x, 1e-8, 1, backend))
    torch.library.opcheck(torch.ops.fastgan.pixel_norm_backward,
                          (dy.requires_grad_(), x, 1e-8, 1, backend))
    torch.library.opcheck(torch.ops.fastgan.pixel_norm_double_backward,
                          (gg, dy, x, 1e-8, 1, backend),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1), fastgan.nn.PixelNorm(), torch.nn.Tanh())
    model = model.to(device)
    x = torch.randn(2, 3, 4, 4, device=device)
    with fastgan.use_backend(backend):
        eager = model(x)
        # On CPU, aot_eager traces (fake tensors, AOTAutograd) without inductor's C++ build.
        compiler = "inductor" if device == "cuda" else "aot_eager"
        compiled = torch.compile(model, fullgraph=True, backend=compiler)(x)
    assert_close(compiled, eager, name="compiled")


def test_module_matches_functional():
    layer = fastgan.nn.PixelNorm(eps=1e-4)
    x = torch.randn(2, 7, 3, 3)
    assert torch.equal(layer(x), FF.pixel_norm(x, 1e-4))
    assert "eps=0.0001" in repr(layer)


@pytest.mark.parametrize("bad,exc,words", [
    (torch.ones(2, 3, dtype=torch.int64), TypeError, "x must be float16"),
    (torch.ones(5), ValueError, "x must have at least 2 dims"),
    ("not a tensor", TypeError, "x must be a torch.Tensor"),
    (torch.ones(2, 0, 3), ValueError, "non-empty dim 1"),
])
def test_bad_input_raises_naming_argument(bad, exc, words):
    with pytest.raises(exc, match=words):
        FF.pixel_norm(bad)


@pytest.mark.parametrize("eps,exc", [(-1e-8, ValueError), (float("nan"), ValueError),
                                     ("1e-8", TypeError)])
def test_bad_eps_raises(eps, exc):
    with pytest.raises(exc, match="eps must be"):
        FF.pixel_norm(torch.ones(2, 3), eps)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("shape,dim", [((4, 16, 5, 0), 1), ((2, 0, 3), 2), ((0, 3, 2), 1)])
def test_kernel_op_on_empty_tensors(device, backend, shape, dim):
    """The op itself (the wrapper hands empty tensors to the reference) on tensors emptied by
    any dim, a size-0 inner dim included, to the double backward."""
    x = torch.randn(shape, device=device, requires_grad=True)
    y = torch.ops.fastgan.pixel_norm(x, 1e-8, dim, backend)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert y.shape == g.shape == gg.shape == x.shape


def test_bad_dim_raises():
    with pytest.raises(ValueError, match=r"dim must be an int in \[-3, 3\)"):
        FF.pixel_norm(torch.ones(2, 3, 4), dim=3)


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    x = torch.randn(2, 3)
    with fastgan.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        FF.pixel_norm(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastgan.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        FF.pixel_norm(x)


def test_kernels_compile_for_sm90():
    """The interpreter is lenient about types; compile the kernels as the launcher specializes
    them for ProGAN shapes (the [N, 512] latent, 4x4 and 256x256 maps, NCHW and channels_last:
    unit strides, block sizes, warps) for an H100 (sm_90, no GPU needed: Triton ships ptxas) in
    one process without TRITON_INTERPRET. Every variant must load more than one element per
    instruction (along the inner positions for NCHW, along the channels for channels_last and
    [N, C]), and the non-fp64 ones do no fp64 math but rounding the `eps: tl.float64` argument
    once."""
    from sm90 import compile_sm90, record_launches

    specs = []
    layouts = [((16, 512), False), ((16, 512, 4, 4), False), ((16, 512, 4, 4), True),
               ((16, 64, 256, 256), False), ((16, 64, 256, 256), True)]
    cases = [(dt, s, cl) for dt in (torch.float32, torch.bfloat16, torch.float64)
             for s, cl in layouts] + [(torch.float16, (16, 512, 4, 4), True)]
    for dtype, shape, cl in cases:
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)
        tag = dict(dtype=dtype, shape=shape, cl=cl)
        specs += record_launches(pn, pn._triton_forward, x, 1e-8, 1, tag=tag)
        specs += record_launches(pn, pn._triton_backward, x, x, 1e-8, 1, tag=tag)
        specs += record_launches(pn, pn._triton_double_backward, x, x, x, 1e-8, 1, tag=tag)
    assert len(specs) == 3 * len(cases)
    for r in compile_sm90(specs):
        assert r["ok"], r["error"]
        assert r["max_load_bytes"] > r["dtype"].itemsize, r  # more than 1 element a load
        if r["dtype"] != torch.float64:
            assert r["f64"] <= 4, r
