"""The second part of `fastgan.convert`'s table: what it recognizes *on* a layer of any class,
one SiteRule per kind, keyed by the layer's tensor name. Today: spectral norm.

- torch's `torch.nn.utils.parametrizations.spectral_norm` (a `_SpectralNorm` alone in
  `parametrizations.<name>`) becomes fastgan's (`fastgan.nn.utils.spectral_norm`: the same
  structure, keys and numbers, on fastgan's power-iteration kernels). fastgan's parametrization,
  with the same options, takes the place of torch's in `parametrizations.<name>` and gets its u
  and v; `original` stays the same Parameter, so the optimizer, the keys and the next update are
  the user's (fastgan's own initial draws run on a forked RNG: the user's random stream is left
  as it was).
- the legacy `torch.nn.utils.spectral_norm` hook is recognized and left alone: it updates v
  before u (the parametrization updates u first), so a training step after conversion would not
  give the same sigma, and its keys (`weight_orig`, `weight_u`, `weight_v`) are not the
  parametrization's. The report says how to move such a model by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SiteRule", "SITE_RULES"]


@dataclasses.dataclass(frozen=True)
class SiteRule:
    """One recognized parametrization or hook on a layer's tensor.

    Attributes:
        kind: what it is, for the report.
        target: what it becomes, for the report.
        sites: module -> the names of its tensors that carry it.
        why_not: (module, name) -> None if it can be converted, else the reason.
        apply: (module, name) -> None: convert it.
    """

    kind: str
    target: str
    sites: Callable[[nn.Module], list[str]]
    why_not: Callable[[nn.Module, str], str | None]
    apply: Callable[[nn.Module, str], None]


def _is_torch_sn(p: nn.Module) -> bool:
    cls = type(p)
    return cls.__name__ == "_SpectralNorm" and cls.__module__ == "torch.nn.utils.parametrizations"


def _torch_sn_sites(m: nn.Module) -> list[str]:
    if not parametrize.is_parametrized(m):
        return []
    return [name for name, plist in m.parametrizations.items()
            if any(_is_torch_sn(p) for p in plist)]


def _fastgan_spectral_norm():
    """fastgan.nn.utils.spectral_norm, or None where this fastgan has none."""
    try:
        from ..nn.utils import spectral_norm
    except ImportError:
        return None
    return spectral_norm


def _torch_sn_why_not(m: nn.Module, name: str) -> str | None:
    plist = m.parametrizations[name]
    if len(plist) != 1:
        return (f"parametrizations.{name} chains {len(plist)} parametrizations; only a spectral "
                "norm alone is converted")
    if plist[0]._forward_hooks or plist[0]._forward_pre_hooks:
        return f"the spectral norm on {name!r} has hooks registered"
    if _fastgan_spectral_norm() is None:
        return "this fastgan has no fastgan.nn.utils.spectral_norm"
    return None


def _torch_sn_apply(m: nn.Module, name: str) -> None:
    plist = m.parametrizations[name]
    old = plist[0]
    original = plist.original
    # fastgan's parametrization is built on a stand-in holding a copy of the weight and put in
    # old's slot: the Parameter and the module's (possibly shared, after deepcopy) parametrized
    # class stay as they are; remove_parametrizations would delete the class's property
    holder = nn.Module()
    holder.register_parameter(name, nn.Parameter(original.detach().clone()))
    devices = [original.device] if original.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        _fastgan_spectral_norm()(holder, name, getattr(old, "n_power_iterations", 1), old.eps,
                                 old.dim)
    new = holder.parametrizations[name][0]
    with torch.no_grad():
        for k, b in new.named_buffers():
            b.copy_(getattr(old, k))
    new.train(old.training)
    plist[0] = new


def _legacy_sn_sites(m: nn.Module) -> list[str]:
    return [h.name for h in m._forward_pre_hooks.values()
            if type(h).__name__ == "SpectralNorm"
            and type(h).__module__ == "torch.nn.utils.spectral_norm"]


def _legacy_sn_why_not(m: nn.Module, name: str) -> str:
    return ("the legacy torch.nn.utils.spectral_norm hook updates v before u and keys its state "
            f"{name}_orig/_u/_v; converting it would change a training step's numbers and the "
            "checkpoint keys. To move to fastgan: remove it, register "
            "fastgan.nn.utils.spectral_norm, and load old checkpoints with "
            "fastgan.nn.utils.load_legacy_spectral_norm")


SITE_RULES: list[SiteRule] = [
    SiteRule("torch.nn.utils.parametrizations.spectral_norm", "fastgan.nn.utils.spectral_norm",
             _torch_sn_sites, _torch_sn_why_not, _torch_sn_apply),
    SiteRule("torch.nn.utils.spectral_norm (legacy hook)", "", _legacy_sn_sites,
             _legacy_sn_why_not, lambda m, name: None),
]
