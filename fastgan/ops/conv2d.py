"""2-D convolution whose derivatives, of every order, are ordinary convolutions.

With P = (stride, padding, dilation, groups, transposed, output_padding) and conv_P the forward
(F.conv2d, or F.conv_transpose2d when transposed), y = conv_P(x, w) is bilinear, and
    <dy, conv_P(x, w)> = <dx_P(dy, w), x> = <dw_P(x, dy), w>
defines its two adjoints:
    dx_P(dy, w) = conv_P'(dy, w)    P' = P with `transposed` flipped (a conv's input gradient is a
                                    transposed conv with the same weight, and vice versa), and the
                                    output_padding that gives back x's size
    dw_P(x, dy) = aten.convolution_backward(dy, x, w, ..., output_mask=[False, True, False])
dw_P is bilinear too; differentiating <ggw, dw_P(x, dy)> = <dy, conv_P(x, ggw)> gives
    d/d dy = conv_P(x, ggw),        d/d x = dx_P(dy, ggw) = conv_P'(dy, ggw)
So two autograd Functions, `_Conv` (conv_P) and `_ConvWeightGrad` (dw_P), whose backwards call
each other, cover every order of derivative: the double backward of a convolution (a gradient
penalty's path) runs forward / dgrad / wgrad convolutions only, never the generic
`_convolution_double_backward` whose fallback kernels dominate an eager WGAN-GP step
(docs/baselines.md: 1.8x-2.6x on the GP step). A backward computes only the gradients the running
backward pass will use: torch.autograd.grad(D(x).sum(), x) computes no weight gradients.

`conv2d_resample` adds ProGAN's up / down layers, fused into one stride-2 convolution with a
(k+1)x(k+1) kernel (the identities are at the end of this file).

Bias is not part of the Functions (EqualConv2d folds it into bias_act): `conv2d(..., bias)` adds
it with a broadcast add, whose derivatives are sums. Under torch.autocast x and w are cast the
way F.conv2d would cast them (fp16/bf16; fp64 untouched), before the Function, so its saved
tensors and its backward share one dtype whatever the autocast state of the backward pass.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .. import _backend
from . import _common as C_

__all__ = ["conv2d", "conv_transpose2d", "conv2d_resample", "conv2d_ref", "conv_transpose2d_ref",
           "conv2d_resample_ref", "fused_down_weight", "fused_up_weight", "why_not_fusable"]


def conv2d_ref(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The definition: torch's own convolution and its autograd."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def conv_transpose2d_ref(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                         dilation=1):
    """The definition: torch's own transposed convolution and its autograd."""
    return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation)


def conv2d_resample_ref(x, weight, resample=None, stride=1, padding=0):
    """The definition of ProGAN's resampling convs, unfused: nearest 2x upsample then conv
    ("up"), conv then 2x2 average pool ("down")."""
    if resample == "up":
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    y = F.conv2d(x, weight, None, stride, padding)
    return F.avg_pool2d(y, 2) if resample == "down" else y


@dataclasses.dataclass(frozen=True)
class ConvParams:
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    transposed: bool = False
    output_padding: tuple[int, int] = (0, 0)


def _conv(x: torch.Tensor, w: torch.Tensor, p: ConvParams) -> torch.Tensor:
    if p.transposed:
        return F.conv_transpose2d(x, w, None, p.stride, p.padding, p.output_padding, p.groups,
                                  p.dilation)
    return F.conv2d(x, w, None, p.stride, p.padding, p.dilation, p.groups)


def _input_grad_params(p: ConvParams, x_shape, y_shape, w_shape) -> ConvParams:
    """P': the convolution taking dy (shape y_shape) to dx (shape x_shape)."""
    if p.transposed:  # a plain conv; output_padding < stride (checked) makes its size x's
        return dataclasses.replace(p, transposed=False, output_padding=(0, 0))
    out_pad = tuple(
        x_shape[2 + d] - ((y_shape[2 + d] - 1) * p.stride[d] - 2 * p.padding[d]
                          + p.dilation[d] * (w_shape[2 + d] - 1) + 1)
        for d in range(2))
    return dataclasses.replace(p, transposed=True, output_padding=out_pad)


