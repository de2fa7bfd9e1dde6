"""Argument checks of the layers, penalties and losses: flags, modules, callables and scores.

The checks the ops share, numbers included (`check_number`, `check_eps`), live one floor down in
`fastgan.ops._common`; these cover the other Python-level arguments above the ops. Each raises
TypeError (wrong kind of value) or ValueError (right kind, wrong value) naming the argument,
before any work is done.
"""

from __future__ import annotations

import torch
from torch import nn


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
