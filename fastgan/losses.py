"""GAN losses from the literature, as functions of discriminator scores (REFERENCES.md).

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

__all__ = [
    "logistic_d_loss", "logistic_g_loss", "logistic_saturating_g_loss",
    "wgan_d_loss", "wgan_g_loss", "clip_weights",
    "lsgan_d_loss", "lsgan_g_loss",
    "hinge_d_loss", "hinge_g_loss",
    "ragan_d_loss", "ragan_g_loss", "ralsgan_d_loss", "ralsgan_g_loss",
    "began_d_loss", "began_g_loss", "began_update_k",
]


def _f(scores: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{getattr(scores, 'dtype', type(scores).__name__)}")
    if scores.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(scores.shape)})")
    return scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores


# --- non-saturating logistic (Goodfellow et al. 2014; label smoothing: Salimans et al. 2016)

def logistic_d_loss(real_scores, fake_scores, *, real_target: float = 1.0) -> torch.Tensor:
    """mean BCE(sigmoid(D(x)), real_target) + mean BCE(sigmoid(D(x~)), 0):
    real_target 1: softplus(-D(x)) + softplus(D(x~)); one-sided label smoothing: 0.9."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    if not 0.0 <= real_target <= 1.0:
        raise ValueError(f"real_target must be in [0, 1], got {real_target}")
    real_term = real_target * F.softplus(-r) + (1.0 - real_target) * F.softplus(r)
    return real_term.mean() + F.softplus(f).mean()


def logistic_g_loss(fake_scores) -> torch.Tensor:
    """Non-saturating: mean softplus(-D(x~)) = -log sigmoid(D(x~))."""
    return F.softplus(-_f(fake_scores, "fake_scores")).mean()


def logistic_saturating_g_loss(fake_scores) -> torch.Tensor:
    """The original minimax G loss: mean log(1 - sigmoid(D(x~))) = -softplus(D(x~))."""
    return -F.softplus(_f(fake_scores, "fake_scores")).mean()


# --- WGAN (Arjovsky et al. 2017)

def wgan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """mean D(x~) - mean D(x). Add fastgan.penalties.gradient_penalty for WGAN-GP (and
    drift_penalty for ProGAN), or call clip_weights after each critic step."""
    return _f(fake_scores, "fake_scores").mean() - _f(real_scores, "real_scores").mean()


def wgan_g_loss(fake_scores) -> torch.Tensor:
    """-mean D(x~)."""
    return -_f(fake_scores, "fake_scores").mean()


@torch.no_grad()
def clip_weights(module: nn.Module, c: float = 0.01) -> None:
    """Clamp every parameter of `module` to [-c, c] in place (WGAN's critic constraint, applied
    after every critic step; the paper uses c = 0.01)."""
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    for p in module.parameters():
        p.clamp_(-c, c)


# --- LSGAN (Mao et al. 2017)

def lsgan_d_loss(real_scores, fake_scores, *, a: float = 0.0, b: float = 1.0) -> torch.Tensor:
    """1/2 mean (D(x) - b)^2 + 1/2 mean (D(x~) - a)^2."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return 0.5 * (r - b).square().mean() + 0.5 * (f - a).square().mean()


def lsgan_g_loss(fake_scores, *, c: float = 1.0) -> torch.Tensor:
    """1/2 mean (D(x~) - c)^2."""
    return 0.5 * (_f(fake_scores, "fake_scores") - c).square().mean()


# --- hinge (Lim & Ye 2017; SAGAN, BigGAN)

def hinge_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """mean relu(1 - D(x)) + mean relu(1 + D(x~))."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()


def hinge_g_loss(fake_scores) -> torch.Tensor:
    """-mean D(x~)."""
    return -_f(fake_scores, "fake_scores").mean()


# --- relativistic average (Jolicoeur-Martineau 2018)

def ragan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaSGAN: mean -log sigmoid(C(x) - mean C(x~)) + mean -log(1 - sigmoid(C(x~) - mean C(x)))."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return F.softplus(-(r - f.mean())).mean() + F.softplus(f - r.mean()).mean()


def ragan_g_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaSGAN: mean -log sigmoid(C(x~) - mean C(x)) + mean -log(1 - sigmoid(C(x) - mean C(x~))).
    Gradients reach G through fake_scores only (real_scores may be detached)."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return F.softplus(-(f - r.mean())).mean() + F.softplus(r - f.mean()).mean()


def ralsgan_d_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaLSGAN: mean (C(x) - mean C(x~) - 1)^2 + mean (C(x~) - mean C(x) + 1)^2."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return (r - f.mean() - 1.0).square().mean() + (f - r.mean() + 1.0).square().mean()


def ralsgan_g_loss(real_scores, fake_scores) -> torch.Tensor:
    """RaLSGAN: mean (C(x~) - mean C(x) - 1)^2 + mean (C(x) - mean C(x~) + 1)^2."""
    r, f = _f(real_scores, "real_scores"), _f(fake_scores, "fake_scores")
    return (f - r.mean() - 1.0).square().mean() + (r - f.mean() + 1.0).square().mean()


# --- BEGAN (Berthelot et al. 2017): D is an autoencoder; the "scores" are its per-sample
# reconstruction losses L(v) = |v - D(v)| (L1, one value per sample).

def began_d_loss(real_recon, fake_recon, k: float) -> torch.Tensor:
    """mean L(x) - k mean L(G(z_D))."""
    return _f(real_recon, "real_recon").mean() - float(k) * _f(fake_recon, "fake_recon").mean()


def began_g_loss(fake_recon) -> torch.Tensor:
    """mean L(G(z_G))."""
    return _f(fake_recon, "fake_recon").mean()


@torch.no_grad()
def began_update_k(k: float, real_recon, fake_recon, *, gamma: float = 0.5,
                   lambda_k: float = 1e-3) -> tuple[float, float]:
    """The proportional control of BEGAN: returns (k_next, M) with
    k_next = clip(k + lambda_k (gamma L(x) - L(G(z_G))), 0, 1) and the convergence measure
    M = L(x) + |gamma L(x) - L(G(z_G))| (means over the batch; Python floats: one sync)."""
    lr = _f(real_recon, "real_recon").mean()
    lf = _f(fake_recon, "fake_recon").mean()
    balance = (gamma * lr - lf).item()
    k_next = min(max(float(k) + lambda_k * balance, 0.0), 1.0)
    return k_next, lr.item() + abs(balance)
