"""fastgan: fused GPU kernels (Triton and CUDA) for GAN training, as drop-in torch.nn layers.

    import fastgan, fastgan.functional as FF
    y = FF.pixel_norm(x)                 # or fastgan.nn.PixelNorm()
    with fastgan.use_backend("triton"):  # "auto" (default) | "cuda" | "triton" | "ref"
        ...
"""

from ._version import __version__

from ._backend import (  # noqa: E402
    BACKENDS,
    BackendFallbackWarning,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from . import functional, nn  # noqa: E402

_LAZY = ("compat", "losses", "metrics", "penalties")  # penalties imports torch._dynamo (~1 s): only when used


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "convert":
        from .compat import convert

        return convert
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS", "BackendFallbackWarning", "available_backends", "get_backend", "set_backend",
    "use_backend", "compat", "convert", "functional", "losses", "metrics", "nn", "penalties",
    "__version__",
]
