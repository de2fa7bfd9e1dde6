"""A user's mistakes in the layers, penalties, losses and ops raise a clear error naming the
argument, before any work, instead of returning a number (a negative "penalty", a NaN) or
failing deep in torch. What the penalties do not detect is pinned down too, as the docs describe
it."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import fastgan.functional as FF
import fastgan.losses as L
import fastgan.penalties as P
from fastgan.nn import EqualConv2d, EqualLinear, FusedLeakyReLU, MinibatchStdDev, PixelNorm


class CountingD(nn.Module):
    """A tiny critic on [N, 3, 4, 4] images that counts its calls."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def _images(n=2):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randn(n, 3, 4, 4, generator=g)


def _recon():
    return torch.tensor([0.3, 0.5]), torch.tensor([0.2, 0.6])


# --- penalties and losses: no negative weights, no NaN from empty scores, named arguments -------

PENALTY_CASES = [
    (lambda D, r, f: P.gradient_penalty(D, r, f, weight=-10), ValueError, "weight must be >= 0"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, weight=math.nan), ValueError,
     "weight must be finite"),
    (lambda D, r, f: P.r1_penalty(D, r, gamma=-10), ValueError, "gamma must be >= 0"),
    (lambda D, r, f: P.r2_penalty(D, f, gamma=-1.0), ValueError, "gamma must be >= 0"),
    (lambda D, r, f: P.r2_penalty(D, f.long()), TypeError, "fake must be a floating-point"),
    (lambda D, r, f: P.gradient_penalty(None, r, f), TypeError, "discriminator must be callable"),
    (lambda D, r, f: P.r1_penalty("D", r), TypeError, "discriminator must be callable"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, epsilon=2.0), ValueError, "epsilon must be <= 1"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, epsilon=-0.5), ValueError, "epsilon must be >= 0"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, generator=0), TypeError, "generator must be"),
    (lambda D, r, f: P.gradient_penalty(D, [r], f), TypeError, "real must be a torch.Tensor"),
    (lambda D, r, f: P.input_gradient(D, r.tolist()), TypeError, "x must be a torch.Tensor"),
    (lambda D, r, f: P.input_gradient(None, r.requires_grad_()), TypeError, "discriminator"),
]


@pytest.mark.parametrize("call,exc,words", PENALTY_CASES)
def test_penalty_arguments_checked_before_d_runs(call, exc, words):
    D = CountingD()
    real, fake = _images()
    with pytest.raises(exc, match=words):
        call(D, real, fake)
    assert D.calls == 0, "the discriminator ran before the arguments were checked"


def test_penalty_zero_weight_and_bounds_of_epsilon_accepted():
    D = CountingD()
    real, fake = _images()
    assert P.gradient_penalty(D, real, fake, weight=0.0).item() == 0.0
    for e in (0.0, 1.0):
        p = P.gradient_penalty(D, real, fake, epsilon=e)
        assert torch.isfinite(p) and p.grad_fn is not None
    assert P.r1_penalty(D, real, gamma=0).item() == 0.0


def test_discriminator_must_return_float_scores():
    real, _ = _images()
    with pytest.raises(TypeError, match="floating-point tensor of scores"):
        P.r1_penalty(lambda x: (x.flatten(1).sum(1) > 0).long(), real)


@pytest.mark.parametrize("call,exc,words", [
    (lambda s: P.drift_penalty(s, -1.0), ValueError, "epsilon must be >= 0"),
    (lambda s: P.drift_penalty(s, "1e-3"), TypeError, "epsilon must be a real number"),
    (lambda s: P.drift_penalty(torch.randn(0)), ValueError, "real_scores is empty"),
    (lambda s: P.drift_penalty(s.long()), TypeError, "real_scores must be a floating-point"),
])
def test_drift_penalty_refuses(call, exc, words):
    with pytest.raises(exc, match=words):
        call(torch.randn(4, 1))


def test_drift_penalty_zero_epsilon_is_zero():
    assert P.drift_penalty(torch.randn(4, 1), 0.0).item() == 0.0


