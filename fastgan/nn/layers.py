"""Thin modules: they hold options (and parameters) and call fastgan.functional."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as FF


class PixelNorm(nn.Module):
    """Pixelwise feature normalization: x / sqrt(mean over channels of x^2 + eps)."""

    def __init__(self, eps: float = 1e-8, dim: int = 1):
        super().__init__()
        self.eps, self.dim = eps, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.pixel_norm(x, self.eps, self.dim)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, dim={self.dim}"


class MinibatchStdDev(nn.Module):
    """Appends `num_features` maps of the per-group standard deviation (ProGAN's minibatch stddev)."""

    def __init__(self, group_size: int = 4, num_features: int = 1, eps: float = 1e-8,
                 layout: str = "strided", unbiased: bool = False):
        super().__init__()
        self.group_size, self.num_features, self.eps = group_size, num_features, eps
        self.layout, self.unbiased = layout, unbiased

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.minibatch_stddev(x, self.group_size, self.num_features, self.eps, self.layout,
                                   self.unbiased)

    def extra_repr(self) -> str:
        return (f"group_size={self.group_size}, num_features={self.num_features}, eps={self.eps}, "
                f"layout={self.layout!r}, unbiased={self.unbiased}")
