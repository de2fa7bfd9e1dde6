"""Argument checks of the layers, penalties and losses: scalars, modules and callables.

The tensor checks every op shares live in `fastgan.ops._common`; these cover the Python-level
arguments above the ops. Each raises TypeError (wrong kind of value) or ValueError (right kind,
wrong value) naming the argument, before any work is done.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn


def number(value, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """`value` as a float after checking it.

    Args:
        value: the argument; a real Python/NumPy number, not a bool and not a tensor.
        name: the argument's name, for the message.
        low, high: inclusive bounds when given (`low_open=True` makes `low` exclusive).

    Returns:
        float(value).

    Raises:
        TypeError: `value` is not a real number. ValueError: it is NaN, infinite or out of bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}")
    return v


def integer(value, name: str, *, low: int = 1) -> int:
    """`value` checked to be an int (not a bool) >= low; returns it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def flag(value, name: str) -> bool:
    """`value` checked to be a bool; returns it."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def module(value, name: str) -> nn.Module:
    """`value` checked to be a torch.nn.Module; returns it."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def function(value, name: str):
    """`value` checked to be callable; returns it."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def scores(value, name: str) -> torch.Tensor:
    """A non-empty floating-point tensor of scores, upcast to fp32 if it is fp16/bf16.

    Args:
        value: the scores, any shape with at least one element, any float dtype.
        name: the argument's name, for the message.

    Returns:
        `value` itself (fp32/fp64) or its fp32 copy (fp16/bf16).
    """
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{getattr(value, 'dtype', type(value).__name__)}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)})")
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
