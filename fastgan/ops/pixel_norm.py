"""Pixelwise feature normalization (Karras et al. 2017, "Progressive Growing of GANs").

Along `dim` (the channels, C of them), per position:
    r = (mean_c x^2 + eps)^(-1/2),    y = x * r
The Jacobian J = r I - r^3 x x^T / C is symmetric, so the backward is
    dx = r dy - x r^3 m,                        m = mean_c(x dy)
and differentiating <gg, dx> once more (gg: the gradient arriving at dx) gives
    d/d dy = r gg - x r^3 b,                    b = mean_c(gg x)
    d/d x  = r^3 (x (3 r^2 m b - a) - dy b - m gg),   a = mean_c(gg dy)
Each pass reads its inputs once (the second sweep over a tile hits L1/L2) and writes once;
reductions accumulate in fp32 (fp64 for fp64) in a fixed order, without atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common as C_, _registry

__all__ = ["pixel_norm", "pixel_norm_ref"]


def pixel_norm_ref(x: torch.Tensor, eps: float = 1e-8, dim: int = 1) -> torch.Tensor:
    """The definition, in plain differentiable torch (half types computed in fp32)."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.square().mean(dim, keepdim=True) + eps)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels: every tensor is seen as [outer, C, inner] with its own three strides; a program
# owns one outer index and BLOCK_I inner positions, and sweeps C in BLOCK_C chunks twice (reduce,
# then write). Arguments:
#   *_ptr         inputs (x; dy = the gradient at y; gg = the gradient at dx) and outputs
#   C, INNER      channels, and positions per outer index (the product of the dims after dim)
#   n_i_blocks    programs per outer index, cdiv(INNER, BLOCK_I)
#   eps           fp64 (see _common.as_acc)
#   s<t>_{o,c,i}  strides of tensor t along outer, C, inner (sx: x, sy: y, sd: dy, sg: gg,
#                 so: the outputs, which share one layout)
#   ACC           accumulation dtype: fp32, fp64 for fp64 tensors

@triton.jit
def _tile(o, c, i, s_o, s_c, s_i):
    return o.to(tl.int64) * s_o + c.to(tl.int64)[:, None] * s_c + i.to(tl.int64)[None, :] * s_i


