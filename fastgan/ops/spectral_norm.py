"""Spectral normalization's power iteration (Miyato et al. 2018), many layers in one launch.

Each weight W is read as the matrix W_mat [H, K] of torch's `_reshape_weight_to_matrix`: the
normalized dim `dim` first, the others flattened in order (W viewed as [O, H, I], column
j = o * I + i). From the previous right vector v, each of the n iterations computes, as
torch.nn.utils.parametrizations.spectral_norm does,
    t = W_mat v,      u = t / max(||t||, eps)
    s = W_mat^T u,    v = s / max(||s||, eps)
and sigma = u^T W_mat v = s^T v = ||s||^2 / max(||s||, eps): the last W^T u gives sigma without
a third matrix-vector product (torch computes vdot(u, mv(W_mat, v)); the two agree to rounding,
a few ulp of fp32).

Kernels (Triton; every layer of one weight dtype in one launch through a table of data
pointers): per iteration, `_rows_kernel` (one program per block of rows of one layer: t and the
block's partial ||t||^2) then `_cols_kernel` (one program per block of columns: u from t and all
of its layer's partials, s and the partial ||s||^2); `_finish_kernel` writes v and sigma. A grid-
wide dependency (W^T u needs all of u, normalizing needs the whole norm) separates them, hence
2n + 1 launches for any number of layers. Partial norms are summed in a fixed order by every
program that needs them: no atomics, bitwise reproducible. Accumulation and the outputs u, v,
sigma are fp32 (fp64 for fp64 weights), whatever the weight's dtype.

The op is not differentiated: u, v and sigma's value are constants of the forward, as in torch.
sigma's gradient, d sigma / d W_mat = u v^T, comes from `sigma_with_grad` (an autograd.Function
whose backward is written in differentiable torch ops, so it has every higher derivative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import _backend
from . import _common as C_
from . import _registry

__all__ = ["power_iteration", "power_iteration_ref", "power_iteration_unchecked", "sigma_with_grad",
           "weight_to_matrix"]

_NMETA = 10  # w_ptr, O, H, I, u_off, v_off, p1_off, n_row_blocks, p2_off, n_col_blocks
_BR, _BJ = 16, 128   # _rows_kernel tile: rows x columns
_BI, _BC = 32, 64    # _cols_kernel tile: rows x columns
_BP = 128            # partial sums read per step


def weight_to_matrix(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """torch's `_reshape_weight_to_matrix`: `dim` first, the other dims flattened in order."""
    dim %= weight.dim()
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.dim()) if d != dim))
    return weight.flatten(1)


def matrix_to_weight(mat: torch.Tensor, shape: torch.Size, dim: int) -> torch.Tensor:
    """The inverse of `weight_to_matrix` for a weight of `shape`."""
    dim %= len(shape)
    if dim == 0:
        return mat.reshape(shape)
    rest = [d for d in range(len(shape)) if d != dim]
    perm = [dim, *rest]
    inverse = [perm.index(d) for d in range(len(shape))]
    return mat.reshape([shape[d] for d in perm]).permute(inverse)


def power_iteration_ref(weights: list[torch.Tensor], vs: list[torch.Tensor], dims: list[int],
                        n_power_iterations: int, eps: float):
    """The definition: torch's `_SpectralNorm._power_method` then its sigma, per layer, in the
    accumulation dtype (fp32, fp64 for fp64). Returns lists (us, vs, sigmas)."""
    us_out, vs_out, sigmas = [], [], []
    for w, v, dim in zip(weights, vs, dims):
        acc = C_.acc_torch_dtype(w.dtype)
        w_mat = weight_to_matrix(w.detach(), dim).to(acc)
        v = v.detach().to(acc)
        for _ in range(n_power_iterations):
            u = F.normalize(torch.mv(w_mat, v), dim=0, eps=eps)
            v = F.normalize(torch.mv(w_mat.H, u), dim=0, eps=eps)
        us_out.append(u)
        vs_out.append(v)
        sigmas.append(torch.vdot(u, torch.mv(w_mat, v)))
    return us_out, vs_out, sigmas


