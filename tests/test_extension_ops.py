"""The raw fastgan_cuda::* ops of the compiled extension (csrc/bind_<op>.cpp) on a GPU: layouts,
strides, dtypes and argument checks, against plain-torch math. Every test needs a CUDA GPU; the
build and the loader are tested in test_extension_build.py.
"""

import pytest
import torch

from fastgan import _ext
from fastgan.ops import _common as C_
from fastgan.ops import bias_act as ba
from fastgan.ops import grad_penalty as gp


@pytest.fixture(autouse=True)
def _extension_for_gpu_tests(request):
    """GPU tests call the raw fastgan_cuda ops: load the extension (building it if needed)."""
    if request.node.get_closest_marker("cuda"):
        _ext.load(build=True)


# ------------------------------------------------------------------------------ GPU: raw ops

def _pn_ref(x, eps, dim):
    return x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)


def _mbsd_ref(x, G, F, eps, strided, unbiased):
    N, C, H, W = x.shape
    M = N // G
    xg = x.reshape(G, M, F, C // F, H, W) if strided else x.reshape(M, G, F, C // F, H, W)
    gdim = 0 if strided else 1
    sigma = (xg.var(dim=gdim, unbiased=unbiased, keepdim=True) + eps).sqrt()
    s = sigma.mean(dim=(3, 4, 5))  # [1, M, F] or [M, 1, F]
    s = s.expand(G, M, F) if strided else s.expand(M, G, F)
    s = s.reshape(N, F, 1, 1).expand(N, F, H, W)
    return torch.cat([x, s], dim=1)


def _check_three_passes(op_fwd, op_bwd, op_dbwd, ref, x, grad, gg, tol):
    """forward/backward/double backward of the raw ops against autograd through `ref` (fp64)."""
    x64 = x.detach().double().requires_grad_(True)
    grad64 = grad.detach().double().requires_grad_(True)
    y64 = ref(x64)
    (dx64,) = torch.autograd.grad(y64, x64, grad64, create_graph=True)
    g_grad64, g_x64 = torch.autograd.grad(dx64, (grad64, x64), gg.double())

    y = op_fwd(x)
    dx = op_bwd(grad, x)
    g_grad, g_x = op_dbwd(gg, grad, x)
    for got, want in ((y, y64), (dx, dx64), (g_grad, g_grad64), (g_x, g_x64)):
        assert got.dtype == x.dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)


_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}

PN_CASES = [  # (shape, dim, layout)
    ((5, 7), 1, "contiguous"),
    ((3, 33, 5, 6), 1, "contiguous"),
    ((3, 33, 5, 6), 1, "channels_last"),
    ((2, 512, 4, 4), 1, "contiguous"),
    ((2, 512, 4, 4), 1, "channels_last"),
    ((4, 6, 7), -1, "contiguous"),
    ((3, 5, 6, 4), 2, "channels_last"),  # does not collapse: contiguous copy / output
    ((3, 8, 6, 4), 1, "sliced"),
    ((2, 3, 1, 1), 1, "contiguous"),
]


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return x[..., ::2]
    return x


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dim,layout", PN_CASES)
def test_cuda_pixel_norm_raw_ops(shape, dim, layout, dtype):
    torch.manual_seed(0)
    if layout == "sliced":
        shape = (*shape[:-1], shape[-1] * 2)
    x = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    grad = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    gg = torch.randn(x.shape, device="cuda", dtype=dtype)
    eps = 1e-8
    ops = torch.ops.fastgan_cuda
    _check_three_passes(lambda x: ops.pixel_norm_forward(x, eps, dim),
                        lambda g, x: ops.pixel_norm_backward(g, x, eps, dim),
                        lambda gg, g, x: ops.pixel_norm_double_backward(gg, g, x, eps, dim),
                        lambda x: _pn_ref(x, eps, dim), x, grad, gg, _TOL[dtype])


