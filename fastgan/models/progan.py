"""ProGAN (Karras et al. 2017, "Progressive Growing of GANs") built from fastgan.nn.

Widths follow the official code: nf(stage) = min(fmap_base / 2^stage, fmap_max), fmap_base 8192,
fmap_max 512 (stage = log2(resolution) - 1 for a block's input side); tests pass tiny values.

Generator (official layer order): latent z -> pixel norm -> dense to nf(1) x 4 x 4 (gain
sqrt(2)/4, no bias) -> per-channel bias + leaky ReLU -> pixel norm -> conv 3x3 + lrelu -> pixel
norm; then per resolution 8 .. R: [nearest 2x up + conv 3x3] + lrelu -> pixel norm -> conv 3x3 +
lrelu -> pixel norm; toRGB: 1x1 conv, gain 1, linear. Every conv is equalized-lr (gain sqrt(2)).

Discriminator: fromRGB (1x1 conv + lrelu), then per resolution R .. 8: conv 3x3 + lrelu, then
conv 3x3 and 2x2 average pool; then at 4x4: minibatch stddev (group 4), conv 3x3 + lrelu, dense
nf(0) + lrelu, dense 1 (gain 1, linear). `down_order` places the pool:
    "official": conv, pool, then bias and lrelu (the TF code; = EqualConv2d(resample="down"),
                which fastgan may compute as one exact 4x4 stride-2 conv)
    "port":     conv, bias, lrelu, then pool (how most PyTorch ports write it)

Growing (section 3 of the paper): with `growing=True` every resolution keeps its toRGB /
fromRGB layer, and `forward(..., resolution=r, alpha=a)` runs the network at r with the newest
block faded in:
    G: out = (1 - a) * upsample2x(toRGB_{r/2}(h)) + a * toRGB_r(block_r(h))
    D: h   = (1 - a) * fromRGB_{r/2}(avgpool2x(x)) + a * block_r(fromRGB_r(x))
and `fade_images(x, a)` blends the real images the same way. Without growing the networks run
at their full resolution and hold only its toRGB / fromRGB (no unused parameters, e.g. for DDP).

`PlainDiscriminator` is the same discriminator in plain torch (F.conv2d with the runtime weight
scale, F.avg_pool2d, F.leaky_relu, a reshape-based minibatch stddev), with the same module tree
and state_dict keys: `plain.load_state_dict(fast.state_dict())` gives the same function. It is
the eager baseline of the benchmarks and the reference of the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as fnn

__all__ = ["nf", "Generator", "Discriminator", "PlainDiscriminator", "PlainEqualConv2d",
           "PlainEqualLinear", "PlainMinibatchStdDev", "fade_images", "PlainGenerator",
           "PlainPixelNorm", "PlainFusedLeakyReLU"]

SQRT2 = math.sqrt(2.0)
DOWN_ORDERS = ("official", "port")


def nf(stage: int, fmap_base: int = 8192, fmap_max: int = 512, fmap_decay: float = 1.0) -> int:
    """Feature maps of a stage.

    Args:
        stage: log2(resolution) - 1 for a block's input side (0 for the last dense layer).
        fmap_base, fmap_max, fmap_decay: the official code's width parameters.

    Returns:
        min(int(fmap_base / 2^(stage * fmap_decay)), fmap_max), at least 1.
    """
    return max(1, min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max))


def _log2_resolution(resolution: int, name: str = "resolution") -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4 or \
            resolution & (resolution - 1):
        raise ValueError(f"{name} must be a power of two >= 4, got {resolution!r}")
    return int(math.log2(resolution))


def fade_images(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Real images during a fade-in: (1 - alpha) * upsample2x(avgpool2x(x)) + alpha * x.

    Args:
        x: real images [N, C, R, R] (R even), float.
        alpha: the fade-in weight of the new resolution, in [0, 1]; 1 returns x itself.

    Returns:
        Tensor shaped and typed like x.
    """
    if alpha >= 1.0:
        return x
    low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
    return torch.lerp(low, x, alpha)


