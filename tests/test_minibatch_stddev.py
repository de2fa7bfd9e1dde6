"""fastgan.functional.minibatch_stddev: every backend against the reference, to the third
derivative, both group layouts, unbiased and several features."""

import pytest
import torch

import fastgan
import fastgan.functional as FF
from fastgan.ops import minibatch_stddev as mb
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close

# (shape, group_size, num_features, layout, unbiased, channels_last): N=6 in groups of 3,
# 33 channels (split over several programs), batch 1 / group_size > N / one channel, 1x1 spatial,
# a chunk of several blocks (H*W > BLOCK_E), a group of 40, and one of 72 (> 64: the kernels
# sweep the group in chunks instead of holding it in one tile).
CASES = [
    ((8, 6, 3, 5), 4, 2, "strided", False, False),
    ((8, 6, 3, 5), 4, 1, "contiguous", True, True),
    ((6, 33, 2, 3), 3, 1, "strided", True, True),
    ((6, 33, 2, 3), 3, 3, "contiguous", False, False),
    ((1, 1, 3, 3), 4, 1, "strided", False, False),
    ((3, 4, 1, 1), 8, 2, "contiguous", True, False),
    ((2, 2, 9, 10), 2, 1, "strided", False, True),
    ((40, 2, 2, 1), 64, 1, "contiguous", False, False),
    ((72, 3, 1, 2), 100, 1, "strided", True, True),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-G{g}-F{f}-{lay[:4]}{'-unb' if u else ''}{'-cl' if cl else ''}"
            for s, g, f, lay, u, cl in CASES]


