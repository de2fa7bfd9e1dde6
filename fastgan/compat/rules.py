"""The table `fastgan.convert` reads: one Rule per foreign layer kind it recognizes.

A layer is recognized by the name of a class in its MRO and by its structure (its torch type,
children, parameters, attributes and hooks; a stateless layer, whose structure says nothing,
also by its output on one small fp64 probe), never by importing the port. A rule's `why_not`
returns None when the structure is the port's, else the reason it is left alone. A recognized
layer is converted by swapping its class for the compat one (after `prepare`), so the object,
its parameters, buffers and state_dict keys are all the user's own: optimizers and checkpoints
keep working.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from . import akanimax, gan_zoo, rosinality
from .fusion import plain_module

__all__ = ["Rule", "RULES", "check_own_class", "is_compat", "rules_for"]

# planned(module) -> the class the module is or will be after conversion
Planned = Callable[[nn.Module], type]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One recognized layer kind.

    Attributes:
        port: the codebase ("akanimax", "gan_zoo", "rosinality", "torch").
        class_name: the foreign class's name.
        target: the compat class it becomes.
        why_not: (module, planned) -> None if the structure matches, else the reason.
        prepare: run on the module just before its class is swapped (e.g. remove a hook).
        fuses: what the compat class computes fused, for the report ("" for nothing).
        changes_child: the child that `prepare` changes (""), which must then be held by this
            module alone: another holder would still call it as it was.
    """

    port: str
    class_name: str
    target: type
    why_not: Callable[[nn.Module, Planned], str | None]
    prepare: Callable[[nn.Module], None] = lambda m: None
    fuses: str = ""
    changes_child: str = ""


# Class attributes any module class carries; a subclass that defines anything else may compute
# something else.
_HARMLESS = {"__init__", "__module__", "__qualname__", "__doc__", "__annotations__",
             "__firstlineno__", "__static_attributes__", "__dict__", "__weakref__",
             "extra_repr"}
_MODULE_ATTRS = set(vars(nn.Module()))


def check_own_class(m: nn.Module, base: type) -> str | None:
    """Whether `m` computes what `base` computes.

    Args:
        m: the module.
        base: the recognized class in m's MRO.

    Returns:
        None, or the reason it may not: a class between type(m) and base that redefines
        anything but __init__/extra_repr, an instance-level forward, or hooks.
    """
    for cls in type(m).__mro__:
        if cls is base:
            break
        changed = sorted(set(vars(cls)) - _HARMLESS)
        if changed:
            return (f"{cls.__name__} subclasses {base.__name__} and redefines "
                    f"{', '.join(changed)}")
    if "forward" in vars(m):
        return "its forward was replaced on the instance"
    if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or \
            getattr(m, "_backward_pre_hooks", None):
        return "it has hooks registered"
    return None


def _extra_attrs(m: nn.Module) -> set:
    return set(vars(m)) - _MODULE_ATTRS


def _stateless(m: nn.Module, attrs: set = frozenset()) -> str | None:
    if list(m.parameters()) or list(m.buffers()) or list(m.children()):
        return "it holds parameters, buffers or submodules"
    if _extra_attrs(m) != set(attrs):
        return f"its attributes are {sorted(_extra_attrs(m))}, not {sorted(attrs)}"
    return None


def _scale_is(m: nn.Module, expected: float) -> str | None:
    scale = getattr(m, "scale", None)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        return f"no numeric `scale` attribute (got {type(scale).__name__})"
    if not math.isclose(float(scale), expected, rel_tol=1e-12):
        return f"scale {float(scale):.6g} is not the port's sqrt(2)/sqrt(fan_in) = {expected:.6g}"
    return None


def _first(*reasons) -> str | None:
    return next((r for r in reasons if r is not None), None)