@pytest.mark.parametrize("call,exc,words", [
    (lambda r, f: L.began_update_k(0.0, r, f, gamma=-1), ValueError, "gamma must be >= 0"),
    (lambda r, f: L.began_update_k(0.0, r, f, gamma=1.5), ValueError, "gamma must be <= 1"),
    (lambda r, f: L.began_update_k(0.0, r, f, lambda_k=-1e-3), ValueError, "lambda_k must be >= 0"),
    (lambda r, f: L.began_update_k(-0.1, r, f), ValueError, "k must be >= 0"),
    (lambda r, f: L.began_d_loss(r, f, 5.0), ValueError, "k must be <= 1"),
    (lambda r, f: L.began_d_loss(r, f, "0.1"), TypeError, "k must be a real number"),
    (lambda r, f: L.began_g_loss(r[:0]), ValueError, "fake_recon is empty"),
    (lambda r, f: L.logistic_d_loss(r, f, real_target="0.9"), TypeError, "real_target"),
    (lambda r, f: L.logistic_d_loss(r, f, real_target=1.1), ValueError, "real_target must be <= 1"),
    (lambda r, f: L.lsgan_d_loss(r, f, a="0"), TypeError, "a must be a real number"),
    (lambda r, f: L.lsgan_d_loss(r, f, b=math.inf), ValueError, "b must be finite"),
    (lambda r, f: L.lsgan_g_loss(f, c=None), TypeError, "c must be a real number"),
])
def test_loss_arguments_refused(call, exc, words):
    r, f = _recon()
    with pytest.raises(exc, match=words):
        call(r, f)


def test_began_k_accepts_a_one_element_tensor():
    r, f = _recon()
    k, _ = L.began_update_k(torch.tensor(0.5), r, f, lambda_k=0.0)
    assert k == 0.5
    assert math.isclose(L.began_d_loss(r, f, torch.tensor([0.5])).item(), 0.4 - 0.5 * 0.4,
                        rel_tol=1e-6)


def test_clip_weights_names_its_arguments():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got Tensor"):
        L.clip_weights(torch.randn(3))
    with pytest.raises(TypeError, match="c must be a real number"):
        L.clip_weights(nn.Linear(2, 2), "0.01")
    with pytest.raises(ValueError, match="c must be finite"):
        L.clip_weights(nn.Linear(2, 2), math.inf)
    with pytest.raises(ValueError, match="c must be > 0"):
        L.clip_weights(nn.Linear(2, 2), 0.0)


def test_lazy_regularization_arguments():
    D = CountingD()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        P.LazyRegularizer(16, optimizer=D)
    with pytest.raises(TypeError, match="betas must be a pair"):
        P.lazy_adam_hyperparameters(1e-3, 0.99, 16)
    with pytest.raises(ValueError, match=r"betas must be in \[0, 1\)"):
        P.lazy_adam_hyperparameters(1e-3, (0.0, 1.0), 16)
    with pytest.raises(ValueError, match="lr must be > 0"):
        P.lazy_adam_hyperparameters(-1e-3, (0.0, 0.99), 16)
    lazy = P.LazyRegularizer(4)
    with pytest.raises(TypeError, match="penalty_fn must be callable"):
        lazy(0, None)
    with pytest.raises(TypeError, match="step must be an int"):
        lazy.due(0.5)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lazy.due(-4)


# --- layers: checked at construction; inputs checked before any matmul ---------------------------

