"""fastgan.losses against the formulas of docs/math.md, written out independently."""

import math

import pytest
import torch
from torch import nn

import fastgan.losses as L
from helpers import assert_close


def _scores(seed=0, n=6, k=1):
    g = torch.Generator().manual_seed(seed)
    r = (3 * torch.randn(n, k, generator=g, dtype=torch.float64)).requires_grad_()
    f = (3 * torch.randn(n + 2, k, generator=g, dtype=torch.float64)).requires_grad_()
    return r, f  # different batch sizes on purpose


def sig(v):
    return 1 / (1 + torch.exp(-v))


def test_logistic():
    r, f = _scores()
    assert_close(L.logistic_d_loss(r, f),
                 (-torch.log(sig(r))).mean() - torch.log(1 - sig(f)).mean())
    assert_close(L.logistic_g_loss(f), (-torch.log(sig(f))).mean())
    assert_close(L.logistic_saturating_g_loss(f), torch.log(1 - sig(f)).mean())
    # one-sided label smoothing: BCE with target 0.9 on reals, 0 on fakes
    bce = nn.functional.binary_cross_entropy_with_logits
    want = bce(r, torch.full_like(r, 0.9)) + bce(f, torch.zeros_like(f))
    assert_close(L.logistic_d_loss(r, f, real_target=0.9), want)
    with pytest.raises(ValueError, match="real_target"):
        L.logistic_d_loss(r, f, real_target=1.5)


def test_logistic_is_finite_for_large_scores():
    big = torch.tensor([1e4, -1e4], dtype=torch.float32)
    for v in (L.logistic_d_loss(big, big), L.logistic_g_loss(big), L.ragan_d_loss(big, -big)):
        assert torch.isfinite(v)


def test_wgan_and_clipping():
    r, f = _scores()
    assert_close(L.wgan_d_loss(r, f), f.mean() - r.mean())
    assert_close(L.wgan_g_loss(f), -f.mean())
    D = nn.Linear(4, 3)
    nn.init.normal_(D.weight, std=1.0)
    L.clip_weights(D, 0.01)
    assert all(p.abs().max() <= 0.01 for p in D.parameters())
    with pytest.raises(ValueError):
        L.clip_weights(D, 0.0)


def test_lsgan():
    r, f = _scores()
    assert_close(L.lsgan_d_loss(r, f), 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean())
    assert_close(L.lsgan_d_loss(r, f, a=-1.0, b=2.0),
                 0.5 * ((r - 2) ** 2).mean() + 0.5 * ((f + 1) ** 2).mean())
    assert_close(L.lsgan_g_loss(f), 0.5 * ((f - 1) ** 2).mean())
    assert_close(L.lsgan_g_loss(f, c=0.5), 0.5 * ((f - 0.5) ** 2).mean())


def test_hinge():
    r, f = _scores()
    assert_close(L.hinge_d_loss(r, f),
                 torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean())
    assert_close(L.hinge_g_loss(f), -f.mean())


def test_relativistic_average():
    r, f = _scores()
    d_rf, d_fr = sig(r - f.mean()), sig(f - r.mean())
    assert_close(L.ragan_d_loss(r, f), (-torch.log(d_rf)).mean() + (-torch.log(1 - d_fr)).mean())
    assert_close(L.ragan_g_loss(r, f), (-torch.log(d_fr)).mean() + (-torch.log(1 - d_rf)).mean())
    assert_close(L.ralsgan_d_loss(r, f),
                 ((r - f.mean() - 1) ** 2).mean() + ((f - r.mean() + 1) ** 2).mean())
    assert_close(L.ralsgan_g_loss(r, f),
                 ((f - r.mean() - 1) ** 2).mean() + ((r - f.mean() + 1) ** 2).mean())


def test_gradients_match_formulas():
    r, f = _scores(1)
    (gr, gf) = torch.autograd.grad(L.hinge_d_loss(r, f), (r, f))
    assert_close(gr, -(r.detach() < 1).double() / r.numel())
    assert_close(gf, (f.detach() > -1).double() / f.numel())
    (gf,) = torch.autograd.grad(L.logistic_g_loss(f), f)
    assert_close(gf, -(1 - sig(f.detach())) / f.numel())


def test_began():
    lr = torch.tensor([0.3, 0.5], dtype=torch.float64)
    lf = torch.tensor([0.2, 0.6], dtype=torch.float64)
    assert_close(L.began_d_loss(lr, lf, 0.25), lr.mean() - 0.25 * lf.mean())
    assert_close(L.began_g_loss(lf), lf.mean())
    k, m = L.began_update_k(0.1, lr, lf, gamma=0.5, lambda_k=0.01)
    balance = 0.5 * 0.4 - 0.4
    assert math.isclose(k, 0.1 + 0.01 * balance)
    assert math.isclose(m, 0.4 + abs(balance))
    assert L.began_update_k(0.0, lr, lf, lambda_k=1.0)[0] == 0.0  # clipped to [0, 1]
    assert L.began_update_k(1.0, lr, torch.zeros(2), lambda_k=10.0)[0] == 1.0


@pytest.mark.parametrize("fn", [L.logistic_d_loss, L.wgan_d_loss, L.lsgan_d_loss, L.hinge_d_loss,
                                L.ragan_d_loss, L.ralsgan_d_loss])
def test_half_scores_give_fp32_scalar(fn):
    r, f = _scores(2, k=3)
    out = fn(r.detach().bfloat16(), f.detach().half())
    assert out.dtype == torch.float32 and out.dim() == 0
    assert_close(out, fn(r.detach().bfloat16().double(), f.detach().half().double()).float(),
                 torch.float32)


def test_bad_scores_raise():
    with pytest.raises(TypeError, match="real_scores"):
        L.hinge_d_loss(torch.ones(3, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        L.wgan_g_loss(torch.ones(0))
