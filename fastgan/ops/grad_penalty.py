"""Per-sample gradient norm and penalty, fused (Gulrajani et al. 2017; Mescheder et al. 2018).

g is a batch of gradients [N, *]; per sample n, over all its other elements,
    norm_n = ||g_n||_2 = sqrt(ss_n),              ss_n = sum g_n^2
    mode "gp":  p_n = w (norm_n - t)^2 / t^2      (WGAN-GP; ProGAN's target t, t > 0)
    mode "r1":  p_n = w ss_n                      (R1/R2 with w = gamma/2; t unused)
The op returns (p, norm), both [N], in fp32 (fp64 for fp64 g). Backward, with dp, dnorm the
gradients arriving at p and norm (inv_n = 1/norm_n, and 0 where norm_n = 0, the subgradient
torch's norm uses):
    dg_n = c_n g_n,   "gp": c_n = dp_n 2w (norm_n - t) inv_n / t^2 + dnorm_n inv_n
                      "r1": c_n = dp_n 2w + dnorm_n inv_n
The backward takes norm as an input (saved by the forward, and itself an output of the forward
op), so differentiating it w.r.t. g is exact by composition. Its own vjp (gg: the gradient
arriving at dg; s_n = <gg_n, g_n>):
    d/d g     = c_n gg_n
    d/d dp    = s_n dc/ddp      ("gp": 2w (norm - t) inv / t^2,  "r1": 2w)
    d/d dnorm = s_n inv
    d/d norm  = s_n dc/dnorm    ("gp": dp 2w t inv^2 / t^2 - dnorm inv^2,  "r1": -dnorm inv^2)
The third derivative runs through the reference.

Kernels see each sample as M consecutive memory slots (`_common.sample_block`: NCHW, channels_last
and any dense permutation need no copy; other layouts are copied to contiguous first) and split it
into chunks: pass 1 writes one fp32 (fp64) partial per (sample, chunk), pass 2 sums each sample's
partials in a fixed order: a deterministic two-stage reduction, no atomics. The forward reads g
once; the backward reads g once and writes dg once (no second reduction: norm is saved).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common as C_, _registry

__all__ = ["grad_penalty", "grad_penalty_ref", "MODES"]

MODES = ("gp", "r1")


def grad_penalty_ref(g: torch.Tensor, weight: float = 10.0, target: float = 1.0, mode: str = "gp",
                     *, return_norm: bool = False):
    """The definition, in plain differentiable torch (fp32 accumulation for half types)."""
    gf = g.to(C_.acc_torch_dtype(g.dtype)).reshape(g.shape[0], -1)
    norm = torch.linalg.vector_norm(gf, dim=1)
    if mode == "r1":
        p = weight * gf.square().sum(1)
    else:
        p = weight * (norm - target).square() / (target * target)
    return (p, norm) if return_norm else p


def _coef_ref(dp, dnorm, norm, weight, target, mode):
    """c_n of the module docstring, differentiable, finite at norm = 0."""
    pos = norm > 0
    inv = pos / torch.where(pos, norm, torch.ones_like(norm))
    if mode == "r1":
        c = dp * (2.0 * weight)
    else:
        c = dp * (2.0 * weight / (target * target)) * (norm - target) * inv
    if dnorm is not None:
        c = c + dnorm * inv
    return c


def _backward_ref(dp, dnorm, g, norm, weight, target, mode):
    """dg of the module docstring with norm as an independent input (as the backward op has it)."""
    acc = norm.dtype
    c = _coef_ref(dp.to(acc), None if dnorm is None else dnorm.to(acc), norm, weight, target, mode)
    return (c.view(-1, *([1] * (g.dim() - 1))) * g.to(acc)).to(g.dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels. Sample n occupies g_ptr + n*s_n + [0, M); program pid handles sample
# pid // n_chunks, elements [chunk*CHUNK, (chunk+1)*CHUNK) in BLOCK-wide steps. Arguments:
#   g, gg, dg / out   the gradient batch, the gradient arriving at dg, the [N, *] outputs
#   p, norm, dp, dnorm   [N] penalty and norm, and the gradients arriving at them
#   part              [N * n_chunks] per-(sample, chunk) partial sums, reduced by a second kernel
#   M                 elements per sample; N samples; n_chunks chunks per sample
#   s_n, s_gn, s_ggn, s_on   batch strides of g, g, gg, the output; s_dp, s_dn: of dp, dnorm
#   w_hi + w_lo, t_hi + t_lo   weight and target as two fp32 halves (see `_split`)
#   R1                mode "r1" (else "gp"); HAS_DNORM: dnorm is given
#   ACC               accumulation dtype: fp32, fp64 for fp64 g

@triton.jit
def _grad_penalty_fwd_kernel(g_ptr, part_ptr, M, s_n, n_chunks, ACC: tl.constexpr,
                             CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // n_chunks
    chunk = pid % n_chunks
    base = g_ptr + n.to(tl.int64) * s_n
    start = chunk.to(tl.int64) * CHUNK
    acc = tl.zeros([BLOCK], dtype=ACC)
    for k in range(0, CHUNK, BLOCK):
        idx = start + k + tl.arange(0, BLOCK)
        x = tl.load(base + idx, mask=idx < M, other=0.0).to(ACC)
        acc += x * x
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _grad_penalty_fwd_finalize_kernel(part_ptr, p_ptr, norm_ptr, N, n_chunks, w_hi, w_lo, t_hi,
                                      t_lo, R1: tl.constexpr, ACC: tl.constexpr,
                                      BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    weight = tl.cast(w_hi, ACC) + tl.cast(w_lo, ACC)
    target = tl.cast(t_hi, ACC) + tl.cast(t_lo, ACC)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    # a [BLOCK_N, BLOCK_C] accumulator reduced once after the loop: a per-iteration tl.sum into
    # a result used more than once (ss here) trips an assertion in Triton's
    # OptimizeThreadLocality pass on sm_90 when the loads vectorize (n_chunks % 16 == 0)
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (n < N)[:, None] & (c < n_chunks)[None, :]
        acc += tl.load(part_ptr + n.to(tl.int64)[:, None] * n_chunks + c[None, :], mask=mask,
                       other=0.0)
    ss = tl.sum(acc, axis=1)
    norm = C_.sqrt(ss)
    if R1:
        p = weight * ss
    else:
        d = norm - target
        p = weight * d * d / (target * target)
    tl.store(p_ptr + n, p, mask=n < N)
    tl.store(norm_ptr + n, norm, mask=n < N)


@triton.jit
def _coef(dp_ptr, dnorm_ptr, norm_ptr, n, s_dp, s_dn, weight, target,
          R1: tl.constexpr, HAS_DNORM: tl.constexpr, ACC: tl.constexpr):
    """(c, inv) of sample n (scalars)."""
    nrm = tl.load(norm_ptr + n).to(ACC)
    dp = tl.load(dp_ptr + n * s_dp).to(ACC)
    pos = nrm > 0
    inv = tl.where(pos, 1.0 / tl.where(pos, nrm, 1.0), 0.0)
    if R1:
        c = dp * (2.0 * weight)
    else:
        c = dp * (2.0 * weight / (target * target)) * (nrm - target) * inv
    if HAS_DNORM:
        c += tl.load(dnorm_ptr + n * s_dn).to(ACC) * inv
    return c, inv


@triton.jit
def _grad_penalty_bwd_kernel(dp_ptr, dnorm_ptr, g_ptr, norm_ptr, dg_ptr, M, s_gn, s_on, s_dp, s_dn,
                             n_chunks, w_hi, w_lo, t_hi, t_lo, R1: tl.constexpr,
                             HAS_DNORM: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr,
                             BLOCK: tl.constexpr):
    weight = tl.cast(w_hi, ACC) + tl.cast(w_lo, ACC)
    target = tl.cast(t_hi, ACC) + tl.cast(t_lo, ACC)
    pid = tl.program_id(0)
    n = (pid // n_chunks).to(tl.int64)
    chunk = pid % n_chunks
    c, inv = _coef(dp_ptr, dnorm_ptr, norm_ptr, n, s_dp, s_dn, weight, target, R1, HAS_DNORM, ACC)
    g_base = g_ptr + n * s_gn
    o_base = dg_ptr + n * s_on
    start = chunk.to(tl.int64) * CHUNK
    for k in range(0, CHUNK, BLOCK):
        idx = start + k + tl.arange(0, BLOCK)
        mask = idx < M
        x = tl.load(g_base + idx, mask=mask, other=0.0).to(ACC)
        tl.store(o_base + idx, (c * x).to(dg_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_penalty_bwd2_kernel(gg_ptr, dp_ptr, dnorm_ptr, g_ptr, norm_ptr, out_ptr, part_ptr, M,
                              s_ggn, s_gn, s_on, s_dp, s_dn, n_chunks, w_hi, w_lo, t_hi, t_lo,
                              R1: tl.constexpr, HAS_DNORM: tl.constexpr, ACC: tl.constexpr,
                              CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """g_g = c * gg, and the partial sums of <gg, g> per (sample, chunk)."""
    weight = tl.cast(w_hi, ACC) + tl.cast(w_lo, ACC)
    target = tl.cast(t_hi, ACC) + tl.cast(t_lo, ACC)
    pid = tl.program_id(0)
    n = (pid // n_chunks).to(tl.int64)
    chunk = pid % n_chunks
    c, inv = _coef(dp_ptr, dnorm_ptr, norm_ptr, n, s_dp, s_dn, weight, target, R1, HAS_DNORM, ACC)
    start = chunk.to(tl.int64) * CHUNK
    acc = tl.zeros([BLOCK], dtype=ACC)
    for k in range(0, CHUNK, BLOCK):
        idx = start + k + tl.arange(0, BLOCK)
        mask = idx < M
        gg = tl.load(gg_ptr + n * s_ggn + idx, mask=mask, other=0.0).to(ACC)
        x = tl.load(g_ptr + n * s_gn + idx, mask=mask, other=0.0).to(ACC)
        acc += gg * x
        tl.store(out_ptr + n * s_on + idx, (c * gg).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _grad_penalty_bwd2_finalize_kernel(part_ptr, dp_ptr, dnorm_ptr, norm_ptr, gdp_ptr, gdn_ptr,
                                       gnorm_ptr, N, n_chunks, s_dp, s_dn, w_hi, w_lo, t_hi, t_lo,
                                       R1: tl.constexpr, HAS_DNORM: tl.constexpr, ACC: tl.constexpr,
                                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    weight = tl.cast(w_hi, ACC) + tl.cast(w_lo, ACC)
    target = tl.cast(t_hi, ACC) + tl.cast(t_lo, ACC)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    n64 = n.to(tl.int64)
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)  # reduced after the loop: see above
    for c0 in range(0, n_chunks, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = nmask[:, None] & (c < n_chunks)[None, :]
        acc += tl.load(part_ptr + n64[:, None] * n_chunks + c[None, :], mask=mask, other=0.0)
    s = tl.sum(acc, axis=1)
    nrm = tl.load(norm_ptr + n, mask=nmask, other=0.0).to(ACC)
    dp = tl.load(dp_ptr + n64 * s_dp, mask=nmask, other=0.0).to(ACC)
    pos = nrm > 0
    inv = tl.where(pos, 1.0 / tl.where(pos, nrm, 1.0), 0.0)
    if R1:
        dc_ddp = tl.zeros([BLOCK_N], dtype=ACC) + 2.0 * weight
        dc_dnorm = tl.zeros([BLOCK_N], dtype=ACC)
    else:
        k = 2.0 * weight / (target * target)
        dc_ddp = k * (nrm - target) * inv
        dc_dnorm = dp * k * target * inv * inv
    if HAS_DNORM:
        dn = tl.load(dnorm_ptr + n64 * s_dn, mask=nmask, other=0.0).to(ACC)
        dc_dnorm -= dn * inv * inv
    tl.store(gdp_ptr + n, (s * dc_ddp).to(gdp_ptr.dtype.element_ty), mask=nmask)
    tl.store(gdn_ptr + n, (s * inv).to(gdn_ptr.dtype.element_ty), mask=nmask)
    tl.store(gnorm_ptr + n, (s * dc_dnorm).to(gnorm_ptr.dtype.element_ty), mask=nmask)


# ---------------------------------------------------------------------------------------------
# Launch helpers

_ITERS = 4  # BLOCK-wide steps per chunk


def _alloc_like(g: torch.Tensor) -> torch.Tensor:
    """Output shaped like g, in g's memory layout when g is dense (what the kernels write)."""
    if C_.sample_block(g) is not None:
        return torch.empty_like(g)
    return torch.empty(g.shape, dtype=g.dtype, device=g.device)


