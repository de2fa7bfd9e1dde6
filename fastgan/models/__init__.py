"""Reference GAN models built from fastgan layers."""

from .progan import (Discriminator, Generator, PlainDiscriminator, PlainEqualConv2d,
                     PlainEqualLinear, PlainGenerator, PlainMinibatchStdDev, fade_images, nf)

__all__ = ["Discriminator", "Generator", "PlainDiscriminator", "PlainEqualConv2d",
           "PlainEqualLinear", "PlainGenerator", "PlainMinibatchStdDev", "fade_images", "nf"]