@triton.jit
def _pixel_norm_fwd_kernel(x_ptr, y_ptr, C, INNER, n_i_blocks, eps: tl.float64,
                           sx_o, sx_c, sx_i, sy_o, sy_c, sy_i,
                           ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    o = pid // n_i_blocks
    i = (pid % n_i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    ss = tl.zeros([BLOCK_I], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        ss += tl.sum(x * x, axis=0)
    r = C_.rsqrt(ss / C + C_.as_acc(eps, ACC))[None, :]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        tl.store(y_ptr + _tile(o, c, i, sy_o, sy_c, sy_i), (x * r).to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _pixel_norm_bwd_kernel(dy_ptr, x_ptr, dx_ptr, C, INNER, n_i_blocks, eps: tl.float64,
                           sd_o, sd_c, sd_i, sx_o, sx_c, sx_i, so_o, so_c, so_i,
                           ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    o = pid // n_i_blocks
    i = (pid % n_i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    ss = tl.zeros([BLOCK_I], dtype=ACC)
    xd = tl.zeros([BLOCK_I], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + _tile(o, c, i, sd_o, sd_c, sd_i), mask=mask, other=0.0).to(ACC)
        ss += tl.sum(x * x, axis=0)
        xd += tl.sum(x * dy, axis=0)
    r = C_.rsqrt(ss / C + C_.as_acc(eps, ACC))
    r = r[None, :]
    k = (r * r * r * (xd / C)[None, :])
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + _tile(o, c, i, sd_o, sd_c, sd_i), mask=mask, other=0.0).to(ACC)
        tl.store(dx_ptr + _tile(o, c, i, so_o, so_c, so_i),
                 (r * dy - x * k).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pixel_norm_bwd2_kernel(gg_ptr, dy_ptr, x_ptr, gdy_ptr, gx_ptr, C, INNER, n_i_blocks,
                            eps: tl.float64,
                            sg_o, sg_c, sg_i, sd_o, sd_c, sd_i, sx_o, sx_c, sx_i,
                            so_o, so_c, so_i,
                            ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr):
    pid = tl.program_id(0)
    o = pid // n_i_blocks
    i = (pid % n_i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    ss = tl.zeros([BLOCK_I], dtype=ACC)
    m = tl.zeros([BLOCK_I], dtype=ACC)
    a = tl.zeros([BLOCK_I], dtype=ACC)
    b = tl.zeros([BLOCK_I], dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + _tile(o, c, i, sd_o, sd_c, sd_i), mask=mask, other=0.0).to(ACC)
        gg = tl.load(gg_ptr + _tile(o, c, i, sg_o, sg_c, sg_i), mask=mask, other=0.0).to(ACC)
        ss += tl.sum(x * x, axis=0)
        m += tl.sum(x * dy, axis=0)
        a += tl.sum(gg * dy, axis=0)
        b += tl.sum(gg * x, axis=0)
    r = C_.rsqrt(ss / C + C_.as_acc(eps, ACC))[None, :]
    r3 = r * r * r
    m = (m / C)[None, :]
    a = (a / C)[None, :]
    b = (b / C)[None, :]
    kx = 3.0 * r * r * m * b - a
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (i < INNER)[None, :]
        x = tl.load(x_ptr + _tile(o, c, i, sx_o, sx_c, sx_i), mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + _tile(o, c, i, sd_o, sd_c, sd_i), mask=mask, other=0.0).to(ACC)
        gg = tl.load(gg_ptr + _tile(o, c, i, sg_o, sg_c, sg_i), mask=mask, other=0.0).to(ACC)
        out = _tile(o, c, i, so_o, so_c, so_i)
        tl.store(gdy_ptr + out, (r * gg - x * r3 * b).to(gdy_ptr.dtype.element_ty), mask=mask)
        tl.store(gx_ptr + out, (r3 * (x * kx - dy * b - m * gg)).to(gx_ptr.dtype.element_ty),
                 mask=mask)


def _launch(kernel, x: torch.Tensor, dim: int, eps: float, inputs, outputs):
    """Launch `kernel` over the [outer, C, inner] view of x: inputs are read, outputs (all
    shaped and strided like x) written."""
    views = [C_.view3(t, dim) for t in inputs]
    sizes = views[-1][1]
    outer, c, inner = sizes
    out_views = [C_.view3(t, dim) for t in outputs]  # allocated by empty_like3: no copies
    block_c = min(C_.next_power_of_2(c), 1024)
    block_i = max(1, min(C_.next_power_of_2(inner), 4096 // block_c))
    n_i_blocks = C_.cdiv(inner, block_i)
    strides = [s for v in views + out_views[:1] for s in v[2]]
    kernel[(outer * n_i_blocks,)](
        *[v[0] for v in views], *outputs, c, inner, n_i_blocks, eps, *strides,
        ACC=C_.acc_dtype(x.dtype), BLOCK_C=block_c, BLOCK_I=block_i,
        num_warps=4 if block_c * block_i <= 2048 else 8)


def _triton_forward(x, eps, dim):
    y = C_.empty_like3(x, dim)
    _launch(_pixel_norm_fwd_kernel, x, dim, eps, [x], [y])
    return y


def _triton_backward(grad, x, eps, dim):
    dx = C_.empty_like3(x, dim)
    _launch(_pixel_norm_bwd_kernel, x, dim, eps, [grad, x], [dx])
    return dx


def _triton_double_backward(gg, grad, x, eps, dim):
    g_grad, g_x = C_.empty_like3(x, dim), C_.empty_like3(x, dim)
    _launch(_pixel_norm_bwd2_kernel, x, dim, eps, [gg, grad, x], [g_grad, g_x])
    return g_grad, g_x


def _fake_forward(x, eps, dim):
    return C_.empty_like3(x, dim)


def _fake_backward(grad, x, eps, dim):
    return C_.empty_like3(x, dim)


def _fake_double_backward(gg, grad, x, eps, dim):
    return C_.empty_like3(x, dim), C_.empty_like3(x, dim)


_ops = _registry.declare(
    "pixel_norm",
    forward="(Tensor x, float eps, SymInt dim, str backend) -> Tensor",
    backward="(Tensor grad, Tensor x, float eps, SymInt dim, str backend) -> Tensor",
    double_backward="(Tensor gg, Tensor grad, Tensor x, float eps, SymInt dim, str backend)"
                    " -> (Tensor, Tensor)",
    triton=(_triton_forward, _triton_backward, _triton_double_backward),
    fake=(_fake_forward, _fake_backward, _fake_double_backward),
    reference=pixel_norm_ref,
)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8, dim: int = 1) -> torch.Tensor:
    """Pixelwise feature normalization: x * rsqrt(mean(x**2, dim, keepdim=True) + eps).

    Args:
        x: [N, C] or [N, C, *], float16 / bfloat16 / float32 / float64, any strides (NCHW,
            channels_last, sliced); dim must be non-empty.
        eps: added to the mean square, >= 0.
        dim: the normalized dim (the channels), may be negative.

    Returns:
        A tensor of x's shape and dtype, laid out like x where its strides allow (else
        contiguous); statistics are accumulated in fp32 (fp64 for fp64 x). Differentiable to
        any order.
    """
    C_.check_float_tensor(x, "x", min_dim=2)
    C_.check_eps(eps)
    dim = C_.normalize_dim(dim, x.dim())
    if x.shape[dim] == 0:
        raise ValueError(f"x must have a non-empty dim {dim}, got shape {tuple(x.shape)}")
    backend = _backend.resolve(x, "pixel_norm")
    if backend == "ref" or x.numel() == 0:
        return pixel_norm_ref(x, eps, dim)
    return _ops.forward(x, float(eps), dim, backend)
