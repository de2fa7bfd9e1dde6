"""Drop-in torch.nn modules over fastgan.functional."""

from .layers import MinibatchStdDev, PixelNorm

__all__ = ["MinibatchStdDev", "PixelNorm"]