def _randn(shape, dtype, device, seed, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _eps(shape, group_size):
    """With groups of 2, d/dx of dx is zero but for eps (the centered gg is parallel to x - mu)
    and comes out of a cancellation of O(1) terms, in any precision: a larger eps keeps that
    case well conditioned enough for the fp32 tolerance."""
    return 0.1 if min(group_size, shape[0]) == 2 else 1e-8


def _out_shape(shape, f):
    return (shape[0], shape[1] + f, *shape[2:])


def _by_loops(x, group_size, num_features, eps, layout, unbiased):
    """The definition spelled out sample by sample (independent of the reference's reshapes)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    m, f, cf = n // g, num_features, c // num_features
    members = [[j for j in range(n) if (j % m if layout == "strided" else j // g) == k]
               for k in range(m)]
    extra = x.new_empty(n, f, h, w)
    for k, idx in enumerate(members):
        assert len(idx) == g
        xs = x[idx]
        var = (xs - xs.mean(0)).square().sum(0) / (g - 1 if unbiased else g)
        sigma = (var + eps).sqrt()
        for i in range(f):
            extra[idx, i] = sigma[i * cf:(i + 1) * cf].mean()
    return torch.cat([x, extra], 1)


def _closed_form(x, dy, gg, group_size, num_features, eps, layout, unbiased):
    """The docstring's backward and double backward, written out."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    m, f, cf = n // g, num_features, c // num_features
    d = g - 1 if unbiased else g
    k_ = cf * h * w * d

    def grouped(t):  # [N, ch, H, W] -> [M, G, ch, H, W]
        t = t.reshape(g, m, *t.shape[1:]).transpose(0, 1) if layout == "strided" else \
            t.reshape(m, g, *t.shape[1:])
        return t

    def ungrouped(t):
        return (t.transpose(0, 1) if layout == "strided" else t).reshape(n, *t.shape[2:])

    xg = grouped(x).reshape(m, g, f, cf, h, w)
    ggg = grouped(gg).reshape(m, g, f, cf, h, w)
    mu = xg.mean(1, keepdim=True)
    sigma = ((xg - mu).square().sum(1, keepdim=True) / d + eps).sqrt()
    ds = grouped(dy[:, c:]).sum((1, 3, 4))[:, None, :, None, None, None]  # [M, 1, F, 1, 1, 1]
    kk = (xg - mu) / (k_ * sigma)
    dx = grouped(dy[:, :c]).reshape(m, g, f, cf, h, w) + ds * kk
    t = (ggg * kk).sum((1, 3, 4, 5))  # [M, F]
    g_dy = torch.cat([gg, ungrouped(t[:, None, :, None, None].expand(m, g, f, h, w))], 1)
    g_x = ds / (k_ * sigma) * (ggg - ggg.mean(1, keepdim=True) - (xg - mu)
                               * (ggg * (xg - mu)).sum(1, keepdim=True) / (d * sigma**2))
    return (ungrouped(dx.reshape(m, g, c, h, w)), g_dy, ungrouped(g_x.reshape(m, g, c, h, w)))


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
def test_reference_matches_definition(layout):
    x = _randn((12, 6, 2, 3), torch.float64, "cpu", 0)
    for gs, f, unbiased in ((4, 1, False), (3, 2, True), (12, 3, False), (1, 6, False)):
        want = _by_loops(x, gs, f, 1e-8, layout, unbiased)
        assert_close(mb.minibatch_stddev_ref(x, gs, f, 1e-8, layout, unbiased), want,
                     name=f"group_size={gs} num_features={f}")


def test_strided_layout_is_progan_grouping():
    """Strided: sample n is in group n % (N // G); samples 0 and 2 of 4 (G = 2) share a group."""
    x = torch.zeros(4, 1, 1, 1, dtype=torch.float64)
    x[0] = 2.0  # group 0 = {0, 2}: std 1; group 1 = {1, 3}: std 0
    y = mb.minibatch_stddev_ref(x, 2, eps=0.0)
    assert y[:, 1].flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    y = mb.minibatch_stddev_ref(x, 2, eps=0.0, layout="contiguous")  # groups {0, 1}, {2, 3}
    assert y[:, 1].flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("shape,gs,f,layout,unbiased,cl", CASES[:4], ids=CASE_IDS[:4])
def test_closed_forms_match_reference_autograd(shape, gs, f, layout, unbiased, cl):
    x = _randn(shape, torch.float64, "cpu", 1, cl).requires_grad_()
    dy = _randn(_out_shape(shape, f), torch.float64, "cpu", 2).requires_grad_()
    gg = _randn(shape, torch.float64, "cpu", 3)
    y = mb.minibatch_stddev_ref(x, gs, f, 1e-8, layout, unbiased)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    g_dy, g_x = torch.autograd.grad(dx, (dy, x), gg)
    want = _closed_form(x.detach(), dy.detach(), gg, gs, f, 1e-8, layout, unbiased)
    for got, exp, n in zip((dx, g_dy, g_x), want, ("dx", "d/d dy", "d/d x")):
        assert_close(got, exp, name=n)


def _run(fn, x, dy, gg):
    """y, dx and the second-order grads (w.r.t. dy and x) of fn at x."""
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    g_dy, g_x = torch.autograd.grad(dx, (dy, x), gg)
    return y, dx, g_dy, g_x


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,gs,f,layout,unbiased,cl", CASES, ids=CASE_IDS)
def test_kernels_match_reference(device, backend, dtype, shape, gs, f, layout, unbiased, cl):
    x = _randn(shape, dtype, device, 4, cl).requires_grad_()
    dy = _randn(_out_shape(shape, f), dtype, device, 5).requires_grad_()
    gg = _randn(shape, dtype, device, 6)
    args = (gs, f, _eps(shape, gs), layout, unbiased)
    with fastgan.use_backend(backend):
        got = _run(lambda t: FF.minibatch_stddev(t, *args), x, dy, gg)
    x64, dy64 = (t.detach().double().requires_grad_() for t in (x, dy))  # truth: fp64 reference
    want = _run(lambda t: mb.minibatch_stddev_ref(t, *args), x64, dy64, gg.double())
    if cl and shape[1] > 1 and shape[2] * shape[3] > 1:
        assert got[0].is_contiguous(memory_format=torch.channels_last), "y must stay channels_last"
        assert got[1].is_contiguous(memory_format=torch.channels_last), "dx must stay channels_last"
    assert torch.equal(got[0][:, :shape[1]], x), "y[:, :C] must be x exactly"
    for a, b, n in zip(got, want, ("y", "dx", "d/d dy", "d/d x")):
        assert a.dtype == dtype
        assert_close(a, b, dtype, n)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
def test_half_precision_within_1e2(device, backend, dtype, cl):
    x = _randn((4, 24, 3, 5), dtype, device, 7, cl).requires_grad_()
    dy = _randn((4, 25, 3, 5), dtype, device, 8).requires_grad_()
    gg = _randn((4, 24, 3, 5), dtype, device, 9)
    with fastgan.use_backend(backend):
        got = _run(lambda t: FF.minibatch_stddev(t, 2), x, dy, gg)
    x32, dy32 = (t.detach().float().requires_grad_() for t in (x, dy))
    want = _run(lambda t: mb.minibatch_stddev_ref(t, 2), x32, dy32, gg.float())
    for a, b, n in zip(got, want, ("y", "dx", "d/d dy", "d/d x")):
        assert a.dtype == dtype
        assert_close(a, b, dtype, n)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("layout,unbiased,f,fast", [("strided", False, 2, False),
                                                    ("contiguous", True, 1, True)])
def test_gradcheck_and_gradgradcheck(device, backend, layout, unbiased, f, fast):
    """16 inputs: the interpreter runs a launch in ~20 ms, and full mode makes hundreds."""
    x = _randn((4, 2, 1, 2), torch.float64, device, 10).requires_grad_()
    with fastgan.use_backend(backend):
        fn = lambda t: FF.minibatch_stddev(t, 2, f, 1e-8, layout, unbiased)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), fast_mode=fast)
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=fast)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_third_derivative_through_reference(device, backend):
    x = _randn((4, 2, 1, 2), torch.float64, device, 11).requires_grad_()

    def third(fn):
        (g,) = torch.autograd.grad(fn(x).pow(3).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        return torch.autograd.grad(h.sum(), x)[0]

    with fastgan.use_backend(backend):
        got = third(lambda t: FF.minibatch_stddev(t, 2, 2))
    assert_close(got, third(lambda t: mb.minibatch_stddev_ref(t, 2, 2)), name="third derivative")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_stride0_grads_and_sliced_input(device, backend):
    base = _randn((4, 10, 4, 6), torch.float64, device, 12)
    x = base[:, 1:8, :, ::2].detach().requires_grad_()  # non-contiguous, non-collapsible
    x2 = x.detach().clone().requires_grad_()
    for fn, t in ((lambda t: FF.minibatch_stddev(t, 2, 7, layout="contiguous"), x),
                  (lambda t: mb.minibatch_stddev_ref(t, 2, 7, layout="contiguous"), x2)):
        with fastgan.use_backend(backend):
            # y.sum() hands the op a stride-0 dy, and dx.sum() a stride-0 gg
            (dx,) = torch.autograd.grad(fn(t).sum() + fn(t)[:, -1].square().sum(), t,
                                        create_graph=True)
            dx.sum().backward()
    assert_close(x.grad, x2.grad, name="d2x")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("case", [CASES[2], CASES[-1]], ids=[CASE_IDS[2], CASE_IDS[-1]])
def test_int64_index_path(monkeypatch, device, backend, case):
    """Slices of 2^31 elements switch the in-slice index arithmetic to int64: force it."""
    monkeypatch.setattr(mb, "_INT32_MAX", 0)
    test_kernels_match_reference(device, backend, torch.float64, *case)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_deterministic(device, backend):
    x = _randn((8, 33, 2, 3), torch.float32, device, 13).requires_grad_()
    dy = _randn((8, 34, 2, 3), torch.float32, device, 14).requires_grad_()
    gg = _randn((8, 33, 2, 3), torch.float32, device, 15)
    with fastgan.use_backend(backend):
        first = _run(lambda t: FF.minibatch_stddev(t, 4), x, dy, gg)
        second = _run(lambda t: FF.minibatch_stddev(t, 4), x, dy, gg)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_triton_backend_launches_kernels(monkeypatch):
    if not fastgan.available_backends()["triton"][0]:
        pytest.fail("triton backend should run here (interpreter or GPU)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launched = []
    real_launch = mb._launch
    monkeypatch.setattr(mb, "_launch",
                        lambda k, *a, **kw: (launched.append(k), real_launch(k, *a, **kw)))

    def no_reference(*args):
        raise AssertionError("the reference ran instead of the Triton kernels")

    monkeypatch.setattr(mb, "minibatch_stddev_ref", no_reference)
    x = torch.randn(4, 3, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    with fastgan.use_backend("triton"):
        (dx,) = torch.autograd.grad(FF.minibatch_stddev(x, 2).square().sum(), x,
                                    create_graph=True)
        dx.sum().backward()
    # forward, backward, then dx.sum().backward(): the double backward, and (dx depends on x
    # through dy = 2y too) the backward once more
    assert launched == [mb._minibatch_stddev_fwd_kernel, mb._minibatch_stddev_fill_kernel,
                        mb._minibatch_stddev_bwd_kernel, mb._minibatch_stddev_bwd2_kernel,
                        mb._minibatch_stddev_fill_kernel, mb._minibatch_stddev_bwd_kernel]


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_opcheck(device, backend):
    x = _randn((4, 6, 2, 3), torch.float32, device, 16, True).requires_grad_()
    dy = _randn((4, 8, 2, 3), torch.float32, device, 17).requires_grad_()
    gg = _randn((4, 6, 2, 3), torch.float32, device, 18).requires_grad_()
    args = (2, 2, 1e-8, "contiguous", True, backend)
    torch.library.opcheck(torch.ops.fastgan.minibatch_stddev, (x, *args))
    torch.library.opcheck(torch.ops.fastgan.minibatch_stddev_backward, (dy, x, *args))
    torch.library.opcheck(torch.ops.fastgan.minibatch_stddev_double_backward, (gg, dy, x, *args))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph(monkeypatch, device, backend, compiler):
    """No graph break (fullgraph), the kernels (not the reference) run inside the compiled
    graph, forward and backward match eager."""
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), fastgan.nn.MinibatchStdDev(2),
                                torch.nn.Tanh()).to(device)
    x = torch.randn(4, 3, 2, 2, device=device)
    with fastgan.use_backend(backend):
        eager = model(x)
        (eager_grad,) = torch.autograd.grad(eager.square().sum(), model[0].weight)
        launched = []
        real_launch = mb._launch
        monkeypatch.setattr(mb, "_launch",
                            lambda k, *a, **kw: (launched.append(k), real_launch(k, *a, **kw)))
        monkeypatch.setattr(mb, "minibatch_stddev_ref", lambda *a: pytest.fail("reference ran"))
        compiled = torch.compile(model, fullgraph=True, backend=compiler)(x)
        (compiled_grad,) = torch.autograd.grad(compiled.square().sum(), model[0].weight)
    assert mb._minibatch_stddev_fwd_kernel in launched
    assert mb._minibatch_stddev_bwd_kernel in launched
    assert_close(compiled, eager, name="compiled")
    assert_close(compiled_grad, eager_grad, name="compiled grad")


def test_module_matches_functional():
    layer = fastgan.nn.MinibatchStdDev(group_size=2, num_features=3, eps=1e-4,
                                       layout="contiguous", unbiased=True)
    x = torch.randn(4, 6, 3, 3)
    assert torch.equal(layer(x), FF.minibatch_stddev(x, 2, 3, 1e-4, "contiguous", True))
    assert "layout='contiguous'" in repr(layer) and "num_features=3" in repr(layer)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_empty_inputs(device, backend):
    with fastgan.use_backend(backend):
        assert FF.minibatch_stddev(torch.randn(0, 4, 2, 2, device=device)).shape == (0, 5, 2, 2)
        assert FF.minibatch_stddev(torch.randn(4, 4, 0, 2, device=device), 2, 2).shape == \
            (4, 6, 0, 2)


@pytest.mark.parametrize("x,kwargs,exc,words", [
    (torch.ones(4, 3, 2, 2, dtype=torch.int64), {}, TypeError, "x must be float16"),
    (torch.ones(4, 3, 2), {}, ValueError, r"x must be 4-D, got shape \(4, 3, 2\)"),
    ("not a tensor", {}, TypeError, "x must be a torch.Tensor"),
    (torch.ones(6, 3, 2, 2), {"group_size": 4}, ValueError, r"group_size=4 .*N=6"),
    (torch.ones(4, 3, 2, 2), {"num_features": 2}, ValueError, r"num_features=2 .*C=3"),
    (torch.ones(4, 3, 2, 2), {"layout": "grouped"}, ValueError, "layout must be one of"),
    (torch.ones(4, 3, 2, 2), {"group_size": 1, "unbiased": True}, ValueError, "unbiased=True"),
    (torch.ones(1, 3, 2, 2), {"unbiased": True}, ValueError, "unbiased=True"),
    (torch.ones(4, 3, 2, 2), {"group_size": 0}, ValueError, "group_size must be >= 1"),
    (torch.ones(4, 3, 2, 2), {"num_features": 0}, ValueError, "num_features must be >= 1"),
    (torch.ones(4, 3, 2, 2), {"group_size": 2.0}, TypeError, "group_size must be an int"),
    (torch.ones(4, 3, 2, 2), {"eps": -1.0}, ValueError, "eps must be >= 0"),
    (torch.ones(4, 3, 2, 2), {"eps": "1e-8"}, TypeError, "eps must be a real number"),
    (torch.ones(4, 0, 2, 2), {}, ValueError, "at least one channel"),
    (torch.ones(4, 3, 2, 2), {"unbiased": 1}, TypeError, "unbiased must be a bool"),
])
@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_bad_input_raises_naming_argument(monkeypatch, x, kwargs, exc, words, backend):
    monkeypatch.setattr(mb, "_launch", lambda *a, **k: pytest.fail("launched on bad input"))
    with fastgan.use_backend(backend), pytest.raises(exc, match=words):
        FF.minibatch_stddev(x, **kwargs)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_ops_called_directly_check_their_inputs(device, backend):
    x = torch.randn(4, 3, 2, 2, device=device)
    with pytest.raises((ValueError, RuntimeError), match="grad must have shape"):
        torch.ops.fastgan.minibatch_stddev_backward(torch.ones_like(x), x, 2, 1, 1e-8, "strided",
                                                    False, backend)
    with pytest.raises((ValueError, RuntimeError), match="group_size"):
        torch.ops.fastgan.minibatch_stddev(x, 3, 1, 1e-8, "strided", False, backend)


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    x = torch.randn(4, 3, 2, 2)
    with fastgan.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        FF.minibatch_stddev(x)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with fastgan.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        FF.minibatch_stddev(x)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cl", [False, True])
def test_gpu_progan_shape(backend, dtype, cl):
    """The shape ProGAN uses (512 channels at 4x4), on the GPU, against the fp64 reference."""
    x = _randn((16, 512, 4, 4), dtype, "cuda", 19, cl).requires_grad_()
    dy = _randn((16, 513, 4, 4), dtype, "cuda", 20).requires_grad_()
    gg = _randn((16, 512, 4, 4), dtype, "cuda", 21)
    with fastgan.use_backend(backend):
        got = _run(lambda t: FF.minibatch_stddev(t), x, dy, gg)
    x64, dy64 = (t.detach().double().requires_grad_() for t in (x, dy))
    want = _run(mb.minibatch_stddev_ref, x64, dy64, gg.double())
    for a, b, n in zip(got, want, ("y", "dx", "d/d dy", "d/d x")):
        assert a.dtype == dtype
        assert_close(a, b, dtype, n)


def test_kernels_compile_for_sm90():
    """The interpreter is lenient about types; compile the kernels as the launcher specializes
    them (unit strides, F = 1, block sizes, warps) for an H100 (sm_90, no GPU needed: Triton
    ships ptxas) in one process without TRITON_INTERPRET: ProGAN's [16, 512, 4, 4] in both
    layouts and both group layouts, a group of 128 (the looped, not one-tile, kernels) and a
    256x256 map (bigger tiles). No fp64 math in the non-fp64 kernels.

    Vector loads (more than one element per instruction) are asserted for channels_last only.
    In NCHW the kernels split an element index as hw = e % HW, h = hw // W, w = hw % W, and
    Triton's axis analysis proves no contiguity through the second modulo, even for W a
    multiple of 16 (in a toy kernel w = e % W, h = (e // W) % H do vectorize); on 4x4 maps
    W = 4 is not even a multiple of 16 that a launch specializes on. So NCHW loads are scalar.
    The fill kernel writes one value per position of an extra map and reads a few partials:
    not asserted either."""
    from sm90 import compile_sm90, record_launches

    f32, bf16, f64 = torch.float32, torch.bfloat16, torch.float64
    # (dtype, shape, group_size, layout, channels_last)
    cases = [(dt, (16, 512, 4, 4), 4, "strided", cl) for dt in (f32, bf16, f64)
             for cl in (False, True)]
    cases += [(dt, (128, 512, 4, 4), 128, "strided", True) for dt in (f32, bf16, f64)]
    cases += [(f32, (16, 512, 4, 4), 4, "contiguous", True),
              (f32, (16, 64, 256, 256), 4, "strided", True),
              (torch.float16, (16, 512, 4, 4), 4, "strided", True)]
    specs = []
    for dtype, shape, g, layout, cl in cases:
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)
        grad, gg = mb._empty_out(x, shape[1] + 1), mb._empty_out(x, shape[1])
        args = (g, 1, 1e-8, layout, False)
        tag = dict(dtype=dtype, shape=shape, G=g, layout=layout, cl=cl)
        specs += record_launches(mb, mb._triton_forward, x, *args, tag=tag)
        specs += record_launches(mb, mb._triton_backward, grad, x, *args, tag=tag)
        specs += record_launches(mb, mb._triton_double_backward, gg, grad, x, *args, tag=tag)
    assert len(specs) == 5 * len(cases)  # fwd + fill, bwd, bwd2 + fill
    for r in compile_sm90(specs):
        assert r["ok"], r["error"]
        if r["cl"] and r["kernel"] != "_minibatch_stddev_fill_kernel":
            assert r["max_load_bytes"] > r["dtype"].itemsize, r  # more than 1 element a load
        if r["dtype"] != torch.float64:
            assert r["f64"] <= 4, r