def _flat(g: torch.Tensor):
    """(g or a contiguous copy, M, batch stride)."""
    blk = C_.sample_block(g)
    if blk is None:
        g = g.contiguous()
        blk = C_.sample_block(g)
    return g, blk[0], blk[1]


def _like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t (shaped like ref) with ref's strides, copying only when they differ."""
    same = all(a == b for a, b, s in zip(t.stride(), ref.stride(), ref.shape) if s != 1)
    return t if same else torch.empty_like(ref).copy_(t)


def _sizes(m: int):
    block = min(1024, C_.next_power_of_2(max(m, 1)))
    chunk = block * _ITERS if m > block else block
    return block, chunk, max(1, C_.cdiv(m, chunk))  # empty samples: one chunk that reads nothing


def _launch(kernel, grid, *args, **meta):
    kernel[grid](*args, **meta)


def _split(x: float) -> tuple[float, float]:
    """x as hi + lo, two fp32 values (Triton passes Python floats as fp32): fp64 kernels
    rebuild x to ~2^-48 relative, fp32 kernels use hi (+ a negligible lo)."""
    hi = float(np.float32(x))
    return hi, float(np.float32(x - hi))


def _warps(block):
    return 4 if block <= 1024 else 8


def _triton_forward(g, weight, target, mode):
    g, m, s_n = _flat(g)
    n = g.shape[0]
    acc = C_.acc_dtype(g.dtype)
    block, chunk, n_chunks = _sizes(m)
    part = torch.empty(n * n_chunks, dtype=C_.acc_torch_dtype(g.dtype), device=g.device)
    p, norm = (torch.empty(n, dtype=part.dtype, device=g.device) for _ in range(2))
    _launch(_grad_penalty_fwd_kernel, (n * n_chunks,), g, part, m, s_n, n_chunks,
            ACC=acc, CHUNK=chunk, BLOCK=block, num_warps=_warps(block))
    block_n, block_c = min(C_.next_power_of_2(n), 64), min(C_.next_power_of_2(n_chunks), 64)
    _launch(_grad_penalty_fwd_finalize_kernel, (C_.cdiv(n, block_n),), part, p, norm, n, n_chunks,
            *_split(weight), *_split(target), R1=mode == "r1", ACC=acc,
            BLOCK_N=block_n, BLOCK_C=block_c, num_warps=4)
    return p, norm


