"""fastgan.functional.bias_act: every backend against the reference, to the third derivative."""

import pytest
import torch

import fastgan
import fastgan.functional as FF
from fastgan.ops import bias_act as ba
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close

ACTS = ["linear", "relu", "lrelu"]

# (shape, dim, layout): NCHW, channels_last, [N, C], a last-dim bias on 3-D x, C over one channel
# block (256), a 1x1 spatial map, and one with 4096-element rows (two-stage db reduction).
SHAPES = [
    ((3, 5, 4, 7), 1, "nchw"),
    ((3, 5, 4, 7), 1, "cl"),
    ((6, 16), 1, "nchw"),
    ((2, 3, 5), -1, "nchw"),
    ((2, 300, 1, 3), 1, "cl"),
    ((1, 7, 1, 1), 1, "nchw"),
    ((2, 3, 64, 64), 1, "nchw"),
]


def _input(shape, layout, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if layout == "cl" else x


def _randn(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _derivatives(fn, x, b, dy, gg_x, gg_b):
    """y, (dx, db) for cotangent dy, and d<gg, (dx, db)>/d dy: the first and second derivatives."""
    dy = dy.clone().requires_grad_()
    y = fn(x, b)
    dx, db = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    (g_dy,) = torch.autograd.grad((dx, db), dy, (gg_x, gg_b))
    return y, dx, db, g_dy


@pytest.mark.parametrize("act", ACTS)
def test_closed_forms_match_reference_autograd(act):
    """The docstring's backward and second derivative, written out, against autograd."""
    x = _input((3, 5, 4, 7), "nchw", torch.float64, "cpu", 1).requires_grad_()
    b = _randn((5,), torch.float64, "cpu", 2).requires_grad_()
    dy, gg_x, gg_b = torch.randn_like(x), torch.randn_like(x), torch.randn(5, dtype=torch.float64)
    alpha, gain = 0.3, 1.7
    _, dx, db, g_dy = _derivatives(lambda x, b: ba.bias_act_ref(x, b, act, alpha, gain),
                                   x, b, dy, gg_x, gg_b)
    v = x.detach() + b.detach().view(1, -1, 1, 1)
    slope = {"linear": torch.ones_like(v), "relu": (v > 0).double(),
             "lrelu": torch.where(v > 0, torch.ones_like(v), torch.full_like(v, alpha))}[act]
    assert_close(dx, dy * gain * slope, name="dx")
    assert_close(db, (dy * gain * slope).sum((0, 2, 3)), name="db")
    assert_close(g_dy, (gg_x + gg_b.view(1, -1, 1, 1)) * gain * slope, name="d/d dy")
    # the slope is piecewise constant: nothing flows to x or b at second order
    dx2, db2 = torch.autograd.grad(ba.bias_act_ref(x, b, act, alpha, gain), (x, b), dy,
                                   create_graph=True)
    second = (dx2 * gg_x).sum() + (db2 * gg_b).sum()
    if second.requires_grad:  # linear: dx does not depend on x at all
        g = torch.autograd.grad(second, (x, b), allow_unused=True)
        assert all(t is None or t.abs().max() == 0 for t in g)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,dim,layout", SHAPES)
def test_matches_reference(device, backend, dtype, act, shape, dim, layout):
    x = _input(shape, layout, dtype, device, 3).requires_grad_()
    c = shape[dim]
    b = _randn((c,), dtype, device, 4).requires_grad_()
    dy, gg_x, gg_b = torch.randn_like(x), torch.randn_like(x), _randn((c,), dtype, device, 5)
    alpha, gain = 0.2, 2 ** 0.5
    with fastgan.use_backend(backend):
        y, dx, db, g_dy = _derivatives(lambda x, b: FF.bias_act(x, b, act, alpha, gain, dim),
                                       x, b, dy, gg_x, gg_b)
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = _derivatives(lambda x, b: ba.bias_act_ref(x, b, act, alpha, gain, dim),
                        x64, b64, dy.double(), gg_x.double(), gg_b.double())
    assert y.stride() == x.stride(), "y must keep x's memory format"
    assert y.dtype == dx.dtype == x.dtype and db.dtype == b.dtype
    for got, exp, name in zip((y, dx, db, g_dy), want, ("y", "dx", "db", "d/d dy")):
        assert_close(got, exp, dtype, name)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_no_bias_expanded_grad_and_sliced_bias(device, backend):
    """b=None; the stride-0 gradient `y.sum().backward()` hands over; a strided b."""
    x = _input((2, 6, 3, 5), "nchw", torch.float32, device, 6).requires_grad_()
    base = _randn((12,), torch.float32, device, 7)
    b = base[::2].requires_grad_()  # stride 2
    with fastgan.use_backend(backend):
        y0 = FF.bias_act(x, None, "lrelu", 0.1, 3.0)
        (dx0,) = torch.autograd.grad(y0.sum(), x)
        y1 = FF.bias_act(x, b, "relu", 0.2, 1.0)
        dx1, db1 = torch.autograd.grad(y1.sum(), (x, b))
    xr = x.detach().requires_grad_()
    br = b.detach().requires_grad_()
    assert_close(y0, ba.bias_act_ref(xr, None, "lrelu", 0.1, 3.0), name="y (no bias)")
    (dx0r,) = torch.autograd.grad(ba.bias_act_ref(xr, None, "lrelu", 0.1, 3.0).sum(), xr)
    assert_close(dx0, dx0r, name="dx (no bias)")
    yr = ba.bias_act_ref(xr, br, "relu", 0.2, 1.0)
    dxr, dbr = torch.autograd.grad(yr.sum(), (xr, br))
    assert_close(y1, yr, name="y")
    assert_close(dx1, dxr, name="dx")
    assert_close(db1, dbr, name="db")
    # a channel slice of a bigger map: strides no [outer, C, inner] view of y shares
    big = _input((2, 12, 3, 5), "cl", torch.float32, device, 29)
    xs = big[:, 1::2].requires_grad_()
    with fastgan.use_backend(backend):
        ys = FF.bias_act(xs, b, "lrelu", 0.2, 2.0)
        dxs, dbs = torch.autograd.grad(ys, (xs, b), torch.ones_like(ys))
    xsr = xs.detach().requires_grad_()
    ysr = ba.bias_act_ref(xsr, br, "lrelu", 0.2, 2.0)
    dxsr, dbsr = torch.autograd.grad(ysr, (xsr, br), torch.ones_like(ysr))
    assert_close(ys, ysr, name="y (sliced)")
    assert_close(dxs, dxsr, name="dx (sliced)")
    assert_close(dbs, dbsr, name="db (sliced)")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_many_programs_and_loops(device, backend, layout, monkeypatch):
    """Few programs per launch (each looping over several row blocks, the last ones partly out
    of range) and a multi-program db: the two-stage reduction's every path; and db is bitwise
    the same run to run."""
    monkeypatch.setattr(ba, "_MAX_PROGRAMS", 3)
    monkeypatch.setattr(ba, "_TILE", 64)
    x = _input((5, 9, 6, 7), layout, torch.float64, device, 8).requires_grad_()
    b = _randn((9,), torch.float64, device, 9).requires_grad_()
    dy = torch.randn_like(x)
    with fastgan.use_backend(backend):
        y = FF.bias_act(x, b, "lrelu", 0.2, 1.5)
        dx, db = torch.autograd.grad(y, (x, b), dy)
        y2 = FF.bias_act(x, b, "lrelu", 0.2, 1.5)
        db2 = torch.autograd.grad(y2, b, dy)[0]
    yr = ba.bias_act_ref(x, b, "lrelu", 0.2, 1.5)
    dxr, dbr = torch.autograd.grad(yr, (x, b), dy)
    assert_close(y, yr, name="y")
    assert_close(dx, dxr, name="dx")
    assert_close(db, dbr, name="db")
    assert torch.equal(db, db2), "db must be bitwise reproducible"


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("act", ["linear", "lrelu"])
def test_gradcheck_and_gradgradcheck_fp64(device, backend, act):
    x = _input((2, 3, 2, 3), "cl", torch.float64, device, 10)
    b = _randn((3,), torch.float64, device, 11).requires_grad_()
    # keep x + b away from 0, where the slope jumps (finite differences there would straddle it)
    x = (x + torch.where(x + b.detach().view(1, -1, 1, 1) > 0, 0.1, -0.1)).requires_grad_()

    def f(x, b):
        with fastgan.use_backend(backend):
            return FF.bias_act(x, b, act, 0.3, 1.3)

    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b), fast_mode=True)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_third_derivative_runs_the_kernels(device, backend):
    """The double backward's vjp is the backward op: check it (and its own vjp) numerically."""
    x = _input((2, 3, 2, 3), "nchw", torch.float64, device, 12)
    b = _randn((3,), torch.float64, device, 13)
    y, mask = torch.ops.fastgan.bias_act(x, b, "lrelu", 0.2, 1.1, 1, True, backend)
    gg_x = torch.randn_like(x).requires_grad_()
    gg_b = _randn((3,), torch.float64, device, 14).requires_grad_()

    def f(gx, gb):
        return torch.ops.fastgan.bias_act_double_backward(gx, gb, mask, "lrelu", 0.2, 1.1, 1,
                                                          backend)

    assert torch.autograd.gradcheck(f, (gg_x, gg_b), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (gg_x, gg_b), fast_mode=True)


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("act", ["linear", "lrelu"])
def test_opcheck(device, backend, act):
    x = _input((2, 3, 4, 5), "cl", torch.float32, device, 15).requires_grad_()
    b = _randn((3,), torch.float32, device, 16).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.bias_act, (x, b, act, 0.2, 1.4, 1, True, backend))
    # save_mask=False (what bias_act passes when no gradient can be asked for): no grad inputs
    torch.library.opcheck(torch.ops.fastgan.bias_act,
                          (x.detach(), None, act, 0.2, 1.4, 1, False, backend))
    _, mask = torch.ops.fastgan.bias_act(x.detach(), b.detach(), act, 0.2, 1.4, 1, True, backend)
    dy = torch.randn_like(x).requires_grad_()
    torch.library.opcheck(torch.ops.fastgan.bias_act_backward,
                          (dy, mask, True, act, 0.2, 1.4, 1, backend))
    torch.library.opcheck(torch.ops.fastgan.bias_act_double_backward,
                          (torch.randn_like(x).requires_grad_(),
                           b.detach().clone().requires_grad_(), mask, act, 0.2, 1.4, 1, backend))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_saves_only_the_sign_mask(device, backend):
    """lrelu/relu keep a bool mask of x's size for the backward, linear keeps nothing."""
    x = _input((2, 3, 4, 5), "nchw", torch.float32, device, 17).requires_grad_()
    b = _randn((3,), torch.float32, device, 18).requires_grad_()
    for act, expect in (("lrelu", [(torch.bool, 120)]), ("relu", [(torch.bool, 120)]),
                        ("linear", [(torch.bool, 0)])):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
            with fastgan.use_backend(backend):
                FF.bias_act(x, b, act)
        assert saved == expect, f"{act}: saved {saved}"


