"""fastgan.ops._registry: a plain differentiable op declared with the defaults only (y = s x^3,
its "kernels" written in torch and counted) runs its kernels for the first two derivatives and the
reference for the third, passes opcheck, and bad declarations are refused."""

import collections

import pytest
import torch

from fastgan.ops import _registry

_calls = collections.Counter()


def _cube_forward(x, s):
    _calls["forward"] += 1
    return s * x ** 3


def _cube_backward(grad, x, s):
    _calls["backward"] += 1
    return grad * 3 * s * x ** 2


def _cube_double_backward(gg, grad, x, s):
    _calls["double_backward"] += 1
    return gg * 3 * s * x ** 2, gg * grad * 6 * s * x


def _cube_ref(x, s):
    _calls["reference"] += 1
    return s * x ** 3


_cube = _registry.declare(
    "registry_test_cube",
    forward="(Tensor x, float s, str backend) -> Tensor",
    backward="(Tensor grad, Tensor x, float s, str backend) -> Tensor",
    double_backward="(Tensor gg, Tensor grad, Tensor x, float s, str backend)"
                    " -> (Tensor, Tensor)",
    triton=(_cube_forward, _cube_backward, _cube_double_backward),
    fake=(lambda x, s: torch.empty_like(x), lambda grad, x, s: torch.empty_like(x),
          lambda gg, grad, x, s: (torch.empty_like(x), torch.empty_like(x))),
    reference=_cube_ref,
)


def test_default_chain_runs_the_kernels_then_the_reference():
    """Orders 0-2 run the kernels only (the second order's d/d grad flows back through the
    forward's vjp: the backward runs twice); the third runs through the reference."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    _calls.clear()
    y = _cube.forward(x, 1.5, "triton")
    (g1,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
    assert _calls == {"forward": 1, "backward": 2, "double_backward": 1}, _calls
    (g3,) = torch.autograd.grad(g2.square().sum(), x)
    assert _calls["reference"] > 0

    xr = x.detach().requires_grad_()
    yr = 1.5 * xr ** 3
    (r1,) = torch.autograd.grad(yr.square().sum(), xr, create_graph=True)
    (r2,) = torch.autograd.grad(r1.square().sum(), xr, create_graph=True)
    (r3,) = torch.autograd.grad(r2.square().sum(), xr)
    for order, (a, e) in enumerate(zip((y, g1, g2, g3), (yr, r1, r2, r3))):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=0, msg=f"derivative {order}")


def test_ops_are_registered_under_their_names_and_pass_opcheck():
    assert torch.ops.fastgan.registry_test_cube.default._schema.name == \
        "fastgan::registry_test_cube"
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    gg = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(_cube.forward, (x, 0.5, "triton"))
    torch.library.opcheck(_cube.backward, (grad, x, 0.5, "triton"))
    torch.library.opcheck(_cube.double_backward, (gg, grad, x, 0.5, "triton"))


@pytest.mark.parametrize("schemas,words", [
    (("(Tensor x, float s) -> Tensor",) * 3, "str backend` last"),
    (("(float s, Tensor x, str backend) -> Tensor",) * 3, "tensor arguments first"),
])
def test_bad_schemas_are_refused(schemas, words):
    with pytest.raises(ValueError, match=words):
        _registry.declare("registry_test_bad", forward=schemas[0], backward=schemas[1],
                          double_backward=schemas[2], triton=(None,) * 3, fake=(None,) * 3,
                          reference=_cube_ref)


def test_a_backward_taking_more_than_the_forward_gives_needs_backward_ref():
    with pytest.raises(ValueError, match="give backward_ref"):
        _registry.declare(
            "registry_test_saved",
            forward="(Tensor x, str backend) -> (Tensor, Tensor)",
            backward="(Tensor dy, Tensor? dn, Tensor x, Tensor n, str backend) -> Tensor",
            double_backward="(Tensor gg, Tensor dy, Tensor? dn, Tensor x, Tensor n, str backend)"
                            " -> (Tensor, Tensor, Tensor, Tensor)",
            triton=(None,) * 3, fake=(None,) * 3, reference=_cube_ref, save_outputs=(1,))


_exp = _registry.declare(
    "registry_test_exp",
    forward="(Tensor x, str backend) -> Tensor",
    backward="(Tensor grad, Tensor x, Tensor y, str backend) -> Tensor",
    double_backward="(Tensor gg, Tensor grad, Tensor x, Tensor y, str backend)"
                    " -> (Tensor, Tensor, Tensor)",
    triton=(torch.exp, lambda grad, x, y: grad * y,
            lambda gg, grad, x, y: (gg * y, torch.zeros_like(x), gg * grad)),
    fake=(torch.empty_like, lambda grad, x, y: torch.empty_like(x),
          lambda gg, grad, x, y: (torch.empty_like(x),) * 3),
    backward_ref=lambda grad, x, y: grad * y,
    save_outputs=(0,),
)


def test_a_single_output_forward_saves_its_whole_output():
    """save_outputs=(0,) on a forward with one output saves that tensor (not its first row):
    d exp(x) / dx = exp(x) through the saved y, to the second order."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = _exp.forward(x, "triton")
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    torch.testing.assert_close(g1, x.exp(), rtol=1e-12, atol=0)
    (g2,) = torch.autograd.grad(g1.sum(), x)
    torch.testing.assert_close(g2, x.exp(), rtol=1e-12, atol=0)


class _OnSecondGpu(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1: what the device guard looks at."""

    @property
    def is_cuda(self):
        return True

    @property
    def device(self):
        return torch.device("cuda", 1)


@pytest.mark.parametrize("current", [0, 1])
def test_triton_entries_run_on_their_tensors_device(monkeypatch, current):
    """Triton launches on the current CUDA device: a kernel entry must make its tensors' device
    current first (checked without a GPU: the device queries are stood in for)."""
    entered = []

    class _Device:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", _Device)
    seen = []
    fn = _registry.on_tensor_device(lambda *args: seen.append(list(entered)) or "ran")
    x = torch.zeros(2).as_subclass(_OnSecondGpu)
    assert fn(None, [x], 1.0) == "ran" and fn(x) == "ran"
    expected = [] if current == 1 else [torch.device("cuda", 1)]
    assert seen[0] == expected and seen[1] == expected * 2
    assert fn(torch.zeros(2), 3) == "ran"  # CPU tensors: no device switch
    assert len(entered) == len(expected) * 2
