"""One D step and one G step of ProGAN training, for each loss of the command.

    wgan-gp    L_D = D(x~) - D(x) + gp_weight * GP + drift * D(x)^2;  L_G = -D(x~)   (ProGAN)
    logistic   non-saturating, real target 1 - label_smoothing, + r1_gamma R1
    hinge      relu(1 - D(x)) + relu(1 + D(x~)), L_G = -D(x~); + R1 if r1_gamma > 0
    lsgan      (D(x) - 1)^2 / 2 + D(x~)^2 / 2, L_G = (D(x~) - 1)^2 / 2; + R1 if r1_gamma > 0
    ragan      relativistic average logistic; + R1 if r1_gamma > 0

The networks are callables: `d` and `g` may be DistributedDataParallel (gradients are then
all-reduced in backward); `d_plain` and `g_plain` are the same networks without DDP, used where
no gradient of their parameters is wanted (G during the D step, D during the G step).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import losses as L
from .. import penalties as P


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters of `module` need no gradient inside the block (D during the G step)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def d_step(d, g_plain, opt_d, real, z, eps, *, alpha, cfg, amp=False) -> dict:
    """Update D once on `real` and G(z).

    Args:
        d: the discriminator (module or DDP), called as d(x, alpha=alpha).
        g_plain: the generator without DDP, called as g(z, resolution=..., alpha=alpha).
        opt_d: D's optimizer.
        real: real images [N, C, R, R] (already faded for this alpha).
        z: latents [N, latent_size].
        eps: per-sample interpolation weights [N] for the gradient penalty.
        alpha: fade-in of the newest layers.
        cfg: the TrainConfig (loss, weights).
        amp: bf16 autocast.
    Returns:
        dict of 0-d tensors: loss_d and its terms (gp, drift, r1), real and fake score means.
    """
    res = real.shape[-1]
    d_at = functools.partial(d, alpha=alpha)
    with _autocast(real.device, amp):
        with torch.no_grad():
            fake = g_plain(z, resolution=res, alpha=alpha).to(real.dtype)
        fake = fake.contiguous(memory_format=_format_of(real))
        parts = {}
        if cfg.loss == "wgan-gp":
            rs, fs = d_at(real), d_at(fake)
            parts["gp"] = P.gradient_penalty(d_at, real, fake, weight=cfg.gp_weight, epsilon=eps)
            parts["drift"] = P.drift_penalty(rs, cfg.drift)
            loss = L.wgan_d_loss(rs, fs) + parts["gp"] + parts["drift"]
        else:
            if cfg.r1_gamma > 0:
                parts["r1"], rs = P.r1_penalty(d_at, real, gamma=cfg.r1_gamma,
                                               return_scores=True)
            else:
                rs = d_at(real)
            fs = d_at(fake)
            loss = _d_loss(cfg, rs, fs) + parts.get("r1", 0.0)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    parts = {k: v.detach() for k, v in parts.items()}
    return {"loss_d": loss.detach(), **parts, "real_score": rs.detach().float().mean(),
            "fake_score": fs.detach().float().mean()}


def _d_loss(cfg, rs, fs):
    if cfg.loss == "logistic":
        return L.logistic_d_loss(rs, fs, real_target=1.0 - cfg.label_smoothing)
    if cfg.loss == "hinge":
        return L.hinge_d_loss(rs, fs)
    if cfg.loss == "lsgan":
        return L.lsgan_d_loss(rs, fs)
    return L.ragan_d_loss(rs, fs)


def g_step(g, d_plain, opt_g, z, real, *, alpha, cfg, amp=False) -> dict:
    """Update G once on G(z).

    Args:
        g: the generator (module or DDP).
        d_plain: the discriminator without DDP (its parameters are frozen for this step).
        opt_g: G's optimizer.
        z: latents [N, latent_size].
        real: real images of the D step (used by the relativistic loss only).
        alpha, cfg, amp: as d_step.
    Returns:
        dict with the 0-d tensor loss_g.
    """
    res = real.shape[-1]
    with frozen(d_plain), _autocast(real.device, amp):
        fake = g(z, resolution=res, alpha=alpha).contiguous(memory_format=_format_of(real))
        fs = d_plain(fake, alpha=alpha)
        if cfg.loss in ("wgan-gp", "hinge"):
            loss = L.wgan_g_loss(fs)  # = hinge's G loss, -mean D(x~)
        elif cfg.loss == "logistic":
            loss = L.logistic_g_loss(fs)
        elif cfg.loss == "lsgan":
            loss = L.lsgan_g_loss(fs)
        else:
            loss = L.ragan_g_loss(d_plain(real, alpha=alpha), fs)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return {"loss_g": loss.detach()}


def _format_of(x: torch.Tensor):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; buffers copied."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - beta)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