def _check_down_order(down_order: str) -> str:
    if down_order not in DOWN_ORDERS:
        raise ValueError(f"down_order must be one of {DOWN_ORDERS}, got {down_order!r}")
    return down_order


class _Widths:
    def __init__(self, fmap_base, fmap_max, fmap_decay):
        self.fmap_base, self.fmap_max, self.fmap_decay = fmap_base, fmap_max, fmap_decay

    def __call__(self, stage):
        return nf(stage, self.fmap_base, self.fmap_max, self.fmap_decay)


def _check_alpha_resolution(resolution, alpha, max_log2, growing):
    r = max_log2 if resolution is None else _log2_resolution(resolution)
    if r > max_log2:
        raise ValueError(f"resolution must be <= {2 ** max_log2}, got {resolution}")
    if not growing and r != max_log2:
        raise ValueError("resolution other than the full one needs growing=True")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not growing and alpha != 1.0:
        raise ValueError("alpha < 1 needs growing=True")
    return r


# ---------------------------------------------------------------------------------------------
# Generator

class _GBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv0 = fnn.EqualConv2d(cin, cout, 3, padding=1, resample="up", activation="lrelu")
        self.norm0 = fnn.PixelNorm()
        self.conv1 = fnn.EqualConv2d(cout, cout, 3, padding=1, activation="lrelu")
        self.norm1 = fnn.PixelNorm()

    def forward(self, x):
        return self.norm1(self.conv1(self.norm0(self.conv0(x))))


class Generator(nn.Module):
    """ProGAN generator from fastgan layers: z [N, latent_size] -> images [N, C, R, R].

    Args:
        resolution: R, the output resolution, a power of two >= 4.
        num_channels: C, the image channels.
        latent_size: the latent's size (default nf(0): 512 with the official widths).
        fmap_base, fmap_max, fmap_decay: widths, see `nf`.
        normalize_latents: pixel-normalize z first (official: True).
        growing: keep a toRGB per resolution so that forward can run below R with a fade-in.

    Forward: `G(z, resolution=None, alpha=1.0)`, z [N, latent_size] float ->
    images [N, C, r, r] with r = resolution (default R; r < R or alpha < 1 need growing=True).
    """

    def __init__(self, resolution: int = 128, num_channels: int = 3, latent_size: int | None = None,
                 *, fmap_base: int = 8192, fmap_max: int = 512, fmap_decay: float = 1.0,
                 normalize_latents: bool = True, growing: bool = False):
        super().__init__()
        self.log2_res = _log2_resolution(resolution)
        self.resolution, self.num_channels, self.growing = resolution, num_channels, growing
        w = _Widths(fmap_base, fmap_max, fmap_decay)
        self.latent_size = latent_size or w(0)
        self.latent_norm = fnn.PixelNorm() if normalize_latents else nn.Identity()
        self.dense = fnn.EqualLinear(self.latent_size, w(1) * 16, bias=False, gain=SQRT2 / 4)
        self.dense_act = fnn.FusedLeakyReLU(w(1), negative_slope=0.2, scale=1.0)
        self.dense_norm = fnn.PixelNorm()
        self.conv = fnn.EqualConv2d(w(1), w(1), 3, padding=1, activation="lrelu")
        self.conv_norm = fnn.PixelNorm()
        self.blocks = nn.ModuleList(_GBlock(w(r - 2), w(r - 1))
                                    for r in range(3, self.log2_res + 1))
        rgb_res = range(2, self.log2_res + 1) if growing else [self.log2_res]
        self.to_rgb = nn.ModuleDict({f"r{2 ** r}": fnn.EqualConv2d(w(r - 1), num_channels, 1,
                                                                   gain=1.0) for r in rgb_res})

    def forward(self, z: torch.Tensor, *, resolution: int | None = None,
                alpha: float = 1.0) -> torch.Tensor:
        r = _check_alpha_resolution(resolution, alpha, self.log2_res, self.growing)
        if z.dim() != 2 or z.shape[1] != self.latent_size:
            raise ValueError(f"z must be [N, {self.latent_size}], got shape {tuple(z.shape)}")
        h = self.dense(self.latent_norm(z)).view(z.shape[0], -1, 4, 4)
        h = self.conv_norm(self.conv(self.dense_norm(self.dense_act(h))))
        prev = None
        for block in self.blocks[: r - 2]:
            prev, h = h, block(h)
        out = self.to_rgb[f"r{2 ** r}"](h)
        if alpha < 1.0 and prev is not None:
            low = F.interpolate(self.to_rgb[f"r{2 ** (r - 1)}"](prev), scale_factor=2.0,
                                mode="nearest")
            out = torch.lerp(low, out, alpha)
        return out