def _dp_args(dp, dnorm):
    """[N] tensors dp, dnorm (either may be a stride-0 expand) as (dp, s_dp, dn, s_dn, has_dn)."""
    dp = dp if dp.dim() == 1 else dp.reshape(-1)
    if dnorm is None:
        return dp, dp.stride(0), dp, 0, False
    dnorm = dnorm if dnorm.dim() == 1 else dnorm.reshape(-1)
    return dp, dp.stride(0), dnorm, dnorm.stride(0), True


def _triton_backward(dp, dnorm, g, norm, weight, target, mode):
    dg = _alloc_like(g)
    g, m, s_gn = _flat(g)
    _, _, s_on = _flat(dg)
    n = g.shape[0]
    block, chunk, n_chunks = _sizes(m)
    dp, s_dp, dn, s_dn, has_dn = _dp_args(dp, dnorm)
    _launch(_grad_penalty_bwd_kernel, (n * n_chunks,), dp, dn, g, norm.contiguous(), dg, m, s_gn,
            s_on, s_dp, s_dn, n_chunks, *_split(weight), *_split(target), R1=mode == "r1",
            HAS_DNORM=has_dn, ACC=C_.acc_dtype(g.dtype), CHUNK=chunk, BLOCK=block,
            num_warps=_warps(block))
    return dg


