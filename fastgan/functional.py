"""torch.nn.functional-style entry points of every fastgan op."""

from .ops.minibatch_stddev import minibatch_stddev
from .ops.pixel_norm import pixel_norm

__all__ = ["minibatch_stddev", "pixel_norm"]