class _Counting:
    """Stands in for a Triton kernel: counts launches (and their constexprs), then launches."""

    def __init__(self, kernel, log, name):
        self.kernel, self.log, self.name = kernel, log, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append((self.name, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("device,backend", [p for p in KERNEL_DEVICE_BACKENDS
                                            if p.values[1] == "triton"])
def test_triton_backend_launches_its_kernels(device, backend, monkeypatch):
    log = []
    for name in ("_bias_act_fwd_kernel", "_bias_act_bwd_kernel", "_bias_act_sum_partials_kernel"):
        monkeypatch.setattr(ba, name, _Counting(getattr(ba, name), log, name))
    x = _input((2, 3, 64, 64), "nchw", torch.float32, device, 19).requires_grad_()
    b = _randn((3,), torch.float32, device, 20).requires_grad_()
    with fastgan.use_backend(backend):
        with torch.no_grad():
            FF.bias_act(x, b, "lrelu")
        assert [(n, k["MASK"]) for n, k in log] == [("_bias_act_fwd_kernel", False)], \
            "no mask is written when no gradient can be asked for"
        log.clear()
        y = FF.bias_act(x, b, "lrelu")
        dx, db = torch.autograd.grad(y.square().sum(), (x, b), create_graph=True)
        torch.autograd.grad(dx.sum() + db.sum(), x)
    names = [n for n, _ in log]
    assert names[0] == "_bias_act_fwd_kernel" and log[0][1]["MASK"]
    assert names.count("_bias_act_bwd_kernel") >= 2  # backward, double backward
    assert "_bias_act_sum_partials_kernel" in names  # two programs: a second reduction stage
    assert any(k.get("PARTIAL") for n, k in log if n == "_bias_act_bwd_kernel")
    assert any(k.get("HAS_V") for n, k in log if n == "_bias_act_bwd_kernel")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_compile_fullgraph(device, backend):
    x = _input((2, 4, 3, 5), "cl", torch.float32, device, 21).requires_grad_()
    b = _randn((4,), torch.float32, device, 22).requires_grad_()

    def f(x, b):
        with fastgan.use_backend(backend):
            return FF.bias_act(x, b, "lrelu", 0.2, 1.4)

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, b)
    dx, db = torch.autograd.grad(y.square().sum(), (x, b))
    yr = ba.bias_act_ref(x, b, "lrelu", 0.2, 1.4)
    dxr, dbr = torch.autograd.grad(yr.square().sum(), (x, b))
    assert_close(y, yr, name="y")
    assert_close(dx, dxr, name="dx")
    assert_close(db, dbr, name="db")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_autocast_bf16_cpu_and_mixed_dtypes(device, backend):
    """Under autocast the op keeps x's dtype (bf16 here), reads a fp32 bias as is, and returns
    db in the bias's dtype; values within bf16 tolerance of the fp64 reference."""
    x = _input((2, 5, 3, 4), "cl", torch.bfloat16, device, 23).requires_grad_()
    b = _randn((5,), torch.float32, device, 24).requires_grad_()
    dy = torch.randn_like(x)
    with fastgan.use_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
        y = FF.bias_act(x, b, "lrelu", 0.2, 1.4)
        dx, db = torch.autograd.grad(y, (x, b), dy)
    assert y.dtype == dx.dtype == torch.bfloat16 and db.dtype == torch.float32
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    yr = ba.bias_act_ref(x64, b64, "lrelu", 0.2, 1.4)
    dxr, dbr = torch.autograd.grad(yr, (x64, b64), dy.double())
    assert_close(y, yr, torch.bfloat16, "y")
    assert_close(dx, dxr, torch.bfloat16, "dx")
    assert_close(db, dbr, torch.bfloat16, "db")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_half_precision_gpu(backend, dtype, layout):
    x = _input((4, 64, 16, 16), layout, dtype, "cuda", 25).requires_grad_()
    b = _randn((64,), torch.float32, "cuda", 26).requires_grad_()
    dy, gg_x = torch.randn_like(x), torch.randn_like(x)
    gg_b = _randn((64,), torch.float32, "cuda", 27)
    with fastgan.use_backend(backend):
        got = _derivatives(lambda x, b: FF.bias_act(x, b, "lrelu", 0.2, 2 ** 0.5), x, b, dy,
                           gg_x, gg_b)
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = _derivatives(lambda x, b: ba.bias_act_ref(x, b, "lrelu", 0.2, 2 ** 0.5), x64, b64,
                        dy.double(), gg_x.double(), gg_b.double())
    for g, w, name in zip(got, want, ("y", "dx", "db", "d/d dy")):
        assert_close(g, w, dtype, name)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bad_input(device, backend):
    x = _input((2, 3, 4, 4), "nchw", torch.float32, device, 28)
    with fastgan.use_backend(backend):
        with pytest.raises(ValueError, match=r"b must have shape \[3\]"):
            FF.bias_act(x, torch.zeros(4, device=device))
        with pytest.raises(ValueError, match="b must be 1-D"):
            FF.bias_act(x, torch.zeros(1, 3, device=device))
        with pytest.raises(ValueError, match="act must be one of"):
            FF.bias_act(x, None, "gelu")
        with pytest.raises(TypeError, match="x must be float16"):
            FF.bias_act(x.long())
        with pytest.raises(TypeError, match="x must be a torch.Tensor"):
            FF.bias_act([1.0, 2.0])
        with pytest.raises(ValueError, match="dim must be an int"):
            FF.bias_act(x, None, "relu", dim=4)
        with pytest.raises(TypeError, match="gain must be a real number"):
            FF.bias_act(x, None, "relu", gain=torch.tensor(2.0))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_empty_input(device, backend):
    x = torch.zeros(0, 3, 4, 4, device=device, requires_grad=True)
    b = torch.zeros(3, device=device, requires_grad=True)
    with fastgan.use_backend(backend):
        y = FF.bias_act(x, b, "lrelu")
        dx, db = torch.autograd.grad(y.sum(), (x, b))
    assert y.shape == dx.shape == x.shape and db.shape == b.shape and not db.any()


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("shape,dim", [((4, 3, 5, 0), 1), ((2, 0, 3), 2)])
def test_kernel_op_on_empty_tensors(device, backend, shape, dim):
    """The op itself (the wrapper hands empty tensors to the reference) on tensors emptied by a
    size-0 dim other than the batch, to the double backward."""
    x = torch.randn(shape, device=device, requires_grad=True)
    b = torch.randn(shape[dim], device=device, requires_grad=True)
    v = torch.randn(shape, device=device, requires_grad=True)
    y = torch.ops.fastgan.bias_act(x, b, "lrelu", 0.2, 1.0, dim, True, backend)[0]
    dx, db = torch.autograd.grad(y, (x, b), v, create_graph=True)
    (gv,) = torch.autograd.grad(dx.sum() + db.sum(), v)  # through the double backward op
    assert y.shape == dx.shape == gv.shape == x.shape and db.shape == b.shape and not db.any()


def _sm90_specs():
    """Every kernel variant: 3 dtypes x 3 acts x 2 layouts (unit strides as launches specialize
    them, tiles as `_config` picks them) x fwd + 2 grad flavours, and the partials sum."""
    import triton.language as tl
    from sm90 import kernel_spec

    mod, fp64 = "fastgan.ops.bias_act", {"alpha": "fp64", "gain": "fp64"}
    specs = []
    for dt in ("fp32", "bf16", "fp64"):
        acc = tl.float64 if dt == "fp64" else tl.float32
        part = "fp64" if dt == "fp64" else "fp32"
        for act in (0, 1, 2):
            for cl in (False, True):
                tag = dict(dtype=dt, act=act, cl=cl)
                unit = dict.fromkeys(("sx_c", "sy_c", "sm_c") if cl else ("sx_i", "sy_i", "sm_i"),
                                     1)
                blocks = dict(BLOCK_I=16, BLOCK_C=256) if cl else dict(BLOCK_I=1024, BLOCK_C=4)
                specs.append(kernel_spec(
                    mod, "_bias_act_fwd_kernel",
                    ptrs={"x_ptr": dt, "b_ptr": "fp32", "y_ptr": dt, "m_ptr": "i1"},
                    args=dict(ACT=act, HAS_B=True, MASK=act != 0, ACC=acc, **unit, **blocks),
                    types=fp64, **tag))
                unit = dict.fromkeys(("su_c", "so_c", "sm_c") if cl else ("su_i", "so_i", "sm_i"),
                                     1)
                for has_v, partial in ((False, True), (True, False)):
                    specs.append(kernel_spec(
                        mod, "_bias_act_bwd_kernel",
                        ptrs={"u_ptr": dt, "v_ptr": "fp32", "m_ptr": "i1", "out_ptr": dt,
                              "part_ptr": part},
                        args=dict(ACT=act, HAS_V=has_v, PARTIAL=partial, ACC=acc, **unit,
                                  **blocks),
                        types=fp64, **tag))
    specs.append(kernel_spec(mod, "_bias_act_sum_partials_kernel",
                             ptrs={"part_ptr": "fp32", "out_ptr": "fp32"},
                             args=dict(ACC=tl.float32, BLOCK_P=32, BLOCK_C=128),
                             dtype="fp32", act=0, cl=False))
    return specs


def test_kernels_compile_for_sm90():
    """The interpreter is lenient about types; compile every kernel variant for an H100 (sm_90,
    no GPU needed: Triton ships ptxas) in a process without TRITON_INTERPRET. fp32/bf16 kernels
    must load with vector instructions in both layouts and do no per-element fp64 math (alpha
    and gain arrive as fp64 scalars and are rounded once)."""
    from sm90 import compile_sm90

    results = compile_sm90(_sm90_specs())
    assert len(results) == 3 * 3 * 2 * 3 + 1
    for r in results:
        assert r["ok"], r["error"]
        if r["kernel"] != "_bias_act_sum_partials_kernel":
            assert r["vector_loads"] > 0, r
        if r["dtype"] != "fp64":
            assert r["f64"] <= 8, r
