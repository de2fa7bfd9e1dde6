"""GAN losses from the literature, as functions of discriminator scores (docs/math.md).

Naming: `<family>_d_loss(real_scores, fake_scores, ...)` is the discriminator's (critic's)
loss and `<family>_g_loss(fake_scores, ...)` the generator's; both are minimized. Relativistic
losses compare real and fake scores, so their G loss takes both:
`<family>_g_loss(real_scores, fake_scores)`. Scores are raw outputs (logits / critic values) of
any shape with the batch first ([N], [N, 1], [N, k]); every loss is a mean over all their
elements (real and fake terms averaged separately, so the batches may differ in size) and
returns a 0-d tensor, in fp32 for fp16/bf16 scores.

    family      D loss                                        G loss
    logistic    softplus(-D(x)) + softplus(D(x~))             softplus(-D(x~))   (non-saturating)
                (one-sided label smoothing: real_target=0.9)
    wgan        D(x~) - D(x)                                  -D(x~)     (+ clip_weights, or a GP)
    lsgan       1/2 (D(x) - b)^2 + 1/2 (D(x~) - a)^2          1/2 (D(x~) - c)^2
    hinge       relu(1 - D(x)) + relu(1 + D(x~))              -D(x~)
    ragan       -log s(C(x) - m~) - log(1 - s(C(x~) - m))     -log s(C(x~) - m)
                                                                - log(1 - s(C(x) - m~))
    ralsgan     (C(x) - m~ - 1)^2 + (C(x~) - m + 1)^2         (C(x~) - m - 1)^2 + (C(x) - m~ + 1)^2
    began       L(x) - k L(G(z_D))                            L(G(z_G))   (+ began_update_k)

s = sigmoid, m = mean C(x), m~ = mean C(x~) (over the batch). `-log s(v)` is computed as
softplus(-v) and `-log(1 - s(v))` as softplus(v): exact and finite for any score.
Gradient penalties live in `fastgan.penalties`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks
from .ops import _common as C_

__all__ = [
    "logistic_d_loss", "logistic_g_loss", "logistic_saturating_g_loss",
    "wgan_d_loss", "wgan_g_loss", "clip_weights",
    "lsgan_d_loss", "lsgan_g_loss",
    "hinge_d_loss", "hinge_g_loss",
    "ragan_d_loss", "ragan_g_loss", "ralsgan_d_loss", "ralsgan_g_loss",
    "began_d_loss", "began_g_loss", "began_update_k",
]


_f = _checks.scores


def _k(k) -> float:
    """BEGAN's k as a float in [0, 1]; a one-element tensor is read once (a host sync)."""
    if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.requires_grad:
        k = k.item()
    return C_.check_number(k, "k", low=0.0, high=1.0)

# --- non-saturating logistic (Goodfellow et al. 2014; label smoothing: Salimans et al. 2016)

def logistic_d_loss(real_scores, fake_scores, *, real_target: float = 1.0) -> torch.Tensor:
    """mean BCE(sigmoid(D(x)), real_target) + mean BCE(sigmoid(D(x~)), 0):
    real_target 1: softplus(-D(x)) + softplus(D(x~)); one-sided label smoothing: 0.9.

    Args:
        real_scores: D's logits on real images, a non-empty float tensor, batch first.
        fake_scores: D's logits on generated images, the same (the batch may differ).
        real_target: the label of the real images, in [0, 1].

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores, else the scores' dtype).
    """
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    real_target = C_.check_number(real_target, "real_target", low=0.0, high=1.0)
    real_term = real_target * F.softplus(-r) + (1.0 - real_target) * F.softplus(r)
    return real_term.mean() + F.softplus(f).mean()


def logistic_g_loss(fake_scores) -> torch.Tensor:
    """Non-saturating: mean softplus(-D(x~)) = -log sigmoid(D(x~)).

    Args:
        fake_scores: D's logits on generated images, a non-empty float tensor, batch first.

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return F.softplus(-_f(fake_scores, "fake_scores")).mean()


def logistic_saturating_g_loss(fake_scores) -> torch.Tensor:
    """The original minimax G loss: mean log(1 - sigmoid(D(x~))) = -softplus(D(x~)).

    Args:
        fake_scores: D's logits on generated images, a non-empty float tensor, batch first.

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return -F.softplus(_f(fake_scores, "fake_scores")).mean()


