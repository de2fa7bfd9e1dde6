"""Drop-in torch.nn modules over fastgan.functional."""

from .layers import MinibatchStdDev, PixelNorm
from .equalized import EqualConv2d, EqualLinear, FusedLeakyReLU
from .spectral_norm import SNConv2d, SNEmbedding, SNLinear, SpectralNorm
from . import utils

__all__ = ["MinibatchStdDev", "PixelNorm"]
__all__ += ["EqualConv2d", "EqualLinear", "FusedLeakyReLU"]
__all__ += ["SNConv2d", "SNEmbedding", "SNLinear", "SpectralNorm", "utils"]