# ---------------------------------------------------------------------------------------------
# Triton kernels. `meta` holds _NMETA int64 per layer; `blk_layer` / `blk_index` map a program
# to (layer, block). Row blocks and column blocks have their own maps.

@triton.jit
def _sum_partials(part_ptr, p_off, n, ACC: tl.constexpr, BP: tl.constexpr):
    acc = tl.zeros([BP], dtype=ACC)
    for q0 in range(0, n, BP):
        q = q0 + tl.arange(0, BP)
        acc += tl.load(part_ptr + p_off + q, mask=q < n, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _block_of_program(meta, blk_layer, blk_index, NMETA: tl.constexpr):
    """(layer, block within it, pointer to the layer's meta row) of this program."""
    pid = tl.program_id(0)
    lay = tl.load(blk_layer + pid)
    return lay, tl.load(blk_index + pid), meta + lay.to(tl.int64) * NMETA


@triton.jit
def _rows_kernel(meta, blk_layer, blk_index, vin_ptr, p2_ptr, t_ptr, p1_ptr, eps: tl.float64,
                 FIRST: tl.constexpr, ELT: tl.constexpr, ACC: tl.constexpr,
                 NMETA: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr, BP: tl.constexpr):
    """t[rows] = W_mat[rows, :] v with v = vin (FIRST) or vin / max(||vin||, eps)."""
    _, blk, row = _block_of_program(meta, blk_layer, blk_index, NMETA)
    w_ptr = tl.load(row).to(tl.pointer_type(ELT))
    n_o, n_h, n_i = tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)
    u_off, v_off, p1_off = tl.load(row + 4), tl.load(row + 5), tl.load(row + 6)
    p2_off, n_cb = tl.load(row + 8), tl.load(row + 9)
    if FIRST:
        denom = tl.full([], 1.0, ACC)
    else:
        ss = _sum_partials(p2_ptr, p2_off, n_cb, ACC, BP)
        denom = tl.maximum(C_.sqrt(ss), C_.as_acc(eps, ACC))
    n_k = n_o * n_i
    i = blk * BR + tl.arange(0, BR)
    i_mask = i < n_h
    acc = tl.zeros([BR, BJ], dtype=ACC)
    for j0 in range(0, n_k, BJ):
        j = j0 + tl.arange(0, BJ)
        j_mask = j < n_k
        vj = tl.load(vin_ptr + v_off + j, mask=j_mask, other=0.0) / denom
        o = j // n_i
        addr = (o * n_h * n_i + (j - o * n_i))[None, :] + i.to(tl.int64)[:, None] * n_i
        w = tl.load(w_ptr + addr, mask=i_mask[:, None] & j_mask[None, :], other=0.0).to(ACC)
        acc += w * vj[None, :]
    t = tl.sum(acc, axis=1)
    tl.store(t_ptr + u_off + i, t, mask=i_mask)
    tl.store(p1_ptr + p1_off + blk, tl.sum(t * t, axis=0))


@triton.jit
def _cols_kernel(meta, blk_layer, blk_index, t_ptr, p1_ptr, s_ptr, p2_ptr, u_ptr,
                 eps: tl.float64, ELT: tl.constexpr, ACC: tl.constexpr, NMETA: tl.constexpr,
                 BI: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """u = t / max(||t||, eps) (block 0 stores it); s[cols] = W_mat[:, cols]^T u."""
    _, blk, row = _block_of_program(meta, blk_layer, blk_index, NMETA)
    w_ptr = tl.load(row).to(tl.pointer_type(ELT))
    n_o, n_h, n_i = tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)
    u_off, v_off, p1_off, n_rb = tl.load(row + 4), tl.load(row + 5), tl.load(row + 6), \
        tl.load(row + 7)
    p2_off = tl.load(row + 8)
    ss = _sum_partials(p1_ptr, p1_off, n_rb, ACC, BP)
    denom = tl.maximum(C_.sqrt(ss), C_.as_acc(eps, ACC))
    n_k = n_o * n_i
    j = blk * BC + tl.arange(0, BC)
    j_mask = j < n_k
    o = j // n_i
    col = o * n_h * n_i + (j - o * n_i)
    acc = tl.zeros([BI, BC], dtype=ACC)
    for i0 in range(0, n_h, BI):
        i = i0 + tl.arange(0, BI)
        i_mask = i < n_h
        u = tl.load(t_ptr + u_off + i, mask=i_mask, other=0.0) / denom
        tl.store(u_ptr + u_off + i, u, mask=i_mask & (blk == 0))
        w = tl.load(w_ptr + col[None, :] + i.to(tl.int64)[:, None] * n_i,
                    mask=i_mask[:, None] & j_mask[None, :], other=0.0).to(ACC)
        acc += w * u[:, None]
    s = tl.sum(acc, axis=0)
    tl.store(s_ptr + v_off + j, s, mask=j_mask)
    tl.store(p2_ptr + p2_off + blk, tl.sum(s * s, axis=0))


