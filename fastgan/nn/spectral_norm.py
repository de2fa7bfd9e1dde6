"""Spectral normalization as torch's parametrization, with fastgan's power-iteration kernels.

W_SN = W / sigma(W), sigma = u^T W_mat v estimated by power iteration (fastgan.ops.spectral_norm
has the math). `spectral_norm(module)` registers `SpectralNorm` exactly where and how
`torch.nn.utils.parametrizations.spectral_norm` registers its `_SpectralNorm`: same module
structure, same state_dict keys (`parametrizations.weight.original`, `...weight.0._u`,
`...weight.0._v`), same initialization (same random draws, 15 warm-up iterations), same update
(in place, once per access of the weight in training mode), same sigma and gradients.

Per layer, a training forward runs that layer's iterations as one multi-tensor launch group (the
"triton"/"cuda" backends) or torch's own ops ("ref", CPU tensors under "auto": bitwise torch).
`fuse_spectral_norm(model)` adds the model-level path: a forward pre-hook on `model` runs the
iterations of every spectrally normalized layer inside it in one launch group per weight dtype
(2n + 1 launches in all), writes every u, v, and hands each layer its sigma for that call. A
layer that the forward does not use is put back as it was (torch would not have advanced it),
and a layer used a second time within one call runs the per-layer path again: both exactly
torch's semantics. Eval mode never advances u, v.
"""

from __future__ import annotations

import contextlib
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import _backend
from ..ops import _common as C_
from ..ops import spectral_norm as SN

