"""fastgan.ops.spectral_norm: the multi-tensor power iteration against its reference, sigma's
gradient against torch's, opcheck of both ops, bad input."""

import pytest
import torch

import fastgan
import fastgan.functional as FF
from fastgan.ops import spectral_norm as sn
from helpers import KERNEL_DEVICE_BACKENDS, assert_close

# (shape, dim): odd sizes, more rows than a row block (16) and more columns than a column tile
# (128), one row, one column, dim 1 (transposed convs) and the last dim, 3-D and 5-D weights.
LAYERS = [((5, 7), 0), ((3, 4, 3, 3), 0), ((6, 3, 2, 2), 1), ((1, 140), 0), ((37, 1), 0),
          ((33, 5), 1), ((2, 3, 4), -1), ((2, 3, 1, 2, 2), 0), ((20, 9, 3), 0)]


def _inputs(dtype, device, seed, layers=LAYERS):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
          for s, _ in layers]
    dims = [d for _, d in layers]
    vs = [torch.randn(w.numel() // w.shape[d], generator=g, dtype=torch.float64).to(device)
          .to(sn.C_.acc_torch_dtype(dtype)) for w, d in zip(ws, dims)]
    return ws, vs, dims


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n_iter", [1, 3])
def test_kernels_match_reference(device, backend, dtype, n_iter):
    ws, vs, dims = _inputs(dtype, device, 1)
    want = sn.power_iteration_ref(ws, vs, dims, n_iter, 1e-12)
    with fastgan.use_backend(backend):
        got = sn.power_iteration(ws, vs, dims, n_iter, 1e-12)
    acc = sn.C_.acc_torch_dtype(dtype)
    for name, gs, rs in zip(("u", "v", "sigma"), got, want):
        for k, (a, b) in enumerate(zip(gs, rs)):
            assert a.dtype == acc
            assert_close(a, b, acc, f"{name}[{k}]")


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_sigma_agrees_with_torchs_formula(device, backend):
    """The kernel's sigma = ||s||^2 / max(||s||, eps) against torch's vdot(u, mv(W_mat, v)) on the
    kernel's own u, v: within 1e-6 relative (~8 fp32 ulp; over 100 random layers up to 64x576
    the worst seen on CPU was 2.8e-7, 2.4 ulp)."""
    ws, vs, dims = _inputs(torch.float32, device, 2)
    with fastgan.use_backend(backend):
        us, vs2, sigmas = sn.power_iteration(ws, vs, dims, 2)
    for w, d, u, v, s in zip(ws, dims, us, vs2, sigmas):
        w_mat = sn.weight_to_matrix(w, d)
        torch_sigma = torch.vdot(u, torch.mv(w_mat, v))
        assert abs(s.item() - torch_sigma.item()) <= 1e-6 * abs(torch_sigma.item())


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_bitwise_reproducible_and_zero_weight(device, backend):
    ws, vs, dims = _inputs(torch.float32, device, 3)
    ws.append(torch.zeros(4, 3, device=device))
    vs.append(torch.randn(3, device=device))
    dims.append(0)
    with fastgan.use_backend(backend):
        first = sn.power_iteration(ws, vs, dims, 2)
        second = sn.power_iteration(ws, vs, dims, 2)
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    want = sn.power_iteration_ref(ws[-1:], vs[-1:], [0], 2, 1e-12)
    for a, b in zip(first, want):  # eps floors the norms: u = v = 0 and sigma = 0, as torch
        assert torch.equal(a[-1], b[0])


@pytest.mark.parametrize("dim", [0, 1])
def test_sigma_gradient_is_torchs(dim):
    """W / sigma with sigma_with_grad: first and second derivatives equal torch's
    W / vdot(u, mv(W_mat, v)); gradcheck and gradgradcheck in fp64."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w_mat = sn.weight_to_matrix(w.detach(), dim)
    u = torch.randn(w_mat.shape[0], generator=g, dtype=torch.float64)
    v = torch.randn(w_mat.shape[1], generator=g, dtype=torch.float64)

    def torch_sigma(w):
        return torch.vdot(u, torch.mv(sn.weight_to_matrix(w, dim), v))

    def ours(w):
        return w / sn.sigma_with_grad(w, u, v, torch_sigma(w.detach()), dim)

    def theirs(w):
        return w / torch_sigma(w)

    dy, gg = torch.randn(w.shape, generator=g, dtype=torch.float64), \
        torch.randn(w.shape, generator=g, dtype=torch.float64)
    (go,) = torch.autograd.grad(ours(w), w, dy, create_graph=True)
    (gt,) = torch.autograd.grad(theirs(w), w, dy, create_graph=True)
    assert_close(go, gt, torch.float64, "d/dW")
    (ggo,) = torch.autograd.grad(go, w, gg)
    (ggt,) = torch.autograd.grad(gt, w, gg)
    assert_close(ggo, ggt, torch.float64, "d2/dW2")
    # gradcheck needs sigma's value to follow W: pass torch's formula in as the value (the op
    # gives that input no gradient, so only its u v^T reaches W)
    assert torch.autograd.gradcheck(lambda w: sn.sigma_with_grad(w, u, v, torch_sigma(w), dim),
                                    (w,))
    assert torch.autograd.gradgradcheck(
        lambda w: sn.sigma_with_grad(w, u, v, torch_sigma(w), dim), (w,))


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_opcheck(device, backend):
    ws, vs, dims = _inputs(torch.float32, device, 5, LAYERS[:3])
    v = torch.cat(vs)
    torch.library.opcheck(sn._power_iteration_op, (ws, v, dims, 2, 1e-12, backend))


def test_functional_export():
    assert FF.spectral_norm_power_iteration is sn.power_iteration


def test_bad_input():
    w, v = torch.randn(3, 4), torch.randn(4)
    with pytest.raises(TypeError, match="weights"):
        sn.power_iteration(w, [v], [0])
    with pytest.raises(ValueError, match="vs"):
        sn.power_iteration([w], [v, v], [0])
    with pytest.raises(ValueError, match=r"dims\[0\]"):
        sn.power_iteration([w], [v], [2])
    with pytest.raises(ValueError, match="n_power_iterations"):
        sn.power_iteration([w], [v], [0], 0)
    with pytest.raises(ValueError, match=r"vs\[0\] must have 4"):
        sn.power_iteration([w], [torch.randn(3)], [0])
    with pytest.raises(ValueError, match="at least 2 dims"):
        sn.power_iteration([torch.randn(4)], [v], [0])
    with pytest.raises(ValueError, match="one dtype"):
        sn.power_iteration([w, w.double()], [v, v.double()], [0, 0])


def test_kernels_compile_for_sm90():
    """The interpreter is lenient about types (pointer casts from a table, runtime loop bounds):
    compile the three kernels for an H100 (sm_90; Triton ships ptxas, no GPU needed) for every
    weight dtype and both first-iteration variants. No fp64 math outside the fp64 variant."""
    from sm90 import compile_sm90, kernel_spec

    mod, specs = "fastgan.ops.spectral_norm", []
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        acc = sn.C_.acc_torch_dtype(dtype)
        const = dict(ELT=sn._ELT[dtype], ACC=sn.C_.acc_dtype(dtype), NMETA=sn._NMETA, BP=sn._BP)
        tables = dict(meta=torch.int64, blk_layer=torch.int32, blk_index=torch.int32)
        for first in (True, False):
            specs.append(kernel_spec(mod, "_rows_kernel", num_warps=4, dtype=dtype, ptrs=dict(
                tables, vin_ptr=acc, p2_ptr=acc, t_ptr=acc, p1_ptr=acc),
                args=dict(const, FIRST=first, BR=sn._BR, BJ=sn._BJ)))
        specs.append(kernel_spec(mod, "_cols_kernel", num_warps=4, dtype=dtype, ptrs=dict(
            tables, t_ptr=acc, p1_ptr=acc, s_ptr=acc, p2_ptr=acc, u_ptr=acc),
            args=dict(const, BI=sn._BI, BC=sn._BC)))
        const.pop("ELT")
        specs.append(kernel_spec(mod, "_finish_kernel", num_warps=4, dtype=dtype, ptrs=dict(
            tables, s_ptr=acc, p2_ptr=acc, v_ptr=acc, sigma_ptr=acc),
            args=dict(const, BC=sn._BC)))
    assert len(specs) == 16
    for r in compile_sm90(specs):
        assert r["ok"], (r["kernel"], r["dtype"], r["error"])
        if r["dtype"] != torch.float64:
            assert r["f64"] <= 4, r
