"""The torch.library registration of every kernel op, written once.

A kernel op is three custom ops, each differentiable by the next:

    fastgan::<op>                   forward           y = f(x; params)
    fastgan::<op>_backward          its vjp           dx = B(dy, saved; params)
    fastgan::<op>_double_backward   the backward's vjp

Every schema lists its tensor arguments (`Tensor` / `Tensor?`) first, then the parameters, and
ends in `str backend` ("triton" | "cuda"), which picks the kernels inside the op, so that a
torch.compile trace keeps the backend it was made with. "ref" never enters these ops: the public
function calls the reference itself. An op file declares its op once:

    _ops = _registry.declare(
        "pixel_norm",
        forward="(Tensor x, float eps, SymInt dim, str backend) -> Tensor",
        backward="(Tensor grad, Tensor x, float eps, SymInt dim, str backend) -> Tensor",
        double_backward="(Tensor gg, Tensor grad, Tensor x, float eps, SymInt dim, str backend)"
                        " -> (Tensor, Tensor)",
        triton=(_triton_forward, _triton_backward, _triton_double_backward),
        fake=(_fake_forward, _fake_backward, _fake_double_backward),
        reference=pixel_norm_ref,
    )
    y = _ops.forward(x, eps, dim, backend)         # the op: torch.ops.fastgan.pixel_norm

`triton` and `fake` hold one function per stage, called with the stage's arguments minus
`backend`: the Triton launchers, and the output allocations that `register_fake` uses. The "cuda"
entries are the compiled extension's `torch.ops.fastgan_cuda.<op>_{forward,backward,
double_backward}` (schemas in fastgan/_ext.py), looked up at call time, with the same arguments;
`cuda_params(*params) -> params` converts the parameters where the extension takes other types
(minibatch_stddev's layout str is a `strided` bool there).

Autograd, by default (a plain differentiable op needs nothing more than the above):
  - forward and backward save their tensor inputs (the forward also the outputs whose indices are
    in `save_outputs`) and their parameters. Their vjp calls the next stage with (the cotangents
    of their outputs, the saved tensors, the parameters), and returns its outputs as the
    gradients of their tensor inputs (None for a `Tensor?` input that was None). So the backward
    schema is: one cotangent per forward output, the saved tensors, the same parameters; the
    double backward's likewise.
  - `materialize_grads=False`: the forward's vjp gets None for an output that received no
    gradient (no zero-filled tensor is made for it); None is passed on where the backward takes a
    `Tensor?`, zeros of that output's shape and dtype elsewhere.
  - the double backward's vjp (third derivative and above) differentiates the reference with
    torch.func: `backward_ref(*backward_tensors, *params)` returns the forward's input gradients;
    by default it is the vjp of `reference(*forward_tensors, *params)`.
`autograd=(forward, backward, double_backward)` replaces the default of a stage by a
(setup_context, vjp) pair (None keeps the default), for an op whose derivative chain is shaped
otherwise (bias_act: its double backward's vjp is its backward again). An op that is not
differentiable or mutates its inputs (spectral norm's power iteration) is no kernel op in this
sense: register it with torch.library.custom_op directly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch

STAGES = ("forward", "backward", "double_backward")
NAMESPACE = "fastgan"


@dataclasses.dataclass(frozen=True)
class KernelOp:
    """The three registered custom ops of one declared op (callable like the torch.ops ones)."""

    name: str
    forward: Callable
    backward: Callable
    double_backward: Callable


@dataclasses.dataclass(frozen=True)
class _Signature:
    """What the registry needs of a stage's schema."""

    n_tensors: int            # leading tensor arguments
    optional: tuple[bool, ...]  # per tensor argument: is it `Tensor?`
    n_args: int               # all arguments, backend included
    n_returns: int


def _signature(qualname: str, schema: str) -> _Signature:
    parsed = torch._C.parse_schema(qualname + schema)
    args = parsed.arguments
    n = 0
    while n < len(args) and str(args[n].type) in ("Tensor", "Optional[Tensor]"):
        n += 1
    if not args or (args[-1].name, str(args[-1].type)) != ("backend", "str") or any(
            "Tensor" in str(a.type) for a in args[n:]):
        raise ValueError(f"{qualname}{schema}: tensor arguments first, `str backend` last")
    return _Signature(n, tuple(isinstance(a.type, torch.OptionalType) for a in args[:n]),
                      len(args), len(parsed.returns))


