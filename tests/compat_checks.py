"""Comparisons shared by the fastgan.compat / fastgan.convert tests: a port's module against its
fastgan counterpart, in fp64, to 1e-10 relative to max(1, |expected|)."""

import torch

TOL = 1e-10
F64 = torch.float64


def close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Same shape, max abs difference <= TOL * max(1, max |expected|)."""
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    assert err <= TOL * scale, f"{name}: max abs error {err:.3e} > {TOL:g} * {scale:.3g}"


def randn(*shape, seed: int = 1) -> torch.Tensor:
    """A fresh fp64 normal tensor from its own generator."""
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _grads(module, inputs, out):
    w = randn(*out.shape, seed=7)
    params = list(module.parameters()) if isinstance(module, torch.nn.Module) else []
    return torch.autograd.grad((out * w).sum(), list(inputs) + params,
                               allow_unused=True, materialize_grads=True)


def compare(orig, mine, *args, n_inputs: int = 1, name: str = "") -> None:
    """orig(*args) and mine(*args) agree: the output, and the gradients of a random weighting
    of it with respect to the first n_inputs args and to each module's parameters (in order;
    orig and mine may also be plain functions)."""
    xs = [a.detach().clone().requires_grad_(True) for a in args[:n_inputs]]
    ys = [a.detach().clone().requires_grad_(True) for a in args[:n_inputs]]
    out_o, out_m = orig(*xs, *args[n_inputs:]), mine(*ys, *args[n_inputs:])
    close(out_m, out_o, f"{name} output")
    grads_o, grads_m = _grads(orig, xs, out_o), _grads(mine, ys, out_m)
    assert len(grads_o) == len(grads_m), f"{name}: parameter count"
    for i, (go, gm) in enumerate(zip(grads_o, grads_m)):
        close(gm, go, f"{name} gradient {i}")


def penalty_step(model, penalty):
    """Run penalty(model).backward() from zero gradients: (value, [grad per parameter]), a
    parameter the step does not reach counting as zeros."""
    model.zero_grad(set_to_none=True)
    value = penalty(model)
    value.backward()
    return value.detach(), [torch.zeros_like(p) if p.grad is None else p.grad
                            for p in model.parameters()]


def compare_penalty_steps(orig, mine, penalty, name: str = "") -> None:
    """penalty_step on both models gives the same value and parameter gradients, and reaches
    most parameters."""
    (v1, g1), (v2, g2) = penalty_step(orig, penalty), penalty_step(mine, penalty)
    close(v2, v1, name)
    assert sum(bool(g.any()) for g in g1) >= len(g1) // 2, f"{name}: few gradients reached"
    for i, (a, b) in enumerate(zip(g2, g1)):
        close(a, b, f"{name} parameter {i}")