def _computes_as(m: nn.Module, target: type, shape: tuple) -> str | None:
    """A stateless layer's class name and attributes say little about its forward (another
    codebase's PixelNorm may normalize another dim, its MinibatchStdDev group otherwise): run m
    and the compat class (on fastgan's reference ops) on one fp64 CPU probe drawn from a
    generator of its own, and compare."""
    from .._backend import use_backend

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    twin = object.__new__(target)
    twin.__dict__.update(vars(m))
    with torch.no_grad():
        with use_backend("ref"):
            got = twin(x)
        try:
            want = m(x)
        except Exception as err:  # any failure: not the port's layer
            return (f"it fails on a probe input of shape {list(shape)} "
                    f"({type(err).__name__}: {err})")
    if (not isinstance(want, torch.Tensor) or want.shape != got.shape
            or want.dtype != got.dtype
            or not torch.allclose(want, got, rtol=1e-9, atol=1e-12)):
        return (f"its output on a probe input of shape {list(shape)} is not the port's "
                f"{target.__name__}'s")
    return None


def _stateless_norm(target: type):
    def why_not(m, planned):
        return _stateless(m) or _computes_as(m, target, (4, 3, 2, 2))
    return why_not


# --- akanimax pro_gan_pytorch -------------------------------------------------------------

# The instance attributes of the torch layers the port's equalized layers subclass.
_TORCH_ATTRS = {cls: set(vars(make())) for cls, make in (
    (nn.Conv2d, lambda: nn.Conv2d(1, 1, 1)),
    (nn.ConvTranspose2d, lambda: nn.ConvTranspose2d(1, 1, 1)),
    (nn.Linear, lambda: nn.Linear(1, 1)))}


def _ak_attrs(m: nn.Module, torch_cls: type, class_name: str) -> str | None:
    """The port's layer sets `scale` and nothing else beyond torch's attributes. A class that
    only bears the port's name and sets more (a learning-rate multiplier, a gain) may use them in
    its forward; extra attributes are accepted only from a subclass of the named class, whose
    own class body check_own_class has checked."""
    named = next(c for c in type(m).__mro__ if c.__name__ == class_name)
    extra = set(vars(m)) - _TORCH_ATTRS[torch_cls] - {"scale"}
    if extra and type(m) is named:
        return f"it has attributes the port's {class_name} does not: {sorted(extra)}"
    return None


def _ak_conv(m, planned):
    if not isinstance(m, nn.Conv2d):
        return "not an nn.Conv2d"
    if isinstance(m.padding, str):
        return f"string padding {m.padding!r}"
    return _first(_ak_attrs(m, nn.Conv2d, "EqualizedConv2d"),
                  _scale_is(m, math.sqrt(2) / math.sqrt(math.prod(m.kernel_size)
                                                        * m.in_channels)))


def _ak_conv_t(m, planned):
    if not isinstance(m, nn.ConvTranspose2d):
        return "not an nn.ConvTranspose2d"
    if isinstance(m.padding, str):
        return f"string padding {m.padding!r}"
    return _first(_ak_attrs(m, nn.ConvTranspose2d, "EqualizedConvTranspose2d"),
                  _scale_is(m, math.sqrt(2) / math.sqrt(m.in_channels)))


def _ak_linear(m, planned):
    if not isinstance(m, nn.Linear):
        return "not an nn.Linear"
    return _first(_ak_attrs(m, nn.Linear, "EqualizedLinear"),
                  _scale_is(m, math.sqrt(2) / math.sqrt(m.in_features)))


def _ak_mbstd(m, planned):
    r = _stateless(m, {"group_size"})
    if r is None and (isinstance(m.group_size, bool) or not isinstance(m.group_size, int)
                      or m.group_size < 1):
        r = f"group_size {m.group_size!r} is not a positive int"
    if r is None:  # two groups, distinct samples: strided and consecutive groups differ
        r = _computes_as(m, akanimax.MinibatchStdDev, (2 * m.group_size, 2, 2, 2))
    return r


def _children_are(m: nn.Module, planned: Planned, expected: dict) -> str | None:
    """m's children are exactly `expected` (name -> class, or tuple of allowed classes), each
    already (or about to be) that class; an expected torch class must be plain (no hooks)."""
    names = [n for n, _ in m.named_children()]
    if names != list(expected):
        return f"its children are {names}, not {list(expected)}"
    for name, allowed in expected.items():
        child = getattr(m, name)
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        cls = planned(child)
        if cls not in allowed:
            return f"{name} is a {type(child).__name__} that is not converted"
        if cls.__module__.startswith("torch.") and not plain_module(child, cls):
            return f"{name} has hooks or a replaced forward"
    return None


