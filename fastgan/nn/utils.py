"""fastgan.nn.utils: spectral normalization helpers, named as in torch.nn.utils."""

from .spectral_norm import (fuse_spectral_norm, load_legacy_spectral_norm, remove_spectral_norm,
                            spectral_norm)

__all__ = ["spectral_norm", "remove_spectral_norm", "load_legacy_spectral_norm",
           "fuse_spectral_norm"]
