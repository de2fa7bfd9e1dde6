"""Gradient penalties for GAN discriminators: WGAN-GP, R1/R2, drift, and lazy regularization.

    import fastgan.penalties as P
    gp = P.gradient_penalty(D, real, fake)            # WGAN-GP, ProGAN's target form
    r1 = P.r1_penalty(D, real, gamma=10.0)            # R1 (R2: pass fakes)
    drift = P.drift_penalty(real_scores)              # ProGAN's eps_drift * D(x)^2
    loss_d = fake_scores.mean() - real_scores.mean() + gp + drift

`discriminator` is any callable taking the image batch (wrap extra arguments with a lambda) and
returning scores [N], [N, 1] or [N, k]: the penalty differentiates their sum. The per-sample
norm and penalty run in one fused op (`fastgan.ops.grad_penalty`, backend chosen by
`fastgan.use_backend` / "auto"), accumulated in fp32 whatever the dtype (autocast included).

torch.compile. torch.compile refuses double backward (fp32: "does not currently support double
backward" at loss.backward()), and under autocast it can hand back an input gradient with no
graph, so that the penalty silently stops training D (docs/baselines.md). So the penalty pass never
runs compiled code: a compiled module (`torch._dynamo.eval_frame.OptimizedModule`) is replaced by
its eager `_orig_mod` (also inside DistributedDataParallel, through bound methods and
functools.partial), a function from `torch.compile(fn)` by the function it wraps, and the whole
pass runs under `torch.compiler.set_stance("force_eager")`, which reaches compiled code called
from inside a lambda. The plain D(real) / D(fake) passes, which you call yourself, stay compiled.

What is detected, and what is not. Whatever the discriminator, `input_gradient` raises
RuntimeError when the penalty would have lost its graph:
  * when D's output does not require grad (D ran under torch.no_grad, or detached everything),
  * when the output does not depend on the input (D detaches its input),
  * when the gradient comes back without a graph (`g.grad_fn is None`) while D has trainable
    parameters, i.e. the penalty could not train them. "D has trainable parameters" is decided
    from what is detectable: (1) the autograd graph of D's output: any leaf tensor other than
    the input that requires grad (this sees every callable: module, bound method, lambda, compiled
    or not); (2) the callable itself: an nn.Module's parameters; the module behind a bound method
    or functools.partial; the modules and tensors a function or lambda closes over or names as
    globals (one level deep: containers of them, e.g. a list of modules, count too); the
    attributes of any other callable object. A discriminator affine in its input with
    input-independent parameters (D(x) = <w, x> + b, b trainable, w constant) has a genuinely
    constant gradient and raises too: its penalty cannot train anything.
Not detected, because detecting them would cost a host sync on every call: a discriminator
that produces NaN or inf gives a NaN/inf penalty (check `torch.isfinite(loss)` yourself where a
sync is acceptable, e.g. every few hundred steps), and a discriminator whose input gradient is
genuinely zero while the graph is intact (e.g. a ReLU critic with every unit inactive) gives
the constant penalty weight * (0 - target)^2 / target^2 = `weight` for WGAN-GP and 0 for R1,
whose gradient w.r.t. D's parameters is zero.

DistributedDataParallel. Call the penalty with the DDP module: the penalty pass runs the wrapped
module directly when it is compiled (DDP(torch.compile(D))), else through DDP. Parameter
gradients are still all-reduced, since DDP's hooks fire on backward, not on forward. If DDP
complains about parameters that did not receive a gradient or were marked ready twice (e.g. the
penalty runs only every k steps with `find_unused_parameters=False` / `static_graph=True`), add
the scores of that pass with weight 0 so that every parameter takes part in every backward:
`loss = loss + 0 * scores.sum()` (StyleGAN2-ADA does this); `r1_penalty(..., return_scores=True)`
and `input_gradient` hand those scores back.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import numbers

import torch
from torch import nn

from . import _checks
from .ops import _common as C_
from .ops.grad_penalty import grad_penalty as _fused_penalty

__all__ = [
    "gradient_penalty", "r1_penalty", "r2_penalty", "drift_penalty", "input_gradient",
    "eager_discriminator", "LazyRegularizer", "lazy_adam_hyperparameters",
    "adjust_adam_for_lazy_regularization",
]

REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------------------------------------
# Discriminators: eager version, trainable parameters

def _is_compiled_module(obj) -> bool:
    return isinstance(obj, torch._dynamo.eval_frame.OptimizedModule)


def eager_discriminator(discriminator):
    """The eager callable behind `discriminator`.

    Args:
        discriminator: any callable; a compiled module (also inside DistributedDataParallel or
            DataParallel, behind a bound method or a functools.partial) or `torch.compile(fn)`.

    Returns:
        The compiled module's `_orig_mod` (in the same wrapping) or the function `torch.compile`
        wrapped; anything else as is.
    """
    d = discriminator
    for _ in range(16):  # wrappers nest, but not forever
        if _is_compiled_module(d):
            d = d._orig_mod
        elif isinstance(d, (nn.parallel.DistributedDataParallel, nn.DataParallel)) and \
                _is_compiled_module(d.module):
            d = d.module._orig_mod
        elif inspect.ismethod(d) and isinstance(d.__self__, nn.Module) and \
                _is_compiled_module(d.__self__):
            d = getattr(d.__self__._orig_mod, d.__func__.__name__)
        elif isinstance(d, functools.partial):
            inner = eager_discriminator(d.func)
            if inner is d.func:
                return d
            return functools.partial(inner, *d.args, **d.keywords)
        elif callable(getattr(d, "_torchdynamo_orig_callable", None)):
            d = d._torchdynamo_orig_callable
        else:
            return d
    return d


def _force_eager():
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        return contextlib.nullcontext()
    return set_stance("force_eager")


def _trainable_in(obj, depth: int = 0) -> bool:
    """Whether `obj` (a module, tensor, callable or container) holds a tensor requiring grad."""
    if isinstance(obj, torch.Tensor):
        return obj.requires_grad
    if isinstance(obj, nn.Module):
        return any(p.requires_grad for p in obj.parameters())
    if depth >= 2:
        return False
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_trainable_in(o, depth + 1) for o in obj)
    if isinstance(obj, dict):
        return any(_trainable_in(o, depth + 1) for o in obj.values())
    if inspect.ismethod(obj):
        return _trainable_in(obj.__self__, depth + 1)
    if isinstance(obj, functools.partial):
        return (_trainable_in(obj.func, depth + 1) or _trainable_in(obj.args, depth + 1)
                or _trainable_in(obj.keywords, depth + 1))
    if inspect.isfunction(obj):
        try:
            cv = inspect.getclosurevars(obj)
        except (TypeError, ValueError):
            return False
        return any(_trainable_in(v, depth + 1)
                   for v in (*cv.nonlocals.values(), *cv.globals.values())
                   if not inspect.ismodule(v))
    if callable(obj) and hasattr(obj, "__dict__") and not inspect.isclass(obj) \
            and not inspect.isbuiltin(obj):
        return any(_trainable_in(v, depth + 1) for v in vars(obj).values())
    return False


def _graph_has_trainable_leaf(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the autograd graph of `out` reaches a leaf requiring grad other than `x`."""
    root = out.grad_fn
    seen, stack = set(), [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)  # AccumulateGrad
        if var is not None and var is not x and var.requires_grad:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