def _half_pool(pool: nn.Module) -> str | None:
    if (pool.kernel_size not in (2, (2, 2)) or pool.stride not in (2, (2, 2))
            or pool.padding not in (0, (0, 0)) or pool.ceil_mode
            or pool.divisor_override is not None):
        return f"downSampler is {pool}, not AvgPool2d(2)"
    return None


def _ak_block(children: dict, attrs: set):
    def why_not(m, planned):
        if _extra_attrs(m) != attrs:
            return f"its attributes are {sorted(_extra_attrs(m))}, not {sorted(attrs)}"
        if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
            return "it holds parameters or buffers of its own"
        if m.use_eql is not True and m.use_eql is not False:
            return f"use_eql is {m.use_eql!r}"
        eql = {True: (akanimax.EqualizedConv2d, akanimax.EqualizedConvTranspose2d),
               False: (nn.Conv2d, nn.ConvTranspose2d)}[m.use_eql]
        kinds = {"conv": eql[0], "conv_t": eql[1]}
        r = _children_are(m, planned, {k: kinds.get(v, v) for k, v in children.items()})
        if r is None and "downSampler" in children:
            r = _half_pool(m.downSampler)
        return r
    return why_not


_PIX = akanimax.PixelwiseNorm
_AK_RULES = [
    Rule("akanimax", "EqualizedConv2d", akanimax.EqualizedConv2d, _ak_conv),
    Rule("akanimax", "EqualizedConvTranspose2d", akanimax.EqualizedConvTranspose2d, _ak_conv_t),
    Rule("akanimax", "EqualizedLinear", akanimax.EqualizedLinear, _ak_linear),
    Rule("akanimax", "PixelwiseNorm", akanimax.PixelwiseNorm,
         _stateless_norm(akanimax.PixelwiseNorm)),
    Rule("akanimax", "MinibatchStdDev", akanimax.MinibatchStdDev, _ak_mbstd),
    Rule("akanimax", "GenInitialBlock", akanimax.GenInitialBlock,
         _ak_block({"conv_1": "conv_t", "conv_2": "conv", "pixNorm": _PIX,
                    "lrelu": nn.LeakyReLU}, {"use_eql"}),
         fuses="conv_1 and conv_2 each with their bias + lrelu"),
    Rule("akanimax", "GenGeneralConvBlock", akanimax.GenGeneralConvBlock,
         _ak_block({"conv_1": "conv", "conv_2": "conv", "pixNorm": _PIX, "lrelu": nn.LeakyReLU},
                   {"in_channels", "out_channels", "use_eql"}),
         fuses="2x upsample + conv_1 as one 4x4 stride-2 transposed conv; bias + lrelu of "
               "conv_1 and conv_2"),
    Rule("akanimax", "DisGeneralConvBlock", akanimax.DisGeneralConvBlock,
         _ak_block({"conv_1": "conv", "conv_2": "conv", "downSampler": nn.AvgPool2d,
                    "lrelu": nn.LeakyReLU}, {"in_channels", "out_channels", "use_eql"}),
         fuses="bias + lrelu of conv_1 and conv_2 (the pool follows the lrelu: not fusable)"),
    Rule("akanimax", "DisFinalBlock", akanimax.DisFinalBlock,
         _ak_block({"conv_1": "conv", "conv_2": "conv", "conv_3": "conv",
                    "batch_discriminator": akanimax.MinibatchStdDev, "lrelu": nn.LeakyReLU},
                   {"in_channels", "out_channels", "use_eql"}),
         fuses="bias + lrelu of conv_1 and conv_2"),
]


# --- facebookresearch pytorch_GAN_zoo -----------------------------------------------------

def _zoo_layer(torch_cls: type):
    def why_not(m, planned):
        if _extra_attrs(m) not in ({"equalized", "weight"}, {"equalized"}):
            return f"its attributes are {sorted(_extra_attrs(m))}, not equalized and weight"
        names = [n for n, _ in m.named_children()]
        if names != ["module"] or not plain_module(m.module, torch_cls):
            return f"it does not wrap a plain {torch_cls.__name__} as `module`"
        if m.equalized not in (True, False):
            return f"equalized is {m.equalized!r}"
        if m.equalized and (isinstance(m.weight, bool) or not isinstance(m.weight, (int, float))
                            or not m.weight > 0):
            return f"its output scale `weight` is {m.weight!r}, not a positive number"
        if torch_cls is nn.Conv2d and (isinstance(m.module.padding, str)
                                       or m.module.padding_mode != "zeros"):
            return "its conv pads with a string padding or a non-zero padding_mode"
        return None
    return why_not


