"""fastgan.convert and spectral norm: torch's parametrization becomes fastgan's
(fastgan.nn.utils.spectral_norm) with the same Parameter, buffers, keys and numbers, over
several training steps; the legacy hook is recognized, left alone and explained."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as TP

import fastgan
import fastgan.penalties as P
from compat_checks import F64, close, compare_penalty_steps, randn
from helpers import _CPU_CASES

CPU_BACKENDS = [b for _, b in _CPU_CASES]


def _sngan_d(seed=0):
    """A small SNGAN-style D: spectral norm on convs (one with 3 power iterations), a transposed
    conv (dim 1) and the dense head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        TP.spectral_norm(nn.Conv2d(3, 8, 3, padding=1)), nn.LeakyReLU(0.1),
        TP.spectral_norm(nn.Conv2d(8, 8, 4, stride=2, padding=1), n_power_iterations=3),
        nn.LeakyReLU(0.1),
        TP.spectral_norm(nn.ConvTranspose2d(8, 4, 3, padding=1)), nn.LeakyReLU(0.1),
        nn.Flatten(), TP.spectral_norm(nn.Linear(4 * 4 * 4, 1), eps=1e-6)).to(F64)


def test_parametrization_becomes_fastgans_with_the_same_state():
    from fastgan.nn.utils import spectral_norm  # the API this converts to

    D = _sngan_d()
    params = list(D.parameters())
    keys = {k: v.clone() for k, v in D.state_dict().items()}
    rng = torch.get_rng_state()
    report = fastgan.convert(D)
    assert torch.equal(torch.get_rng_state(), rng)  # fastgan's initial draws ran on a fork
    assert [p for p, _, _ in report.replaced] == ["0.weight", "2.weight", "4.weight", "7.weight"]
    assert all(t == "fastgan.nn.utils.spectral_norm" for _, _, t in report.replaced)
    probe = type(spectral_norm(nn.Linear(2, 2)).parametrizations.weight[0])
    assert all(type(D[i].parametrizations.weight[0]) is probe for i in (0, 2, 4, 7))
    assert D[2].parametrizations.weight[0].n_power_iterations == 3
    assert D[4].parametrizations.weight[0].dim == 1 and D[7].parametrizations.weight[0].eps == 1e-6
    assert all(a is b for a, b in zip(params, D.parameters()))
    assert list(D.state_dict()) == list(keys)
    assert all(torch.equal(D.state_dict()[k], v) for k, v in keys.items())
    again = fastgan.convert(D)
    assert again.replaced == [] and again.left_alone == []


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_converted_training_steps_equal_torchs(backend):
    """Three Adam steps of a WGAN-GP loss, torch's spectral norm against the converted model:
    the same losses, gradients, weights and u, v after each step (fp64)."""
    ref = _sngan_d()
    D = copy.deepcopy(ref)
    assert len(fastgan.convert(D).replaced) == 4
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (ref, D)]
    real, fake, eps = randn(4, 3, 8, 8, seed=2), randn(4, 3, 8, 8, seed=3), randn(4, seed=4)
    with fastgan.use_backend(backend):
        for step in range(3):
            compare_penalty_steps(ref, D, lambda m: P.gradient_penalty(
                m, real, fake, epsilon=eps.abs() / 4) + m(real).mean() - m(fake).mean(),
                f"step {step}")
            for opt in opts:
                opt.step()
            for (k, a), b in zip(ref.state_dict().items(), D.state_dict().values()):
                close(b, a, f"step {step} {k}")
    ref.eval()
    D.eval()
    close(D(real), ref(real), "eval")


def test_chained_parametrizations_are_left_alone():
    class Double(nn.Module):
        def forward(self, w):
            return w * 2

    layer = TP.spectral_norm(nn.Linear(3, 3))
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", Double())
    report = fastgan.convert(layer)
    (path, kind, why), = report.left_alone
    assert path == "weight" and "chains 2" in why
    assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"


def test_legacy_hook_is_left_alone_and_explained():
    model = nn.Sequential(torch.nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)))
    keys = list(model.state_dict())
    report = fastgan.convert(model)
    (path, kind, why), = report.left_alone
    assert path == "0.weight" and "legacy" in kind and "load_legacy_spectral_norm" in why
    assert list(model.state_dict()) == keys and report.replaced == []