def _triton_double_backward(gg, dp, dnorm, g, norm, weight, target, mode):
    g_g = _alloc_like(g)
    g, m, s_gn = _flat(g)
    gg, _, s_ggn = _flat(_like_layout(gg, g))
    _, _, s_on = _flat(g_g)
    n = g.shape[0]
    acc = C_.acc_dtype(g.dtype)
    block, chunk, n_chunks = _sizes(m)
    g_dp = torch.empty(n, dtype=dp.dtype, device=g.device)
    g_dn = torch.empty(n, dtype=dp.dtype if dnorm is None else dnorm.dtype, device=g.device)
    g_norm = torch.empty(n, dtype=norm.dtype, device=g.device)
    dp, s_dp, dn, s_dn, has_dn = _dp_args(dp, dnorm)
    norm = norm.contiguous()
    part = torch.empty(n * n_chunks, dtype=C_.acc_torch_dtype(g.dtype), device=g.device)
    _launch(_grad_penalty_bwd2_kernel, (n * n_chunks,), gg, dp, dn, g, norm, g_g, part, m, s_ggn,
            s_gn, s_on, s_dp, s_dn, n_chunks, *_split(weight), *_split(target),
            R1=mode == "r1", HAS_DNORM=has_dn, ACC=acc, CHUNK=chunk, BLOCK=block,
            num_warps=_warps(block))
    block_n, block_c = min(C_.next_power_of_2(n), 64), min(C_.next_power_of_2(n_chunks), 64)
    _launch(_grad_penalty_bwd2_finalize_kernel, (C_.cdiv(n, block_n),), part, dp, dn, norm, g_dp,
            g_dn, g_norm, n, n_chunks, s_dp, s_dn, *_split(weight), *_split(target),
            R1=mode == "r1", HAS_DNORM=has_dn, ACC=acc, BLOCK_N=block_n, BLOCK_C=block_c,
            num_warps=4)
    return g_dp, g_dn, g_g, g_norm