_ZOO_RULES = [
    Rule("gan_zoo", "EqualizedConv2d", gan_zoo.EqualizedConv2d, _zoo_layer(nn.Conv2d)),
    Rule("gan_zoo", "EqualizedLinear", gan_zoo.EqualizedLinear, _zoo_layer(nn.Linear)),
    Rule("gan_zoo", "NormalizationLayer", gan_zoo.NormalizationLayer,
         _stateless_norm(gan_zoo.NormalizationLayer)),
]


# --- rosinality progressive-gan-pytorch ---------------------------------------------------

def _equal_lr_hook(layer: nn.Module):
    """The (key, hook) of the port's EqualLR pre-hook on `layer`, or None."""
    hooks = list(layer._forward_pre_hooks.items())
    if len(hooks) == 1 and type(hooks[0][1]).__name__ == "EqualLR" and \
            getattr(hooks[0][1], "name", None) == "weight":
        return hooks[0]
    return None


def _ros_layer(child: str, torch_cls: type):
    def why_not(m, planned):
        if _extra_attrs(m):
            return f"it has attributes {sorted(_extra_attrs(m))}"
        names = [n for n, _ in m.named_children()]
        if names != [child]:
            return f"its children are {names}, not [{child!r}]"
        layer = getattr(m, child)
        if type(layer) is not torch_cls or layer._forward_hooks or "forward" in vars(layer):
            return f"{child} is not a plain {torch_cls.__name__}"
        if _equal_lr_hook(layer) is None:
            return f"{child} does not carry exactly one EqualLR pre-hook on `weight`"
        if list(layer._parameters) != ["bias", "weight_orig"] or layer.bias is None:
            return f"{child}'s parameters are {list(layer._parameters)}, not bias, weight_orig"
        if torch_cls is nn.Conv2d and (isinstance(layer.padding, str)
                                       or layer.padding_mode != "zeros"):
            return "its conv pads with a string padding or a non-zero padding_mode"
        return None
    return why_not


def _ros_unhook(child: str):
    def prepare(m):
        layer = getattr(m, child)
        found = _equal_lr_hook(layer)
        if found is not None:  # None: another converted layer holding this child removed it
            del layer._forward_pre_hooks[found[0]]
        layer.__dict__.pop("weight", None)  # the hook's last product, with its graph
    return prepare


_ROS_RULES = [
    Rule("rosinality", "EqualConv2d", rosinality.EqualConv2d, _ros_layer("conv", nn.Conv2d),
         _ros_unhook("conv"), changes_child="conv"),
    Rule("rosinality", "EqualLinear", rosinality.EqualLinear, _ros_layer("linear", nn.Linear),
         _ros_unhook("linear"), changes_child="linear"),
    Rule("rosinality", "PixelNorm", rosinality.PixelNorm, _stateless_norm(rosinality.PixelNorm)),
    Rule("rosinality", "SpectralNormConv2d", nn.Module,
         lambda m, p: "the port's own spectral norm (v first, u kept as a plain attribute) has "
                      "no fastgan counterpart"),
]

RULES: list[Rule] = _AK_RULES + _ZOO_RULES + _ROS_RULES


def rules_for(m: nn.Module) -> tuple[type, list[Rule]] | None:
    """The table's candidates for m.

    Args:
        m: the module.

    Returns:
        (the first class in m's MRO whose name the table knows, its rules), or None. Classes
        defined by fastgan or torch are never foreign.
    """
    for cls in type(m).__mro__:
        if cls.__module__.startswith(("fastgan.", "torch.")) or cls is object:
            continue
        rules = [r for r in RULES if r.class_name == cls.__name__]
        if rules:
            return cls, rules
    return None


def is_compat(m: nn.Module) -> bool:
    """Whether m is already a compat layer (a second convert leaves it as it is).

    Args:
        m: the module.

    Returns:
        True for an instance of a fastgan.compat class.
    """
    return type(m).__module__.startswith("fastgan.compat.")

