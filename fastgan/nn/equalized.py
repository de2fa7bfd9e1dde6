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
from ..ops import _common as C_
from ..ops.conv2d import RESAMPLES, why_not_fusable
from .spectral_norm import scaled_weight, stored_weight

__all__ = ["EqualConv2d", "EqualLinear", "FusedLeakyReLU"]

_ACTIVATIONS = (None, "linear", "relu", "lrelu")


def _check_activation(activation) -> str:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return "linear" if activation is None else activation


def _positive(value, name: str) -> float:
    return C_.check_number(value, name, low=0.0, low_open=True)


class _Equalized(nn.Module):
    """Shared parameter handling: weight ~ N(0,1)/lr_mul, bias = bias_init, and the epilogue."""

    def _init_params(self, weight_shape, fan_in, bias, gain, lr_mul, bias_init, activation,
                     alpha, act_gain):
        self.gain, self.lr_mul = _positive(gain, "gain"), _positive(lr_mul, "lr_mul")
        self.act_gain, self.alpha = _positive(act_gain, "act_gain"), C_.check_number(alpha, "alpha")
        bias_init = C_.check_number(bias_init, "bias_init")
        self.act = _check_activation(activation)
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(weight_shape) / self.lr_mul)
        if bias:
            self.bias = nn.Parameter(torch.full((weight_shape[0],), bias_init))
        else:
            self.register_parameter("bias", None)
        self.scale = self.gain * self.lr_mul / math.sqrt(fan_in)

    def _check_matches_weight(self, x: torch.Tensor) -> None:
        """x on the weight's device, and of its dtype unless autocast casts them."""
        w = stored_weight(self)  # not self.weight: a spectral norm there would advance twice
        if x.device != w.device:
            raise ValueError(f"{self._name()} has its weight on {w.device}, got x on {x.device}")
        if x.dtype != w.dtype and not (torch.amp.is_autocast_available(x.device.type)
                                       and torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"{self._name()} has a {w.dtype} weight, got x of {x.dtype} outside "
                            f"autocast: convert the module (.to({x.dtype})) or the input")

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
    Both give the unfused math (see fastgan.ops.conv2d).

    Args:
        in_channels, out_channels: positive ints.
        kernel_size, stride, padding: an int or a pair of ints (kernel and stride >= 1,
            padding >= 0).
        bias: hold a bias [out_channels].
        gain: > 0; the He gain of the runtime weight scale (sqrt(2); 1 for toRGB / the last layer).
        lr_mul: > 0; the learning-rate multiplier of weight and bias (StyleGAN's mapping: 0.01).
        bias_init: the bias's initial value (stored as given, used times lr_mul).
        activation: None | "linear" | "relu" | "lrelu"; alpha: the lrelu slope;
            act_gain: > 0, multiplies the activation's output (StyleGAN: sqrt(2)).
        resample: None | "up" | "down"; fused_resample: None | True | False (above).

    Forward: x [N, in_channels, H, W] of the weight's dtype (any float dtype under autocast)
    and device, NCHW or channels_last -> [N, out_channels, H', W'] with c(H) the plain conv's
    output size: H' = c(H), c(2H) for "up", c(H) // 2 for "down".

    Parameters: weight [out_channels, in_channels, kh, kw] ~ N(0, 1) / lr_mul; bias
    [out_channels] filled with bias_init (or None).
    """

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
        self.kernel_size = C_.pair(kernel_size, "kernel_size")
        self.stride, self.padding = C_.pair(stride, "stride"), C_.pair(padding, "padding")
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

    def _name(self) -> str:
        return f"EqualConv2d({self.in_channels}, {self.out_channels})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"EqualConv2d expects x of shape [N, C, H, W], got {shape}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self._name()} got x with {x.shape[1]} channels (shape "
                             f"{tuple(x.shape)})")
        C_.check_float_tensor(x, "x")
        self._check_matches_weight(x)
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

    Args:
        in_features, out_features: positive ints.
        bias, gain, lr_mul, bias_init, activation, alpha, act_gain: as for EqualConv2d
            (fan_in = in_features).

    Forward: x [*, in_features] of the weight's dtype (any float dtype under autocast) and
    device -> [*, out_features].

    Parameters: weight [out_features, in_features] ~ N(0, 1) / lr_mul; bias [out_features]
    filled with bias_init (or None).
    """

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

    def _name(self) -> str:
        return f"EqualLinear({self.in_features}, {self.out_features})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != self.in_features:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self._name()} expects x of shape [*, {self.in_features}], got "
                             f"{shape}")
        C_.check_float_tensor(x, "x")
        self._check_matches_weight(x)
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
    """y = leaky_relu(x + bias broadcast along dim 1, negative_slope) * scale, in one pass.

    Args:
        channels: C, a positive int.
        bias: hold a bias [C] (zeros at init).
        negative_slope: the leaky slope, a finite number.
        scale: > 0, multiplies the output (StyleGAN2: sqrt(2)).

    Forward: x [N, C] or [N, C, *], any float dtype and layout -> the same shape and dtype.
    """

    def __init__(self, channels: int, bias: bool = True, negative_slope: float = 0.2,
                 scale: float = math.sqrt(2)):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.negative_slope = C_.check_number(negative_slope, "negative_slope")
        self.scale = _positive(scale, "scale")
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