def vjp(fn, primals: Sequence, cotangents) -> tuple:
    """Vector-Jacobian product of the plain-torch `fn` at `primals` (None entries are held
    constant and get None), itself differentiable: the third and higher derivatives of an op run
    through its reference."""
    present = [i for i, p in enumerate(primals) if p is not None]

    def f(*values):
        args = list(primals)
        for i, v in zip(present, values):
            args[i] = v
        return fn(*args)

    _, pullback = torch.func.vjp(f, *(primals[i] for i in present))
    grads = iter(pullback(cotangents))
    return tuple(None if p is None else next(grads) for p in primals)


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _cuda_entry(name: str, stage: str, n_tensors: int, cuda_params):
    attr = f"{name}_{stage}"
    if cuda_params is None:
        return lambda *args: getattr(torch.ops.fastgan_cuda, attr)(*args)
    return lambda *args: getattr(torch.ops.fastgan_cuda, attr)(
        *args[:n_tensors], *cuda_params(*args[n_tensors:]))


def _first_tensor(args):
    """The first tensor among `args`, looking into a list argument by its first element."""
    for a in args:
        if isinstance(a, (list, tuple)) and a:
            a = a[0]
        if isinstance(a, torch.Tensor):
            return a
    return None


def on_tensor_device(fn):
    """`fn` run with its first tensor argument's CUDA device current. Triton launches on the
    current device, not its tensors' (the CUDA bindings guard themselves), so a tensor on cuda:1
    while cuda:0 is current needs this."""
    def run(*args):
        t = _first_tensor(args)
        if t is not None and t.is_cuda and t.device.index != torch.cuda.current_device():
            with torch.cuda.device(t.device):
                return fn(*args)
        return fn(*args)
    return run


def _impl(table: dict):
    def run(*args):
        return table[args[-1]](*args[:-1])
    return run


def _fake(fn):
    return lambda *args: fn(*args[:-1])


def _chain_autograd(sig: _Signature, next_op, next_sig: _Signature, save_outputs=(),
                    materialize=True):
    """(setup_context, vjp) of a stage whose vjp is the next stage (see the module doc)."""
    n = sig.n_tensors
    nones = (None,) * (sig.n_args - n)
    has_optional = any(sig.optional)
    single = next_sig.n_returns == 1
    # for materialize=False: which cotangents the next stage takes as `Tensor?`
    passes_none = next_sig.optional[:sig.n_returns]

    def setup_context(ctx, inputs, output):
        if not materialize:
            ctx.set_materialize_grads(False)
            outs = output if isinstance(output, tuple) else (output,)
            ctx.out_meta = [(o.shape, o.dtype, o.device) for o in outs]
        if save_outputs:
            outs = output if isinstance(output, tuple) else (output,)  # one output: not a row
            ctx.save_for_backward(*inputs[:n], *(outs[i] for i in save_outputs))
        else:
            ctx.save_for_backward(*inputs[:n])
        ctx.params = inputs[n:]

    def backward(ctx, *cotangents):
        saved = ctx.saved_tensors
        if not materialize:
            cotangents = tuple(
                c if c is not None or ok else torch.zeros(s, dtype=d, device=dev)
                for c, ok, (s, d, dev) in zip(cotangents, passes_none, ctx.out_meta))
        grads = next_op(*cotangents, *saved, *ctx.params)
        if single:
            grads = (grads,)
        if has_optional:
            grads = tuple(None if opt and saved[i] is None else g
                          for i, (g, opt) in enumerate(zip(grads, sig.optional)))
        return (*grads, *nones)

    return setup_context, backward