def _grad_needed(ctx, i: int) -> bool:
    """Whether the running backward pass uses the gradient of input i. `needs_input_grad` is
    fixed when the graph is built (input i requires grad), so for, e.g.,
    torch.autograd.grad(D(x).sum(), x) it says yes to D's weights as well; the engine knows
    better. Its query is private API: any failure falls back to needs_input_grad."""
    if not ctx.needs_input_grad[i]:
        return False
    if torch.compiler.is_compiling():
        return True
    try:
        node = ctx.next_functions[i][0]
        return node is None or bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, IndexError, RuntimeError):
        # RuntimeError: a leaf asked about during torch.autograd.grad(), which the engine only
        # answers for inputs=... leaves: it is one of them.
        return True


# The Functions here take ctx in forward rather than a separate setup_context: with one, torch
# (2.11-2.14) binds apply's arguments with inspect.signature on every call, ~17 us of CPU each,
# and a 256x256 ProGAN D step applies these ~200 times.
class _Conv(torch.autograd.Function):
    """y = conv_P(x, w); backward: dx = conv_P'(dy, w), dw = _ConvWeightGrad(x, dy)."""

    @staticmethod
    def forward(ctx, x, w, p):
        ctx.save_for_backward(x, w)
        ctx.p = p
        return _conv(x, w, p)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        p = ctx.p
        dx = dw = None
        if _grad_needed(ctx, 0):
            dx = _Conv.apply(dy, w, _input_grad_params(p, x.shape, dy.shape, w.shape))
        if _grad_needed(ctx, 1):
            dw = _ConvWeightGrad.apply(x, dy, w.detach(), p)
        return dx, dw, None


class _ConvWeightGrad(torch.autograd.Function):
    """dw = dw_P(x, dy) (w only gives the weight's shape); backward:
    d/dx = conv_P'(dy, ggw), d/d dy = conv_P(x, ggw)."""

    @staticmethod
    def forward(ctx, x, dy, w, p):
        ctx.save_for_backward(x, dy)
        ctx.p = p
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, list(p.stride), list(p.padding), list(p.dilation), p.transposed,
            list(p.output_padding), p.groups, [False, True, False])[1]

    @staticmethod
    def backward(ctx, ggw):
        x, dy = ctx.saved_tensors
        p = ctx.p
        g_x = g_dy = None
        if _grad_needed(ctx, 0):
            g_x = _Conv.apply(dy, ggw, _input_grad_params(p, x.shape, dy.shape, ggw.shape))
        if _grad_needed(ctx, 1):
            g_dy = _Conv.apply(x, ggw, p)
        return g_x, g_dy, None, None


# ---------------------------------------------------------------------------------------------
# Public functions

def _check(x, weight, bias, groups, transposed):
    C_.check_float_tensor(x, "x", ndim=4)
    C_.check_float_tensor(weight, "weight", ndim=4)
    C_.check_same_device(x=x, weight=weight, bias=bias)
    C_.check_number(groups, "groups", integer=True, low=1)
    in_ch = weight.shape[0] if transposed else weight.shape[1] * groups
    if x.shape[1] != in_ch:
        what = "weight.shape[0]" if transposed else "weight.shape[1] * groups"
        raise ValueError(f"x has {x.shape[1]} channels but {what} is {in_ch} "
                         f"(x {tuple(x.shape)}, weight {tuple(weight.shape)}, groups {groups})")
    out_ch = weight.shape[1] * groups if transposed else weight.shape[0]
    if bias is not None:
        C_.check_float_tensor(bias, "bias", ndim=1)
        if bias.shape[0] != out_ch:
            raise ValueError(f"bias must have shape [{out_ch}], got {tuple(bias.shape)}")


def _autocast(*tensors):
    """Cast as autocast casts a convolution's inputs: fp32/fp16/bf16 to the autocast dtype."""
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.dtype != torch.float64 else t for t in tensors)


def _plain(x: torch.Tensor) -> bool:
    """Backend "ref" (and "auto" off CUDA) runs torch's own convolution; every other backend runs
    the Functions above, which need nothing but torch (so no backend is ever unavailable here)."""
    return _backend.resolve(x, "conv2d", kernels=False) == "ref"


