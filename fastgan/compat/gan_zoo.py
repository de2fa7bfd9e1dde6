"""facebookresearch/pytorch_GAN_zoo's ProGAN layers (models/networks/custom_layers.py and
mini_batch_stddev_module.py), on fastgan kernels.

Names, constructors, attributes and state_dict keys (`module.weight`, `module.bias`: the torch
layer is a child called `module`) are the port's, and so are its numbers, quirks included:

- The equalized layers multiply the layer's *output*, bias included, by the He constant
  c = sqrt(2 / fan_in) * lrMul (held in the float attribute `weight`): y = (conv(x, W) + b) * c.
  The paper scales the weight only, so here the bias's effective learning rate is c times
  smaller. fastgan computes it as bias_act(conv(x, W), b, gain=c): the same number, one pass.
- The stored weight is N(0, 1) / lrMul, the bias 0.
- `miniBatchStdDev` groups *consecutive* samples (sample n in group n // G), uses the unbiased
  variance (divide by G - 1), eps 1e-8 inside the square root; a batch that the group size does
  not divide is one group, and a group of one gives a map of zeros.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as FF
from ._epilogue import conv_forward, linear_forward

__all__ = ["EqualizedConv2d", "EqualizedLinear", "NormalizationLayer", "miniBatchStdDev"]


class _ConstrainedLayer(nn.Module):
    """The port's ConstrainedLayer: holds the torch layer as `module` and, when equalized, the
    output scale c = He constant * lrMul as `weight`."""

    fused_resample: str | None = None  # "down": fastgan.convert folded a 2x2 average pool in
    fused_negative_slope: float | None = None  # a leaky ReLU that followed the layer

    def _constrain(self, module: nn.Module, equalized: bool, lrMul: float,
                   initBiasToZero: bool) -> None:
        if isinstance(lrMul, bool) or not isinstance(lrMul, (int, float)) or not lrMul > 0:
            raise ValueError(f"lrMul must be a positive number, got {lrMul!r}")
        self.module = module
        self.equalized = equalized
        if initBiasToZero and module.bias is not None:
            module.bias.data.fill_(0)
        if equalized:
            module.weight.data.normal_(0, 1)
            module.weight.data /= lrMul
            self.weight = math.sqrt(2.0 / math.prod(module.weight.shape[1:])) * lrMul

    def _gain(self) -> float:
        return self.weight if self.equalized else 1.0

    def extra_repr(self) -> str:
        s = f"equalized={self.equalized}"
        if self.fused_resample is not None:
            s += f", fused_resample={self.fused_resample!r}"
        if self.fused_negative_slope is not None:
            s += f", fused_negative_slope={self.fused_negative_slope:g}"
        return s


class EqualizedConv2d(_ConstrainedLayer):
    """y = (conv2d(x, module.weight) + module.bias) * c, c = sqrt(2/(in*k*k)) * lrMul.

    Args:
        nChannelsPrevious: input channels.
        nChannels: output channels.
        kernelSize: kernel size.
        padding: zero padding (int or pair).
        bias: whether the conv has a bias.
        equalized: scale the output by c (False: a plain conv).
        lrMul: learning-rate multiplier (weight stored N(0,1)/lrMul, c multiplied by lrMul).
        initBiasToZero: fill the bias with 0.
    """

    def __init__(self, nChannelsPrevious, nChannels, kernelSize, padding=0, bias=True, *,
                 equalized=True, lrMul=1.0, initBiasToZero=True):
        super().__init__()
        if isinstance(padding, str):
            raise ValueError(f"padding must be an int or a pair of ints, got {padding!r}")
        self._constrain(nn.Conv2d(nChannelsPrevious, nChannels, kernelSize, padding=padding,
                                  bias=bias), equalized, lrMul, initBiasToZero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return conv_forward(m, x, m.weight, m.bias, resample=self.fused_resample,
                            negative_slope=self.fused_negative_slope, gain=self._gain())


class EqualizedLinear(_ConstrainedLayer):
    """y = (x @ module.weight.T + module.bias) * c, c = sqrt(2/in) * lrMul.

    Args:
        nChannelsPrevious: input features.
        nChannels: output features.
        bias: whether the layer has a bias.
        equalized: scale the output by c (False: a plain linear layer).
        lrMul: learning-rate multiplier (weight stored N(0,1)/lrMul, c multiplied by lrMul).
        initBiasToZero: fill the bias with 0.
    """

    def __init__(self, nChannelsPrevious, nChannels, bias=True, *, equalized=True, lrMul=1.0,
                 initBiasToZero=True):
        super().__init__()
        self._constrain(nn.Linear(nChannelsPrevious, nChannels, bias=bias), equalized, lrMul,
                        initBiasToZero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        return linear_forward(x, m.weight, m.bias, negative_slope=self.fused_negative_slope,
                              gain=self._gain())


class NormalizationLayer(nn.Module):
    """Pixel norm: x * rsqrt(mean over channels of x^2 + epsilon)."""

    def forward(self, x: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
        return FF.pixel_norm(x, epsilon, 1)


def miniBatchStdDev(x: torch.Tensor, subGroupSize: int = 4) -> torch.Tensor:
    """The port's minibatch stddev: consecutive groups of subGroupSize samples (the whole batch
    when subGroupSize does not divide it), unbiased variance, sqrt(var + 1e-8) averaged over
    channels and pixels, appended as one feature map (zeros for groups of one).

    Args:
        x: [N, C, H, W] features.
        subGroupSize: samples per group.

    Returns:
        [N, C + 1, H, W].
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"miniBatchStdDev expects x of shape [N, C, H, W], got {shape}")
    if isinstance(subGroupSize, bool) or not isinstance(subGroupSize, int) or subGroupSize < 1:
        raise ValueError(f"subGroupSize must be a positive int, got {subGroupSize!r}")
    n = x.shape[0]
    group = min(n, subGroupSize)
    if n % group != 0:
        group = n
    if group > 1:
        return FF.minibatch_stddev(x, group, 1, 1e-8, "contiguous", True)
    return torch.cat([x, x.new_zeros(n, 1, x.shape[2], x.shape[3])], dim=1)