@pytest.mark.cuda
def test_cuda_pixel_norm_stride0_grad_and_layout():
    x = torch.randn(4, 16, 5, 5, device="cuda").contiguous(memory_format=torch.channels_last)
    grad = torch.ones((), device="cuda").expand(x.shape)  # what y.sum().backward() hands over
    dx = torch.ops.fastgan_cuda.pixel_norm_backward(grad, x, 1e-8, 1)
    xr = x.detach().double().requires_grad_(True)
    _pn_ref(xr, 1e-8, 1).sum().backward()
    torch.testing.assert_close(dx.double(), xr.grad, rtol=2e-5, atol=2e-5)
    y = torch.ops.fastgan_cuda.pixel_norm_forward(x, 1e-8, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.ops.fastgan_cuda.pixel_norm_forward(x[:0], 1e-8, 1).shape == (0, 16, 5, 5)


MBSD_CASES = [  # (shape, group_size, num_features, strided, unbiased, layout)
    ((8, 5, 3, 4), 4, 1, True, False, "contiguous"),
    ((8, 6, 3, 4), 4, 2, False, False, "contiguous"),
    ((8, 6, 3, 4), 2, 3, True, True, "channels_last"),
    ((6, 4, 5, 5), 3, 1, False, True, "channels_last"),
    ((4, 512, 4, 4), 4, 1, True, False, "contiguous"),
    ((4, 16, 64, 64), 4, 1, True, False, "channels_last"),  # several blocks per slice
    ((5, 3, 2, 2), 1, 1, True, False, "contiguous"),          # G = 1: sigma = sqrt(eps)
    ((4, 6, 3, 8), 2, 2, True, False, "sliced"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,G,F,strided,unbiased,layout", MBSD_CASES)
def test_cuda_minibatch_stddev_raw_ops(shape, G, F, strided, unbiased, layout, dtype):
    torch.manual_seed(0)
    if layout == "sliced":
        shape = (*shape[:-1], shape[-1] * 2)
    x = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    N, C, H, W = x.shape
    grad = _layout(torch.randn(N, C + F, H, W * (2 if layout == "sliced" else 1), device="cuda",
                               dtype=dtype), layout)
    gg = torch.randn(x.shape, device="cuda", dtype=dtype)
    eps = 1e-8 if dtype == torch.float64 else 1e-4
    args = (G, F, eps, strided, unbiased)
    ops = torch.ops.fastgan_cuda
    _check_three_passes(lambda x: ops.minibatch_stddev_forward(x, *args),
                        lambda g, x: ops.minibatch_stddev_backward(g, x, *args),
                        lambda gg, g, x: ops.minibatch_stddev_double_backward(gg, g, x, *args),
                        lambda x: _mbsd_ref(x, *args), x, grad, gg, _TOL[dtype])


@pytest.mark.cuda
def test_cuda_minibatch_stddev_layout_and_determinism():
    x = torch.randn(16, 32, 33, 31, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.ops.fastgan_cuda.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False)
    assert y.shape == (16, 33, 33, 31) and y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.ones((), device="cuda").expand(y.shape)
    dx1 = torch.ops.fastgan_cuda.minibatch_stddev_backward(grad, x, 4, 1, 1e-8, True, False)
    dx2 = torch.ops.fastgan_cuda.minibatch_stddev_backward(grad, x, 4, 1, 1e-8, True, False)
    assert torch.equal(dx1, dx2)
    assert torch.equal(y, torch.ops.fastgan_cuda.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False))


@pytest.mark.cuda
def test_cuda_binding_checks():
    ops = torch.ops.fastgan_cuda
    x = torch.randn(6, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="group_size"):
        ops.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="num_features"):
        ops.minibatch_stddev_forward(x, 2, 3, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="unbiased"):
        ops.minibatch_stddev_forward(x, 1, 1, 1e-8, True, True)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        ops.minibatch_stddev_backward(x, x, 2, 1, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        ops.pixel_norm_forward(x.int(), 1e-8, 1)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.pixel_norm_backward(x.double(), x, 1e-8, 1)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ops.pixel_norm_backward(x.cuda(), x.cpu(), 1e-8, 1)
    with pytest.raises(RuntimeError, match="dim"):
        ops.pixel_norm_forward(x, 1e-8, 4)
    with pytest.raises(RuntimeError, match="must have channels"):
        ops.minibatch_stddev_forward(x[:, :0], 2, 1, 1e-8, True, False)


# ------------------------------------------------------------------------------ GPU: bias_act
# The check helpers take the device, so the same checks can drive another registration of the
# fastgan_cuda ops (e.g. the kernels under a CPU emulator); the tests below run them on "cuda".

BA_CASES = [  # (shape, dim, layout)
    ((5, 7), 1, "contiguous"),             # [N, C]: folded into one run of rows
    ((3, 33, 5, 6), 1, "contiguous"),
    ((3, 33, 5, 6), 1, "channels_last"),
    ((2, 512, 4, 4), 1, "channels_last"),
    ((4, 6, 9, 9), 1, "contiguous"),       # several programs: two-stage db
    ((16, 64, 64, 64), 1, "contiguous"),   # many programs per channel
    ((600, 3, 1, 2), 1, "contiguous"),     # toRGB-like: C = 3, many rows
    ((1100, 2048), 1, "contiguous"),       # several row tiles per program
    ((4, 6, 7), -1, "contiguous"),
    ((3, 5, 6, 4), 2, "channels_last"),    # does not collapse: contiguous copy / output
    ((3, 8, 6, 4), 1, "sliced"),
    ((2, 3, 1, 1), 1, "contiguous"),
    ((2, 1, 3, 3), 1, "contiguous"),       # C = 1
    ((7,), 0, "contiguous"),
]


def _ba_reference(x, b, act, alpha, gain, dim, dy, gg_x, gg_b):
    """(y, dx, db, d<(gg_x, gg_b), (dx, db)>/d dy) by fp64 autograd through bias_act_ref."""
    x64 = x.detach().double().requires_grad_(True)
    b64 = None if b is None else b.detach().double().requires_grad_(True)
    dy64 = dy.detach().double().requires_grad_(True)
    y64 = ba.bias_act_ref(x64, b64, act, alpha, gain, dim)
    grads = torch.autograd.grad(y64, (x64,) if b is None else (x64, b64), dy64, create_graph=True)
    outs, cots = [grads[0]], [gg_x.double()]
    if b is not None and gg_b is not None:
        outs.append(grads[1])
        cots.append(gg_b.double())
    (g_dy64,) = torch.autograd.grad(outs, dy64, cots)
    return y64.detach(), grads[0].detach(), None if b is None else grads[1].detach(), g_dy64


def _check_bias_act_ops(x, b, act, alpha, gain, dim, dy, gg_x, gg_b, tol):
    """The three raw ops against the fp64 reference, with the output layouts and dtypes of the
    fake impls in fastgan/ops/bias_act.py."""
    ops = torch.ops.fastgan_cuda
    nd = dim % x.dim()
    y, mask = ops.bias_act_forward(x, b, act, alpha, gain, dim, True)
    dx, db = ops.bias_act_backward(dy, mask, b is not None, act, alpha, gain, dim)
    g_dy = ops.bias_act_double_backward(gg_x, gg_b if b is not None else None, mask, act, alpha,
                                        gain, dim)
    want = _ba_reference(x, b, act, alpha, gain, dim, dy, gg_x, gg_b if b is not None else None)

    assert y.dtype == dx.dtype == g_dy.dtype == x.dtype
    assert y.stride() == C_.empty_like3(x, nd).stride()
    if act == "linear":
        assert mask.shape == (0,) and mask.dtype == torch.bool
        assert dx.stride() == C_.empty_like3(dy, nd).stride()
        assert g_dy.stride() == C_.empty_like3(gg_x, nd).stride()
    else:
        assert mask.dtype == torch.bool and mask.shape == x.shape and mask.stride() == y.stride()
        assert dx.stride() == mask.stride() and g_dy.stride() == mask.stride()
        acc = C_.acc_torch_dtype(x.dtype)
        v = x.to(acc)
        if b is not None:
            shape = [1] * x.dim()
            shape[nd] = -1
            v = v + b.to(acc).reshape(shape)
        assert torch.equal(mask, v > 0)
    acc = C_.acc_torch_dtype(x.dtype)
    if b is None:
        assert db.shape == (0,) and db.dtype == acc
    else:
        assert db.shape == (x.shape[nd],) and db.dtype == acc
    for name, got, ref in (("y", y, want[0]), ("dx", dx, want[1]), ("db", db, want[2]),
                           ("g_dy", g_dy, want[3])):
        if ref is None:
            continue
        scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
        torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * scale, msg=name)


def _bias_act_case(shape, dim, layout, dtype, act, device, seed=0, with_bias=True):
    torch.manual_seed(seed)
    if layout == "sliced":
        shape = (*shape[:-1], shape[-1] * 2)
    x = _layout(torch.randn(shape, device=device, dtype=dtype), layout)
    c = x.shape[dim]
    b_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    b = torch.randn(c, device=device, dtype=b_dtype) if with_bias else None
    dy = _layout(torch.randn(shape, device=device, dtype=dtype), layout)
    gg_x = torch.randn(x.shape, device=device, dtype=dtype)
    gg_b = torch.randn(c, device=device, dtype=C_.acc_torch_dtype(dtype))
    _check_bias_act_ops(x, b, act, 0.2, 2 ** 0.5, dim, dy, gg_x, gg_b, _TOL[dtype])


def _bias_act_stride0_and_mixed_dtypes(device):
    """dy / gg_x stride-0 expands (y.sum().backward()), gg_b an expand, b of another dtype, no b."""
    for dtype, act, layout in [(torch.float32, "lrelu", "channels_last"),
                               (torch.bfloat16, "relu", "contiguous"),
                               (torch.float64, "linear", "channels_last"),
                               (torch.float16, "lrelu", "contiguous")]:
        x = _layout(torch.randn(4, 16, 5, 5, device=device, dtype=dtype), layout)
        other = torch.float16 if dtype == torch.float64 else torch.float64
        b = torch.randn(16, device=device, dtype=other)
        dy = torch.ones((), device=device, dtype=dtype).expand(x.shape)
        gg_x = torch.zeros((), device=device, dtype=dtype).expand(x.shape)
        gg_b = torch.ones((), device=device, dtype=torch.float32).expand(16)
        _check_bias_act_ops(x, b, act, 0.1, 2.0, 1, dy, gg_x, gg_b, _TOL[dtype])
        _check_bias_act_ops(x, None, act, 0.1, 2.0, 1, dy, gg_x, None, _TOL[dtype])
    ops = torch.ops.fastgan_cuda
    x = torch.randn(0, 4, 3, 3, device=device)
    y, mask = ops.bias_act_forward(x, torch.randn(4, device=device), "lrelu", 0.2, 1.0, 1, True)
    dx, db = ops.bias_act_backward(x, mask, True, "lrelu", 0.2, 1.0, 1)
    assert y.shape == mask.shape == dx.shape == (0, 4, 3, 3) and torch.equal(db, torch.zeros(4, device=device))
    # save_mask=False: no mask is written
    y, mask = ops.bias_act_forward(x[:0], None, "relu", 0.2, 1.0, 1, False)
    assert mask.shape == (0,)


def _bias_act_nan_and_determinism(device):
    ops = torch.ops.fastgan_cuda
    x = torch.tensor([float("nan"), -0.0, 0.0, -1.0, 2.0], device=device)[:, None].expand(5, 3)
    for act in ("relu", "lrelu"):
        y, mask = ops.bias_act_forward(x, None, act, 0.2, 1.0, 1, True)
        yr = ba.bias_act_ref(x, None, act, 0.2, 1.0, 1)
        torch.testing.assert_close(y, yr, equal_nan=True)
        assert mask[:, 0].tolist() == [False, False, False, False, True]
    x = torch.randn(16, 64, 64, 64, device=device)
    b = torch.randn(64, device=device)
    dy = torch.randn_like(x)
    _, mask = ops.bias_act_forward(x, b, "lrelu", 0.2, 1.0, 1, True)
    dx1, db1 = ops.bias_act_backward(dy, mask, True, "lrelu", 0.2, 1.0, 1)
    dx2, db2 = ops.bias_act_backward(dy, mask, True, "lrelu", 0.2, 1.0, 1)
    assert torch.equal(dx1, dx2) and torch.equal(db1, db2)


@pytest.mark.cuda
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dim,layout", BA_CASES)
def test_cuda_bias_act_raw_ops(shape, dim, layout, dtype, act):
    _bias_act_case(shape, dim, layout, dtype, act, "cuda")


@pytest.mark.cuda
def test_cuda_bias_act_stride0_mixed_dtypes_empty():
    _bias_act_stride0_and_mixed_dtypes("cuda")


@pytest.mark.cuda
def test_cuda_bias_act_nan_and_determinism():
    _bias_act_nan_and_determinism("cuda")


# ------------------------------------------------------------------------------ GPU: grad_penalty

GP_CASES = [  # (shape, layout)
    ((4, 3, 9, 9), "contiguous"),
    ((4, 3, 9, 9), "channels_last"),
    ((2, 3, 40, 40), "channels_last"),   # several chunks per sample
    ((3, 5, 17, 31), "contiguous"),
    ((3, 3, 41, 41), "offset"),          # sample bases not 16-byte aligned: scalar loads
    ((2, 3, 8, 16), "sliced"),           # not dense: contiguous copy, contiguous dg
    ((2, 4, 6, 10), "permuted"),         # a dense permutation other than channels_last
    ((5, 7), "contiguous"),
    ((6,), "contiguous"),
    ((1, 3, 64, 64), "contiguous"),
    ((16, 3, 64, 64), "channels_last"),
]


def _gp_layout(t, layout):
    if layout == "offset":
        buf = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)[1:]
        return buf.view(t.shape).copy_(t)
    if layout == "permuted":
        return t.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return _layout(t, layout)


