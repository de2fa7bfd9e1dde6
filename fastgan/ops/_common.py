"""Helpers shared by the op files: input checks, strided views, launch sizes, reference vjps."""

from __future__ import annotations

import math
import numbers

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(t, name: str, *, min_dim: int = 1, ndim: int | None = None) -> None:
    """Raise TypeError/ValueError naming `name` unless `t` is a floating tensor of the right
    rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dims, got shape {tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on one device, got {listed}")


def check_number(value, name: str, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False) -> float | int:
    """The one check of a scalar argument, for the ops and the layers, penalties and losses.

    Args:
        value: the argument: a real Python/NumPy number (an integral one with integer=True), not
            a bool (an int to Python, never a size or a scale here) and not a tensor.
        name: the argument's name, for the messages.
        integer: whether it must be an int.
        low, high: inclusive bounds when given (`low_open=True` makes `low` exclusive).

    Returns:
        float(value), or int(value) with integer=True.

    Raises:
        TypeError: not such a number. ValueError: NaN, infinite or out of bounds; each message
        names the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer
                                                 else numbers.Real):
        raise TypeError(f"{name} must be {'an int' if integer else 'a real number'}, got "
                        f"{type(value).__name__}")
    v = int(value) if integer else float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}")
    return v


def check_eps(eps) -> float:
    """Args: eps, a finite number >= 0 (check_number). Returns: float(eps)."""
    return check_number(eps, "eps", low=0.0)


def pair(v, name: str) -> tuple[int, int]:
    """(v, v) for an int v, (v[0], v[1]) for a pair of ints; else ValueError naming `name`."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) for e in v)):
        return (v[0], v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def normalize_dim(dim: int, ndim: int, name: str = "dim") -> int:
    if not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}), got {dim!r}")
    return dim % ndim


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation type: fp64 for fp64 tensors, fp32 for everything else."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _merge_dims(sizes, strides) -> tuple[int, int] | None:
    """(size, stride) of consecutive dims seen as one dim, or None when they cannot be."""
    if 0 in sizes:  # no element: any stride will do
        return 0, 0
    size, stride = 1, 0
    for sz, st in zip(reversed(sizes), reversed(strides)):
        if sz == 1:
            continue
        if size == 1:
            size, stride = sz, st
        elif st == stride * size:
            size *= sz
        else:
            return None
    return size, stride


def view3(t: torch.Tensor, dim: int
          ) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int, int]]:
    """`t` as [outer, t.shape[dim], inner] without a copy when its strides allow (NCHW,
    channels_last, stride-0 expands all do), else after `.contiguous()`.
    Returns (tensor, sizes, strides) of that 3-D view."""
    shape, strides = t.shape, t.stride()
    outer = _merge_dims(shape[:dim], strides[:dim])
    inner = _merge_dims(shape[dim + 1:], strides[dim + 1:])
    if outer is None or inner is None:
        return view3(t.contiguous(), dim)
    return t, (outer[0], shape[dim], inner[0]), (outer[1], strides[dim], inner[1])


def empty_like3(t: torch.Tensor, dim: int) -> torch.Tensor:
    """An uninitialized tensor like `t` (same memory format where possible) whose strides collapse
    to the [outer, C, inner] view of `view3` without a copy."""
    out = torch.empty_like(t)
    shape, strides = out.shape, out.stride()
    if _merge_dims(shape[:dim], strides[:dim]) and _merge_dims(shape[dim + 1:], strides[dim + 1:]):
        return out
    return torch.empty(shape, dtype=t.dtype, device=t.device)


cdiv = triton.cdiv
next_power_of_2 = triton.next_power_of_2


@triton.jit
def sqrt(v):
    """IEEE-rounded sqrt: tl.sqrt_rn for fp32 (tl.sqrt lowers to sqrt.approx.ftz.f32, which
    flushes subnormals: a tiny variance with eps=0 would become 0), tl.sqrt for fp64."""
    if v.dtype == tl.float64:
        return tl.sqrt(v)
    else:
        return tl.sqrt_rn(v)


@triton.jit
def rsqrt(v):
    """1/sqrt(v) through the IEEE sqrt (tl.rsqrt lowers to rsqrt.approx.ftz.f32)."""
    return 1.0 / sqrt(v)


# ---------------------------------------------------------------------------------------------
# Added for ops/grad_penalty.py (per-sample reductions over a flat [N, M] view).

def sample_block(t: torch.Tensor) -> tuple[int, int] | None:
    """(M, batch_stride) when each sample t[n] fills the M memory slots t.data + n*batch_stride +
    [0, M) exactly (some permutation of its dims is dense, as for NCHW and channels_last) and the
    whole tensor is dense, so that `torch.empty_like(t)` has the same strides; else None."""
    sizes, strides = t.shape[1:], t.stride()[1:]
    if 0 in sizes:  # empty samples: nothing to address
        return 0, 0
    dims = sorted((st, sz) for sz, st in zip(sizes, strides) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return None
        expected *= sz
    m = expected
    if t.shape[0] > 1 and t.stride(0) != m:
        return None
    return m, (t.stride(0) if t.shape[0] > 1 else m)


@triton.jit
def as_acc(v, ACC: tl.constexpr):
    """A float kernel argument as an ACC scalar. Annotate the argument `tl.float64`: a compiled
    kernel then receives it in double precision (an unannotated Python float arrives as fp32)
    and fp64 kernels use it exactly, fp32 kernels round it once; the interpreter passes the
    Python float itself. (Multiplying by an ACC 1.0 works in both modes; `.to` alone does not
    exist on the interpreter's Python floats.)"""
    return (v * tl.full([], 1.0, ACC)).to(ACC)


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """torch twin of `acc_dtype`: fp64 for fp64 tensors, fp32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32
