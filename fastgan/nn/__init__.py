"""Drop-in torch.nn modules over fastgan.functional."""

from .layers import MinibatchStdDev, PixelNorm
from .equalized import EqualConv2d, EqualLinear, FusedLeakyReLU

__all__ = ["MinibatchStdDev", "PixelNorm"]
__all__ += ["EqualConv2d", "EqualLinear", "FusedLeakyReLU"]