@triton.jit
def _finish_kernel(meta, blk_layer, blk_index, s_ptr, p2_ptr, v_ptr, sigma_ptr,
                   eps: tl.float64, ACC: tl.constexpr, NMETA: tl.constexpr, BC: tl.constexpr,
                   BP: tl.constexpr):
    """v = s / max(||s||, eps); sigma = ||s||^2 / max(||s||, eps) (= u^T W_mat v)."""
    lay, blk, row = _block_of_program(meta, blk_layer, blk_index, NMETA)
    n_k = tl.load(row + 1) * tl.load(row + 3)
    v_off, p2_off, n_cb = tl.load(row + 5), tl.load(row + 8), tl.load(row + 9)
    ss = _sum_partials(p2_ptr, p2_off, n_cb, ACC, BP)
    denom = tl.maximum(C_.sqrt(ss), C_.as_acc(eps, ACC))
    j = blk * BC + tl.arange(0, BC)
    j_mask = j < n_k
    s = tl.load(s_ptr + v_off + j, mask=j_mask, other=0.0)
    tl.store(v_ptr + v_off + j, s / denom, mask=j_mask)
    if blk == 0:
        tl.store(sigma_ptr + lay, ss / denom)


_ELT = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
        torch.float64: tl.float64}
_TABLES: dict = {}  # launch tables by (device, data pointers, shapes, dims): weights stay put


def _shape3(w: torch.Tensor, dim: int) -> tuple[int, int, int]:
    """(O, H, I) of a contiguous weight seen as [O, H, I] around `dim`."""
    outer = 1
    for s in w.shape[:dim]:
        outer *= s
    inner = 1
    for s in w.shape[dim + 1:]:
        inner *= s
    return outer, w.shape[dim], inner


def _tables(weights: list[torch.Tensor], dims: list[int]):
    """(meta, row block maps, column block maps, total H, total K, partial counts) on the
    weights' device, cached while the weights keep their storage."""
    key = (weights[0].device,
           tuple((w.data_ptr(), tuple(w.shape), d) for w, d in zip(weights, dims)))
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    meta, rows, cols = [], ([], []), ([], [])
    u_off = v_off = p1 = p2 = 0
    for lay, (w, dim) in enumerate(zip(weights, dims)):
        n_o, n_h, n_i = _shape3(w, dim)
        n_rb, n_cb = C_.cdiv(n_h, _BR), C_.cdiv(n_o * n_i, _BC)
        meta += [w.data_ptr(), n_o, n_h, n_i, u_off, v_off, p1, n_rb, p2, n_cb]
        rows[0].extend([lay] * n_rb)
        rows[1].extend(range(n_rb))
        cols[0].extend([lay] * n_cb)
        cols[1].extend(range(n_cb))
        u_off, v_off, p1, p2 = u_off + n_h, v_off + n_o * n_i, p1 + n_rb, p2 + n_cb
    dev = weights[0].device

    def i32(values):
        return torch.tensor(values, dtype=torch.int32, device=dev)

    hit = (torch.tensor(meta, dtype=torch.int64, device=dev), i32(rows[0]), i32(rows[1]),
           i32(cols[0]), i32(cols[1]), u_off, v_off, p1, p2)
    if len(_TABLES) >= 64:
        _TABLES.clear()
    _TABLES[key] = hit
    return hit


