"""Fused bias + activation + gain: the epilogue of every ProGAN / StyleGAN layer.

Along `dim` (the channels, C of them), with v = x + b (b broadcast along dim; 0 when absent):
    y = act(v) * gain,    act(v) = v ("linear"), max(v, 0) ("relu"),
                          v if v > 0 else alpha v ("lrelu")
The slope s = act'(v) is piecewise constant: 1 (linear), [v > 0] (relu), 1 or alpha (lrelu), so
all the backward needs of the forward is the sign of v, kept as a 1-byte mask m = [v > 0]
(nothing at all for linear):
    dx = dy * gain * s(m),                  db = sum of dx over every dim but `dim`
With (gg_x, gg_b) the gradients arriving at (dx, db), and s constant almost everywhere, the second
derivative flows to dy only:
    d/d dy = (gg_x + gg_b broadcast) * gain * s(m),          d/d x = d/d b = 0
which is the backward's own masked kernel again (with a per-channel addend instead of a
reduction); and the vjp of that map is the backward itself. So forward -> backward ->
double backward -> backward ... closes on registered kernels: every order of derivative runs them.
Arithmetic runs in fp32 (fp64 for fp64 x) whatever the dtype of b (a fp32 parameter under
autocast is fine); y and dx have the dtype of x, db that of b. db is a two-stage reduction in a
fixed order (per-program partial sums written by the backward kernel in the same pass over dy,
then one small kernel), without atomics: dx and db together read dy and the mask once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .. import _backend
from . import _common as C_, _registry

__all__ = ["bias_act", "bias_act_ref", "ACTIVATIONS"]

ACTIVATIONS = ("linear", "relu", "lrelu")
_ACT_CODE = {"linear": 0, "relu": 1, "lrelu": 2}


def bias_act_ref(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear",
                 alpha: float = 0.2, gain: float = 1.0, dim: int = 1) -> torch.Tensor:
    """The definition, in plain differentiable torch (computed in fp32, fp64 for fp64 x; the
    result has x's dtype)."""
    dim = C_.normalize_dim(dim, x.dim())
    acc = C_.acc_torch_dtype(x.dtype)
    v = x.to(acc)
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        v = v + b.to(acc).reshape(shape)
    if act == "relu":
        v = F.relu(v)
    elif act == "lrelu":
        v = F.leaky_relu(v, alpha)
    elif act != "linear":
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    return (v * gain).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Triton kernels. Every tensor is seen as [outer, C, inner] with its own three strides (see
# `_geometry`: outer is folded into inner whenever all tensors allow, so channels_last and [N, C]
# are one long run of rows). A tile is [BLOCK_I rows, BLOCK_C channels] of one outer index;
# program (q, p) owns channel block q and r_iters consecutive row blocks starting at p * r_iters
# (channel blocks on grid axis 0, whose limit is 2^31 - 1; at most _MAX_PROGRAMS on axis 1).
# Arguments:
#   x/u, b/v, y/out, m  input, per-channel addend (bias; gg_b in the double backward), output,
#                       the 1-byte sign mask [v > 0]; part: per-program partial sums of out
#   C, INNER            channels, rows per outer index
#   n_i_blocks          row blocks per outer index; n_blocks = outer * n_i_blocks
#   r_iters             row blocks per program (consecutive, starting at program_id(1) * r_iters)
#   alpha, gain         fp64 (see _common.as_acc)
#   s<t>_{o,c,i}        strides of tensor t along outer, C, inner; s_b / s_v: the addend's
#   ACT                 0 linear, 1 relu, 2 lrelu; HAS_B / HAS_V: an addend is given;
#   MASK                the forward stores the mask; PARTIAL: the backward writes db partials

@triton.jit
def _offsets(o, i, c, s_o, s_c, s_i):
    return o.to(tl.int64) * s_o + i.to(tl.int64)[:, None] * s_i + c.to(tl.int64)[None, :] * s_c


@triton.jit
def _bias_act_fwd_kernel(x_ptr, b_ptr, y_ptr, m_ptr, C, INNER, n_i_blocks, n_blocks, r_iters,
                         alpha: tl.float64, gain: tl.float64, sx_o, sx_c, sx_i, sy_o, sy_c, sy_i,
                         sm_o, sm_c, sm_i, s_b, ACT: tl.constexpr, HAS_B: tl.constexpr,
                         MASK: tl.constexpr, ACC: tl.constexpr, BLOCK_I: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    a = C_.as_acc(alpha, ACC)
    g = C_.as_acc(gain, ACC)
    if HAS_B:
        b = tl.load(b_ptr + c.to(tl.int64) * s_b, mask=c_ok, other=0.0).to(ACC)
    for it in range(r_iters):
        blk = tl.program_id(1).to(tl.int64) * r_iters + it  # int64: rows may pass 2^31
        o = blk // n_i_blocks
        i = (blk - o * n_i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
        ok = ((i < INNER) & (blk < n_blocks))[:, None] & c_ok[None, :]
        v = tl.load(x_ptr + _offsets(o, i, c, sx_o, sx_c, sx_i), mask=ok, other=0.0).to(ACC)
        if HAS_B:
            v = v + b[None, :]
        if ACT == 0:
            y = v * g
        elif ACT == 1:
            y = tl.where(v < 0, 0.0, v) * g  # NaN stays NaN, like torch.relu
        else:
            y = tl.where(v > 0, v, v * a) * g
        tl.store(y_ptr + _offsets(o, i, c, sy_o, sy_c, sy_i), y.to(y_ptr.dtype.element_ty), mask=ok)
        if MASK:
            tl.store(m_ptr + _offsets(o, i, c, sm_o, sm_c, sm_i), v > 0, mask=ok)


@triton.jit
def _bias_act_bwd_kernel(u_ptr, v_ptr, m_ptr, out_ptr, part_ptr, C, INNER, n_i_blocks, n_blocks,
                         r_iters, alpha: tl.float64, gain: tl.float64, su_o, su_c, su_i, sm_o, sm_c,
                         sm_i, so_o, so_c, so_i, s_v, ACT: tl.constexpr, HAS_V: tl.constexpr,
                         PARTIAL: tl.constexpr, ACC: tl.constexpr, BLOCK_I: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """out = (u + v broadcast) * gain * s(mask); with PARTIAL, also this program's per-channel
    sums of out, into row program_id(1) of the [programs, C] buffer part_ptr. The backward
    (u = dy, with PARTIAL for db) and the double backward (u = gg_x, v = gg_b) both run it."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    a = C_.as_acc(alpha, ACC)
    g = C_.as_acc(gain, ACC)
    if HAS_V:
        v = tl.load(v_ptr + c.to(tl.int64) * s_v, mask=c_ok, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for it in range(r_iters):
        blk = tl.program_id(1).to(tl.int64) * r_iters + it  # int64: rows may pass 2^31
        o = blk // n_i_blocks
        i = (blk - o * n_i_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)
        ok = ((i < INNER) & (blk < n_blocks))[:, None] & c_ok[None, :]
        t = tl.load(u_ptr + _offsets(o, i, c, su_o, su_c, su_i), mask=ok, other=0.0).to(ACC)
        if HAS_V:
            t = t + v[None, :]
        t = t * g
        if ACT != 0:
            m = tl.load(m_ptr + _offsets(o, i, c, sm_o, sm_c, sm_i), mask=ok, other=0) != 0
            if ACT == 1:
                t = tl.where(m, t, 0.0)
            else:
                t = tl.where(m, t, t * a)
        tl.store(out_ptr + _offsets(o, i, c, so_o, so_c, so_i), t.to(out_ptr.dtype.element_ty),
                 mask=ok)
        if PARTIAL:
            acc += tl.sum(tl.where(ok, t, 0.0), axis=0)
    if PARTIAL:
        tl.store(part_ptr + tl.program_id(1).to(tl.int64) * C + c, acc, mask=c_ok)


@triton.jit
def _bias_act_sum_partials_kernel(part_ptr, out_ptr, P, C, ACC: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_C: tl.constexpr):
    """out[c] = sum over p of part[p, c], in a fixed order."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_C], dtype=ACC)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        ok = (p < P)[:, None] & (c < C)[None, :]
        acc += tl.sum(tl.load(part_ptr + p.to(tl.int64)[:, None] * C + c[None, :], mask=ok,
                              other=0.0), axis=0)
    tl.store(out_ptr + c, acc.to(out_ptr.dtype.element_ty), mask=c < C)


# ---------------------------------------------------------------------------------------------
# Launchers

_TILE = 4096          # elements per tile
_MAX_PROGRAMS = 1024  # programs per launch; row blocks beyond that loop inside a program


def _geometry(tensors, dim):
    """The [outer, C, inner] views of same-shaped tensors (no copies for NCHW, channels_last,
    [N, C] or stride-0 expands), with outer folded into inner where every tensor allows it:
    [N, C] becomes [1, C, N] and channels_last [1, C, N*H*W]. Returns (tensors, sizes, strides)."""
    views = [C_.view3(t, dim) for t in tensors]
    outer, c, inner = views[0][1]
    strides = [v[2] for v in views]
    if outer > 1 and inner == 1:
        outer, inner = 1, outer
        strides = [(0, s_c, s_o) for s_o, s_c, _ in strides]
    elif outer > 1 and all(s_o == inner * s_i for s_o, _, s_i in strides):
        outer, inner = 1, outer * inner
        strides = [(0, s_c, s_i) for _, s_c, s_i in strides]
    return [v[0] for v in views], (outer, c, inner), strides


def _config(sizes, out_strides):
    """Tile and grid: the tile is long along the dim the output is contiguous in."""
    outer, c, inner = sizes
    _, s_c, s_i = out_strides
    if inner == 1 or (c > 1 and abs(s_c) < abs(s_i)):  # channels fastest: channels_last, [N, C]
        block_c = min(C_.next_power_of_2(c), 256)
        block_i = max(1, min(C_.next_power_of_2(inner), _TILE // block_c))
    else:  # rows fastest: NCHW
        block_i = min(C_.next_power_of_2(inner), _TILE)
        block_c = max(1, min(C_.next_power_of_2(c), _TILE // block_i))
    n_i_blocks = C_.cdiv(inner, block_i)
    n_c_blocks = C_.cdiv(c, block_c)
    n_blocks = outer * n_i_blocks
    progs = max(1, min(n_blocks, _MAX_PROGRAMS // n_c_blocks))
    r_iters = C_.cdiv(n_blocks, progs)
    progs = C_.cdiv(n_blocks, r_iters)
    return dict(grid=(n_c_blocks, progs), n_i_blocks=n_i_blocks, n_blocks=n_blocks,
                r_iters=r_iters, BLOCK_I=block_i, BLOCK_C=block_c,
                num_warps=4 if block_c * block_i <= 2048 else 8)


def _mask_like(y: torch.Tensor, act: str, save_mask: bool) -> torch.Tensor:
    if act == "linear" or not save_mask:
        return y.new_empty((0,), dtype=torch.bool)
    return torch.empty_strided(y.shape, y.stride(), dtype=torch.bool, device=y.device)


def _grad_like(u: torch.Tensor, mask: torch.Tensor, act: str, dim: int) -> torch.Tensor:
    """Output of the masked kernel: laid out like the mask (hence like x) when there is one."""
    if act != "linear":
        return torch.empty_strided(mask.shape, mask.stride(), dtype=u.dtype, device=u.device)
    return C_.empty_like3(u, dim)


def _check_mask(mask: torch.Tensor, u: torch.Tensor, act: str) -> None:
    if act != "linear" and mask.shape != u.shape:
        raise RuntimeError(f"bias_act: the backward of act={act!r} needs the sign mask of the "
                           f"forward, got a mask of shape {tuple(mask.shape)} for a gradient of "
                           f"shape {tuple(u.shape)} (was the forward run with save_mask=False?)")


def _triton_forward(x, b, act, alpha, gain, dim, save_mask):
    y = C_.empty_like3(x, dim)
    mask = _mask_like(y, act, save_mask)
    if x.numel() == 0:
        return y, mask
    with_mask = mask.numel() > 0
    (xv, _, *_), sizes, strides = _geometry([x, y] + ([mask] if with_mask else []), dim)
    cfg = _config(sizes, strides[1])
    s_m = strides[2] if with_mask else (0, 0, 0)
    _bias_act_fwd_kernel[cfg.pop("grid")](
        xv, x if b is None else b, y, mask if with_mask else y, sizes[1], sizes[2],
        cfg.pop("n_i_blocks"), cfg.pop("n_blocks"), cfg.pop("r_iters"), alpha, gain,
        *strides[0], *strides[1], *s_m, 0 if b is None else b.stride(0),
        ACT=_ACT_CODE[act], HAS_B=b is not None, MASK=with_mask, ACC=C_.acc_dtype(x.dtype), **cfg)
    return y, mask


def _masked(u, v, mask, act, alpha, gain, dim, with_sum):
    """out = (u + v) * gain * s(mask) (and, with_sum, db = sum of out over all but dim)."""
    out = _grad_like(u, mask, act, dim)
    c = u.shape[dim]
    db = u.new_empty((c,) if with_sum else (0,), dtype=C_.acc_torch_dtype(u.dtype))
    if u.numel() == 0:
        return out, db.zero_()
    tensors = [u, out] + ([mask] if act != "linear" else [])
    (uv, _, *_), sizes, strides = _geometry(tensors, dim)
    cfg = _config(sizes, strides[1])
    progs = cfg["grid"][1]
    if not with_sum:
        part = out  # not touched
    else:  # a single program's partial sums are the result: no second stage then
        part = db.view(1, c) if progs == 1 else db.new_empty((progs, c))
    s_m = strides[2] if act != "linear" else (0, 0, 0)
    _bias_act_bwd_kernel[cfg.pop("grid")](
        uv, u if v is None else v, mask if act != "linear" else out, out, part, sizes[1],
        sizes[2], cfg.pop("n_i_blocks"), cfg.pop("n_blocks"), cfg.pop("r_iters"), alpha, gain,
        *strides[0], *s_m, *strides[1], 0 if v is None else v.stride(0),
        ACT=_ACT_CODE[act], HAS_V=v is not None, PARTIAL=with_sum, ACC=C_.acc_dtype(u.dtype),
        **cfg)
    if with_sum and progs > 1:
        block_c = min(C_.next_power_of_2(c), 128)
        _bias_act_sum_partials_kernel[(C_.cdiv(c, block_c),)](
            part, db, progs, c, ACC=C_.acc_dtype(u.dtype),
            BLOCK_P=max(1, min(C_.next_power_of_2(progs), 4096 // block_c)), BLOCK_C=block_c)
    return out, db


def _triton_backward(dy, mask, has_bias, act, alpha, gain, dim):
    _check_mask(mask, dy, act)
    return _masked(dy, None, mask, act, alpha, gain, dim, has_bias)


def _triton_double_backward(gg_x, gg_b, mask, act, alpha, gain, dim):
    _check_mask(mask, gg_x, act)
    return _masked(gg_x, gg_b, mask, act, alpha, gain, dim, False)[0]


def _fake_forward(x, b, act, alpha, gain, dim, save_mask):
    y = C_.empty_like3(x, dim)
    return y, _mask_like(y, act, save_mask)


def _fake_backward(grad, mask, has_bias, act, alpha, gain, dim):
    db = grad.new_empty((grad.shape[dim],) if has_bias else (0,),
                        dtype=C_.acc_torch_dtype(grad.dtype))
    return _grad_like(grad, mask, act, dim), db


def _fake_double_backward(gg_x, gg_b, mask, act, alpha, gain, dim):
    return _grad_like(gg_x, mask, act, dim)


# Autograd: forward -> backward -> double backward, each differentiable by the next; the double
# backward's vjp is the backward op again, so no order falls back to the reference. Each stage
# saves only the mask (what the slopes need) and passes no zero-filled gradient it can avoid.

_NO_GRADS = (None,) * 8


def _save_forward(ctx, inputs, output):
    x, b, act, alpha, gain, dim, _, backend = inputs
    # Else autograd hands the vjp a zero-filled gradient for the mask: an activation-sized memset.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])
    ctx.args = (act, alpha, gain, dim, backend)
    ctx.b_dtype = None if b is None else b.dtype


def _forward_vjp(ctx, grad, _grad_mask):
    (mask,) = ctx.saved_tensors
    want_db = ctx.b_dtype is not None and ctx.needs_input_grad[1]
    if grad is None:
        return _NO_GRADS
    dx, db = _ops.backward(grad, mask, want_db, *ctx.args)
    return dx, db.to(ctx.b_dtype) if want_db else None, *_NO_GRADS[2:]


def _save_backward(ctx, inputs, output):
    grad, mask, has_bias, act, alpha, gain, dim, backend = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(mask)
    ctx.args = (act, alpha, gain, dim, backend)
    ctx.has_bias = has_bias
    ctx.grad_meta = (grad.shape, grad.dtype, grad.device)


def _backward_vjp(ctx, gg_x, gg_b):
    (mask,) = ctx.saved_tensors
    gg_b = gg_b if ctx.has_bias else None
    if gg_x is None and gg_b is None:
        return _NO_GRADS
    if gg_x is None:
        shape, dtype, device = ctx.grad_meta
        gg_x = torch.zeros(shape, dtype=dtype, device=device)
    return _ops.double_backward(gg_x, gg_b, mask, *ctx.args), *_NO_GRADS[1:]


def _save_double_backward(ctx, inputs, output):
    gg_x, gg_b, mask, act, alpha, gain, dim, backend = inputs
    ctx.save_for_backward(mask)
    ctx.args = (act, alpha, gain, dim, backend)
    ctx.gg_b_dtype = None if gg_b is None else gg_b.dtype


def _double_backward_vjp(ctx, g):
    (mask,) = ctx.saved_tensors
    want_b = ctx.gg_b_dtype is not None and ctx.needs_input_grad[1]
    h_x, h_b = _ops.backward(g, mask, want_b, *ctx.args)
    return h_x, h_b.to(ctx.gg_b_dtype) if want_b else None, *_NO_GRADS[2:]


_ARGS = "str act, float alpha, float gain, SymInt dim"
_ops = _registry.declare(
    "bias_act",
    forward=f"(Tensor x, Tensor? b, {_ARGS}, bool save_mask, str backend) -> (Tensor, Tensor)",
    backward=f"(Tensor grad, Tensor mask, bool has_bias, {_ARGS}, str backend)"
             " -> (Tensor, Tensor)",
    double_backward=f"(Tensor gg_x, Tensor? gg_b, Tensor mask, {_ARGS}, str backend) -> Tensor",
    triton=(_triton_forward, _triton_backward, _triton_double_backward),
    fake=(_fake_forward, _fake_backward, _fake_double_backward),
    autograd=((_save_forward, _forward_vjp), (_save_backward, _backward_vjp),
              (_save_double_backward, _double_backward_vjp)),
)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear",
             alpha: float = 0.2, gain: float = 1.0, dim: int = 1) -> torch.Tensor:
    """Fused bias, activation and gain: y = act(x + b broadcast along dim) * gain.

    Args:
        x: [N, C] or [N, C, *] (any rank >= 1), float16 / bfloat16 / float32 / float64, any
            strides (NCHW, channels_last, sliced).
        b: [C] (C = x.shape[dim]) of any float dtype (an fp32 parameter under autocast is
            fine), on x's device; or None.
        act: "linear", "relu" or "lrelu" (leaky ReLU with slope alpha for negative inputs).
        alpha: the leaky ReLU's negative slope (used by "lrelu" only).
        gain: the factor applied after the activation.
        dim: the dim b runs along (the channels), may be negative.

    Returns:
        A tensor of x's shape and dtype, laid out like x where its strides allow (else
        contiguous), computed in fp32 (fp64 for fp64 x). Differentiable to any order w.r.t. x
        and b (db has b's dtype).
    """
    C_.check_float_tensor(x, "x", min_dim=1)
    dim = C_.normalize_dim(dim, x.dim())
    if act not in _ACT_CODE:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if b is not None:
        C_.check_float_tensor(b, "b", ndim=1)
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"b must have shape [{x.shape[dim]}] (dim {dim} of x, shape "
                             f"{tuple(x.shape)}), got {tuple(b.shape)}")
        C_.check_same_device(x=x, b=b)
    alpha, gain = C_.check_number(alpha, "alpha"), C_.check_number(gain, "gain")
    backend = _backend.resolve(x, "bias_act")
    if backend == "ref" or x.numel() == 0:
        return bias_act_ref(x, b, act, alpha, gain, dim)
    save_mask = act != "linear" and torch.is_grad_enabled() and (
        x.requires_grad or (b is not None and b.requires_grad))
    return _ops.forward(x, b, act, float(alpha), float(gain), dim, save_mask, backend)[0]
