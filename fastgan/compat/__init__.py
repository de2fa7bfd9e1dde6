"""Layers that mirror popular ProGAN ports (names, constructors, state_dict keys, numbers) on
fastgan kernels, and `convert`, which swaps them into an existing model in place.

    akanimax    pro_gan_pytorch (the `pro-gan-pth` package)
    gan_zoo     facebookresearch/pytorch_GAN_zoo
    rosinality  rosinality/progressive-gan-pytorch
"""

from . import akanimax, gan_zoo, rosinality
from .convert import ConversionReport, convert

__all__ = ["akanimax", "gan_zoo", "rosinality", "ConversionReport", "convert"]