def _add_bias(y, bias):
    return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """F.conv2d, with derivatives of every order made of convolutions (see the module doc).

    Args:
        x: [N, C_in, H, W], float16 / bfloat16 / float32 / float64, any layout.
        weight: [C_out, C_in / groups, kh, kw], on x's device.
        bias: [C_out] or None.
        stride, padding, dilation: an int or a pair of ints (no padding strings).
        groups: >= 1, dividing the channels as in F.conv2d.

    Returns:
        [N, C_out, H_out, W_out] as F.conv2d returns it (dtype and memory format; under autocast
        the autocast dtype). Backend "ref" (and "auto" off CUDA) is F.conv2d itself.
    """
    _check(x, weight, bias, groups, transposed=False)
    p = ConvParams(C_.pair(stride, "stride"), C_.pair(padding, "padding"),
                   C_.pair(dilation, "dilation"), groups)
    if _plain(x):
        return conv2d_ref(x, weight, bias, p.stride, p.padding, p.dilation, groups)
    x, weight = _autocast(x, weight)
    return _add_bias(_Conv.apply(x, weight, p), bias)


def conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> torch.Tensor:
    """F.conv_transpose2d, with derivatives of every order made of convolutions.

    Args:
        x: [N, C_in, H, W], float16 / bfloat16 / float32 / float64, any layout.
        weight: [C_in, C_out / groups, kh, kw], on x's device.
        bias: [C_out] or None.
        stride, padding, output_padding, dilation: an int or a pair of ints; output_padding
            must be smaller than stride.
        groups: >= 1.

    Returns:
        [N, C_out, H_out, W_out] as F.conv_transpose2d returns it. Backend "ref" (and "auto"
        off CUDA) is F.conv_transpose2d itself.
    """
    _check(x, weight, bias, groups, transposed=True)
    p = ConvParams(C_.pair(stride, "stride"), C_.pair(padding, "padding"),
                   C_.pair(dilation, "dilation"), groups, True,
                   C_.pair(output_padding, "output_padding"))
    if any(not 0 <= op < s for op, s in zip(p.output_padding, p.stride)):
        raise ValueError(f"output_padding must be in [0, stride), got {p.output_padding} with "
                         f"stride {p.stride}")
    if _plain(x):
        return conv_transpose2d_ref(x, weight, bias, p.stride, p.padding, p.output_padding,
                                    groups, p.dilation)
    x, weight = _autocast(x, weight)
    return _add_bias(_Conv.apply(x, weight, p), bias)


# ---------------------------------------------------------------------------------------------
# Resampling convolutions (ProGAN's up / down layers), fused into one stride-2 convolution.
#
# down: y = avgpool2(conv(x, w, stride 1, padding p)). Each output averages the conv at four
#   offsets (a, b) in {0,1}^2, i.e. one stride-2 conv, same padding p, with the (kh+1)x(kw+1)
#   kernel  W[s, t] = (w[s, t] + w[s-1, t] + w[s, t-1] + w[s-1, t-1]) / 4  (w = 0 outside).
#   Output size floor((H + 2p - kh) / 2) + 1 = floor((H + 2p - kh + 1) / 2): the pool's. Exact
#   for every kernel size and padding.
# up: y = conv(up2(x), w, stride 1, padding p), up2 = nearest 2x. Output o sums w[u] x[(o+u-p)//2]
#   over u, so x[i] meets w[2i-o+p] and w[2i-o+p+1]; with wf = w flipped in both spatial dims
#   that is conv_transpose2d(x, W^T, stride 2, padding k-1-p), output_padding 0, where
#   W[s, t] = wf[s, t] + wf[s-1, t] + wf[s, t-1] + wf[s-1, t-1]  and ^T swaps out/in (the
#   [in, out, kh, kw] weight layout of conv_transpose2d). Output size 2H + 2p - k + 1: the
#   unfused one. Exact when k-1-p >= 0 per spatial dim (a transposed conv cannot pad negatively).
# Both need stride 1 (the layer's own stride: the fused conv's stride is the 2 of the resampling).

RESAMPLES = (None, "up", "down")