# --- WGAN (Arjovsky et al. 2017)

def wgan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """mean D(x~) - mean D(x). Add fastgan.penalties.gradient_penalty for WGAN-GP (and
    drift_penalty for ProGAN), or call clip_weights after each critic step.

    Args:
        real_scores: critic values on real images, a non-empty float tensor, batch first.
        fake_scores: critic values on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return _f(fake_scores, "fake_scores").mean() - _f(real_scores, "real_scores").mean()


def wgan_g_loss(fake_scores) -> torch.Tensor:
    """-mean D(x~).

    Args:
        fake_scores: critic values on generated images, a non-empty float tensor, batch first.

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return -_f(fake_scores, "fake_scores").mean()


@torch.no_grad()
def clip_weights(module: nn.Module, c: float = 0.01) -> None:
    """Clamp every parameter of `module` to [-c, c] in place (WGAN's critic constraint, applied
    after every critic step; the paper uses c = 0.01).

    Args:
        module: the critic, a torch.nn.Module (all its parameters are clamped).
        c: the bound, a finite number > 0.

    Returns:
        None; the parameters change in place.
    """
    _checks.module(module, "module")
    c = C_.check_number(c, "c", low=0.0, low_open=True)
    for p in module.parameters():
        p.clamp_(-c, c)


# --- LSGAN (Mao et al. 2017)