# ---------------------------------------------------------------------------------------------
# Discriminator (fastgan layers)

class _DBlock(nn.Module):
    def __init__(self, cin, cout, down_order):
        super().__init__()
        self.conv0 = fnn.EqualConv2d(cin, cin, 3, padding=1, activation="lrelu")
        if down_order == "official":
            self.conv1 = fnn.EqualConv2d(cin, cout, 3, padding=1, resample="down",
                                         activation="lrelu")
            self.pool = nn.Identity()
        else:
            self.conv1 = fnn.EqualConv2d(cin, cout, 3, padding=1, activation="lrelu")
            self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv1(self.conv0(x)))


class _DFinal(nn.Module):
    def __init__(self, c1, c0, group_size, num_features, mbstd_cls, conv_cls, linear_cls):
        super().__init__()
        self.mbstd = mbstd_cls(group_size, num_features)
        self.conv = conv_cls(c1 + num_features, c1, 3, padding=1, activation="lrelu")
        self.dense = linear_cls(c1 * 16, c0, activation="lrelu")
        self.out = linear_cls(c0, 1, gain=1.0)

    def forward(self, x):
        h = self.conv(self.mbstd(x))
        return self.out(self.dense(h.flatten(1)))


class _DiscriminatorBase(nn.Module):
    _conv = _linear = _mbstd = _block = None

    def __init__(self, resolution: int = 128, num_channels: int = 3, *, fmap_base: int = 8192,
                 fmap_max: int = 512, fmap_decay: float = 1.0, mbstd_group_size: int = 4,
                 mbstd_num_features: int = 1, down_order: str = "official",
                 growing: bool = False):
        super().__init__()
        self.log2_res = _log2_resolution(resolution)
        self.resolution, self.num_channels, self.growing = resolution, num_channels, growing
        self.down_order = _check_down_order(down_order)
        w = _Widths(fmap_base, fmap_max, fmap_decay)
        rgb_res = range(2, self.log2_res + 1) if growing else [self.log2_res]
        self.from_rgb = nn.ModuleDict({f"r{2 ** r}": self._conv(num_channels, w(r - 1), 1,
                                                                activation="lrelu")
                                       for r in rgb_res})
        # blocks[i] works at resolution 2^(log2_res - i), from the top down to 8x8.
        self.blocks = nn.ModuleList(self._block(w(r - 1), w(r - 2), down_order)
                                    for r in range(self.log2_res, 2, -1))
        self.final = _DFinal(w(1), w(0), mbstd_group_size, mbstd_num_features, self._mbstd,
                             self._conv, self._linear)

    def forward(self, x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
        """Scores [N, 1] of images x [N, C, r, r]; r below the full resolution (and alpha < 1)
        need growing=True."""
        if x.dim() != 4 or x.shape[1] != self.num_channels or x.shape[2] != x.shape[3]:
            raise ValueError(f"x must be [N, {self.num_channels}, R, R], got shape "
                             f"{tuple(x.shape)}")
        r = _check_alpha_resolution(x.shape[-1], alpha, self.log2_res, self.growing)
        skip = self.log2_res - r  # blocks above the current resolution
        h = self.from_rgb[f"r{2 ** r}"](x)
        if r > 2:
            h = self.blocks[skip](h)
            if alpha < 1.0:
                low = self.from_rgb[f"r{2 ** (r - 1)}"](F.avg_pool2d(x, 2))
                h = torch.lerp(low, h, alpha)
            for block in self.blocks[skip + 1:]:
                h = block(h)
        return self.final(h)


class Discriminator(_DiscriminatorBase):
    """ProGAN discriminator from fastgan layers (EqualConv2d / EqualLinear with fused bias and
    leaky ReLU, MinibatchStdDev): images [N, C, R, R] -> scores [N, 1].

    Args:
        resolution: R, the input resolution, a power of two >= 4.
        num_channels: C, the image channels.
        fmap_base, fmap_max, fmap_decay: widths, see `nf` (tiny values make a CPU-sized model).
        mbstd_group_size, mbstd_num_features: the minibatch stddev's group size and extra maps;
            the batch must be a multiple of min(group size, N).
        down_order: "official" or "port" (module docstring).
        growing: keep a fromRGB per resolution so that forward can run below R with a fade-in.

    Forward: `D(x, alpha=1.0)`, x [N, C, r, r] float (r <= R; r < R or alpha < 1 need
    growing=True), NCHW or channels_last -> scores [N, 1].
    """

    @staticmethod
    def _conv(*args, **kwargs):
        return fnn.EqualConv2d(*args, **kwargs)

    @staticmethod
    def _linear(*args, **kwargs):
        return fnn.EqualLinear(*args, **kwargs)

    @staticmethod
    def _mbstd(group_size, num_features):
        return fnn.MinibatchStdDev(group_size, num_features)

    _block = _DBlock


# ---------------------------------------------------------------------------------------------
# The same discriminator in plain torch

class PlainEqualConv2d(nn.Module):
    """EqualConv2d's math in plain torch (resample None, "up" or "down"; activation None, "relu"
    or "lrelu"), with the same arguments and parameters; kernel_size is one int. Forward: x
    [N, in_channels, H, W] -> [N, out_channels, H', W']."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, *,
                 gain=SQRT2, lr_mul=1.0, bias_init=0.0, activation=None, alpha=0.2,
                 act_gain=1.0, resample=None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"PlainEqualConv2d supports resample None, 'up' or 'down', got "
                             f"{resample!r}")
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_channels,), float(bias_init))) if bias else None
        self.scale = gain * lr_mul / math.sqrt(in_channels * kernel_size * kernel_size)
        self.stride, self.padding, self.lr_mul = stride, padding, lr_mul
        self.activation, self.alpha, self.act_gain, self.resample = (activation, alpha, act_gain,
                                                                    resample)

    def forward(self, x):
        if self.resample == "up":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        y = F.conv2d(x, self.weight * self.scale, None, self.stride, self.padding)
        if self.resample == "down":
            y = F.avg_pool2d(y, 2)
        if self.bias is not None:
            y = y + (self.bias * self.lr_mul).view(1, -1, 1, 1)
        if self.activation == "lrelu":
            y = F.leaky_relu(y, self.alpha)
        elif self.activation == "relu":
            y = F.relu(y)
        return y * self.act_gain if self.act_gain != 1.0 else y


class PlainEqualLinear(nn.Module):
    """EqualLinear's math in plain torch, with the same arguments and parameters. Forward:
    x [*, in_features] -> [*, out_features]."""

    def __init__(self, in_features, out_features, bias=True, *, gain=SQRT2, lr_mul=1.0,
                 bias_init=0.0, activation=None, alpha=0.2, act_gain=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = gain * lr_mul / math.sqrt(in_features)
        self.lr_mul, self.activation = lr_mul, activation
        self.alpha, self.act_gain = alpha, act_gain

    def forward(self, x):
        y = F.linear(x, self.weight * self.scale,
                     None if self.bias is None else self.bias * self.lr_mul)
        if self.activation == "lrelu":
            y = F.leaky_relu(y, self.alpha)
        elif self.activation == "relu":
            y = F.relu(y)
        return y * self.act_gain if self.act_gain != 1.0 else y


class PlainMinibatchStdDev(nn.Module):
    """Official (strided) minibatch stddev in plain torch: sample n is in group n % (N / G).

    Args:
        group_size, num_features, eps: as for `fastgan.nn.MinibatchStdDev`.

    Forward: x [N, C, H, W] -> [N, C + num_features, H, W].
    """

    def __init__(self, group_size: int = 4, num_features: int = 1, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.num_features, self.eps = group_size, num_features, eps

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"batch {n} is not divisible by group size {g}")
        f = self.num_features
        y = x.reshape(g, n // g, f, c // f, h, w)
        if y.dtype in (torch.float16, torch.bfloat16):
            y = y.float()
        y = (y - y.mean(0)).square().mean(0)
        s = (y + self.eps).sqrt().mean((2, 3, 4)).to(x.dtype)  # [M, F]
        s = s.repeat(g, 1).view(n, f, 1, 1).expand(n, f, h, w)
        return torch.cat([x, s], 1)


class _PlainDBlock(nn.Module):
    def __init__(self, cin, cout, down_order):
        super().__init__()
        self.conv0 = PlainEqualConv2d(cin, cin, 3, padding=1, activation="lrelu")
        official = down_order == "official"
        self.conv1 = PlainEqualConv2d(cin, cout, 3, padding=1, activation="lrelu",
                                      resample="down" if official else None)
        self.pool = nn.Identity() if official else nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(self.conv1(self.conv0(x)))


class PlainDiscriminator(_DiscriminatorBase):
    """`Discriminator` in plain torch, same arguments, module tree and state_dict keys: the
    eager baseline of the benchmarks and the reference of the tests."""

    _conv = PlainEqualConv2d
    _linear = PlainEqualLinear
    _mbstd = PlainMinibatchStdDev
    _block = _PlainDBlock


# ---------------------------------------------------------------------------------------------
# The same generator in plain torch

class PlainPixelNorm(nn.Module):
    """PixelNorm in plain torch: x * rsqrt(mean over channels of x^2 + eps)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + self.eps)


