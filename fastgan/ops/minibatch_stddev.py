"""Minibatch standard deviation (Karras et al. 2017, "Progressive Growing of GANs", section 3).

x is [N, C, H, W]; G = min(group_size, N) divides N into M = N / G groups of G samples; the C
channels are cut into F = num_features slices of c = C / F channels; D = G (or G - 1 if unbiased).
Sample n is member g of group m:
    layout "strided":    m = n % M,  g = n // M    (official ProGAN/StyleGAN: x.reshape(G, M, ...))
    layout "contiguous": m = n // G, g = n % G     (pytorch_GAN_zoo: x.reshape(M, G, ...))
Per group m and element e = (ch, h, w), over its G samples x_g:
    mu_e = mean_g x_g,    sigma_e = sqrt(sum_g (x_g - mu_e)^2 / D + eps)
    s[m, f] = mean of sigma_e over the E = c*H*W elements of slice f (channels f*c .. f*c+c-1)
Forward (y is [N, C+F, H, W]):
    y[:, :C] = x,    y[n, C+f, h, w] = s[m(n), f]
Backward, with K = E * D and k_g,e = (x_g,e - mu_e) / (K sigma_e):
    dS[m, f] = sum over n in group m, h, w of dy[n, C+f, h, w]
    dx_g,e = dy_g,e + dS[m, f] * k_g,e
Double backward (gg: the gradient arriving at dx, [N, C, H, W]):
    d/d dy:  g_dy[:, :C] = gg,   g_dy[n, C+f, h, w] = T[m(n), f],
             T[m, f] = sum over g in group m and e in slice f of gg_g,e * k_g,e
    d/d x:   g_x_j,e = dS[m, f] / (K sigma_e) * (gg_j,e - mean_g gg_g,e
                          - (x_j,e - mu_e) * sum_g gg_g,e (x_g,e - mu_e) / (D sigma_e^2))
Kernels: one program per (group m, slice f, chunk of the slice) loads each element's G samples
once (groups of up to 64 stay in registers; larger ones are swept once per statistic), writes the
pass-through channels and its outputs, and leaves one partial sum (of sigma for the forward, of
K*T for the double backward) in an [M*F, SPLIT] buffer; a second, tiny kernel sums those partials
in a fixed order and fills the F extra maps. The backward passes recompute dS[m, f] in every
program (G*H*W values; each program's chunk covers at least H*W elements, so that re-read is at
most a fraction of its traffic). Accumulation is in fp32 (fp64 for fp64), with no atomics:
results are bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common as C_, _registry

__all__ = ["minibatch_stddev", "minibatch_stddev_ref", "LAYOUTS"]

LAYOUTS = ("strided", "contiguous")


def _check_args(x, group_size, num_features, eps, layout, unbiased) -> int:
    """Raise TypeError/ValueError naming the bad argument; return G = min(group_size, N)."""
    C_.check_float_tensor(x, "x", ndim=4)
    for name, value in (("group_size", group_size), ("num_features", num_features)):
        C_.check_number(value, name, integer=True, low=1)
    C_.check_eps(eps)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be a bool, got {type(unbiased).__name__}")
    n, c = x.shape[0], x.shape[1]
    g = min(group_size, n)
    if n > 0 and n % g != 0:
        raise ValueError(f"group_size={group_size} must divide the batch: N={n} is not a multiple "
                         f"of min(group_size, N)={g} (x of shape {tuple(x.shape)})")
    if c == 0:
        raise ValueError(f"x must have at least one channel, got shape {tuple(x.shape)}")
    if c % num_features != 0:
        raise ValueError(f"num_features={num_features} must divide the channels C={c} "
                         f"(x of shape {tuple(x.shape)})")
    if unbiased and g == 1:
        raise ValueError(f"unbiased=True needs groups of at least 2 samples, got "
                         f"min(group_size={group_size}, N={n}) = 1")
    return g


def minibatch_stddev_ref(x: torch.Tensor, group_size: int = 4, num_features: int = 1,
                         eps: float = 1e-8, layout: str = "strided",
                         unbiased: bool = False) -> torch.Tensor:
    """The definition, in plain differentiable torch (half types computed in fp32)."""
    g = _check_args(x, group_size, num_features, eps, layout, unbiased)
    n, c, h, w = x.shape
    f = num_features
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if x.numel() == 0:  # an empty batch or image: nothing to reduce, nothing to fill
        return torch.cat([xf, xf.new_zeros((n, f, h, w))], 1).to(x.dtype)
    m = n // g
    if layout == "strided":  # sample n = g * M + m
        v, gdim = xf.reshape(g, m, f, c // f, h, w), 0
    else:  # sample n = m * G + g
        v, gdim = xf.reshape(m, g, f, c // f, h, w), 1
    var = v.var(dim=gdim, correction=1 if unbiased else 0)  # [M, F, c, H, W]
    s = (var + eps).sqrt().mean(dim=(2, 3, 4))  # [M, F]
    if layout == "strided":
        s = s.reshape(1, m, f, 1, 1).expand(g, m, f, h, w)
    else:
        s = s.reshape(m, 1, f, 1, 1).expand(m, g, f, h, w)
    return torch.cat([xf, s.reshape(n, f, h, w)], 1).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels. A program owns (group m, feature slice f, split): the elements
# [split*CHUNK, (split+1)*CHUNK) of slice f, in BLOCK_E steps. Elements are enumerated in x's
# memory order (CL: channels fastest, for channels_last inputs; else w fastest). Every tensor
# comes with its own 4 strides (any, 0 too). When the group fits one [BLOCK_G, BLOCK_E] tile
# (ONE_TILE: G <= 64, every practical group size) each element's G samples are loaded once and
# kept in registers; larger groups are swept in BLOCK_G-row chunks, once per statistic.
# Arguments (sizes as in the module docstring):
#   x, y, dy, gg, gdy, gx   input, output, the gradients arriving at y and dx, the double
#                 backward's outputs; part: [M*F*SPLIT] partial sums, reduced by the fill kernel
#   G, F, C, c    group size, feature maps, channels of x, channels per feature slice
#   HW, W, E, GHW   H*W, W, elements per slice (c*H*W), positions of a group's map (G*H*W)
#   SPLIT, CHUNK  programs per (group, slice), and the slice elements each owns
#   D, K          the variance's divisor (G or G-1), and K = E*D
#   eps           fp64 (see _common.as_acc)
#   sm, sg        sample n = m*sm + g*sg (group m, member g): the layout
#   s<t>_{n,c,h,w}  strides of tensor t (sx: x, sy: y, sd: dy, sg: gg, sa: gdy, sb: gx, so: out)
#   CL            elements enumerated channels fastest (channels_last x); ONE_TILE: G fits one
#                 tile; IDX: int32 or int64 index arithmetic; ACC: accumulation dtype

@triton.jit
def _element(e, c, HW, W, CL: tl.constexpr):
    """Channel (within the slice), row and column of element e of a feature slice, as int64
    (the index arithmetic itself stays in e's type: int32 unless a slice has 2^31 elements)."""
    if CL:
        ch = e % c
        hw = e // c
    else:
        ch = e // HW
        hw = e % HW
    return ch.to(tl.int64), (hw // W).to(tl.int64), (hw % W).to(tl.int64)


@triton.jit
def _extra_sum(d_ptr, m, f, GHW, C, HW, W, sm, sg, s_n, s_c, s_h, s_w,
               ACC: tl.constexpr, BLOCK_R: tl.constexpr):
    """dS[m, f]: the sum of d[n, C+f, h, w] over the G samples n of group m and all h, w."""
    acc = tl.zeros([BLOCK_R], dtype=ACC)
    for r0 in range(0, GHW, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        g = r // HW
        hw = r % HW
        n = (m * sm + g * sg).to(tl.int64)
        off = n * s_n + (C + f).to(tl.int64) * s_c + (hw // W).to(tl.int64) * s_h \
            + (hw % W).to(tl.int64) * s_w
        acc += tl.load(d_ptr + off, mask=r < GHW, other=0.0).to(ACC)
    return tl.sum(acc, axis=0)


@triton.jit
def _loop_moments(x_ptr, gg_ptr, m, G, sm, sg, sx_n, ox, sg_n, og, emask,
                  WITH_GG: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr):
    """Large groups, in BLOCK_G-row chunks: mean of x, sum of (x - mu)^2 and, WITH_GG,
    mean of gg and sum of gg (x - mu)."""
    sx = tl.zeros([BLOCK_E], dtype=ACC)
    sgg = tl.zeros([BLOCK_E], dtype=ACC)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        rows = (m * sm + g * sg).to(tl.int64)[:, None]
        mask = (g < G)[:, None] & emask[None, :]
        sx += tl.sum(tl.load(x_ptr + rows * sx_n + ox, mask=mask, other=0.0).to(ACC), axis=0)
        if WITH_GG:
            sgg += tl.sum(tl.load(gg_ptr + rows * sg_n + og, mask=mask, other=0.0).to(ACC),
                          axis=0)
    mu = sx / G
    v = tl.zeros([BLOCK_E], dtype=ACC)
    b = tl.zeros([BLOCK_E], dtype=ACC)
    for g0 in range(0, G, BLOCK_G):
        g = g0 + tl.arange(0, BLOCK_G)
        rows = (m * sm + g * sg).to(tl.int64)[:, None]
        mask = (g < G)[:, None] & emask[None, :]
        xv = tl.load(x_ptr + rows * sx_n + ox, mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, xv - mu[None, :], 0.0)
        v += tl.sum(d * d, axis=0)
        if WITH_GG:
            b += tl.sum(tl.load(gg_ptr + rows * sg_n + og, mask=mask, other=0.0).to(ACC) * d,
                        axis=0)
    return mu, v, sgg / G, b


@triton.jit
def _minibatch_stddev_fwd_kernel(x_ptr, y_ptr, part_ptr, G, F, c, HW, W, E, SPLIT, CHUNK, D,
                                 eps: tl.float64, sm, sg,
                                 sx_n, sx_c, sx_h, sx_w, sy_n, sy_c, sy_h, sy_w,
                                 CL: tl.constexpr, ONE_TILE: tl.constexpr, IDX: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr):
    """Writes y[:, :C] = x and the partial sums of sigma."""
    eps = C_.as_acc(eps, ACC)  # an fp64 argument: exact for fp64 kernels
    pid = tl.program_id(0)
    mf = pid // SPLIT
    m = mf // F
    f = (mf % F).to(tl.int64)
    start = (pid % SPLIT).to(IDX) * CHUNK
    if ONE_TILE:
        g = tl.arange(0, BLOCK_G)
        rows = (m * sm + g * sg).to(tl.int64)[:, None]
        gmask = (g < G)[:, None]
    total = tl.zeros([BLOCK_E], dtype=ACC)
    for e0 in range(0, CHUNK, BLOCK_E):
        e = start + e0 + tl.arange(0, BLOCK_E)
        emask = e < E
        ch, h, w = _element(e, c, HW, W, CL)
        ch = ch + f * c
        ox = (ch * sx_c + h * sx_h + w * sx_w)[None, :]
        oy = (ch * sy_c + h * sy_h + w * sy_w)[None, :]
        if ONE_TILE:
            mask = gmask & emask[None, :]
            xv = tl.load(x_ptr + rows * sx_n + ox, mask=mask, other=0.0)
            tl.store(y_ptr + rows * sy_n + oy, xv.to(y_ptr.dtype.element_ty), mask=mask)
            xa = xv.to(ACC)
            d = tl.where(mask, xa - (tl.sum(xa, axis=0) / G)[None, :], 0.0)
            v = tl.sum(d * d, axis=0)
        else:
            mu, v, _, _ = _loop_moments(x_ptr, x_ptr, m, G, sm, sg, sx_n, ox, sx_n, ox, emask,
                                        False, ACC, BLOCK_G, BLOCK_E)
            for g0 in range(0, G, BLOCK_G):
                gl = g0 + tl.arange(0, BLOCK_G)
                rl = (m * sm + gl * sg).to(tl.int64)[:, None]
                mask = (gl < G)[:, None] & emask[None, :]
                xv = tl.load(x_ptr + rl * sx_n + ox, mask=mask, other=0.0)
                tl.store(y_ptr + rl * sy_n + oy, xv.to(y_ptr.dtype.element_ty), mask=mask)
        total += tl.where(emask, C_.sqrt(v / D + eps), 0.0)
    tl.store(part_ptr + pid, tl.sum(total, axis=0))


@triton.jit
def _minibatch_stddev_fill_kernel(part_ptr, out_ptr, GHW, F, C, HW, W, SPLIT, n_chunks, divisor,
                                  sm, sg, so_n, so_c, so_h, so_w, IDX: tl.constexpr,
                                  BLOCK_S: tl.constexpr, BLOCK: tl.constexpr):
    """out[n, C+f, h, w] = (sum of the SPLIT partials of (m(n), f)) / divisor, for one chunk of
    the G*H*W positions of group m's extra map f."""
    pid = tl.program_id(0)
    mf = pid // n_chunks
    m = mf // F
    f = mf % F
    i = tl.arange(0, BLOCK_S)
    parts = tl.load(part_ptr + mf.to(tl.int64) * SPLIT + i, mask=i < SPLIT, other=0.0)
    value = tl.sum(parts, axis=0) / divisor
    r = (pid % n_chunks).to(IDX) * BLOCK + tl.arange(0, BLOCK)
    g = r // HW
    hw = r % HW
    n = (m * sm + g * sg).to(tl.int64)
    off = n * so_n + (C + f).to(tl.int64) * so_c + (hw // W).to(tl.int64) * so_h \
        + (hw % W).to(tl.int64) * so_w
    out = tl.zeros([BLOCK], dtype=parts.dtype) + value
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=r < GHW)


@triton.jit
def _minibatch_stddev_bwd_kernel(dy_ptr, x_ptr, dx_ptr, G, F, C, c, HW, W, E, GHW, SPLIT, CHUNK,
                                 D, K, eps: tl.float64, sm, sg, sd_n, sd_c, sd_h, sd_w,
                                 sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w,
                                 CL: tl.constexpr, ONE_TILE: tl.constexpr, IDX: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr,
                                 BLOCK_R: tl.constexpr):
    """dx = dy[:, :C] + dS * (x - mu) / (K sigma)."""
    eps = C_.as_acc(eps, ACC)  # an fp64 argument: exact for fp64 kernels
    pid = tl.program_id(0)
    mf = pid // SPLIT
    m = mf // F
    f = (mf % F).to(tl.int64)
    start = (pid % SPLIT).to(IDX) * CHUNK
    coef = _extra_sum(dy_ptr, m, f, GHW, C, HW, W, sm, sg, sd_n, sd_c, sd_h, sd_w,
                      ACC, BLOCK_R) / K
    if ONE_TILE:
        g = tl.arange(0, BLOCK_G)
        rows = (m * sm + g * sg).to(tl.int64)[:, None]
        gmask = (g < G)[:, None]
    for e0 in range(0, CHUNK, BLOCK_E):
        e = start + e0 + tl.arange(0, BLOCK_E)
        emask = e < E
        ch, h, w = _element(e, c, HW, W, CL)
        ch = ch + f * c
        ox = (ch * sx_c + h * sx_h + w * sx_w)[None, :]
        od = (ch * sd_c + h * sd_h + w * sd_w)[None, :]
        oo = (ch * so_c + h * so_h + w * so_w)[None, :]
        if ONE_TILE:
            mask = gmask & emask[None, :]
            xa = tl.load(x_ptr + rows * sx_n + ox, mask=mask, other=0.0).to(ACC)
            dyv = tl.load(dy_ptr + rows * sd_n + od, mask=mask, other=0.0).to(ACC)
            d = tl.where(mask, xa - (tl.sum(xa, axis=0) / G)[None, :], 0.0)
            scale = coef / C_.sqrt(tl.sum(d * d, axis=0) / D + eps)
            tl.store(dx_ptr + rows * so_n + oo,
                     (dyv + scale[None, :] * d).to(dx_ptr.dtype.element_ty), mask=mask)
        else:
            mu, v, _, _ = _loop_moments(x_ptr, x_ptr, m, G, sm, sg, sx_n, ox, sx_n, ox, emask,
                                        False, ACC, BLOCK_G, BLOCK_E)
            scale = (coef / C_.sqrt(v / D + eps))[None, :]
            for g0 in range(0, G, BLOCK_G):
                gl = g0 + tl.arange(0, BLOCK_G)
                rl = (m * sm + gl * sg).to(tl.int64)[:, None]
                mask = (gl < G)[:, None] & emask[None, :]
                xa = tl.load(x_ptr + rl * sx_n + ox, mask=mask, other=0.0).to(ACC)
                dyv = tl.load(dy_ptr + rl * sd_n + od, mask=mask, other=0.0).to(ACC)
                tl.store(dx_ptr + rl * so_n + oo,
                         (dyv + scale * (xa - mu[None, :])).to(dx_ptr.dtype.element_ty),
                         mask=mask)


@triton.jit
def _minibatch_stddev_bwd2_kernel(gg_ptr, dy_ptr, x_ptr, gdy_ptr, gx_ptr, part_ptr,
                                  G, F, C, c, HW, W, E, GHW, SPLIT, CHUNK, D, K, eps: tl.float64,
                                  sm, sg, sg_n, sg_c, sg_h, sg_w, sd_n, sd_c, sd_h, sd_w,
                                  sx_n, sx_c, sx_h, sx_w, sa_n, sa_c, sa_h, sa_w,
                                  sb_n, sb_c, sb_h, sb_w,
                                  CL: tl.constexpr, ONE_TILE: tl.constexpr, IDX: tl.constexpr,
                                  ACC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr,
                                  BLOCK_R: tl.constexpr):
    """Writes g_x (strides sb_*) and g_dy[:, :C] = gg (strides sa_*), and the partial sums of
    K*T = sum gg (x - mu) / sigma."""
    eps = C_.as_acc(eps, ACC)  # an fp64 argument: exact for fp64 kernels
    pid = tl.program_id(0)
    mf = pid // SPLIT
    m = mf // F
    f = (mf % F).to(tl.int64)
    start = (pid % SPLIT).to(IDX) * CHUNK
    coef = _extra_sum(dy_ptr, m, f, GHW, C, HW, W, sm, sg, sd_n, sd_c, sd_h, sd_w,
                      ACC, BLOCK_R) / K
    if ONE_TILE:
        g = tl.arange(0, BLOCK_G)
        rows = (m * sm + g * sg).to(tl.int64)[:, None]
        gmask = (g < G)[:, None]
    total = tl.zeros([BLOCK_E], dtype=ACC)
    for e0 in range(0, CHUNK, BLOCK_E):
        e = start + e0 + tl.arange(0, BLOCK_E)
        emask = e < E
        ch, h, w = _element(e, c, HW, W, CL)
        ch = ch + f * c
        ox = (ch * sx_c + h * sx_h + w * sx_w)[None, :]
        og = (ch * sg_c + h * sg_h + w * sg_w)[None, :]
        oa = (ch * sa_c + h * sa_h + w * sa_w)[None, :]
        ob = (ch * sb_c + h * sb_h + w * sb_w)[None, :]
        if ONE_TILE:
            mask = gmask & emask[None, :]
            xa = tl.load(x_ptr + rows * sx_n + ox, mask=mask, other=0.0).to(ACC)
            ggv = tl.load(gg_ptr + rows * sg_n + og, mask=mask, other=0.0)
            tl.store(gdy_ptr + rows * sa_n + oa, ggv.to(gdy_ptr.dtype.element_ty), mask=mask)
            gga = ggv.to(ACC)
            d = tl.where(mask, xa - (tl.sum(xa, axis=0) / G)[None, :], 0.0)
            var_eps = tl.sum(d * d, axis=0) / D + eps  # sigma^2
            b = tl.sum(gga * d, axis=0)
            sigma = C_.sqrt(var_eps)
            gx = (coef / sigma)[None, :] * (gga - (tl.sum(gga, axis=0) / G)[None, :]
                                            - d * (b / (D * var_eps))[None, :])
            tl.store(gx_ptr + rows * sb_n + ob, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        else:
            mu, v, mgg, b = _loop_moments(x_ptr, gg_ptr, m, G, sm, sg, sx_n, ox, sg_n, og, emask,
                                          True, ACC, BLOCK_G, BLOCK_E)
            var_eps = v / D + eps
            sigma = C_.sqrt(var_eps)
            a = (coef / sigma)[None, :]
            q = (b / (D * var_eps))[None, :]
            for g0 in range(0, G, BLOCK_G):
                gl = g0 + tl.arange(0, BLOCK_G)
                rl = (m * sm + gl * sg).to(tl.int64)[:, None]
                mask = (gl < G)[:, None] & emask[None, :]
                xa = tl.load(x_ptr + rl * sx_n + ox, mask=mask, other=0.0).to(ACC)
                ggv = tl.load(gg_ptr + rl * sg_n + og, mask=mask, other=0.0)
                tl.store(gdy_ptr + rl * sa_n + oa, ggv.to(gdy_ptr.dtype.element_ty), mask=mask)
                gx = a * (ggv.to(ACC) - mgg[None, :] - (xa - mu[None, :]) * q)
                tl.store(gx_ptr + rl * sb_n + ob, gx.to(gx_ptr.dtype.element_ty), mask=mask)
        total += tl.where(emask, b / sigma, 0.0)
    tl.store(part_ptr + pid, tl.sum(total, axis=0))


# Programs to aim for per pass: a few per SM of the largest GPUs (132 SMs on an H100).
_TARGET_PROGRAMS = 528
_MAX_TILE = 4096
_MAX_ONE_TILE_G = 64
_INT32_MAX = 2**31 - 1


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _empty_out(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, channels, H, W] like x: channels_last when x is (strictly) channels_last, else NCHW.
    The one allocation of the kernels' outputs, shared with the fake (meta) registrations."""
    fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
    n, _, h, w = x.shape
    return torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)


def _out_shape(x: torch.Tensor, num_features: int) -> tuple[int, int, int, int]:
    n, c, h, w = x.shape
    return n, c + num_features, h, w


def _plan(x: torch.Tensor, group_size: int, num_features: int, eps: float, layout: str,
          unbiased: bool) -> tuple[dict, dict]:
    """(sizes, meta) of a launch over x: SPLIT programs per (group, slice), each owning CHUNK
    elements of the slice (at least H*W of them: the backward re-reads G*H*W values of dy per
    program), in [BLOCK_G, BLOCK_E] tiles; sample n = m * sm + g * sg."""
    n, c_all, h, w = x.shape
    g, f = group_size, num_features
    m, c, hw = n // g, c_all // f, h * w
    e = c * hw
    if _check_args(x, g, f, eps, layout, unbiased) != g:
        raise ValueError(f"group_size={g} must be min(group_size, N) here (x of shape "
                         f"{tuple(x.shape)})")
    one_tile = g <= _MAX_ONE_TILE_G
    block_g = C_.next_power_of_2(g) if one_tile else 32
    want = C_.next_power_of_2(C_.cdiv(m * f * e, _TARGET_PROGRAMS))
    block_e = min(C_.next_power_of_2(e), max(64, min(_MAX_TILE // block_g, want)))
    n_blocks = C_.cdiv(e, block_e)
    per_split = min(n_blocks, max(C_.cdiv(n_blocks * m * f, _TARGET_PROGRAMS),
                                  C_.cdiv(hw, block_e)))
    split = C_.cdiv(n_blocks, per_split)
    sm, sg = (1, m) if layout == "strided" else (g, 1)
    chunk = per_split * block_e
    # index arithmetic within a slice / an extra map in int32 unless it could overflow
    idx = tl.int64 if max(e + chunk, g * hw + 1024) > _INT32_MAX else tl.int32
    sizes = dict(M=m, F=f, C=c_all, c=c, HW=hw, W=w, E=e, GHW=g * hw, SPLIT=split, CHUNK=chunk,
                 D=g - 1 if unbiased else g, sm=sm, sg=sg, IDX=idx)
    meta = dict(CL=_channels_last(x), ONE_TILE=one_tile, IDX=idx, ACC=C_.acc_dtype(x.dtype),
                BLOCK_G=block_g, BLOCK_E=block_e, num_warps=4 if block_g * block_e <= 2048 else 8)
    return sizes, meta


def _launch(kernel, grid, *args, **meta):
    """Every kernel launch of this op goes through here (the tests spy on it)."""
    kernel[grid](*args, **meta)


def _check_shape(t: torch.Tensor, name: str, shape, x: torch.Tensor) -> None:
    """The ops are callable directly (torch.ops.fastgan.*): check what the launch relies on."""
    if tuple(t.shape) != tuple(shape) or t.device != x.device:
        raise ValueError(f"{name} must have shape {tuple(shape)} on {x.device} (x of shape "
                         f"{tuple(x.shape)}), got {tuple(t.shape)} on {t.device}")


def _partials(x: torch.Tensor, p: dict) -> torch.Tensor:
    return torch.empty(p["M"] * p["F"] * p["SPLIT"], dtype=C_.acc_torch_dtype(x.dtype),
                       device=x.device)


def _fill(part: torch.Tensor, out: torch.Tensor, p: dict, divisor: int) -> None:
    block = min(C_.next_power_of_2(p["GHW"]), 1024)
    n_chunks = C_.cdiv(p["GHW"], block)
    _launch(_minibatch_stddev_fill_kernel, (p["M"] * p["F"] * n_chunks,),
            part, out, p["GHW"], p["F"], p["C"], p["HW"], p["W"], p["SPLIT"], n_chunks, divisor,
            p["sm"], p["sg"], *out.stride(), IDX=p["IDX"], BLOCK_S=C_.next_power_of_2(p["SPLIT"]),
            BLOCK=block, num_warps=4 if block >= 512 else 1)


def _triton_forward(x, group_size, num_features, eps, layout, unbiased):
    y = _empty_out(x, x.shape[1] + num_features)
    if y.numel() == 0:
        return y
    p, meta = _plan(x, group_size, num_features, eps, layout, unbiased)
    part = _partials(x, p)
    _launch(_minibatch_stddev_fwd_kernel, (p["M"] * p["F"] * p["SPLIT"],),
            x, y, part, group_size, p["F"], p["c"], p["HW"], p["W"], p["E"], p["SPLIT"],
            p["CHUNK"], p["D"], eps, p["sm"], p["sg"], *x.stride(), *y.stride(), **meta)
    _fill(part, y, p, p["E"])
    return y


def _triton_backward(grad, x, group_size, num_features, eps, layout, unbiased):
    _check_shape(grad, "grad", _out_shape(x, num_features), x)
    dx = _empty_out(x, x.shape[1])
    if dx.numel() == 0:
        return dx
    p, meta = _plan(x, group_size, num_features, eps, layout, unbiased)
    _launch(_minibatch_stddev_bwd_kernel, (p["M"] * p["F"] * p["SPLIT"],),
            grad, x, dx, group_size, p["F"], p["C"], p["c"], p["HW"], p["W"], p["E"], p["GHW"],
            p["SPLIT"], p["CHUNK"], p["D"], p["E"] * p["D"], eps, p["sm"], p["sg"],
            *grad.stride(), *x.stride(), *dx.stride(),
            BLOCK_R=min(C_.next_power_of_2(p["GHW"]), 1024), **meta)
    return dx


def _triton_double_backward(gg, grad, x, group_size, num_features, eps, layout, unbiased):
    _check_shape(grad, "grad", _out_shape(x, num_features), x)
    _check_shape(gg, "gg", x.shape, x)
    g_grad, g_x = _empty_out(x, x.shape[1] + num_features), _empty_out(x, x.shape[1])
    if g_x.numel() == 0:
        return g_grad, g_x
    p, meta = _plan(x, group_size, num_features, eps, layout, unbiased)
    part = _partials(x, p)
    _launch(_minibatch_stddev_bwd2_kernel, (p["M"] * p["F"] * p["SPLIT"],),
            gg, grad, x, g_grad, g_x, part, group_size, p["F"], p["C"], p["c"], p["HW"], p["W"],
            p["E"], p["GHW"], p["SPLIT"], p["CHUNK"], p["D"], p["E"] * p["D"], eps, p["sm"],
            p["sg"], *gg.stride(), *grad.stride(), *x.stride(), *g_grad.stride(), *g_x.stride(),
            BLOCK_R=min(C_.next_power_of_2(p["GHW"]), 1024), **meta)
    _fill(part, g_grad, p, p["E"] * p["D"])
    return g_grad, g_x


def _fake_forward(x, group_size, num_features, eps, layout, unbiased):
    return _empty_out(x, x.shape[1] + num_features)


def _fake_backward(grad, x, group_size, num_features, eps, layout, unbiased):
    return _empty_out(x, x.shape[1])


def _fake_double_backward(gg, grad, x, group_size, num_features, eps, layout, unbiased):
    return _empty_out(x, x.shape[1] + num_features), _empty_out(x, x.shape[1])


def _cuda_params(group_size, num_features, eps, layout, unbiased):
    """The extension takes `strided: bool` where the launchers take `layout: str`."""
    return group_size, num_features, eps, layout == "strided", unbiased


# group_size is already min(group_size, N), every argument validated.
_PARAMS = ("SymInt group_size, SymInt num_features, float eps, str layout, bool unbiased, "
           "str backend")
_ops = _registry.declare(
    "minibatch_stddev",
    forward=f"(Tensor x, {_PARAMS}) -> Tensor",
    backward=f"(Tensor grad, Tensor x, {_PARAMS}) -> Tensor",
    double_backward=f"(Tensor gg, Tensor grad, Tensor x, {_PARAMS}) -> (Tensor, Tensor)",
    triton=(_triton_forward, _triton_backward, _triton_double_backward),
    fake=(_fake_forward, _fake_backward, _fake_double_backward),
    reference=minibatch_stddev_ref,
    cuda_params=_cuda_params,
)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, num_features: int = 1,
                     eps: float = 1e-8, layout: str = "strided",
                     unbiased: bool = False) -> torch.Tensor:
    """Append `num_features` maps of the per-group standard deviation to x (see the module
    docstring for the exact math).

    Args:
        x: [N, C, H, W], float16 / bfloat16 / float32 / float64, NCHW, channels_last or any
            strides; C >= 1.
        group_size: samples per group, G = min(group_size, N), which must divide N.
        num_features: F, the number of maps appended; must divide C (each map averages the
            stddev over C / F channels).
        eps: added to each variance before the square root, >= 0.
        layout: "strided" (sample n in group n % (N // G), as in the official ProGAN/StyleGAN
            code) or "contiguous" (group n // G, as in pytorch_GAN_zoo).
        unbiased: divide the variance by G - 1 instead of G (needs G >= 2).

    Returns:
        [N, C + num_features, H, W] in x's dtype: x, then the F maps (each constant over H, W
        and over a group); channels_last when x is channels_last, else contiguous. Statistics
        are accumulated in fp32 (fp64 for fp64 x). Differentiable to any order.
    """
    g = _check_args(x, group_size, num_features, eps, layout, unbiased)
    backend = _backend.resolve(x, "minibatch_stddev")
    if backend == "ref" or x.numel() == 0:
        return minibatch_stddev_ref(x, group_size, num_features, eps, layout, unbiased)
    return _ops.forward(x, int(g), int(num_features), float(eps), layout, unbiased, backend)