class _Box2(torch.autograd.Function):
    """A 2x2 window sum over w zero-padded by `padding`, divided by `divisor`, as one pooling op.
    padding 1: [.., kh, kw] -> [.., kh+1, kw+1], the sum of the four copies of w shifted by 0/1
    per dim; padding 0 ([.., kh+1, kw+1] -> [.., kh, kw]) is its adjoint, and vice versa. So the
    backward is the same Function with the other padding: nothing is saved and every order is
    one op (pad / slice / add chains cost a launch each, on every forward)."""

    @staticmethod
    def forward(ctx, w, divisor, padding):
        ctx.divisor, ctx.padding = divisor, padding
        return F.avg_pool2d(w, 2, stride=1, padding=padding, divisor_override=divisor)

    @staticmethod
    def backward(ctx, g):
        return _Box2.apply(g, ctx.divisor, 1 - ctx.padding), None, None


def fused_down_weight(weight: torch.Tensor) -> torch.Tensor:
    """The stride-2 conv kernel equal to conv(weight) then a 2x2 average pool."""
    return _Box2.apply(weight, 4, 1)


def fused_up_weight(weight: torch.Tensor) -> torch.Tensor:
    """The stride-2 conv_transpose2d kernel ([in, out, kh+1, kw+1]) equal to nearest-2x upsampling
    then conv(weight) (weight [out, in, kh, kw])."""
    # The box sum is symmetric, so flipping after it equals the flipped kernel's box sum.
    return _Box2.apply(weight, 1, 1).flip(2, 3).transpose(0, 1)


def why_not_fusable(resample: str | None, kernel_size, stride, padding) -> str | None:
    """None when conv2d_resample can fuse this combination exactly, else the reason."""
    if resample is None:
        return "there is no resampling to fuse"
    (kh, kw), stride, padding = C_.pair(kernel_size, "kernel_size"), C_.pair(stride, "stride"), \
        C_.pair(padding, "padding")
    if stride != (1, 1):
        return f"the fused forms need stride 1, got stride {stride}"
    if resample == "up" and (padding[0] > kh - 1 or padding[1] > kw - 1):
        return (f"resample='up' fuses into a transposed conv with padding kernel_size - 1 - "
                f"padding, negative for kernel_size {(kh, kw)} and padding {padding}")
    return None


def conv2d_resample(x: torch.Tensor, weight: torch.Tensor, resample: str | None = None,
                    stride=1, padding=0, fused: bool | None = None) -> torch.Tensor:
    """conv2d (no bias) with ProGAN's resampling.

    The fused form does 4/9 (down) and 16/36 (up) of the multiply-adds, in one conv with no
    intermediate at the larger resolution, and its double backward has no pooling / upsampling
    backward in it.

    Args:
        x: [N, C_in, H, W], float16 / bfloat16 / float32 / float64.
        weight: [C_out, C_in, kh, kw].
        resample: "up" (nearest 2x upsample, then the conv), "down" (the conv, then a 2x2
            average pool) or None (the conv alone).
        stride, padding: the conv's, an int or a pair of ints (the fused forms need stride 1).
        fused: True computes up / down as one stride-2 (transposed) conv with a (k+1)x(k+1)
            kernel (exactly the same math; ValueError where that is impossible, see
            `why_not_fusable`), False as separate ops, None (default) fused whenever possible.

    Returns:
        [N, C_out, H', W']: the unfused math's shape (2x / 0.5x the conv's output for up / down).
    """
    if resample not in RESAMPLES:
        raise ValueError(f"resample must be one of {RESAMPLES}, got {resample!r}")
    if fused not in (None, True, False):
        raise ValueError(f"fused must be None, True or False, got {fused!r}")
    C_.check_float_tensor(x, "x", ndim=4)
    C_.check_float_tensor(weight, "weight", ndim=4)
    if resample is None:
        return conv2d(x, weight, None, stride, padding)
    reason = why_not_fusable(resample, weight.shape[2:], stride, padding)
    if fused and reason is not None:
        raise ValueError(f"cannot fuse resample={resample!r} exactly: {reason}")
    if fused is False or reason is not None:
        if resample == "up":
            return conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, None, stride,
                          padding)
        return F.avg_pool2d(conv2d(x, weight, None, stride, padding), 2)
    kh, kw = weight.shape[2:]
    ph, pw = C_.pair(padding, "padding")
    if resample == "up":
        return conv_transpose2d(x, fused_up_weight(weight), None, 2, (kh - 1 - ph, kw - 1 - pw))
    return conv2d(x, fused_down_weight(weight), None, 2, (ph, pw))