# ---------------------------------------------------------------------------------------------
# Input gradient

def _check_images(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a batch [N, ...] with N >= 1, got shape {tuple(t.shape)}")


def _check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(p: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return p.mean()
    if reduction == "sum":
        return p.sum()
    return p


@torch.compiler.disable
def input_gradient(discriminator, x: torch.Tensor, *, return_scores: bool = False):
    """g = d sum(D(x)) / d x with create_graph=True, computed on the eager discriminator (see the
    module docstring), checked to carry a graph whenever D has trainable parameters.

    Args:
        discriminator: a callable taking x and returning scores [N], [N, 1] or [N, k].
        x: the images [N, ...], a floating-point tensor that requires grad (a leaf made with
            `.detach().requires_grad_()`), any layout.
        return_scores: also return D(x).

    Returns:
        g, shaped, typed and laid out as autograd returns it (like x), differentiable w.r.t. D's
        parameters; with return_scores, (g, scores).

    Raises:
        RuntimeError: the gradient would carry no graph while D has trainable parameters (see
            the module docstring for what is and is not detected).
    """
    _checks.function(discriminator, "discriminator")
    _check_images(x, "x")
    if not x.requires_grad:
        raise ValueError("x must require grad (x.detach().requires_grad_())")
    fn = eager_discriminator(discriminator)
    with torch.enable_grad(), _force_eager():
        out = fn(x)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise TypeError(f"discriminator must return a floating-point tensor of scores, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    n = x.shape[0]
    if out.dim() < 1 or out.shape[0] != n:
        raise ValueError(f"discriminator output must have the batch dim first ([N], [N, 1] or "
                         f"[N, k] with N = {n}), got shape {tuple(out.shape)}")
    if not out.requires_grad:
        raise RuntimeError(
            "gradient penalty: the discriminator's output does not require grad, so the penalty "
            "would be a constant. Does the discriminator run under torch.no_grad() / "
            "torch.inference_mode(), or detach its input and use no trainable parameters?")
    (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out), create_graph=True,
                               allow_unused=True)
    if g is None:
        raise RuntimeError(
            "gradient penalty: the discriminator's output does not depend on its input (does it "
            "detach its input, e.g. x.detach() or x.data?), so the penalty would be a constant.")
    if g.grad_fn is None and (_graph_has_trainable_leaf(out, x)
                              or _trainable_in(discriminator) or _trainable_in(fn)):
        raise RuntimeError(
            "gradient penalty: the gradient of the discriminator w.r.t. its input came back "
            "without a graph (g.grad_fn is None) although the discriminator has trainable "
            "parameters, so the penalty would be a constant that trains nothing. Known causes: "
            "a torch.compile'd discriminator fastgan could not unwrap (under autocast compile "
            "drops this graph; pass the compiled module itself, or its eager `_orig_mod`), or "
            "a custom "
            "autograd.Function whose backward is not differentiable (once_differentiable, "
            "no_grad in backward). A discriminator affine in its input with input-independent "
            "parameters also lands here: its penalty is constant in them.")
    return (g, out) if return_scores else g


# ---------------------------------------------------------------------------------------------
# Penalties

def _epsilon(epsilon, n: int, like: torch.Tensor, generator) -> torch.Tensor:
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if epsilon is None:
        return torch.rand(n, device=like.device, dtype=dtype, generator=generator)
    if isinstance(epsilon, numbers.Real) and not isinstance(epsilon, bool):
        epsilon = C_.check_number(epsilon, "epsilon", low=0.0, high=1.0)
        return torch.full((n,), epsilon, device=like.device, dtype=dtype)
    if not isinstance(epsilon, torch.Tensor):
        raise TypeError(f"epsilon must be None, a float or an [N] tensor, got "
                        f"{type(epsilon).__name__}")
    if epsilon.numel() != n or (epsilon.dim() > 1 and epsilon.shape[0] != n):
        raise ValueError(f"epsilon must have one value per sample ([N] = [{n}]), got shape "
                         f"{tuple(epsilon.shape)}")
    return epsilon.detach().reshape(n).to(device=like.device, dtype=dtype)


@torch.compiler.disable
def gradient_penalty(discriminator, real: torch.Tensor, fake: torch.Tensor, *,
                     weight: float = 10.0, target: float = 1.0, reduction: str = "mean",
                     epsilon=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017) in ProGAN's form: x_hat = eps*real + (1-eps)*fake,
    g = d sum(D(x_hat)) / d x_hat, and per sample weight * (||g||_2 - target)^2 / target^2.

    Args:
        discriminator: a callable taking images and returning scores [N], [N, 1] or [N, k]
            (a module, compiled or not, DDP, a lambda); the penalty pass runs it eagerly.
        real, fake: images [N, ...] of one shape, dtype and device, any float dtype and layout
            (NCHW or channels_last); both are detached.
        weight: lambda, >= 0 (WGAN-GP and ProGAN: 10).
        target: the gradient norm aimed at, > 0.
        reduction: "mean" | "sum" over the batch, or "none" for the [N] per-sample penalties.
        epsilon: None (eps ~ U[0, 1) per sample), a number in [0, 1] for every sample, or an
            [N] tensor (values not checked: that would cost a host sync).
        generator: a torch.Generator for the draw of eps, or None.

    Returns:
        0-d tensor (or [N] for "none"), fp32 (fp64 for fp64 images), differentiable w.r.t. D's
        parameters.

    Raises:
        RuntimeError: the input gradient came back without a graph while D has trainable
            parameters. A NaN-producing D gives a NaN penalty, and a D whose input gradient is
            exactly zero gives the constant `weight`: neither is detected (module docstring).
    """
    _checks.function(discriminator, "discriminator")
    _check_images(real, "real")
    _check_images(fake, "fake")
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if real.device != fake.device:
        raise ValueError(f"real and fake must be on one device, got {real.device} and "
                         f"{fake.device}")
    if real.dtype != fake.dtype:
        raise TypeError(f"real and fake must have the same dtype, got {real.dtype} and "
                        f"{fake.dtype}")
    _check_reduction(reduction)
    weight = C_.check_number(weight, "weight", low=0.0)
    target = C_.check_number(target, "target", low=0.0, low_open=True)
    n = real.shape[0]
    real, fake = real.detach(), fake.detach()
    eps = _epsilon(epsilon, n, real, generator).to(real.dtype).view(n, *([1] * (real.dim() - 1)))
    # eps*real + (1-eps)*fake as one elementwise kernel (torch.lerp: fake + eps*(real - fake)).
    x_hat = torch.lerp(fake, real, eps).requires_grad_(True)
    with torch.enable_grad():
        g = input_gradient(discriminator, x_hat)
        return _reduce(_fused_penalty(g, weight, target, "gp"), reduction)


@torch.compiler.disable
def r1_penalty(discriminator, real: torch.Tensor, *, gamma: float = 10.0,
               reduction: str = "mean", return_scores: bool = False):
    """R1 (Mescheder et al. 2018): per sample gamma/2 * ||d sum(D(real)) / d real||^2.

    Args:
        discriminator: a callable taking images and returning scores [N], [N, 1] or [N, k].
        real: images [N, ...], any float dtype and layout (detached); pass fakes for R2.
        gamma: >= 0 (StyleGAN on FFHQ: 10).
        reduction: "mean" | "sum" over the batch, or "none" for the [N] per-sample penalties.
        return_scores: also return D(real) from the same pass (differentiable), e.g. to reuse
            it for the loss or for DDP's `0 * scores` trick.

    Returns:
        0-d tensor (or [N] for "none"), fp32 (fp64 for fp64 images), differentiable w.r.t. D's
        parameters; with return_scores, (penalty, scores).

    Raises:
        RuntimeError: the input gradient came back without a graph while D has trainable
            parameters. A NaN-producing D gives a NaN penalty, and a D whose input gradient is
            exactly zero gives 0: neither is detected (module docstring).
    """
    _checks.function(discriminator, "discriminator")
    _check_images(real, "real")
    _check_reduction(reduction)
    gamma = C_.check_number(gamma, "gamma", low=0.0)
    x = real.detach().requires_grad_(True)
    with torch.enable_grad():
        g, scores = input_gradient(discriminator, x, return_scores=True)
        p = _reduce(_fused_penalty(g, 0.5 * gamma, 1.0, "r1"), reduction)
    return (p, scores) if return_scores else p


def r2_penalty(discriminator, fake: torch.Tensor, *, gamma: float = 10.0,
               reduction: str = "mean", return_scores: bool = False):
    """R2: `r1_penalty` on generated samples.

    Args:
        discriminator, gamma, reduction, return_scores: as for `r1_penalty`.
        fake: generated images [N, ...] (detached).

    Returns:
        As `r1_penalty`.
    """
    _check_images(fake, "fake")
    return r1_penalty(discriminator, fake, gamma=gamma, reduction=reduction,
                      return_scores=return_scores)


def drift_penalty(real_scores: torch.Tensor, epsilon: float = 1e-3) -> torch.Tensor:
    """ProGAN's drift term: epsilon * mean(real_scores**2).

    Args:
        real_scores: D's outputs on real images, a non-empty float tensor, batch first.
        epsilon: eps_drift, >= 0 (ProGAN: 0.001).

    Returns:
        0-d tensor, fp32 for fp16/bf16 scores, else the scores' dtype.
    """
    s = _checks.scores(real_scores, "real_scores")
    return C_.check_number(epsilon, "epsilon", low=0.0) * s.square().mean()


# ---------------------------------------------------------------------------------------------
# Lazy regularization (Karras et al. 2020, StyleGAN2, appendix B)

def lazy_adam_hyperparameters(lr: float, betas: tuple[float, float], interval: int):
    """Adam's hyperparameters for a regularizer applied every `interval` steps.

    Args:
        lr: the learning rate, > 0.
        betas: (beta1, beta2), each in [0, 1).
        interval: k, an int >= 1.

    Returns:
        (lr * c, (beta1 ** c, beta2 ** c)) with c = k / (k + 1).
    """
    interval = _check_interval(interval)
    lr = C_.check_number(lr, "lr", low=0.0, low_open=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = (C_.check_number(b, name, low=0.0) for b, name in zip(betas, ("beta1", "beta2")))
    if not (b1 < 1 and b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
    c = interval / (interval + 1)
    return lr * c, (b1 ** c, b2 ** c)


def _check_interval(interval) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be an int >= 1, got {interval!r}")
    return interval


def adjust_adam_for_lazy_regularization(optimizer: torch.optim.Optimizer, interval: int):
    """Scale every param group of an Adam-style optimizer (lr and betas) for lazy regularization:
    lr *= c, beta_i **= c, c = interval / (interval + 1). Idempotent per optimizer (a second call
    with the same interval changes nothing; another interval raises).

    Args:
        optimizer: a torch.optim.Optimizer whose groups have "lr" and "betas" (Adam, AdamW, ...).
        interval: k, an int >= 1.

    Returns:
        The optimizer, changed in place.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    interval = _check_interval(interval)
    for group in optimizer.param_groups:
        if "betas" not in group:
            raise TypeError(f"{type(optimizer).__name__} has no betas: lazy regularization's "
                            "adjustment is for Adam-style optimizers")
        done = group.get("lazy_regularization_interval")
        if done is not None:
            if done != interval:
                raise ValueError(f"optimizer already adjusted for interval {done}, not {interval}")
            continue
        lr, betas = lazy_adam_hyperparameters(group["lr"], tuple(group["betas"]), interval)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        group["betas"] = betas
        group["lazy_regularization_interval"] = interval
    return optimizer


class LazyRegularizer:
    """Apply a penalty every `interval` steps, scaled by `interval` (StyleGAN2's lazy
    regularization: same expected penalty, 1/interval of its cost).

        lazy = LazyRegularizer(16, optimizer=opt_d)   # adjusts opt_d's lr and betas once
        for step in range(steps):
            ...plain D step...
            reg = lazy(step, fastgan.penalties.r1_penalty, D, real, gamma=10.0)
            if reg is not None:                        # every 16th step
                opt_d.zero_grad(); reg.backward(); opt_d.step()

    The Adam adjustment (lr *= c, beta_i **= c, c = k/(k+1)) assumes that scheme: the penalty
    takes its own optimizer step every k steps, so the optimizer runs k+1 steps per k plain ones
    and the adjustment keeps its per-image dynamics. If you add the penalty into the D loss of
    the plain step instead, there is no extra step: leave the optimizer alone (optimizer=None).

    Args:
        interval: k, an int >= 1.
        optimizer: None, or the Adam-style optimizer of D to adjust once (see above).
    """

    def __init__(self, interval: int = 16, optimizer: torch.optim.Optimizer | None = None):
        self.interval = _check_interval(interval)
        if optimizer is not None:
            adjust_adam_for_lazy_regularization(optimizer, self.interval)

    def due(self, step: int) -> bool:
        """Whether the penalty is due at `step` (an int >= 0): step % interval == 0."""
        return C_.check_number(step, "step", integer=True, low=0) % self.interval == 0

    def __call__(self, step: int, penalty_fn, *args, **kwargs):
        """penalty_fn(*args, **kwargs) * interval when `due(step)`, else None.

        Args:
            step: the training step, an int >= 0.
            penalty_fn: the penalty, e.g. `fastgan.penalties.r1_penalty`; its first output is
                scaled when it returns a tuple (e.g. with return_scores=True).
            *args, **kwargs: passed to penalty_fn.

        Returns:
            None, a tensor, or a tuple whose first element is scaled.
        """
        _checks.function(penalty_fn, "penalty_fn")
        if not self.due(step):
            return None
        out = penalty_fn(*args, **kwargs)
        if isinstance(out, tuple):  # e.g. r1_penalty(..., return_scores=True)
            return (out[0] * self.interval, *out[1:])
        return out * self.interval

    def __repr__(self) -> str:
        return f"LazyRegularizer(interval={self.interval})"