__all__ = ["SpectralNorm", "spectral_norm", "remove_spectral_norm", "load_legacy_spectral_norm",
           "fuse_spectral_norm", "SNConv2d", "SNLinear", "SNEmbedding"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _no_autocast(device_type: str):
    """Autocast off for `device_type`; nothing to turn off where it has no autocast (meta
    tensors of a deferred initialization: torch.autocast refuses that device type)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class SpectralNorm(nn.Module):
    """The parametrization W -> W / sigma(W) (1-D weights: W / max(||W||, eps)), as torch's
    `_SpectralNorm`. Buffers `_u` [H], `_v` [K] (W_mat = W with `dim` first, flattened [H, K])."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
            raise ValueError(f"dim must be an int in [{-ndim}, {ndim - 1}] for a weight of "
                             f"shape {tuple(weight.shape)}, got {dim!r}")
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) \
                or n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be an int >= 1, got {n_power_iterations!r}")
        C_.check_eps(eps)
        self.dim = dim % ndim
        self.eps = eps
        self._pending = None  # (u, v, sigma, old u, old v) from the model-level launch
        if ndim > 1:
            self.n_power_iterations = n_power_iterations
            w_mat = SN.weight_to_matrix(weight, self.dim)
            h, w = w_mat.shape
            u = w_mat.new_empty(h).normal_(0, 1)
            v = w_mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            self._power_method_ref(w_mat, 15)

    @torch.no_grad()
    def _power_method_ref(self, w_mat: torch.Tensor, n: int) -> None:
        """torch's `_power_method`: u, v updated in place (DataParallel replicas rely on it);
        half weights iterate in fp32, outside autocast."""
        acc = C_.acc_torch_dtype(w_mat.dtype)
        with _no_autocast(w_mat.device.type):
            if acc != w_mat.dtype:
                w_mat, u, v = w_mat.to(acc), self._u.to(acc), self._v.to(acc)
                for _ in range(n):
                    u = F.normalize(torch.mv(w_mat, v), dim=0, eps=self.eps)
                    v = F.normalize(torch.mv(w_mat.H, u), dim=0, eps=self.eps)
                self._u.copy_(u)
                self._v.copy_(v)
                return
            for _ in range(n):
                self._u = F.normalize(torch.mv(w_mat, self._v), dim=0, eps=self.eps, out=self._u)
                self._v = F.normalize(torch.mv(w_mat.H, self._u), dim=0, eps=self.eps,
                                      out=self._v)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """The differentiable sigma of `weight` (>= 2-D), advancing u, v first in training mode.

        Args: weight: the unnormalized weight (the parametrization's `original`).
        Returns: a 0-d tensor, fp32 for half weights, whose gradient is torch's."""
        pending = self._pending
        if pending is not None and self.training:
            self.__dict__["_pending"] = None  # nn.Module.__setattr__ costs ~5 us a call
            u, v, sigma = pending[:3]
            return SN.sigma_with_grad(weight, u, v, sigma, self.dim)
        backend = _backend.resolve(weight, "spectral_norm")
        if self.training and backend != "ref":
            with torch.no_grad():
                (u,), (v,), (sigma,) = SN.power_iteration_unchecked(
                    [weight], [self._v], [self.dim], self.n_power_iterations, self.eps, backend)
                torch._foreach_copy_([self._u, self._v], [u, v])
            return SN.sigma_with_grad(weight, u, v, sigma, self.dim)
        w_mat = SN.weight_to_matrix(weight, self.dim)
        if self.training:
            self._power_method_ref(w_mat.detach(), self.n_power_iterations)
        # cloned: a later forward updates the buffers in place, this one's backward needs these
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        acc = C_.acc_torch_dtype(weight.dtype)
        with _no_autocast(weight.device.type):  # sigma in fp32 under autocast
            return torch.vdot(u.to(acc), torch.mv(w_mat.to(acc), v.to(acc)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        return weight / self.sigma(weight)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def _sole_spectral_norm(module: nn.Module, name: str) -> SpectralNorm | None:
    """The SpectralNorm parametrizing `module.<name>` when it is the only parametrization there."""
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    return plist[0] if len(plist) == 1 and isinstance(plist[0], SpectralNorm) else None


def stored_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor stored for `module.<name>`: its parametrization's `original` when it has one
    (reading `module.<name>` would run the parametrization: a spectral norm would advance).

    Args: module: the layer; name: the parameter's name.
    Returns: the stored parameter."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def scaled_weight(module: nn.Module, scale: float, name: str = "weight") -> torch.Tensor:
    """`module.<name> * scale`; with spectral norm on it, `original * (scale / sigma)`: the
    1/sigma folds into the scale, one pass over the weight instead of two.

    Args: module: the layer; scale: a Python float; name: the parameter's name.
    Returns: the scaled (and spectrally normalized) weight."""
    sn = _sole_spectral_norm(module, name)
    if sn is None or parametrize._cache_enabled:
        # inside parametrize.cached(): the cached W / sigma, computed (and u, v advanced) once
        return getattr(module, name) * scale
    original = module.parametrizations[name].original
    if original.ndim == 1:
        return sn(original) * scale
    return original * (scale / sn.sigma(original))


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1,
                  eps: float = 1e-12, dim: int | None = None) -> nn.Module:
    """Register spectral normalization on `module.<name>`, as
    torch.nn.utils.parametrizations.spectral_norm does (a drop-in: same structure, keys, numbers).

    Args: module: the layer; name: its parameter; n_power_iterations: per training access (>= 1);
        eps: the normalization floor; dim: the output dim (default 0; 1 for ConvTranspose*d).
    Returns: `module`."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if parametrize.is_parametrized(module, name):
        if any(isinstance(p, SpectralNorm) for p in module.parametrizations[name]):
            raise ValueError(f"spectral_norm is already registered on {name!r} of "
                             f"{type(module).__name__}")
        weight = getattr(module, name)
    else:
        weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no parameter or buffer named {name!r}")
    if any(getattr(h, "name", None) == name and type(h).__name__ == "SpectralNorm"
           for h in module._forward_pre_hooks.values()):
        raise ValueError(f"{name!r} of {type(module).__name__} already has the legacy "
                         "torch.nn.utils.spectral_norm hook; remove it first")
    if weight.ndim == 0:
        raise ValueError(f"spectral_norm needs a weight with at least 1 dim, {name!r} is 0-d")
    if weight.numel() == 0:
        raise ValueError(f"spectral_norm needs a non-empty weight, {name!r} has shape "
                         f"{tuple(weight.shape)}")
    if dim is None:
        dim = 1 if isinstance(module, _TRANSPOSED) else 0
    parametrize.register_parametrization(module, name,
                                         SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


def remove_spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Replace the parametrized `module.<name>` by a plain parameter holding W / sigma (one more
    power iteration in training mode, as torch's `remove_parametrizations`).

    Args: module: the layer; name: the parametrized parameter.
    Returns: `module`."""
    if not parametrize.is_parametrized(module, name) or not any(
            isinstance(p, SpectralNorm) for p in module.parametrizations[name]):
        raise ValueError(f"{type(module).__name__} has no spectral_norm on {name!r}")
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return module


def load_legacy_spectral_norm(module: nn.Module, state_dict: dict, strict: bool = True):
    """Load a state dict saved with the legacy `torch.nn.utils.spectral_norm` (keys
    `<name>_orig`, `<name>_u`, `<name>_v`) into `module`, whose layers carry fastgan's (or
    torch's) parametrization. u, v are taken as they are: the legacy update ends with
    u = normalize(W v), which is where the parametrization's next update starts, so eval-mode
    outputs are the legacy module's exactly.

    Args: module: the model with spectral_norm registered; state_dict: the legacy one; strict:
        as `load_state_dict`.
    Returns: `load_state_dict`'s (missing_keys, unexpected_keys)."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    converted = dict(state_dict)
    for prefix, sub in module.named_modules():
        if not parametrize.is_parametrized(sub):
            continue
        for name in sub.parametrizations:
            base = f"{prefix}.{name}" if prefix else name
            new = f"{prefix}.parametrizations.{name}" if prefix else f"parametrizations.{name}"
            if f"{base}_orig" not in converted:
                continue
            if f"{base}_v" not in converted or f"{base}_u" not in converted:
                raise ValueError(f"state_dict has {base}_orig but not {base}_u and {base}_v "
                                 "(a pre-1.0 legacy format this loader does not convert)")
            converted[f"{new}.original"] = converted.pop(f"{base}_orig")
            converted[f"{new}.0._u"] = converted.pop(f"{base}_u")
            converted[f"{new}.0._v"] = converted.pop(f"{base}_v")
            converted.pop(base, None)  # very old legacy dicts also stored W / sigma
    return module.load_state_dict(converted, strict=strict)


# ---------------------------------------------------------------------------------------------
# The model-level path.

_CALL_IMPL = getattr(getattr(nn.Module, "_call_impl", None), "__code__", None)


def _enclosing_call_running(model: nn.Module) -> bool:
    """Whether a call of `model` encloses the one whose pre-hook runs now: a second
    `nn.Module._call_impl` frame of `model` on this thread's stack (walked only when the hook
    still counts a call in progress: rare). True where torch has no such frame to look for."""
    if _CALL_IMPL is None:
        return True
    frame, found = sys._getframe(1), 0
    while frame is not None:
        if frame.f_code is _CALL_IMPL and frame.f_locals.get("self") is model:
            found += 1
            if found == 2:
                return True
        frame = frame.f_back
    return False


class _FusedPowerIteration:
    """Forward pre-hook + always-called forward hook of the model (see the module docstring)."""

    def __init__(self, root: nn.Module) -> None:
        # per model object (DataParallel's replicas share this hook and run in threads): the
        # depth of nested calls and the layers the outermost call advanced, both dropped when
        # the call ends; the layers found, kept for the hooked model only (replicas are new
        # objects at every call)
        self._depth: dict[int, int] = {}
        self._active: dict[int, list[SpectralNorm]] = {}
        self._root = weakref.ref(root)
        self._found: list | None = None

    def _layers(self, model: nn.Module):
        """(SpectralNorm, original weight) of every >= 2-D sole SN parametrization in training
        mode. The model is scanned on its first call only (a scan costs more than the launch);
        each call re-checks that those registrations stand. A layer added later is not found
        and runs the per-layer path: slower, never wrong."""
        root = model is self._root()
        found = self._found if root else None
        if found is None:
            found = [(sub, name, plist, plist[0]) for sub in model.modules()
                     if parametrize.is_parametrized(sub)
                     for name, plist in sub.parametrizations.items()
                     if _sole_spectral_norm(sub, name) is not None and plist.original.ndim > 1]
            if root:
                self._found = found
        layers = []
        for sub, name, plist, sn in found:  # plain dict look-ups: this runs every call
            plists = sub._modules.get("parametrizations")
            # a pending result: an enclosing fused model advanced this layer for this call
            if (sn.training and sn._pending is None and plists is not None
                    and plists._modules.get(name) is plist
                    and len(plist._modules) == 1 and plist._modules["0"] is sn):
                layers.append((sn, plist.original))
        return layers

    def pre(self, model: nn.Module, args) -> None:
        if torch.compiler.is_compiling():  # traced: the per-layer path (see the README)
            return
        depth = self._depth.get(id(model), 0)
        if depth and not _enclosing_call_running(model):
            # an earlier call ended without the forward hook (a BaseException such as
            # KeyboardInterrupt: torch runs always_call hooks on Exception only): end it now
            self._depth[id(model)] = 1
            self.post(model, args, None)
            depth = 0
        depth = self._depth[id(model)] = depth + 1
        if depth > 1:  # a call nested in the outermost one
            return
        active = self._active[id(model)] = []
        groups: dict = {}
        for sn, weight in self._layers(model):
            key = (weight.device, weight.dtype, sn.n_power_iterations, sn.eps)
            groups.setdefault(key, []).append((sn, weight))
        for (_, _, n, eps), layers in groups.items():
            backend = _backend.resolve(layers[0][1], "spectral_norm")
            if backend == "ref":
                continue  # CPU: the per-layer path is torch's own ops
            sns = [sn for sn, _ in layers]
            buffers = [sn._u for sn in sns] + [sn._v for sn in sns]
            with torch.no_grad():
                us, vs, sigmas = SN.power_iteration_unchecked(
                    [w for _, w in layers], buffers[len(sns):], [sn.dim for sn in sns], n, eps,
                    backend)
                old = torch.cat(buffers).split([b.numel() for b in buffers])  # for unused layers
                torch._foreach_copy_(buffers, us + vs)
            old_u, old_v = old[:len(sns)], old[len(sns):]
            for sn, u, v, s, ou, ov in zip(sns, us, vs, sigmas, old_u, old_v):
                sn.__dict__["_pending"] = (u, v, s, ou, ov)
            active.extend(sns)

    def post(self, model: nn.Module, args, output) -> None:
        if torch.compiler.is_compiling():
            return
        depth = self._depth.pop(id(model), 1) - 1
        if depth > 0:
            self._depth[id(model)] = depth
            return
        active = self._active.pop(id(model), None)
        if not active:
            return
        unused = [sn for sn in active if sn._pending is not None]
        if unused:  # torch would not have advanced a layer the forward did not use
            with torch.no_grad():
                torch._foreach_copy_([sn._u for sn in unused] + [sn._v for sn in unused],
                                     [sn._pending[3] for sn in unused]
                                     + [sn._pending[4] for sn in unused])
            for sn in unused:
                sn.__dict__["_pending"] = None


_FUSED: weakref.WeakSet = weakref.WeakSet()  # models with the hook


class FusedSpectralNormHandle:
    """Returned by `fuse_spectral_norm`; `remove()` restores the per-layer path."""

    def __init__(self, model: nn.Module, handles) -> None:
        self._model = weakref.ref(model)
        self._handles = handles

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        model = self._model()
        if model is not None:
            _FUSED.discard(model)


def fuse_spectral_norm(model: nn.Module) -> FusedSpectralNormHandle:
    """Run the power iterations of all spectrally normalized layers of `model` as one launch
    group at the start of each call of `model` (training mode, triton/cuda backends); results
    equal the per-layer path's.

    Args: model: the module whose forward is one "step" of its layers (e.g. a discriminator);
        a DistributedDataParallel / DataParallel wrapper hooks its `.module`, so that the hook
        runs after the wrapper has broadcast rank 0's buffers.
    Returns: a handle whose `remove()` undoes this."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # after the wrapper has broadcast the buffers
    if model in _FUSED:
        raise ValueError(f"fuse_spectral_norm is already active on this {type(model).__name__}")
    hook = _FusedPowerIteration(model)
    _FUSED.add(model)
    return FusedSpectralNormHandle(model, [
        model.register_forward_pre_hook(hook.pre),
        model.register_forward_hook(hook.post, always_call=True),
    ])


# ---------------------------------------------------------------------------------------------
# Layers.

class _WithSpectralNorm:
    """What the SN layers share, before their torch layer in the bases: the layer is built from
    the arguments without n_power_iterations and eps, then spectral_norm(layer, those two)."""

    def __init__(self, *args, **kwargs) -> None:
        sn = {k: kwargs.pop(k) for k in ("n_power_iterations", "eps") if k in kwargs}
        super().__init__(*args, **kwargs)
        spectral_norm(self, **sn)


class SNConv2d(_WithSpectralNorm, nn.Conv2d):
    """nn.Conv2d(*args, **kwargs) with spectral_norm on its weight; extra keyword arguments
    n_power_iterations (1) and eps (1e-12)."""


class SNLinear(_WithSpectralNorm, nn.Linear):
    """nn.Linear(*args, **kwargs) with spectral_norm on its weight; extra keyword arguments
    n_power_iterations (1) and eps (1e-12)."""


class SNEmbedding(_WithSpectralNorm, nn.Embedding):
    """nn.Embedding(*args, **kwargs) with spectral_norm on its weight; extra keyword arguments
    n_power_iterations (1) and eps (1e-12)."""
