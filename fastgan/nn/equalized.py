"""Equalized learning-rate layers (Karras et al. 2017), with bias + activation fused by bias_act.

Weights are stored ~ N(0, 1) / lr_mul and scaled at run time by gain * lr_mul / sqrt(fan_in)
(fan_in = in_channels * kh * kw): the scale multiplies the weight, never the activations. The
bias is stored as given (bias_init) and used as bias * lr_mul. Bias, activation and the
activation's own gain come after the convolution and its resampling, in one bias_act pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as FF
from ..ops.conv2d import RESAMPLES, why_not_fusable
from .spectral_norm import scaled_weight

__all__ = ["EqualConv2d", "EqualLinear", "FusedLeakyReLU"]

_ACTIVATIONS = (None, "linear", "relu", "lrelu")


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in v)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return (v[0], v[1])


def _check_activation(activation) -> str:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return "linear" if activation is None else activation


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


class _Equalized(nn.Module):
    """Shared parameter handling: weight ~ N(0,1)/lr_mul, bias = bias_init, and the epilogue."""

    def _init_params(self, weight_shape, fan_in, bias, gain, lr_mul, bias_init, activation,
                     alpha, act_gain):
        _check_positive(lr_mul=lr_mul)
        self.act = _check_activation(activation)
        self.activation = activation
        self.alpha, self.act_gain, self.gain, self.lr_mul = float(alpha), float(act_gain), \
            float(gain), float(lr_mul)
        self.weight = nn.Parameter(torch.randn(weight_shape) / lr_mul)
        if bias:
            self.bias = nn.Parameter(torch.full((weight_shape[0],), float(bias_init)))
        else:
            self.register_parameter("bias", None)
        self.scale = self.gain * self.lr_mul / math.sqrt(fan_in)

    def _epilogue(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        b = self.bias
        if b is not None and self.lr_mul != 1.0:
            b = b * self.lr_mul
        if b is None and self.act == "linear" and self.act_gain == 1.0:
            return y
        return FF.bias_act(y, b, self.act, self.alpha, self.act_gain, dim)


class EqualConv2d(_Equalized):
    """Conv2d with equalized learning rate, optional ProGAN resampling and a fused epilogue:

        y = act(resample_conv(x, weight * gain*lr_mul/sqrt(in*kh*kw)) + bias*lr_mul) * act_gain

    resample: None; "up" (nearest 2x upsample, then the conv); "down" (the conv, then a 2x2
    average pool). fused_resample: None (default) computes up/down as one stride-2 (transposed)
    conv with a (k+1)x(k+1) kernel wherever that is exact (stride 1, and padding <= k-1 for up),
    else unfused; True requires the fused form (ValueError where impossible); False never fuses.
    Both give the unfused math (see fastgan.ops.conv2d). activation: None | "relu" | "lrelu"
    (slope alpha)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, gain: float = math.sqrt(2), lr_mul: float = 1.0,
                 bias_init: float = 0.0, activation: str | None = None, alpha: float = 0.2,
                 act_gain: float = 1.0, resample: str | None = None,
                 fused_resample: bool | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride, self.padding = _pair(stride, "stride"), _pair(padding, "padding")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"kernel_size and stride must be positive and padding non-negative, "
                             f"got {self.kernel_size}, {self.stride}, {self.padding}")
        if resample not in RESAMPLES:
            raise ValueError(f"resample must be one of {RESAMPLES}, got {resample!r}")
        if fused_resample not in (None, True, False):
            raise ValueError(f"fused_resample must be None, True or False, got {fused_resample!r}")
        self.resample, self.fused_resample = resample, fused_resample
        if fused_resample:
            reason = why_not_fusable(resample, self.kernel_size, self.stride, self.padding)
            if reason is not None:
                raise ValueError(f"fused_resample=True, but resample={resample!r} cannot be "
                                 f"fused exactly here: {reason}")
        kh, kw = self.kernel_size
        self._init_params((out_channels, in_channels, kh, kw), in_channels * kh * kw, bias, gain,
                          lr_mul, bias_init, activation, alpha, act_gain)

    @property
    def fused(self) -> bool:
        """Whether forward computes the resampling fused."""
        if self.resample is None or self.fused_resample is False:
            return False
        return why_not_fusable(self.resample, self.kernel_size, self.stride,
                                  self.padding) is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"EqualConv2d expects x of shape [N, C, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"EqualConv2d({self.in_channels}, {self.out_channels}) got x with "
                             f"{x.shape[1]} channels (shape {tuple(x.shape)})")
        y = FF.conv2d_resample(x, scaled_weight(self, self.scale), self.resample, self.stride,
                               self.padding, self.fused)
        return self._epilogue(y, 1)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
             f"gain={self.gain:.4g}, lr_mul={self.lr_mul:g}")
        if self.activation not in (None, "linear"):
            s += (f", activation={self.activation!r}, alpha={self.alpha:g}, "
                  f"act_gain={self.act_gain:.4g}")
        if self.resample is not None:
            s += f", resample={self.resample!r}, fused={self.fused}"
        return s


class EqualLinear(_Equalized):
    """Linear with equalized learning rate and a fused epilogue:

        y = act(x @ (weight * gain*lr_mul/sqrt(in_features)).T + bias*lr_mul) * act_gain

    x [*, in_features]; activation None | "relu" | "lrelu" (slope alpha)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 gain: float = math.sqrt(2), lr_mul: float = 1.0, bias_init: float = 0.0,
                 activation: str | None = None, alpha: float = 0.2, act_gain: float = 1.0):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self._init_params((out_features, in_features), in_features, bias, gain, lr_mul,
                          bias_init, activation, alpha, act_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"EqualLinear({self.in_features}, {self.out_features}) expects x of "
                             f"shape [*, {self.in_features}], got {shape}")
        y = torch.nn.functional.linear(x, scaled_weight(self, self.scale))
        return self._epilogue(y, -1)

    def extra_repr(self) -> str:
        s = (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
             f"gain={self.gain:.4g}, lr_mul={self.lr_mul:g}")
        if self.activation not in (None, "linear"):
            s += (f", activation={self.activation!r}, alpha={self.alpha:g}, "
                  f"act_gain={self.act_gain:.4g}")
        return s


class FusedLeakyReLU(nn.Module):
    """y = leaky_relu(x + bias broadcast along dim 1, negative_slope) * scale, in one pass."""

    def __init__(self, channels: int, bias: bool = True, negative_slope: float = 0.2,
                 scale: float = math.sqrt(2)):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.negative_slope, self.scale = float(negative_slope), float(scale)
        if bias:
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"FusedLeakyReLU({self.channels}) expects x of shape "
                             f"[N, {self.channels}, *], got {shape}")
        return FF.bias_act(x, self.bias, "lrelu", self.negative_slope, self.scale, 1)

    def extra_repr(self) -> str:
        return (f"{self.channels}, bias={self.bias is not None}, "
                f"negative_slope={self.negative_slope:g}, scale={self.scale:.4g}")
