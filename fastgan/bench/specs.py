"""Op specs and byte models: how `python -m fastgan.bench` and the benchmark suite build each
op's inputs, call its reference and its public function, and count the bytes it must move.

Minimum bytes moved (GB/s = those bytes / median time; 1 GB = 1e9 bytes), with |t| the size
in bytes of a tensor t:
    pixel_norm       fwd: |x| read + |y| write = 2|x|;  fwdbwd: 2|x| + bwd (read x, dy; write dx) = 5|x|
    bias_act         fwd: 2|x| + |b|;  fwdbwd: 5|x| + 3|b|  (b read by fwd and bwd, db written)
    minibatch_stddev fwd: |x| read + |y| write, |y| = |x| (C+F)/C;
                     fwdbwd: fwd + bwd (read dy = |y|, read x, write dx = |x|) = 3|x| + 2|y|
    grad_penalty     fwd: |g| read (p and the norms are N floats);  fwdbwd: 3|g| (+ read g, write dg)
Intermediate tensors an unfused implementation writes and reads back are not counted: that is the
point of fusing.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from typing import Callable, Sequence

import torch

OPS = ("pixel_norm", "minibatch_stddev", "bias_act", "grad_penalty")
SQRT2 = math.sqrt(2.0)

class OpSpec:
    """How to build inputs for an op, call its reference and its public function, and count bytes.

    Subclasses set `name` (the op, as in `fastgan.ops.<name>`), `byte_model` (the minimum bytes,
    in words) and implement `call_ref`, `call_ff` and `min_bytes`."""

    name: str
    byte_model: str

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Args: shape of the first input. Returns: the shape of the op's output."""
        return tuple(shape)

    def out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Args: dtype of the inputs. Returns: the dtype of the op's output."""
        return dtype

    def make_inputs(self, shape, dtype, device, requires_grad: bool, seed: int = 0):
        """Fresh random inputs.

        Args:
            shape, dtype, device: of the first input (x).
            requires_grad: whether the inputs need gradients (the "fwdbwd" pass).
            seed: seeds the generator, so every provider sees the same inputs.
        Returns:
            the list of input tensors, in the order `call_ref` / `call_ff` take them."""
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        x = torch.randn(tuple(shape), dtype=dtype, device=device, generator=g)
        return [x.requires_grad_(requires_grad)]

    def ref_fn(self) -> Callable:
        """Returns: the op's reference `fastgan.ops.<op>.<op>_ref`. Raises LookupError when the op
        (module or function) is not there yet."""
        modname = f"fastgan.ops.{self.name}"
        if importlib.util.find_spec(modname) is None:
            raise LookupError(f"{modname} does not exist yet")
        ref = getattr(importlib.import_module(modname), f"{self.name}_ref", None)
        if ref is None:
            raise LookupError(f"{modname} has no {self.name}_ref yet")
        return ref

    def ff_fn(self) -> Callable:
        """Returns: `fastgan.functional.<op>`. Raises LookupError when it is not there yet."""
        import fastgan.functional as FF

        fn = getattr(FF, self.name, None)
        if fn is None:
            raise LookupError(f"fastgan.functional has no {self.name} yet")
        return fn

    def call_ref(self, ref, inputs):  # pragma: no cover - overridden
        """Args: ref from `ref_fn`, inputs from `make_inputs`. Returns: the op's output."""
        raise NotImplementedError

    def call_ff(self, ff, inputs):  # pragma: no cover - overridden
        """Args: ff from `ff_fn`, inputs from `make_inputs`. Returns: the op's output."""
        raise NotImplementedError

    def min_bytes(self, shape, itemsize: int, pass_: str) -> int:  # pragma: no cover
        """Args: shape of x, bytes per element, pass ("fwd" or "fwdbwd").
        Returns: the bytes the pass must move at least (the byte model above)."""
        raise NotImplementedError


class PixelNormSpec(OpSpec):
    name = "pixel_norm"
    byte_model = "fwd 2|x| (read x, write y); fwdbwd 5|x| (+ read x, dy; write dx)"
    eps = 1e-8

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.eps, 1)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], eps=self.eps, dim=1)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        return 2 * n if pass_ == "fwd" else 5 * n


class BiasActSpec(OpSpec):
    name = "bias_act"
    byte_model = "fwd 2|x| + |b|; fwdbwd 5|x| + 3|b| (x, dy read, dx written; b read twice, db written)"
    act, alpha, gain = "lrelu", 0.2, SQRT2

    def make_inputs(self, shape, dtype, device, requires_grad, seed=0):
        (x,) = super().make_inputs(shape, dtype, device, requires_grad, seed)
        g = torch.Generator(device=device)
        g.manual_seed(seed + 1)
        b = torch.randn((shape[1],), dtype=dtype, device=device, generator=g)
        return [x, b.requires_grad_(requires_grad)]

    def call_ref(self, ref, inputs):
        x, b = inputs
        return ref(x, b, self.act, self.alpha, self.gain, 1)

    def call_ff(self, ff, inputs):
        x, b = inputs
        return ff(x, b, act=self.act, alpha=self.alpha, gain=self.gain, dim=1)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        c = shape[1] * itemsize
        return 2 * n + c if pass_ == "fwd" else 5 * n + 3 * c


class MinibatchStddevSpec(OpSpec):
    name = "minibatch_stddev"
    byte_model = "fwd |x| + |y| (y = [N, C+F, H, W]); fwdbwd 3|x| + 2|y| (+ read dy, x; write dx)"
    group_size, num_features, eps, layout, unbiased = 4, 1, 1e-8, "strided", False

    def out_shape(self, shape):
        n, c, *rest = shape
        return (n, c + self.num_features, *rest)

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.group_size, self.num_features, self.eps, self.layout,
                   self.unbiased)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], group_size=self.group_size, num_features=self.num_features,
                  eps=self.eps, layout=self.layout, unbiased=self.unbiased)

    def min_bytes(self, shape, itemsize, pass_):
        nx = math.prod(shape) * itemsize
        ny = math.prod(self.out_shape(shape)) * itemsize
        return nx + ny if pass_ == "fwd" else 3 * nx + 2 * ny


class GradPenaltySpec(OpSpec):
    name = "grad_penalty"
    byte_model = "fwd |g| (read g; p is N floats); fwdbwd 3|g| (+ read g, write dg)"
    weight, target, mode = 10.0, 1.0, "gp"

    def out_shape(self, shape):
        return (shape[0],)

    def out_dtype(self, dtype):
        return torch.float64 if dtype == torch.float64 else torch.float32

    def call_ref(self, ref, inputs):
        return ref(inputs[0], self.weight, self.target, self.mode)

    def call_ff(self, ff, inputs):
        return ff(inputs[0], self.weight, self.target, self.mode)

    def min_bytes(self, shape, itemsize, pass_):
        n = math.prod(shape) * itemsize
        return n if pass_ == "fwd" else 3 * n


SPECS: dict[str, OpSpec] = {s.name: s for s in (PixelNormSpec(), MinibatchStddevSpec(),
                                                 BiasActSpec(), GradPenaltySpec())}

