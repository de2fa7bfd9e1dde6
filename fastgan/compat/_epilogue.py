"""The forward every compat equalized layer shares: a convolution (or linear map) on fastgan's
conv2d, then bias, optional leaky ReLU and output gain in one fastgan bias_act pass.

A compat layer may carry fusions that `fastgan.convert` found in its surroundings (a 2x2 average
pool or a leaky ReLU that followed it in an nn.Sequential): `resample` and `negative_slope` below.
Both are exact: the pool commutes with the bias (the pool of a constant is that constant), so
the conv and the pool become one 4x4 stride-2 convolution and the bias is added after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional as FF


def pool_unfusable_reason(conv: torch.nn.Module) -> str | None:
    """None when a 2x2 average pool after `conv` (an nn.Conv2d holding the conv's options) can
    be folded into it, else why not."""
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return (f"the conv has stride {conv.stride}, dilation {conv.dilation}, groups "
                f"{conv.groups} (the fused form needs 1, 1, 1)")
    return None


def conv_forward(conv: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None, *, resample: str | None = None,
                 negative_slope: float | None = None, gain: float = 1.0) -> torch.Tensor:
    """act(resample_conv(x, weight) + bias) * gain, zero padding, the conv's options.

    Args:
        conv: the nn.Conv2d whose stride, padding, dilation and groups apply.
        x: [N, C, H, W] input.
        weight: the effective (already scaled) weight.
        bias: the effective bias, or None.
        resample: None; "up" (nearest 2x upsample before the conv) or "down" (2x2 average pool
            after it), fused into one stride-2 (transposed) conv where that is exact.
        negative_slope: a leaky ReLU with this slope follows the bias, or None for none.
        gain: multiplies the result (after the activation).

    Returns:
        The layer output.
    """
    if resample is not None and conv.dilation == (1, 1) and conv.groups == 1:
        y = FF.conv2d_resample(x, weight, resample, conv.stride, conv.padding)
    else:
        if resample == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        y = FF.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        if resample == "down":
            y = F.avg_pool2d(y, 2)
    return _epilogue(y, bias, negative_slope, gain, 1)


def conv_transpose_forward(conv: torch.nn.ConvTranspose2d, x: torch.Tensor,
                           weight: torch.Tensor, bias: torch.Tensor | None,
                           output_padding, *, negative_slope: float | None = None,
                           gain: float = 1.0) -> torch.Tensor:
    """act(conv_transpose(x, weight) + bias) * gain with the transposed conv's options.

    Args:
        conv: the nn.ConvTranspose2d whose stride, padding, groups and dilation apply.
        x: [N, C, H, W] input.
        weight: the effective (already scaled) weight [in, out/groups, kh, kw].
        bias: the effective bias, or None.
        output_padding: the output padding (int pair) to use.
        negative_slope: a leaky ReLU with this slope follows the bias, or None for none.
        gain: multiplies the result (after the activation).

    Returns:
        The layer output.
    """
    y = FF.conv_transpose2d(x, weight, None, conv.stride, conv.padding, output_padding,
                            conv.groups, conv.dilation)
    return _epilogue(y, bias, negative_slope, gain, 1)


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *,
                   negative_slope: float | None = None, gain: float = 1.0) -> torch.Tensor:
    """act(x @ weight.T + bias) * gain.

    Args:
        x: [*, in_features] input.
        weight: the effective (already scaled) weight [out_features, in_features].
        bias: the effective bias, or None.
        negative_slope: a leaky ReLU with this slope follows the bias, or None for none.
        gain: multiplies the result (after the activation).

    Returns:
        The layer output [*, out_features].
    """
    return _epilogue(F.linear(x, weight), bias, negative_slope, gain, -1)


def _epilogue(y, bias, negative_slope, gain, dim):
    if bias is None and negative_slope is None and gain == 1.0:
        return y
    if negative_slope is None:
        return FF.bias_act(y, bias, "linear", 0.2, gain, dim)
    return FF.bias_act(y, bias, "lrelu", negative_slope, gain, dim)
