"""torch.nn.functional-style entry points of every fastgan op (docstrings: Args / Returns).

Each runs on the backend `fastgan._backend.resolve` picks for its input ("ref" | "triton" |
"cuda"; see fastgan.set_backend) and is differentiable to any order.
"""

from .ops.bias_act import bias_act
from .ops.conv2d import conv2d, conv2d_resample, conv_transpose2d
from .ops.grad_penalty import grad_penalty
from .ops.minibatch_stddev import minibatch_stddev
from .ops.pixel_norm import pixel_norm
from .ops.spectral_norm import power_iteration as spectral_norm_power_iteration

__all__ = ["bias_act", "conv2d", "conv2d_resample", "conv_transpose2d", "grad_penalty",
           "minibatch_stddev", "pixel_norm", "spectral_norm_power_iteration"]
