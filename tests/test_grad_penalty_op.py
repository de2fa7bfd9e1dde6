"""fastgan.ops.grad_penalty: per-sample gradient norm and penalty, backends vs the reference."""

import pytest
import torch

import fastgan
from fastgan.ops import grad_penalty as gp
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close

# (shape, layout): odd sizes, channels_last, batch 1, a 1-D and 2-D g, a non-dense slice, and a
# sample of 4500 elements (more than one 4096-element chunk: the two-stage reduction).
SHAPES = [
    ((3, 5, 4, 7), "nchw"),
    ((3, 5, 4, 7), "cl"),
    ((1, 3, 5, 5), "cl"),
    ((4, 9), "nchw"),
    ((5,), "nchw"),
    ((3, 6, 4, 8), "slice"),
    ((2, 4500), "nchw"),
]
MODES = [("gp", 10.0, 1.0), ("gp", 0.37, 1.7), ("r1", 5.0, 1.0)]


def _g(shape, layout, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout == "cl":
        return g.to(memory_format=torch.channels_last)
    if layout == "slice":
        return g[:, 1:5, :, ::2]
    return g


def _run(fn, g, dp, dn, gg):
    """p, norm, dg (= vjp with dp, dn), and the derivative of <dg, gg> w.r.t. g."""
    g = g.detach().requires_grad_()
    p, norm = fn(g)
    (dg,) = torch.autograd.grad((p * dp).sum() + (norm * dn).sum(), g, create_graph=True)
    (d2,) = torch.autograd.grad((dg * gg).sum(), g)
    return p, norm, dg, d2


@pytest.mark.parametrize("mode,weight,target", MODES)
def test_reference_matches_closed_forms(mode, weight, target):
    g = _g((3, 4, 5), "nchw", torch.float64, "cpu", 0)
    p, norm = gp.grad_penalty_ref(g, weight, target, mode, return_norm=True)
    n = g.flatten(1).norm(dim=1)
    want = weight * n**2 if mode == "r1" else weight * (n - target) ** 2 / target**2
    assert_close(p, want, name="p")
    assert_close(norm, n, name="norm")
    # the backward formula of the docstring, with norm as an independent input, against autograd
    dp, dn = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    _, _, dg, _ = _run(lambda t: gp.grad_penalty_ref(t, weight, target, mode, return_norm=True),
                       g, dp, dn, torch.zeros_like(g))
    assert_close(gp._backward_ref(dp, dn, g, n, weight, target, mode), dg.detach(), name="dg")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,weight,target", MODES)
@pytest.mark.parametrize("shape,layout", SHAPES)
def test_kernels_match_reference(device, backend, dtype, mode, weight, target, shape, layout):
    g = _g(shape, layout, dtype, device, 1)
    n = g.shape[0]
    dp = torch.randn(n, dtype=torch.float64, device=device)
    dn = torch.randn(n, dtype=torch.float64, device=device)
    gg = torch.randn(g.shape, dtype=dtype, device=device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    with fastgan.use_backend(backend):
        got = _run(lambda t: gp.grad_penalty(t, weight, target, mode, return_norm=True), g,
                   dp.to(acc), dn.to(acc), gg)
    want = _run(lambda t: gp.grad_penalty_ref(t, weight, target, mode, return_norm=True),
                g.double(), dp, dn, gg.double())
    assert got[0].dtype == got[1].dtype == acc
    assert got[2].dtype == got[3].dtype == dtype
    if layout != "slice":
        assert got[2].stride() == g.stride(), "dg must keep g's memory format"
    for a, b, name in zip(got[:3], want[:3], ("p", "norm", "dg")):
        assert_close(a.detach(), b, dtype, name)
    # d2g sums terms ~ target/norm that cancel: fp32 loses a decade where a norm << target.
    d2_tol = 1e-4 if dtype == torch.float32 else 1e-10
    err = (got[3].double() - want[3]).abs().max().item()
    assert err <= d2_tol * want[3].abs().max().item(), f"d2g: max abs error {err:.3e}"


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32(device, backend, dtype):
    g = (_g((3, 4, 6, 6), "cl", torch.float32, device, 2) * 30).to(dtype).requires_grad_()
    with fastgan.use_backend(backend):
        p, norm = gp.grad_penalty(g, 10.0, 1.0, "gp", return_norm=True)
        (dg,) = torch.autograd.grad(p.sum(), g)
    g32 = g.detach().float().requires_grad_()
    pr, nr = gp.grad_penalty_ref(g32, 10.0, 1.0, "gp", return_norm=True)
    (dgr,) = torch.autograd.grad(pr.sum(), g32)
    assert p.dtype == norm.dtype == torch.float32 and dg.dtype == dtype
    assert_close(p, pr, torch.float32, "p")  # fp32 accumulation of exact half inputs
    assert_close(dg, dgr, dtype, "dg")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gradcheck_and_gradgradcheck(device, backend):
    g = _g((2, 3, 2), "nchw", torch.float64, device, 3).requires_grad_()
    with fastgan.use_backend(backend):
        for mode, w, t in (("gp", 2.5, 0.7), ("r1", 1.5, 1.0)):
            fn = lambda x: gp.grad_penalty(x, w, t, mode, return_norm=True)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (g,))
            assert torch.autograd.gradgradcheck(fn, (g,))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_third_derivative_through_reference(device, backend):
    g = _g((2, 5), "nchw", torch.float64, device, 4).requires_grad_()

    def third(fn):
        (d1,) = torch.autograd.grad(fn(g).pow(3).sum(), g, create_graph=True)
        (d2,) = torch.autograd.grad(d1.square().sum(), g, create_graph=True)
        return torch.autograd.grad(d2.sum(), g)[0]

    with fastgan.use_backend(backend):
        got = third(lambda t: gp.grad_penalty(t, 3.0, 0.8))
    assert_close(got, third(lambda t: gp.grad_penalty_ref(t, 3.0, 0.8)), name="third derivative")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("mode", ["gp", "r1"])
def test_zero_gradient_sample_is_safe(device, backend, mode):
    g = _g((3, 2, 3, 3), "nchw", torch.float32, device, 5)
    g[1] = 0
    g.requires_grad_()
    with fastgan.use_backend(backend):
        p = gp.grad_penalty(g, 10.0, 1.0, mode)
        (dg,) = torch.autograd.grad(p.mean(), g, create_graph=True)
        (d2,) = torch.autograd.grad(dg.square().sum(), g)
    assert torch.isfinite(p).all() and torch.isfinite(dg).all() and torch.isfinite(d2).all()
    assert p[1].item() == (10.0 if mode == "gp" else 0.0)
    assert (dg[1] == 0).all()  # the subgradient torch's norm uses at 0


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 0), (2, 4, 0, 3)])
@pytest.mark.parametrize("mode", ["gp", "r1"])
def test_kernel_op_on_empty_samples(device, backend, shape, mode):
    """The op itself (the wrapper hands empty tensors to the reference): samples with no
    element have norm 0, to the double backward."""
    g = torch.zeros(shape, device=device)
    dp, dn = torch.randn(2, shape[0], device=device)
    got = _run(lambda t: torch.ops.fastgan.grad_penalty(t, 3.0, 0.5, mode, backend), g, dp, dn, g)
    want = _run(lambda t: gp.grad_penalty_ref(t, 3.0, 0.5, mode, return_norm=True), g, dp, dn, g)
    for a, b, name in zip(got, want, ("p", "norm", "dg", "d2")):
        assert_close(a, b, torch.float32, name)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_deterministic(device, backend):
    g = _g((4, 3, 40, 40), "cl", torch.float32, device, 6).requires_grad_()
    with fastgan.use_backend(backend):
        runs = []
        for _ in range(2):
            p = gp.grad_penalty(g)
            runs.append((p, torch.autograd.grad(p.sum(), g)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_triton_backend_launches_kernels(monkeypatch):
    if not fastgan.available_backends()["triton"][0]:
        pytest.fail("triton backend should run here (interpreter or GPU)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    launched = []
    real_launch = gp._launch
    monkeypatch.setattr(gp, "_launch",
                        lambda k, *a, **kw: (launched.append(k), real_launch(k, *a, **kw)))

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran instead of the Triton kernels")

    monkeypatch.setattr(gp, "grad_penalty_ref", no_reference)
    g = torch.randn(2, 3, 4, 4, device=device, dtype=torch.float64, requires_grad=True)
    with fastgan.use_backend("triton"):
        (dg,) = torch.autograd.grad(gp.grad_penalty(g).sum(), g, create_graph=True)
        dg.sum().backward()
    # forward (2), backward (1), double backward (2), then d/d norm flows back through the
    # forward's vjp: the backward kernel once more.
    assert launched == [gp._grad_penalty_fwd_kernel, gp._grad_penalty_fwd_finalize_kernel,
                        gp._grad_penalty_bwd_kernel, gp._grad_penalty_bwd2_kernel,
                        gp._grad_penalty_bwd2_finalize_kernel, gp._grad_penalty_bwd_kernel]


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_opcheck(device, backend):
    g = _g((3, 4, 3, 3), "cl", torch.float32, device, 7).requires_grad_()
    p, norm = (t.detach() for t in torch.ops.fastgan.grad_penalty(g, 10.0, 1.0, "gp", backend))
    dp, dn = torch.randn_like(p).requires_grad_(), torch.randn_like(p).requires_grad_()
    gg = torch.randn(g.shape, device=device)
    torch.library.opcheck(torch.ops.fastgan.grad_penalty, (g, 10.0, 1.0, "gp", backend))
    torch.library.opcheck(torch.ops.fastgan.grad_penalty, (g, 2.0, 1.0, "r1", backend))
    torch.library.opcheck(torch.ops.fastgan.grad_penalty_backward,
                          (dp, dn, g, norm.requires_grad_(), 10.0, 1.0, "gp", backend))
    torch.library.opcheck(torch.ops.fastgan.grad_penalty_backward,
                          (dp, None, g, norm, 2.0, 1.0, "r1", backend))
    torch.library.opcheck(torch.ops.fastgan.grad_penalty_double_backward,
                          (gg, dp, dn, g, norm, 10.0, 1.0, "gp", backend),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    g = torch.randn(3, 2, 4, 4, device=device)
    with fastgan.use_backend(backend):
        eager = gp.grad_penalty(g)
        compiler = "inductor" if device == "cuda" else "aot_eager"
        compiled = torch.compile(lambda t: gp.grad_penalty(t).mean(), fullgraph=True,
                                 backend=compiler)(g)
    assert_close(compiled, eager.mean(), name="compiled")


@pytest.mark.parametrize("args,exc,words", [
    ((torch.ones(2, 3, dtype=torch.int64),), TypeError, "g must be float16"),
    ((torch.ones(()),), ValueError, "g must have at least 1 dims"),
    (("no",), TypeError, "g must be a torch.Tensor"),
    ((torch.ones(2, 3), 10.0, 1.0, "r2"), ValueError, "mode must be one of"),
    ((torch.ones(2, 3), 10.0, 0.0, "gp"), ValueError, "target must be > 0"),
    ((torch.ones(2, 3), "10", 1.0, "gp"), TypeError, "weight must be a real number"),
])
def test_bad_input_raises_naming_argument(args, exc, words):
    with pytest.raises(exc, match=words):
        gp.grad_penalty(*args)


def test_explicit_cuda_on_cpu_raises():
    with fastgan.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        gp.grad_penalty(torch.randn(2, 3))


def test_kernels_compile_for_sm90():
    """The interpreter is lenient about types; compile the kernels as the launcher specializes
    them for an H100 (sm_90, no GPU needed: Triton ships ptxas) in one process without
    TRITON_INTERPRET: gradients of ProGAN's 256x256 RGB input (NCHW and channels_last: the same
    flat kernels) and of a [16, 512, 4, 4] map, both modes, with and without dnorm, dp
    contiguous and a stride-0 expand (what `p.sum()` hands back). The streaming kernels must
    load more than one element per instruction; the finalize kernels read [N, n_chunks]
    partials, which vectorize only when n_chunks is a multiple of 16 (not asserted). No fp64
    math in the non-fp64 kernels (weight and target arrive as fp32 hi/lo pairs)."""
    from sm90 import compile_sm90, record_launches

    cases = [(dt, s, cl) for dt in (torch.float32, torch.bfloat16, torch.float64)
             for s, cl in (((16, 3, 256, 256), False), ((16, 3, 256, 256), True),
                           ((16, 512, 4, 4), False))]
    cases.append((torch.float16, (16, 3, 256, 256), False))
    specs = []
    for dtype, shape, cl in cases:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        fmt = torch.channels_last if cl else torch.contiguous_format
        g = torch.empty(shape, dtype=dtype, device="meta", memory_format=fmt)
        gg = torch.empty_like(g)
        n = shape[0]
        norm, dp = (torch.empty(n, dtype=acc, device="meta") for _ in range(2))
        dp0 = torch.empty(1, dtype=acc, device="meta").expand(n)
        tag = dict(dtype=dtype, shape=shape, cl=cl)
        for mode in ("gp", "r1"):
            specs += record_launches(gp, gp._triton_forward, g, 10.0, 1.0, mode, tag=tag)
        for dp_, dn, w, mode in ((dp0, None, 10.0, "gp"), (dp, dp, 5.0, "r1")):
            specs += record_launches(gp, gp._triton_backward, dp_, dn, g, norm, w, 1.0, mode,
                                     tag=tag)
            specs += record_launches(gp, gp._triton_double_backward, gg, dp_, dn, g, norm, w,
                                     1.0, mode, tag=tag)
    assert len(specs) == 10 * len(cases)
    streaming = ("_grad_penalty_fwd_kernel", "_grad_penalty_bwd_kernel",
                 "_grad_penalty_bwd2_kernel")
    for r in compile_sm90(specs):
        assert r["ok"], r["error"]
        if r["kernel"] in streaming:
            assert r["max_load_bytes"] > r["dtype"].itemsize, r  # more than 1 element a load
        if r["dtype"] != torch.float64:
            assert r["f64"] <= 4, r