def lsgan_d_loss(real_scores, fake_scores, *, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
    """1/2 mean (D(x) - b)^2 + 1/2 mean (D(x~) - a)^2.

    Args:
        real_scores: D's outputs on real images, a non-empty float tensor, batch first.
        fake_scores: D's outputs on generated images, the same (the batch may differ).
        a, b: the targets of fake and real images (finite numbers).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    a, b = C_.check_number(a, "a"), C_.check_number(b, "b")
    return 0.5 * (r - b).square().mean() + 0.5 * (f - a).square().mean()


def lsgan_g_loss(fake_scores, *, c: float = 1.0) -> torch.Tensor:
    """1/2 mean (D(x~) - c)^2.

    Args:
        fake_scores: D's outputs on generated images, a non-empty float tensor, batch first.
        c: the value G wants D to believe for fakes (a finite number).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    f = _f(fake_scores, "fake_scores")
    return 0.5 * (f - C_.check_number(c, "c")).square().mean()


# --- hinge (Lim & Ye 2017; SAGAN, BigGAN)

def hinge_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """mean relu(1 - D(x)) + mean relu(1 + D(x~)).

    Args:
        real_scores: D's outputs on real images, a non-empty float tensor, batch first.
        fake_scores: D's outputs on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()


def hinge_g_loss(fake_scores) -> torch.Tensor:
    """-mean D(x~).

    Args:
        fake_scores: D's outputs on generated images, a non-empty float tensor, batch first.

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return -_f(fake_scores, "fake_scores").mean()


# --- relativistic average (Jolicoeur-Martineau 2018): G's loss is D's with real and fake swapped

def _rasgan(a, b) -> torch.Tensor:
    """mean -log sigmoid(a - mean b) + mean -log(1 - sigmoid(b - mean a))."""
    return F.softplus(-(a - b.mean())).mean() + F.softplus(b - a.mean()).mean()


def _ralsgan(a, b) -> torch.Tensor:
    """mean (a - mean b - 1)^2 + mean (b - mean a + 1)^2."""
    return (a - b.mean() - 1.0).square().mean() + (b - a.mean() + 1.0).square().mean()


def ragan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaSGAN: mean -log sigmoid(C(x) - mean C(x~)) + mean -log(1 - sigmoid(C(x~) - mean C(x))).

    Args:
        real_scores: critic outputs C(x) on real images, a non-empty float tensor, batch first.
        fake_scores: critic outputs C(x~) on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return _rasgan(_f(real_scores, "real_scores"), _f(fake_scores, "fake_scores"))


def ragan_g_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaSGAN: mean -log sigmoid(C(x~) - mean C(x)) + mean -log(1 - sigmoid(C(x) - mean C(x~))).

    Args:
        real_scores: C(x) on real images, a non-empty float tensor, batch first (may be
            detached: gradients reach G through fake_scores).
        fake_scores: C(x~) on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return _rasgan(f, r)


def ralsgan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaLSGAN: mean (C(x) - mean C(x~) - 1)^2 + mean (C(x~) - mean C(x) + 1)^2.

    Args:
        real_scores: critic outputs C(x) on real images, a non-empty float tensor, batch first.
        fake_scores: critic outputs C(x~) on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    return _ralsgan(_f(real_scores, "real_scores"), _f(fake_scores, "fake_scores"))


def ralsgan_g_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaLSGAN: mean (C(x~) - mean C(x) - 1)^2 + mean (C(x) - mean C(x~) + 1)^2.

    Args:
        real_scores: C(x) on real images, a non-empty float tensor, batch first (may be
            detached: gradients reach G through fake_scores).
        fake_scores: C(x~) on generated images, the same (the batch may differ).

    Returns:
        0-d tensor (fp32 for fp16/bf16 scores).
    """
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return _ralsgan(f, r)


# --- BEGAN (Berthelot et al. 2017): D is an autoencoder; the "scores" are its per-sample
# reconstruction losses L(v) = |v - D(v)| (L1, one value per sample).

def began_d_loss(real_recon, fake_recon, k: float) -> torch.Tensor:
    """mean L(x) - k mean L(G(z_D)).

    Args:
        real_recon: D's reconstruction losses L(x) on real images, a non-empty float tensor
            (one value per sample, e.g. [N]).
        fake_recon: L(G(z_D)) on generated images, the same.
        k: the control variable k_t, a number in [0, 1] (start at 0; `began_update_k` returns
            the next); a one-element tensor is read with a host sync.

    Returns:
        0-d tensor (fp32 for fp16/bf16 inputs).
    """
    r, f = _f(real_recon, "real_recon"), _f(fake_recon, "fake_recon")
    return r.mean() - _k(k) * f.mean()


def began_g_loss(fake_recon) -> torch.Tensor:
    """mean L(G(z_G)).

    Args:
        fake_recon: D's reconstruction losses on generated images, a non-empty float tensor.

    Returns:
        0-d tensor (fp32 for fp16/bf16 inputs).
    """
    return _f(fake_recon, "fake_recon").mean()


@torch.no_grad()
def began_update_k(k: float, real_recon, fake_recon, *, gamma: float = 0.5,
                   lambda_k: float = 1e-3) -> tuple[float, float]:
    """The proportional control of BEGAN: k_next = clip(k + lambda_k (gamma L(x) - L(G(z_G))),
    0, 1) and the convergence measure M = L(x) + |gamma L(x) - L(G(z_G))| (means over the batch).

    Args:
        k: the current k_t, a number (or one-element tensor) in [0, 1].
        real_recon: L(x) on real images, a non-empty float tensor (one value per sample).
        fake_recon: L(G(z_G)) on the generator step's fakes, the same.
        gamma: the diversity ratio E[L(G(z))] / E[L(x)] the controller aims at, in [0, 1].
        lambda_k: the controller's gain, >= 0 (the paper: 0.001).

    Returns:
        (k_next, M) as Python floats (one host sync).
    """
    k = _k(k)
    gamma = C_.check_number(gamma, "gamma", low=0.0, high=1.0)
    lambda_k = C_.check_number(lambda_k, "lambda_k", low=0.0)
    lr = _f(real_recon, "real_recon").mean()
    lf = _f(fake_recon, "fake_recon").mean()
    balance = (gamma * lr - lf).item()
    k_next = min(max(k + lambda_k * balance, 0.0), 1.0)
    return k_next, lr.item() + abs(balance)