# Output allocations (what the CUDA kernels must return too: fastgan/_ext.py); dp / dnorm may
# arrive as stride-0 expands.
def _fake_forward(g, weight, target, mode):
    acc = C_.acc_torch_dtype(g.dtype)
    n = g.shape[0]
    return g.new_empty(n, dtype=acc), g.new_empty(n, dtype=acc)


def _fake_backward(dp, dnorm, g, norm, weight, target, mode):
    return _alloc_like(g)


def _fake_double_backward(gg, dp, dnorm, g, norm, weight, target, mode):
    n = g.shape[0]
    dn_dtype = dp.dtype if dnorm is None else dnorm.dtype
    return (g.new_empty(n, dtype=dp.dtype), g.new_empty(n, dtype=dn_dtype), _alloc_like(g),
            g.new_empty(n, dtype=norm.dtype))


def _cuda_params(weight, target, mode):
    """The extension takes `r1: bool` where the launchers take `mode: str`."""
    return weight, target, mode == "r1"


# The forward saves g and its own output norm; the backward takes the norm as an input (so its
# reference is `_backward_ref`, not a vjp of the forward's). An unused norm's gradient stays None
# (materialize_grads=False): the backward takes `Tensor? dnorm`.
_PARAMS = "float weight, float target, str mode, str backend"
_ops = _registry.declare(
    "grad_penalty",
    forward=f"(Tensor g, {_PARAMS}) -> (Tensor, Tensor)",
    backward=f"(Tensor dp, Tensor? dnorm, Tensor g, Tensor norm, {_PARAMS}) -> Tensor",
    double_backward=f"(Tensor gg, Tensor dp, Tensor? dnorm, Tensor g, Tensor norm, {_PARAMS})"
                    " -> (Tensor, Tensor, Tensor, Tensor)",
    triton=(_triton_forward, _triton_backward, _triton_double_backward),
    fake=(_fake_forward, _fake_backward, _fake_double_backward),
    backward_ref=_backward_ref,
    save_outputs=(1,),
    materialize_grads=False,
    cuda_params=_cuda_params,
)


# ---------------------------------------------------------------------------------------------

def _check_args(g, weight, target, mode):
    C_.check_float_tensor(g, "g", min_dim=1)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    C_.check_number(weight, "weight")
    if mode == "gp":
        C_.check_number(target, "target", low=0.0, low_open=True)


def grad_penalty(g: torch.Tensor, weight: float = 10.0, target: float = 1.0, mode: str = "gp",
                 *, return_norm: bool = False):
    """Per-sample penalty of a batch of gradients (see the module docstring).

    Args:
        g: [N, *] (any rank >= 1), float16 / bfloat16 / float32 / float64, any strides (each
            sample's elements are reduced together; dense layouts are read without a copy).
        weight: the penalty's factor (WGAN-GP's lambda; gamma / 2 for R1).
        target: mode "gp" only: the norm the penalty pulls towards, > 0.
        mode: "gp": weight * (||g_n|| - target)^2 / target^2;  "r1": weight * ||g_n||^2.
        return_norm: also return the per-sample norms ||g_n||.

    Returns:
        p, [N], float32 (float64 for float64 g); with return_norm=True the pair (p, norm), norm
        [N] of the same dtype. Differentiable twice w.r.t. g by the kernels (and further through
        the reference).
    """
    _check_args(g, weight, target, mode)
    backend = _backend.resolve(g, "grad_penalty")
    if backend == "ref" or g.numel() == 0:
        out = grad_penalty_ref(g, float(weight), float(target), mode, return_norm=True)
    else:
        out = _ops.forward(g, float(weight), float(target), mode, backend)
    return out if return_norm else out[0]