def _check_grad_penalty_ops(g, weight, target, mode, dp, dn, gg, tol):
    """The three raw ops against grad_penalty.py's reference in fp64, with the output layouts and
    dtypes of its fake impls."""
    ops = torch.ops.fastgan_cuda
    r1 = mode == "r1"
    acc = C_.acc_torch_dtype(g.dtype)
    p, norm = ops.grad_penalty_forward(g, weight, target, r1)
    pr, nr = gp.grad_penalty_ref(g.double(), weight, target, mode, return_norm=True)
    assert p.dtype == norm.dtype == acc and p.shape == norm.shape == (g.shape[0],)
    torch.testing.assert_close(p.double(), pr, rtol=tol, atol=tol * max(pr.abs().max().item(), 1))
    torch.testing.assert_close(norm.double(), nr, rtol=tol, atol=tol)

    # the backward takes norm as an input (the op chain passes the forward's)
    dg = ops.grad_penalty_backward(dp, dn, g, norm, weight, target, r1)
    dgr = gp._backward_ref(dp.double(), None if dn is None else dn.double(), g.double(),
                           norm.double(), weight, target, mode)
    assert dg.dtype == g.dtype and dg.shape == g.shape
    assert dg.stride() == gp._alloc_like(g).stride()
    if C_.sample_block(g) is not None:
        assert dg.stride() == g.stride()
    torch.testing.assert_close(dg.double(), dgr, rtol=tol, atol=tol * max(dgr.abs().max().item(), 1))

    g_dp, g_dn, g_g, g_norm = ops.grad_penalty_double_backward(gg, dp, dn, g, norm, weight,
                                                               target, r1)
    assert g_dp.dtype == dp.dtype and g_norm.dtype == norm.dtype
    assert g_dn.dtype == (dp.dtype if dn is None else dn.dtype)
    assert g_g.dtype == g.dtype and g_g.stride() == gp._alloc_like(g).stride()
    prim = [dp.double().requires_grad_(True),
            (torch.zeros_like(dp, dtype=torch.float64) if dn is None else dn.double()
             ).requires_grad_(True),
            g.double().requires_grad_(True), norm.double().requires_grad_(True)]
    out = gp._backward_ref(prim[0], None if dn is None else prim[1], prim[2], prim[3], weight,
                           target, mode)
    want = torch.autograd.grad(out, prim, gg.double(), allow_unused=True)
    got = (g_dp, g_dn, g_g, g_norm)
    for i, name in enumerate(("g_dp", "g_dnorm", "g_g", "g_norm")):
        if i == 1 and dn is None:
            continue  # unused by the op chain (s * inv, as the Triton kernel writes)
        ref = torch.zeros_like(prim[i]) if want[i] is None else want[i]  # r1: norm unused
        t = max(tol, _TOL[got[i].dtype])
        torch.testing.assert_close(got[i].double(), ref, rtol=t,
                                   atol=t * max(ref.abs().max().item(), 1), msg=name)


