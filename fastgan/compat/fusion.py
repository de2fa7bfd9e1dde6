"""Exact fusions inside an nn.Sequential of compat layers.

A compat equalized layer (any class with the `fused_negative_slope` attribute) directly followed
by an nn.LeakyReLU takes the activation into its bias_act pass; a compat conv (a class with
`fused_resample`) directly followed by a 2x2 average pool takes the pool into its convolution
(one 4x4 stride-2 conv; the pool commutes with the bias, so the result is the same number), and
a LeakyReLU after that pool still fuses. The absorbed module's slot gets an nn.Identity, so
indices and state_dict keys stay (neither LeakyReLU nor AvgPool2d holds state). A LeakyReLU
before a pool (the ports' "conv, lrelu, pool" order) cannot move past it: only the activation
fuses there.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ._epilogue import pool_unfusable_reason

__all__ = ["Fusion", "plan_sequential", "apply_fusion", "fuse_sequential", "plain_module"]


@dataclasses.dataclass(frozen=True)
class Fusion:
    """One absorbed module: `seq[absorbed]` folds into the layer `seq[layer]`.

    Attributes:
        layer: index of the compat layer that absorbs.
        absorbed: index of the LeakyReLU / AvgPool2d that becomes an nn.Identity.
        kind: "lrelu" or "pool".
        negative_slope: the LeakyReLU's slope (kind "lrelu").
    """

    layer: int
    absorbed: int
    kind: str
    negative_slope: float | None = None

    def describe(self) -> str:
        what = (f"LeakyReLU({self.negative_slope:g})" if self.kind == "lrelu"
                else "AvgPool2d(2)")
        return f"[{self.absorbed}] {what} folded into [{self.layer}]"


def plain_module(m: nn.Module, cls: type) -> bool:
    """m is exactly the torch class `cls`, with no hooks and no instance-level forward: what it
    computes is known."""
    return (type(m) is cls and not m._forward_hooks and not m._forward_pre_hooks
            and not m._backward_hooks and not getattr(m, "_backward_pre_hooks", None)
            and "forward" not in vars(m))


def _is_half_pool(m: nn.Module) -> bool:
    def two(v):
        return v in (2, (2, 2))
    return (plain_module(m, nn.AvgPool2d) and two(m.kernel_size)
            and (m.stride is None or two(m.stride)) and m.padding in (0, (0, 0))
            and not m.ceil_mode and m.divisor_override is None)


def _torch_conv(m: nn.Module) -> nn.Module | None:
    """The nn.Conv2d carrying a compat conv's options (itself, or its `module` / `conv`)."""
    for c in (m, getattr(m, "module", None), getattr(m, "conv", None)):
        if isinstance(c, nn.Conv2d):
            return c
    return None


def _fold_target(m: nn.Module, shared: Callable[[nn.Module], bool]) -> bool:
    """m may take in what follows it: no hook would see (or is given) a changed output or
    gradient, and no other place of the model calls it (and expects its plain output)."""
    return not (m._forward_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None) or shared(m))


def plan_sequential(seq: nn.Sequential,
                    compat_class: Callable[[nn.Module], type | None],
                    shared: Callable[[nn.Module], bool] = lambda m: False) -> list[Fusion]:
    """The fusions possible in `seq`, changing nothing.

    Args:
        seq: the nn.Sequential.
        compat_class: gives the compat class a child is (or will be once converted), or None.
        shared: whether a module is also held somewhere else (another slot of seq, another
            module): such a layer is not fused, since its other uses are not followed by what
            it would absorb.

    Returns:
        The fusions, in order.
    """
    if not plain_module(seq, nn.Sequential):
        return []
    mods = list(seq)
    out = []
    i = 0
    while i < len(mods):
        cls = compat_class(mods[i])
        if (cls is None or not hasattr(cls, "fused_negative_slope")
                or getattr(mods[i], "fused_negative_slope", None) is not None
                or not _fold_target(mods[i], shared)):
            i += 1  # not a compat layer, one that already ends in its activation, or one
            continue  # with hooks or other uses
        j = i + 1
        if (j < len(mods) and hasattr(cls, "fused_resample")
                and getattr(mods[i], "fused_resample", None) is None and _is_half_pool(mods[j])
                and _torch_conv(mods[i]) is not None
                and pool_unfusable_reason(_torch_conv(mods[i])) is None):
            out.append(Fusion(i, j, "pool"))
            j += 1
        if j < len(mods) and plain_module(mods[j], nn.LeakyReLU):
            out.append(Fusion(i, j, "lrelu", float(mods[j].negative_slope)))
            j += 1
        i = j
    return out


def apply_fusion(seq: nn.Sequential, fusion: Fusion) -> None:
    """Fold `seq[fusion.absorbed]` into `seq[fusion.layer]` (which must be converted already).

    Args:
        seq: the nn.Sequential.
        fusion: from plan_sequential.
    """
    layer = seq[fusion.layer]
    if fusion.kind == "pool":
        layer.fused_resample = "down"
    else:
        layer.fused_negative_slope = fusion.negative_slope
    seq[fusion.absorbed] = nn.Identity()


def fuse_sequential(seq: nn.Sequential) -> list[Fusion]:
    """Apply every fusion plan_sequential finds among seq's compat layers.

    Args:
        seq: an nn.Sequential.

    Returns:
        The fusions applied.
    """
    ids = [id(m) for m in seq]
    fusions = plan_sequential(seq, lambda m: type(m) if hasattr(m, "fused_negative_slope")
                              else None, lambda m: ids.count(id(m)) > 1)
    for f in fusions:
        apply_fusion(seq, f)
    return fusions
