"""fastgan: fused GPU kernels (Triton and CUDA) for GAN training, as drop-in torch.nn layers.

    import fastgan, fastgan.functional as FF
    y = FF.pixel_norm(x)                 # or fastgan.nn.PixelNorm()
    with fastgan.use_backend("triton"):  # "auto" (default) | "cuda" | "triton" | "ref"
        ...
"""

__version__ = "0.1.0"

from ._backend import (  # noqa: E402
    BACKENDS,
    BackendFallbackWarning,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from . import functional, losses, nn, penalties  # noqa: E402

__all__ = [
    "BACKENDS", "BackendFallbackWarning", "available_backends", "get_backend", "set_backend",
    "use_backend", "functional", "losses", "nn", "penalties", "__version__",
]