@pytest.mark.parametrize("make,exc,words", [
    (lambda: PixelNorm(eps=-1), ValueError, "eps must be >= 0"),
    (lambda: PixelNorm(eps="1e-8"), TypeError, "eps must be a real number"),
    (lambda: PixelNorm(dim=1.0), TypeError, "dim must be an int"),
    (lambda: MinibatchStdDev(group_size=0), ValueError, "group_size must be >= 1"),
    (lambda: MinibatchStdDev(group_size=2.0), TypeError, "group_size must be an int"),
    (lambda: MinibatchStdDev(num_features=0), ValueError, "num_features must be >= 1"),
    (lambda: MinibatchStdDev(eps=-1e-8), ValueError, "eps must be >= 0"),
    (lambda: MinibatchStdDev(layout="bad"), ValueError, "layout must be one of"),
    (lambda: MinibatchStdDev(unbiased="yes"), TypeError, "unbiased must be a bool"),
    (lambda: MinibatchStdDev(group_size=1, unbiased=True), ValueError, "at least 2 samples"),
    (lambda: EqualConv2d(3, 4, 3, gain=0), ValueError, "gain must be > 0"),
    (lambda: EqualConv2d(3, 4, 3, gain="sqrt2"), TypeError, "gain must be a real number"),
    (lambda: EqualConv2d(3, 4, 3, act_gain=-1.0), ValueError, "act_gain must be > 0"),
    (lambda: EqualConv2d(3, 4, 3, alpha=None), TypeError, "alpha must be a real number"),
    (lambda: EqualLinear(3, 4, bias_init=math.nan), ValueError, "bias_init must be finite"),
    (lambda: EqualLinear(3, 4, lr_mul=-0.01), ValueError, "lr_mul must be > 0"),
    (lambda: FusedLeakyReLU(3, scale="2"), TypeError, "scale must be a real number"),
    (lambda: FusedLeakyReLU(3, negative_slope=math.inf), ValueError,
     "negative_slope must be finite"),
])
def test_layer_arguments_checked_at_construction(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


# --- ops: the same number check as the layers (fastgan.ops._common.check_number) ----------------

@pytest.mark.parametrize("call,exc,words", [
    (lambda x: FF.bias_act(x, gain=math.inf), ValueError, "gain must be finite"),
    (lambda x: FF.bias_act(x, alpha="0.2"), TypeError, "alpha must be a real number"),
    (lambda x: FF.pixel_norm(x, math.nan), ValueError, "eps must be finite"),
    (lambda x: FF.grad_penalty(x.flatten(1), target=0.0), ValueError, "target must be > 0"),
    (lambda x: FF.minibatch_stddev(x, group_size=0), ValueError, "group_size must be >= 1"),
    (lambda x: FF.minibatch_stddev(x, num_features=True), TypeError,
     "num_features must be an int"),
])
def test_op_numbers_checked_naming_the_argument(call, exc, words):
    with pytest.raises(exc, match=words):
        call(torch.ones(4, 3, 2, 2))


def test_numpy_numbers_are_numbers_to_the_ops_and_layers():
    x = torch.randn(4, 6, 3, 3)
    assert torch.equal(FF.pixel_norm(x, np.float32(1e-8)), FF.pixel_norm(x, 1e-8))
    assert torch.equal(FF.minibatch_stddev(x, np.int64(2)), FF.minibatch_stddev(x, 2))
    assert PixelNorm(dim=np.int64(1)).dim == 1


def test_valid_layer_arguments_construct_and_run():
    x = torch.randn(4, 6, 3, 3)
    assert PixelNorm(eps=0)(x).shape == x.shape
    assert MinibatchStdDev(2, 3, eps=0.0, layout="contiguous", unbiased=True)(x).shape == \
        (4, 9, 3, 3)


@pytest.mark.parametrize("layer,shape", [(lambda: EqualLinear(16, 4), (2, 16)),
                                         (lambda: EqualConv2d(3, 4, 3), (2, 3, 5, 5)),
                                         (lambda: FusedLeakyReLU(3), (2, 3, 5, 5))])
def test_integer_input_is_a_type_error_naming_x(layer, shape):
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        layer()(torch.randint(0, 5, shape))


@pytest.mark.parametrize("layer,shape,name", [
    (lambda: EqualLinear(16, 4), (2, 16), r"EqualLinear\(16, 4\)"),
    (lambda: EqualConv2d(3, 4, 3), (2, 3, 5, 5), r"EqualConv2d\(3, 4\)"),
])
def test_input_dtype_must_match_weight_outside_autocast(layer, shape, name):
    m = layer()
    with pytest.raises(TypeError, match=name + " has a torch.float32 weight, got x of "
                                               "torch.float64"):
        m(torch.randn(shape, dtype=torch.float64))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts both: allowed
        assert m(torch.randn(shape)).dtype == torch.bfloat16
    assert m.double()(torch.randn(shape, dtype=torch.float64)).dtype == torch.float64


def test_input_device_must_match_weight():
    m = EqualLinear(16, 4)
    with pytest.raises(ValueError,
                       match=r"EqualLinear\(16, 4\) has its weight on cpu, got x on meta"):
        m(torch.empty(2, 16, device="meta"))


# --- what the penalties do not detect, exactly as documented --------------------------------------

class DeadReLUD(nn.Module):
    """A critic whose input gradient is exactly zero with an intact graph: every ReLU is off."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 8)
        self.out = nn.Linear(8, 1)
        with torch.no_grad():
            self.fc.bias.fill_(-1e3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x.flatten(1))))


def test_zero_input_gradient_gives_the_constant_weight_and_trains_nothing():
    D = DeadReLUD()
    real, fake = _images()
    gp = P.gradient_penalty(D, real, fake, weight=7.0, target=2.0)
    assert gp.item() == pytest.approx(7.0)
    grads = torch.autograd.grad(gp, list(D.parameters()), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    assert P.r1_penalty(D, real).item() == 0.0


def test_nan_discriminator_gives_nan_penalty_without_raising():
    D = CountingD()
    with torch.no_grad():
        D.fc.weight[0, 0] = math.nan
    real, fake = _images()
    assert torch.isnan(P.gradient_penalty(D, real, fake))