def _reference_autograd(sig: _Signature, backward_sig: _Signature, backward_ref):
    """(setup_context, vjp) of the double backward: the vjp of the reference's double backward."""
    n = sig.n_tensors
    n_cot = backward_sig.n_returns  # the double backward's leading cotangent arguments
    nones = (None,) * (sig.n_args - n)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n])
        ctx.params = inputs[n:-1]  # backend dropped: the reference has none

    def backward(ctx, *cotangents):
        tensors = ctx.saved_tensors
        params = ctx.params
        inner = tensors[n_cot:]  # the backward's tensor inputs; the outputs are their gradients

        def double_backward_ref(*t):
            grads = vjp(lambda *b: _as_tuple(backward_ref(*b, *params)), t[n_cot:], t[:n_cot])
            return tuple(g for g in grads if g is not None)

        cots = tuple(torch.zeros_like(t) if c is None else c
                     for c, t in zip(cotangents, inner) if t is not None)
        return (*vjp(double_backward_ref, tensors, cots), *nones)

    return setup_context, backward


def _reference_backward(name: str, reference, sigs, save_outputs):
    """backward_ref as the vjp of the forward's reference: (cotangents, inputs, params) -> the
    gradients of the inputs; ValueError where the backward takes anything else."""
    n_out, n_in, n_bwd = sigs[0].n_returns, sigs[0].n_tensors, sigs[1].n_tensors
    if reference is None or save_outputs or n_bwd != n_out + n_in:
        raise ValueError(f"{name}: give backward_ref (the backward does not take just the "
                         "forward's cotangents and inputs)")

    def backward_ref(*args):
        cots, inputs, params = args[:n_out], args[n_out:n_bwd], args[n_bwd:]
        return vjp(lambda *x: reference(*x, *params), inputs, cots[0] if n_out == 1 else cots)

    return backward_ref


def declare(name: str, *, forward: str, backward: str, double_backward: str,
            triton: Sequence[Callable], fake: Sequence[Callable], reference: Callable | None = None,
            backward_ref: Callable | None = None, save_outputs: Sequence[int] = (),
            materialize_grads: bool = True, cuda_params: Callable | None = None,
            autograd: Sequence | None = None) -> KernelOp:
    """Register the custom ops `fastgan::<name>`, `<name>_backward`, `<name>_double_backward`
    (see the module docstring for the conventions).

    Args:
        name: the op's name.
        forward, backward, double_backward: the schemas, "(args) -> returns", tensors first,
            `str backend` last.
        triton: the three Triton launchers (stage arguments without backend).
        fake: the three output allocations for fake tensors (same arguments).
        reference: the forward in plain differentiable torch (forward tensors, then params); the
            default `backward_ref` is its vjp.
        backward_ref: the backward in plain torch (backward tensors, then params), returning
            the forward's input gradients; needed where the backward takes more than the
            forward's cotangents and inputs (e.g. a saved output).
        save_outputs: indices of forward outputs the forward saves for its backward.
        materialize_grads: False: the forward's vjp receives None for unused outputs.
        cuda_params: converts the parameters (without backend) for the CUDA extension's ops.
        autograd: per stage, None (the default chain) or a (setup_context, vjp) pair.

    Returns:
        KernelOp holding the three custom ops.
    """
    schemas = (forward, backward, double_backward)
    quals = [f"{NAMESPACE}::{name}" + ("" if s == "forward" else f"_{s}") for s in STAGES]
    sigs = [_signature(q, s) for q, s in zip(quals, schemas)]
    autograd = tuple(autograd or (None, None, None))
    if backward_ref is None and autograd[2] is None:
        backward_ref = _reference_backward(name, reference, sigs, save_outputs)

    ops = []
    for k, stage in enumerate(STAGES):
        table = {"triton": on_tensor_device(triton[k]),
                 "cuda": _cuda_entry(name, stage, sigs[k].n_tensors, cuda_params)}
        op = torch.library.custom_op(quals[k], _impl(table), mutates_args=(), schema=schemas[k])
        op.register_fake(_fake(fake[k]))
        ops.append(op)

    defaults = (
        lambda: _chain_autograd(sigs[0], ops[1], sigs[1], tuple(save_outputs), materialize_grads),
        lambda: _chain_autograd(sigs[1], ops[2], sigs[2]),
        lambda: _reference_autograd(sigs[2], sigs[1], backward_ref),
    )
    for op, custom, default in zip(ops, autograd, defaults):
        setup_context, vjp_fn = custom or default()
        op.register_autograd(vjp_fn, setup_context=setup_context)
    return KernelOp(name, *ops)
