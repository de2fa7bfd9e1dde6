"""akanimax's pro_gan_pytorch (the `pro-gan-pth` package, 3.4), on fastgan kernels.

Every class here has the name, constructor, attributes, submodule names and state_dict keys of
its namesake in `pro_gan_pytorch.custom_layers` / `pro_gan_pytorch.modules`, and computes the
same numbers, quirks included:

- Every equalized layer scales its weight by sqrt(2)/sqrt(fan_in), the last 1x1 conv of the
  discriminator and the toRGB convs too (the paper's gain there is 1).
- fan_in is in_channels * kh * kw for convs (not divided by groups), in_channels alone for the
  transposed conv (whose only use is the generator's first layer, a 4x4 transposed conv of the
  1x1 latent, where each output pixel does see in_channels inputs) and in_features for linear.
- The convs always zero-pad: `padding_mode` is accepted and ignored, as the port's forward does.
- `EqualizedConvTranspose2d.forward` in the port calls torch's private `_output_padding` with
  torch 1.x's signature (and the builtin `input` for the tensor): on torch 2.x it raises
  TypeError. This one computes what it computed on torch 1.x (the module's `output_padding`),
  and honours `output_size` as torch's ConvTranspose2d does.
- The minibatch stddev groups samples strided (sample n in group n % (N/G)), biased variance,
  eps 1e-8 inside the square root; a batch no larger than group_size is one group.

The blocks (GenInitialBlock, GenGeneralConvBlock, DisGeneralConvBlock, DisFinalBlock) fuse what
a layer alone cannot: each conv's bias with the leaky ReLU that follows it, and the generator's
nearest 2x upsample with the conv after it (one exact 4x4 stride-2 transposed conv). The
discriminator's down block is conv, lrelu, conv, lrelu, avgpool (the activation before the pool),
so its pool stays a pool.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import functional as FF
from ._epilogue import conv_forward, conv_transpose_forward, linear_forward

__all__ = ["EqualizedConv2d", "EqualizedConvTranspose2d", "EqualizedLinear", "PixelwiseNorm",
           "MinibatchStdDev", "GenInitialBlock", "GenGeneralConvBlock", "DisGeneralConvBlock",
           "DisFinalBlock"]


def _check_padding(padding) -> None:
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints (fastgan's convolutions take "
                         f"no padding strings), got {padding!r}")


class _Fusable:
    """What `fastgan.convert` may fold into a layer from the nn.Sequential around it."""

    fused_resample: str | None = None  # "down": a 2x2 average pool followed the conv
    fused_negative_slope: float | None = None  # a leaky ReLU followed the layer

    def _fused_repr(self) -> str:
        s = ""
        if self.fused_resample is not None:
            s += f", fused_resample={self.fused_resample!r}"
        if self.fused_negative_slope is not None:
            s += f", fused_negative_slope={self.fused_negative_slope:g}"
        return s


class EqualizedConv2d(_Fusable, nn.Conv2d):
    """The port's equalized conv: y = conv2d(x, weight * sqrt(2)/sqrt(in*kh*kw)) + bias, weight
    ~ N(0, 1), bias 0. Keys `weight`, `bias`; `scale` holds the factor.

    Args: those of nn.Conv2d (padding an int or a pair; `padding_mode` ignored, as in the port).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros") -> None:
        _check_padding(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode)
        nn.init.normal_(self.weight)
        if bias:
            nn.init.zeros_(self.bias)
        self.scale = math.sqrt(2) / math.sqrt(math.prod(self.kernel_size) * self.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_forward(x, self.fused_negative_slope, self.fused_resample)

    def act_forward(self, x: torch.Tensor, negative_slope: float | None,
                    resample: str | None = None) -> torch.Tensor:
        """This layer followed by a leaky ReLU, in one conv and one bias_act pass.

        Args:
            x: [N, C, H, W] input.
            negative_slope: the leaky ReLU's slope, or None for no activation.
            resample: None; "up" (x upsampled 2x first) or "down" (2x2 average pool before the
                bias), computed as one stride-2 (transposed) conv.

        Returns:
            The output.
        """
        return conv_forward(self, x, self.weight * self.scale, self.bias, resample=resample,
                            negative_slope=negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fused_repr()


class EqualizedConvTranspose2d(_Fusable, nn.ConvTranspose2d):
    """The port's equalized transposed conv: y = conv_transpose2d(x, weight *
    sqrt(2)/sqrt(in_channels)) + bias (fan_in is in_channels alone, as in the port). Keys
    `weight`, `bias`.

    Args: those of nn.ConvTranspose2d (`padding_mode` ignored, as in the port).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1,
                 padding_mode="zeros") -> None:
        _check_padding(padding)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding,
                         groups, bias, dilation, padding_mode)
        nn.init.normal_(self.weight)
        if bias:
            nn.init.zeros_(self.bias)
        self.scale = math.sqrt(2) / math.sqrt(self.in_channels)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return self.act_forward(x, self.fused_negative_slope, output_size)

    def act_forward(self, x: torch.Tensor, negative_slope: float | None,
                    output_size=None) -> torch.Tensor:
        """This layer followed by a leaky ReLU, in one transposed conv and one bias_act pass.

        Args:
            x: [N, C, H, W] input.
            negative_slope: the leaky ReLU's slope, or None for no activation.
            output_size: as for nn.ConvTranspose2d.

        Returns:
            The output.
        """
        output_padding = nn.ConvTranspose2d._output_padding(
            self, x, output_size, list(self.stride), list(self.padding), list(self.kernel_size),
            2, list(self.dilation))
        return conv_transpose_forward(self, x, self.weight * self.scale, self.bias,
                                      tuple(output_padding), negative_slope=negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fused_repr()


class EqualizedLinear(_Fusable, nn.Linear):
    """The port's equalized linear: y = x @ (weight * sqrt(2)/sqrt(in_features)).T + bias.
    Keys `weight`, `bias`.

    Args: those of nn.Linear.
    """

    def __init__(self, in_features, out_features, bias=True) -> None:
        super().__init__(in_features, out_features, bias)
        nn.init.normal_(self.weight)
        if bias:
            nn.init.zeros_(self.bias)
        self.scale = math.sqrt(2) / math.sqrt(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_forward(x, self.weight * self.scale, self.bias,
                              negative_slope=self.fused_negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._fused_repr()


class PixelwiseNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + alpha), alpha = 1e-8 unless passed to forward."""

    @staticmethod
    def forward(x: torch.Tensor, alpha: float = 1e-8) -> torch.Tensor:
        return FF.pixel_norm(x, alpha, 1)


class MinibatchStdDev(nn.Module):
    """The port's minibatch stddev: groups of `group_size` strided samples (the whole batch when
    it is no larger than group_size), biased variance, sqrt(var + alpha) averaged over channels
    and pixels, appended as one feature map.

    Args:
        group_size: samples per group; a larger batch must be a multiple of it (ValueError).
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"

    def forward(self, x: torch.Tensor, alpha: float = 1e-8) -> torch.Tensor:
        return FF.minibatch_stddev(x, self.group_size, 1, alpha, "strided", False)


def _conv_lrelu(conv: nn.Module, x: torch.Tensor, slope: float,
                resample: str | None = None) -> torch.Tensor:
    """conv (equalized, or the plain torch layer of use_eql=False) then leaky ReLU, fused."""
    if isinstance(conv, EqualizedConv2d):
        return conv.act_forward(x, slope, resample)
    if isinstance(conv, EqualizedConvTranspose2d):
        return conv.act_forward(x, slope)
    if isinstance(conv, nn.ConvTranspose2d):
        return conv_transpose_forward(conv, x, conv.weight, conv.bias, conv.output_padding,
                                      negative_slope=slope)
    return conv_forward(conv, x, conv.weight, conv.bias, resample=resample,
                        negative_slope=slope)


class GenInitialBlock(nn.Module):
    """The generator's 4x4 block: pixel norm of the latent, 4x4 transposed conv + lrelu, 3x3 conv
    + lrelu, pixel norm. Each conv's bias and lrelu run fused.

    Args:
        in_channels: latent size.
        out_channels: channels of the 4x4 features.
        use_eql: equalized layers (True) or plain torch ones.
    """

    def __init__(self, in_channels: int, out_channels: int, use_eql: bool) -> None:
        super().__init__()
        self.use_eql = use_eql
        conv, conv_t = (EqualizedConv2d, EqualizedConvTranspose2d) if use_eql else \
            (nn.Conv2d, nn.ConvTranspose2d)
        self.conv_1 = conv_t(in_channels, out_channels, (4, 4), bias=True)
        self.conv_2 = conv(out_channels, out_channels, (3, 3), padding=1, bias=True)
        self.pixNorm = PixelwiseNorm()
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pixNorm(x.unsqueeze(-1).unsqueeze(-1))
        y = _conv_lrelu(self.conv_1, y, self.lrelu.negative_slope)
        y = _conv_lrelu(self.conv_2, y, self.lrelu.negative_slope)
        return self.pixNorm(y)


def _two_conv3x3(use_eql: bool, c_in: int, c_mid: int, c_out: int) -> tuple[nn.Module, nn.Module]:
    """The two 3x3 convs (padding 1, bias) of the port's general blocks, c_in -> c_mid -> c_out.

    Args: use_eql: equalized (True) or plain torch convs; the channels.
    Returns: (conv_1, conv_2), made in that order (the port's order of initialization)."""
    conv = EqualizedConv2d if use_eql else nn.Conv2d
    return (conv(c_in, c_mid, (3, 3), padding=1, bias=True),
            conv(c_mid, c_out, (3, 3), padding=1, bias=True))


class GenGeneralConvBlock(nn.Module):
    """A generator block: nearest 2x upsample, 3x3 conv + lrelu, pixel norm, 3x3 conv + lrelu,
    pixel norm. The upsample and the first conv run as one exact 4x4 stride-2 transposed conv.
    As in the port, `out_channels` is set to in_channels (the convs use the argument).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        use_eql: equalized layers (True) or plain torch ones.
    """

    def __init__(self, in_channels: int, out_channels: int, use_eql: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.use_eql = use_eql
        self.conv_1, self.conv_2 = _two_conv3x3(use_eql, in_channels, out_channels, out_channels)
        self.pixNorm = PixelwiseNorm()
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pixNorm(_conv_lrelu(self.conv_1, x, self.lrelu.negative_slope, "up"))
        return self.pixNorm(_conv_lrelu(self.conv_2, y, self.lrelu.negative_slope))


class DisGeneralConvBlock(nn.Module):
    """A discriminator block in the port's order: 3x3 conv + lrelu, 3x3 conv + lrelu, 2x2
    average pool (`downSampler`). Each conv's bias and lrelu run fused.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        use_eql: equalized layers (True) or plain torch ones.
    """

    def __init__(self, in_channels: int, out_channels: int, use_eql: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_eql = use_eql
        self.conv_1, self.conv_2 = _two_conv3x3(use_eql, in_channels, in_channels, out_channels)
        self.downSampler = nn.AvgPool2d(2)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _conv_lrelu(self.conv_1, x, self.lrelu.negative_slope)
        y = _conv_lrelu(self.conv_2, y, self.lrelu.negative_slope)
        return self.downSampler(y)


class DisFinalBlock(nn.Module):
    """The discriminator's last block: minibatch stddev, 3x3 conv + lrelu, 4x4 conv + lrelu, 1x1
    conv (gain sqrt(2), as in the port), flattened to [N].

    Args:
        in_channels: input channels.
        out_channels: channels after the 4x4 conv.
        use_eql: equalized layers (True) or plain torch ones.
    """

    def __init__(self, in_channels: int, out_channels: int, use_eql: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_eql = use_eql
        conv = EqualizedConv2d if use_eql else nn.Conv2d
        self.conv_1 = conv(in_channels + 1, in_channels, (3, 3), padding=1, bias=True)
        self.conv_2 = conv(in_channels, out_channels, (4, 4), bias=True)
        self.conv_3 = conv(out_channels, 1, (1, 1), bias=True)
        self.batch_discriminator = MinibatchStdDev()
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.batch_discriminator(x)
        y = _conv_lrelu(self.conv_1, y, self.lrelu.negative_slope)
        y = _conv_lrelu(self.conv_2, y, self.lrelu.negative_slope)
        return self.conv_3(y).view(-1)