def _triton_power_iteration(weights, v, dims, n_power_iterations, eps):
    weights = [w.contiguous() for w in weights]
    dims = [d % w.dim() for w, d in zip(weights, dims)]
    meta, rl, ri, cl, ci, n_u, n_v, n_p1, n_p2 = _tables(weights, dims)
    acc = C_.acc_torch_dtype(weights[0].dtype)
    dev = weights[0].device
    t, u = torch.empty(n_u, dtype=acc, device=dev), torch.empty(n_u, dtype=acc, device=dev)
    s, v_out = torch.empty(n_v, dtype=acc, device=dev), torch.empty(n_v, dtype=acc, device=dev)
    p1, p2 = torch.empty(n_p1, dtype=acc, device=dev), torch.empty(n_p2, dtype=acc, device=dev)
    sigma = torch.empty(len(weights), dtype=acc, device=dev)
    elt, acc_tl = _ELT[weights[0].dtype], C_.acc_dtype(weights[0].dtype)
    vin = v.contiguous()
    for it in range(n_power_iterations):
        _rows_kernel[(rl.numel(),)](meta, rl, ri, vin, p2, t, p1, eps, FIRST=it == 0, ELT=elt,
                                    ACC=acc_tl, NMETA=_NMETA, BR=_BR, BJ=_BJ, BP=_BP,
                                    num_warps=4)
        _cols_kernel[(cl.numel(),)](meta, cl, ci, t, p1, s, p2, u, eps, ELT=elt, ACC=acc_tl,
                                    NMETA=_NMETA, BI=_BI, BC=_BC, BP=_BP, num_warps=4)
        vin = s
    _finish_kernel[(cl.numel(),)](meta, cl, ci, s, p2, v_out, sigma, eps, ACC=acc_tl,
                                  NMETA=_NMETA, BC=_BC, BP=_BP, num_warps=4)
    return u, v_out, sigma


_KERNELS = {
    "triton": _registry.on_tensor_device(_triton_power_iteration),
    "cuda": lambda *a: torch.ops.fastgan_cuda.spectral_norm_forward(*a),
}


# ---------------------------------------------------------------------------------------------
# torch.library ops.

@torch.library.custom_op("fastgan::spectral_norm_power_iteration", mutates_args=())
def _power_iteration_op(weights: list[torch.Tensor], v: torch.Tensor, dims: list[int],
                        n_power_iterations: int, eps: float, backend: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _KERNELS[backend](weights, v, dims, n_power_iterations, eps)


@_power_iteration_op.register_fake
def _(weights, v, dims, n_power_iterations, eps, backend):
    n_u = sum(w.shape[d] for w, d in zip(weights, dims))
    return v.new_empty(n_u), v.new_empty(v.shape), v.new_empty(len(weights))


class _Sigma(torch.autograd.Function):
    """sigma's value from the kernel, torch's gradient u v^T. An autograd.Function rather than a
    custom op: it runs no kernel, and a Function costs ~6 us of Python per call against ~27 us
    (NOTES.md), paid per layer and forward. Its backward is plain torch ops: differentiable."""

    @staticmethod
    def forward(ctx, weight, u, v, sigma, dim):
        ctx.save_for_backward(u, v)
        ctx.shape, ctx.dtype, ctx.dim = weight.shape, weight.dtype, dim
        return sigma.view_as(sigma)  # a view, not a copy: no kernel per layer and forward

    @staticmethod
    def backward(ctx, grad):
        u, v = ctx.saved_tensors
        # outer(grad * u, v): torch's order (vdot's backward, then mv's), and H products, not H*K
        g_w = matrix_to_weight(torch.outer(grad * u, v), ctx.shape, ctx.dim).to(ctx.dtype)
        return g_w, None, None, None, None


def sigma_with_grad(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
                    dim: int) -> torch.Tensor:
    """sigma's value (computed by the power iteration) with torch's gradient d sigma / d W =
    u v^T in W's layout (u, v constants), differentiable to any order.

    Args: weight: the weight W; u [H], v [K]: the vectors sigma was computed with; sigma: 0-d;
        dim: the normalized dim of W.
    Returns: a 0-d tensor equal to sigma whose gradient flows to `weight`."""
    return _Sigma.apply(weight, u, v, sigma, dim)


def _check(weights, vs, dims, n_power_iterations, eps) -> None:
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError("weights must be a non-empty list of tensors")
    if not isinstance(vs, (list, tuple)) or len(vs) != len(weights):
        raise ValueError("vs must be a list of tensors, one per weight")
    if not isinstance(dims, (list, tuple)) or len(dims) != len(weights):
        raise ValueError("dims must be a list of ints, one per weight")
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) \
            or n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be an int >= 1, got {n_power_iterations!r}")
    C_.check_eps(eps)
    for k, (w, v, d) in enumerate(zip(weights, vs, dims)):
        C_.check_float_tensor(w, f"weights[{k}]", min_dim=2)
        C_.normalize_dim(d, w.dim(), f"dims[{k}]")
        if w.numel() == 0:
            raise ValueError(f"weights[{k}] must have elements, got shape {tuple(w.shape)}")
        C_.check_float_tensor(v, f"vs[{k}]", ndim=1)
        if v.numel() != w.numel() // w.shape[d]:
            raise ValueError(f"vs[{k}] must have {w.numel() // w.shape[d]} elements (weight "
                             f"{tuple(w.shape)} without dim {d}), got {v.numel()}")
        if w.dtype != weights[0].dtype or w.device != weights[0].device or v.device != w.device:
            raise ValueError("weights must share one dtype and device, and vs must be on it")


