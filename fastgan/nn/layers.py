"""Thin modules: they hold options (checked at construction) and call fastgan.functional."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from .. import functional as FF
from ..ops import _common as C_
from ..ops.minibatch_stddev import LAYOUTS


class PixelNorm(nn.Module):
    """Pixelwise feature normalization: x * rsqrt(mean over dim of x^2 + eps).

    Args:
        eps: added to the mean square, a number >= 0 (ProGAN: 1e-8).
        dim: the channel dim, an int (negative counts from the end).

    Forward: x [N, C] or [N, C, *], any float dtype and layout -> the same shape, dtype and
    layout.
    """

    def __init__(self, eps: float = 1e-8, dim: int = 1):
        super().__init__()
        self.eps, self.dim = C_.check_eps(eps), C_.check_number(dim, "dim", integer=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.pixel_norm(x, self.eps, self.dim)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, dim={self.dim}"


class MinibatchStdDev(nn.Module):
    """Appends `num_features` maps of the per-group standard deviation (ProGAN's minibatch stddev).

    Args:
        group_size: G, samples per group, an int >= 1; groups of min(G, N), which must divide N.
        num_features: F, extra maps, an int >= 1 that divides the channels.
        eps: added to each variance before the sqrt, a number >= 0.
        layout: "strided" (sample n in group n % (N/G): official ProGAN/StyleGAN) or
            "contiguous" (consecutive samples: pytorch_GAN_zoo).
        unbiased: divide the variance by G - 1 instead of G (pytorch_GAN_zoo); needs G >= 2.

    Forward: x [N, C, H, W], any float dtype, NCHW or channels_last -> [N, C + F, H, W].
    """

    def __init__(self, group_size: int = 4, num_features: int = 1, eps: float = 1e-8,
                 layout: str = "strided", unbiased: bool = False):
        super().__init__()
        C_.check_number(group_size, "group_size", integer=True, low=1)
        C_.check_number(num_features, "num_features", integer=True, low=1)
        C_.check_eps(eps)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        _checks.flag(unbiased, "unbiased")
        if unbiased and group_size < 2:
            raise ValueError(f"unbiased=True needs groups of at least 2 samples, got "
                             f"group_size={group_size}")
        self.group_size, self.num_features, self.eps = group_size, num_features, eps
        self.layout, self.unbiased = layout, unbiased

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.minibatch_stddev(x, self.group_size, self.num_features, self.eps, self.layout,
                                   self.unbiased)

    def extra_repr(self) -> str:
        return (f"group_size={self.group_size}, num_features={self.num_features}, eps={self.eps}, "
                f"layout={self.layout!r}, unbiased={self.unbiased}")