class PlainFusedLeakyReLU(nn.Module):
    """FusedLeakyReLU in plain torch: leaky_relu(x + bias, slope) * scale, bias along dim 1."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = SQRT2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x):
        b = self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return F.leaky_relu(x + b, self.negative_slope) * self.scale


def _plain_twin(m: nn.Module) -> nn.Module | None:
    """The plain-torch layer computing what fastgan layer `m` computes (same parameters), or
    None for other modules."""
    act = None if m.__dict__.get("activation") in (None, "linear") else m.activation
    if isinstance(m, fnn.EqualConv2d):
        twin = PlainEqualConv2d(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0],
                                m.padding[0], m.bias is not None, gain=m.gain, lr_mul=m.lr_mul,
                                activation=act, alpha=m.alpha, act_gain=m.act_gain,
                                resample=m.resample)
    elif isinstance(m, fnn.EqualLinear):
        twin = PlainEqualLinear(m.in_features, m.out_features, m.bias is not None, gain=m.gain,
                                lr_mul=m.lr_mul, activation=act, alpha=m.alpha,
                                act_gain=m.act_gain)
    elif isinstance(m, fnn.PixelNorm):
        return PlainPixelNorm(m.eps)
    elif isinstance(m, fnn.FusedLeakyReLU):
        twin = PlainFusedLeakyReLU(m.channels, m.negative_slope, m.scale)
    else:
        return None
    twin.load_state_dict(m.state_dict())
    return twin


class PlainGenerator(Generator):
    """`Generator` in plain torch (F.conv2d after F.interpolate, F.leaky_relu, a written-out pixel
    norm): the same module tree, state_dict keys and initial weights for the same seed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                twin = _plain_twin(child)
                if twin is not None:
                    setattr(parent, name, twin)
