"""Benchmark cases: op x shape x dtype x pass, at the shapes of real ProGAN training.

Shape sets (`shapes_for`): "all" (every ProGAN shape of the op), "quick" (a few of them) and
"largest" (only the one with the most elements per op: the shape where a memory-bound kernel
is furthest from launch overhead, and the cheapest single answer to "is it fast").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .specs import SPECS, OpSpec

PASSES = ("fwd", "fwdbwd")
SHAPE_SETS = ("all", "quick", "largest")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
FROM_SHORT = {v: k for k, v in SHORT.items()}

# Activation shapes of ProGAN training at batch 16: 512 channels at 4..32 px, then 256 at 64,
# 128 at 128, 64 at 256.
GPU_ACT_SHAPES = [(16, 512, r, r) for r in (4, 8, 16, 32)] + [
    (16, 256, 64, 64), (16, 128, 128, 128), (16, 64, 256, 256)]
GPU_ACT_SHAPES_QUICK = [(16, 512, 32, 32), (16, 128, 128, 128), (16, 64, 256, 256)]
GPU_MBSTD_SHAPES = [(16, 512, 4, 4), (128, 512, 4, 4)]
# The gradient a penalty reduces has the images' shape: batch 16 of RGB at 128 and 256 px.
GPU_GRAD_SHAPES = [(16, 3, 128, 128), (16, 3, 256, 256)]
CPU_GRAD_SHAPES = [(16, 3, 64, 64)]
# CPU: small, so that a 2-core machine finishes in seconds.
CPU_ACT_SHAPES = [(8, 64, 16, 16), (4, 32, 64, 64)]
CPU_ACT_SHAPES_QUICK = [(4, 32, 64, 64)]
CPU_MBSTD_SHAPES = [(16, 128, 4, 4)]


@dataclass(frozen=True)
class Case:
    """One benchmark row: `op` at `shape` in `dtype`, pass "fwd" or "fwdbwd"."""

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    pass_: str

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    @property
    def id(self) -> str:
        return f"{self.op}-{self.shape_str}-{SHORT[self.dtype]}-{self.pass_}"

    @property
    def shape_str(self) -> str:
        return "x".join(map(str, self.shape))

    def min_bytes(self) -> int:
        """Returns: the bytes this case must move at least (the op's byte model)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.spec.min_bytes(self.shape, itemsize, self.pass_)


def shapes_for(op: str, device: str, shapes: str = "all") -> list[tuple[int, ...]]:
    """The input shapes benchmarked for `op`.

    Args:
        op: a name from `specs.OPS`.
        device: "cuda" (ProGAN's shapes) or "cpu" (small ones).
        shapes: a shape set from SHAPE_SETS ("all", "quick", "largest").
    Returns:
        the list of shapes of x, smallest first."""
    if shapes not in SHAPE_SETS:
        raise ValueError(f"shapes must be one of {SHAPE_SETS}, got {shapes!r}")
    gpu = device == "cuda"
    if op == "minibatch_stddev":
        found = GPU_MBSTD_SHAPES if gpu else CPU_MBSTD_SHAPES
    elif op == "grad_penalty":
        found = GPU_GRAD_SHAPES if gpu else CPU_GRAD_SHAPES
    elif shapes == "quick":
        found = GPU_ACT_SHAPES_QUICK if gpu else CPU_ACT_SHAPES_QUICK
    else:
        found = GPU_ACT_SHAPES if gpu else CPU_ACT_SHAPES
    if shapes == "largest":
        return [max(found, key=math.prod)]
    return list(found)


def default_dtypes(device: str) -> list[torch.dtype]:
    """Returns: fp32 and bf16 on "cuda", fp32 on "cpu"."""
    return [torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]


def make_cases(ops: Sequence[str], device: str, dtypes: Sequence[torch.dtype],
               shapes: str = "all", passes: Sequence[str] = PASSES) -> list[Case]:
    """Every (op, shape, dtype, pass) to run.

    Args:
        ops: op names; device: "cuda" or "cpu"; dtypes: torch dtypes;
        shapes: the shape set (see `shapes_for`); passes: from PASSES.
    Returns:
        the cases, grouped by op, then shape, dtype and pass."""
    return [Case(op, tuple(shape), dtype, p)
            for op in ops for shape in shapes_for(op, device, shapes)
            for dtype in dtypes for p in passes]


def parse_dtypes(text: str, device: str) -> list[torch.dtype]:
    """Args: text, a comma list of dtype names (float32 or fp32, ...) or "auto" (the device's
    defaults); device: "cuda" or "cpu". Returns: the torch dtypes. Exits with a message on an
    unknown name (it parses command-line options)."""
    if text == "auto":
        return default_dtypes(device)
    out = []
    for part in text.split(","):
        part = part.strip()
        dt = DTYPES.get(part) or FROM_SHORT.get(part)
        if dt is None:
            raise SystemExit(f"unknown dtype {part!r} (choose from {', '.join(DTYPES)} "
                             f"or {', '.join(FROM_SHORT)})")
        out.append(dt)
    return out


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    """Args: text, a comma list; allowed: the valid items; flag: the option, for the message.
    Returns: the items, in the given order. Exits with a message on an unknown item."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad} (choose from {', '.join(allowed)})")
    return items