def _grad_penalty_case(shape, layout, dtype, mode, with_dnorm, device, seed=0):
    torch.manual_seed(seed)
    full = (*shape[:-1], shape[-1] * 2) if layout == "sliced" else shape
    g = _gp_layout((torch.randn(full, device=device, dtype=torch.float64) * 0.05).to(dtype), layout)
    acc = C_.acc_torch_dtype(dtype)
    n = g.shape[0]
    dp = torch.randn(n, device=device, dtype=acc)
    dn = torch.randn(n, device=device, dtype=acc) if with_dnorm else None
    gg = torch.randn(g.shape, device=device, dtype=dtype)
    if g.dim() == 4 and layout != "channels_last":
        gg = gg.contiguous(memory_format=torch.channels_last)  # another layout than g's
    target = 0.75 if mode == "gp" else 1.0
    _check_grad_penalty_ops(g, 10.0, target, mode, dp, dn, gg, _TOL[dtype])


def _grad_penalty_stride0_zero_norm_empty(device):
    """dp / dnorm stride-0 expands of other dtypes (p.sum().backward()), a zero-norm sample, a
    stride-0 gg, and empty batches / samples."""
    ops = torch.ops.fastgan_cuda
    for dtype, mode in [(torch.float32, "gp"), (torch.bfloat16, "r1"), (torch.float64, "gp"),
                        (torch.float16, "gp")]:
        g = torch.randn(4, 3, 20, 20, device=device).to(dtype).contiguous(
            memory_format=torch.channels_last)
        g[2].zero_()
        dp = torch.ones((), device=device, dtype=torch.float32).expand(4)
        dn = torch.full((), 0.5, device=device, dtype=torch.float64).expand(4)
        gg = torch.ones((), device=device, dtype=dtype).expand(g.shape)
        _check_grad_penalty_ops(g, 5.0, 1.0, mode, dp, dn, gg, _TOL[dtype])
        p, norm = ops.grad_penalty_forward(g, 5.0, 1.0, mode == "r1")
        assert norm[2].item() == 0 and torch.isfinite(p).all()
    g = torch.randn(3, 0, device=device)  # M = 0
    p, norm = ops.grad_penalty_forward(g, 10.0, 2.0, False)
    assert p.tolist() == [10.0, 10.0, 10.0] and norm.tolist() == [0.0, 0.0, 0.0]
    assert ops.grad_penalty_backward(p, None, g, norm, 10.0, 2.0, False).shape == (3, 0)
    g = torch.randn(0, 3, 4, 4, device=device)  # N = 0
    p, norm = ops.grad_penalty_forward(g, 10.0, 1.0, False)
    assert p.shape == norm.shape == (0,)
    outs = ops.grad_penalty_double_backward(g, p, None, g, norm, 10.0, 1.0, False)
    assert [tuple(t.shape) for t in outs] == [(0,), (0,), (0, 3, 4, 4), (0,)]


