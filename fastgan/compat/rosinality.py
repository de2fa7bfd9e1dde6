"""rosinality/progressive-gan-pytorch's layers (model.py), on fastgan kernels.

Names, constructors and state_dict keys are the port's: the torch layer is a child (`conv` /
`linear`) whose weight parameter is `weight_orig` (keys `conv.weight_orig`, `conv.bias`). The
port's `EqualLR` forward pre-hook recomputes `weight = weight_orig * sqrt(2 / fan_in)` (fan_in =
in * kh * kw) before every call and stores it on the child; here the same product is computed
inside forward, with no hook, and no `weight` attribute is kept on the child. Weights start
N(0, 1) and biases 0, as in the port; its PixelNorm divides by sqrt(mean(x^2) + 1e-8).

`ConvBlock` builds the port's nn.Sequential (conv, [PixelNorm,] LeakyReLU, twice; same indices,
same keys) and, where a conv is followed directly by its LeakyReLU (pixel_norm=False, the
discriminator's blocks), runs the two as one conv + fused bias/lrelu pass (the LeakyReLU slot
holds an nn.Identity).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as FF
from ._epilogue import conv_forward, linear_forward
from .fusion import fuse_sequential

__all__ = ["EqualConv2d", "EqualLinear", "PixelNorm", "ConvBlock"]


def _equal_lr(layer: nn.Module) -> nn.Module:
    """Init as the port does (weight N(0,1), bias 0) and rename `weight` to `weight_orig`."""
    weight = layer.weight
    weight.data.normal_()
    if layer.bias is not None:
        layer.bias.data.zero_()
    del layer._parameters["weight"]
    layer.register_parameter("weight_orig", weight)
    return layer


def _scaled(weight_orig: torch.Tensor) -> torch.Tensor:
    return weight_orig * math.sqrt(2 / (weight_orig.shape[1] * weight_orig[0][0].numel()))


class EqualConv2d(nn.Module):
    """conv2d(x, conv.weight_orig * sqrt(2/(in*kh*kw))) + conv.bias.

    Args: those of nn.Conv2d (padding an int or a pair; zero padding only).
    """

    fused_resample: str | None = None  # "down": fastgan.convert folded a 2x2 average pool in
    fused_negative_slope: float | None = None  # a leaky ReLU that followed the layer

    def __init__(self, *args, **kwargs):
        super().__init__()
        conv = nn.Conv2d(*args, **kwargs)
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"EqualConv2d supports integer zero padding only, got padding="
                             f"{conv.padding!r}, padding_mode={conv.padding_mode!r}")
        self.conv = _equal_lr(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return conv_forward(c, x, _scaled(c.weight_orig), c.bias, resample=self.fused_resample,
                            negative_slope=self.fused_negative_slope)


class EqualLinear(nn.Module):
    """linear(x, linear.weight_orig * sqrt(2/in_features)) + linear.bias.

    Args:
        in_dim: input features.
        out_dim: output features.
    """

    fused_negative_slope: float | None = None  # a leaky ReLU that followed the layer

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = _equal_lr(nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        return linear_forward(x, _scaled(lin.weight_orig), lin.bias,
                              negative_slope=self.fused_negative_slope)


class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + 1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.pixel_norm(x, 1e-8, 1)


class ConvBlock(nn.Module):
    """Two equalized convs, each followed by [PixelNorm and] LeakyReLU(0.2), as `conv`, an
    nn.Sequential with the port's indices.

    Args:
        in_channel: input channels.
        out_channel: output channels.
        kernel_size: first conv's kernel size (also the second's unless kernel_size2).
        padding: first conv's padding (also the second's unless padding2).
        kernel_size2: second conv's kernel size.
        padding2: second conv's padding.
        pixel_norm: PixelNorm after each conv.
        spectral_norm: the port's own spectral norm; not supported here (ValueError).
    """

    def __init__(self, in_channel, out_channel, kernel_size, padding, kernel_size2=None,
                 padding2=None, pixel_norm=True, spectral_norm=False):
        super().__init__()
        if spectral_norm:
            raise ValueError("spectral_norm=True: the port's SpectralNormConv2d (its own power "
                             "iteration) has no fastgan counterpart; keep the port's ConvBlock")
        kernel2 = kernel_size if kernel_size2 is None else kernel_size2
        pad2 = padding if padding2 is None else padding2
        layers = []
        for cin, k, p in ((in_channel, kernel_size, padding), (out_channel, kernel2, pad2)):
            layers.append(EqualConv2d(cin, out_channel, k, padding=p))
            if pixel_norm:
                layers.append(PixelNorm())
            layers.append(nn.LeakyReLU(0.2))
        self.conv = nn.Sequential(*layers)
        fuse_sequential(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