def power_iteration(weights: list[torch.Tensor], vs: list[torch.Tensor], dims: list[int],
                    n_power_iterations: int = 1, eps: float = 1e-12):
    """n power iterations for every weight (one dtype and device) in 2n + 1 launches.

    Args: weights: >= 2-D tensors W; vs: their right vectors v [numel / W.shape[dim]]; dims:
        the normalized dim of each; n_power_iterations >= 1; eps: the normalization's floor.
    Returns: (us, vs, sigmas), lists of the new u [H], v [K] and 0-d sigma = u^T W_mat v, in
        fp32 (fp64 for fp64 weights), computed without autograd."""
    _check(weights, vs, dims, n_power_iterations, eps)
    dims = [d % w.dim() for w, d in zip(weights, dims)]
    backend = _backend.resolve(weights[0], "spectral_norm")
    with torch.no_grad():
        if backend == "ref":
            return power_iteration_ref(weights, vs, dims, n_power_iterations, eps)
        return power_iteration_unchecked(weights, vs, dims, n_power_iterations, eps, backend)


def power_iteration_unchecked(weights, vs, dims, n_power_iterations, eps, backend):
    """`power_iteration` on the "triton" / "cuda" backend without its input checks (for
    fastgan.nn, whose registration checked them; vs 1-D, dims >= 0; call under no_grad). Eager calls
    run the kernels directly (the custom op's dispatch costs ~60 us of Python per call); a
    traced call goes through the op, which dynamo sees as one opaque node."""
    for w, x, d in zip(weights, vs, dims):
        # the one check kept: a weight set to another shape after registration leaves its v
        # stale, and the kernels would read past it (or into the next layer's); torch's mv raises
        k = w.numel() // w.shape[d]
        if x.numel() != k:
            raise RuntimeError(f"spectral norm: size mismatch, the weight {tuple(w.shape)} has "
                               f"{k} columns without dim {d} but its v has {x.numel()} "
                               "(the weight changed shape after spectral_norm was registered)")
    acc = C_.acc_torch_dtype(weights[0].dtype)
    v = torch.cat([x if x.dtype == acc else x.to(acc) for x in vs])
    if torch.compiler.is_compiling():
        u, v, sigma = _power_iteration_op(weights, v, dims, n_power_iterations, float(eps),
                                          backend)
    else:
        u, v, sigma = _KERNELS[backend](weights, v, dims, n_power_iterations, float(eps))
    hs = [w.shape[d] for w, d in zip(weights, dims)]
    return list(u.split(hs)), list(v.split([x.numel() for x in vs])), list(sigma.unbind())