def _grad_penalty_progan_shape(device, dtype, layout):
    """The ProGAN penalty's g: [16, 3, 256, 256] (48 chunks per sample in fp32)."""
    torch.manual_seed(1)
    g = _layout((torch.randn(16, 3, 256, 256, device=device) * 0.01).to(dtype), layout)
    dp = torch.full((), 1.0 / 16, device=device).expand(16)
    gg = torch.randn(g.shape, device=device, dtype=dtype)
    _check_grad_penalty_ops(g, 10.0, 1.0, "gp", dp, None, gg, _TOL[dtype])
    ops = torch.ops.fastgan_cuda
    a = ops.grad_penalty_forward(g, 10.0, 1.0, False)
    b = ops.grad_penalty_forward(g, 10.0, 1.0, False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = ops.grad_penalty_double_backward(gg, dp, None, g, a[1], 10.0, 1.0, False)
    d = ops.grad_penalty_double_backward(gg, dp, None, g, a[1], 10.0, 1.0, False)
    assert all(torch.equal(u, v) for u, v in zip(c, d))


@pytest.mark.cuda
@pytest.mark.parametrize("with_dnorm", [False, True])
@pytest.mark.parametrize("mode", ["gp", "r1"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,layout", GP_CASES)
def test_cuda_grad_penalty_raw_ops(shape, layout, dtype, mode, with_dnorm):
    _grad_penalty_case(shape, layout, dtype, mode, with_dnorm, "cuda")


@pytest.mark.cuda
def test_cuda_grad_penalty_stride0_zero_norm_empty():
    _grad_penalty_stride0_zero_norm_empty("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_grad_penalty_progan_shape_and_determinism(dtype, layout):
    _grad_penalty_progan_shape("cuda", dtype, layout)


@pytest.mark.cuda
def test_cuda_bias_act_grad_penalty_binding_checks():
    ops = torch.ops.fastgan_cuda
    x = torch.randn(2, 3, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="act must be one of"):
        ops.bias_act_forward(x, None, "gelu", 0.2, 1.0, 1, True)
    with pytest.raises(RuntimeError, match=r"b must have shape \[3\]"):
        ops.bias_act_forward(x, torch.zeros(4, device="cuda"), "relu", 0.2, 1.0, 1, True)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ops.bias_act_forward(x, torch.zeros(3), "relu", 0.2, 1.0, 1, True)
    with pytest.raises(RuntimeError, match="dim"):
        ops.bias_act_forward(x, None, "relu", 0.2, 1.0, 4, True)
    with pytest.raises(RuntimeError, match="sign mask"):
        ops.bias_act_backward(x, torch.empty(0, dtype=torch.bool, device="cuda"), True, "lrelu",
                              0.2, 1.0, 1)
    with pytest.raises(RuntimeError, match="bool"):
        ops.bias_act_backward(x, x, True, "lrelu", 0.2, 1.0, 1)
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        ops.grad_penalty_forward(x.int(), 10.0, 1.0, False)
    with pytest.raises(RuntimeError, match="target must be > 0"):
        ops.grad_penalty_forward(x, 10.0, 0.0, False)
    ops.grad_penalty_forward(x, 10.0, 0.0, True)  # r1 ignores the target
    p, norm = ops.grad_penalty_forward(x, 10.0, 1.0, False)
    with pytest.raises(RuntimeError, match="dp must have 2 elements"):
        ops.grad_penalty_backward(torch.ones(3, device="cuda"), None, x, norm, 10.0, 1.0, False)
    with pytest.raises(RuntimeError, match="gg has shape"):
        ops.grad_penalty_double_backward(x[:, :2], p, None, x, norm, 10.0, 1.0, False)
