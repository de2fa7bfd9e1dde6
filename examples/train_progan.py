#!/usr/bin/env python
"""Train a fixed-resolution ProGAN on synthetic colored blobs with WGAN-GP + drift (fastgan).

    python examples/train_progan.py                          # GPU if present: official widths
    python examples/train_progan.py --device cpu --steps 5   # tiny widths on CPU, a few seconds
    python examples/train_progan.py --resolution 128 --amp --compile --channels-last

Everything the paper's loss needs comes from fastgan: the networks (fastgan.models.progan:
equalized-lr convs with fused bias + leaky ReLU, pixel norm, minibatch stddev), the WGAN loss
(fastgan.losses), the gradient penalty and the drift term (fastgan.penalties). Optimizer: Adam
(lr 1e-3, betas (0, 0.99)), one D step per G step, as in ProGAN. No downloads: each batch of
"real" images is drawn on the fly (a few soft colored discs on a dark background, in [-1, 1]).

--compile compiles D and G for their plain passes; the gradient penalty then runs D's eager
original by itself (torch.compile cannot do double backward), so this is safe.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastgan  # noqa: E402
import fastgan.losses as L  # noqa: E402
import fastgan.penalties as P  # noqa: E402
from fastgan.models import Discriminator, Generator  # noqa: E402


def blobs(n: int, resolution: int, *, device, generator: torch.Generator, max_blobs: int = 3):
    """n images [n, 3, R, R] in [-1, 1]: 1..max_blobs soft discs of random color, size, place."""
    k = max_blobs
    coords = torch.linspace(0.0, 1.0, resolution, device=device)
    yy, xx = coords.view(1, 1, -1, 1), coords.view(1, 1, 1, -1)
    u = lambda *shape: torch.rand(*shape, device=device, generator=generator)  # noqa: E731
    cy, cx = u(n, k, 1, 1) * 0.8 + 0.1, u(n, k, 1, 1) * 0.8 + 0.1
    radius = u(n, k, 1, 1) * 0.2 + 0.08
    present = (torch.arange(k, device=device).view(1, k) <
               torch.randint(1, k + 1, (n, 1), device=device, generator=generator)).float()
    dist2 = (yy - cy) ** 2 + (xx - cx) ** 2
    mask = torch.sigmoid((radius**2 - dist2) / (radius**2 * 0.15)) * present.view(n, k, 1, 1)
    color = u(n, k, 3) * 2.0 - 1.0                                      # [n, k, 3] in [-1, 1]
    img = torch.full((n, 3, resolution, resolution), -0.9, device=device)
    for i in range(k):  # later discs paint over earlier ones
        m = mask[:, i:i + 1]
        img = img * (1 - m) + color[:, i].view(n, 3, 1, 1) * m
    return img


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=None,
                   help="power of two >= 4 (default: 64 on GPU, 16 on CPU)")
    p.add_argument("--steps", type=int, default=200, help="training steps (D step + G step)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for D and G")
    p.add_argument("--compile", action="store_true", help="torch.compile D and G (plain passes)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--backend", default=None, choices=fastgan.BACKENDS,
                   help="fastgan backend (default: FASTGAN_BACKEND or auto)")
    p.add_argument("--fmap-base", type=int, default=None,
                   help="widths min(fmap_base / 2^stage, fmap_max); "
                        "default 8192 on GPU, 256 on CPU")
    p.add_argument("--fmap-max", type=int, default=None, help="default 512 on GPU, 32 on CPU")
    p.add_argument("--gp-weight", type=float, default=10.0)
    p.add_argument("--gp-target", type=float, default=1.0)
    p.add_argument("--drift", type=float, default=1e-3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save", default=None, help="save final G, D and a sample batch (torch.save)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    res = args.resolution or (64 if gpu else 16)
    fmap_base = args.fmap_base or (8192 if gpu else 256)
    fmap_max = args.fmap_max or (512 if gpu else 32)
    if args.backend:
        fastgan.set_backend(args.backend)
    torch.manual_seed(args.seed)
    data_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    if gpu:
        torch.backends.cudnn.benchmark = True

    G = Generator(res, fmap_base=fmap_base, fmap_max=fmap_max).to(device)
    D = Discriminator(res, fmap_base=fmap_base, fmap_max=fmap_max).to(device)
    if args.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.0, 0.99), eps=1e-8)
    g_run, d_run = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(f"ProGAN {res}x{res} on {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'})"
          f", batch {args.batch}, widths fmap_base={fmap_base} fmap_max={fmap_max}, "
          f"G {n_params(G) / 1e6:.2f}M / D {n_params(D) / 1e6:.2f}M params, "
          f"amp={'bf16' if args.amp else 'off'}, compile={args.compile}, "
          f"backend={fastgan.get_backend()}", flush=True)

    t_start = time.perf_counter()
    t_log, imgs_log = t_start, 0
    log = {}
    for step in range(1, args.steps + 1):
        # --- D step: WGAN loss + gradient penalty + drift
        real = blobs(args.batch, res, device=device, generator=data_gen)
        real = real.contiguous(memory_format=fmt)
        z = torch.randn(args.batch, G.latent_size, device=device)
        with amp:
            with torch.no_grad():
                fake = g_run(z)
            real_scores, fake_scores = d_run(real), d_run(fake)
            gp = P.gradient_penalty(d_run, real, fake.float(), weight=args.gp_weight,
                                    target=args.gp_target)
            drift = P.drift_penalty(real_scores, args.drift)
            loss_d = L.wgan_d_loss(real_scores, fake_scores) + gp + drift
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        # --- G step
        z = torch.randn(args.batch, G.latent_size, device=device)
        with amp:
            loss_g = L.wgan_g_loss(d_run(g_run(z)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()

        imgs_log += args.batch
        if step % args.log_every == 0 or step == args.steps:
            vals = torch.stack([loss_d.detach(), gp.detach(), drift.detach(), loss_g.detach()])
            ld, lgp, ldr, lg = vals.float().tolist()  # one sync per log line
            now = time.perf_counter()
            print(f"step {step:5d}  loss_d {ld:9.4f}  gp {lgp:8.4f}  drift {ldr:8.5f}  "
                  f"loss_g {lg:9.4f}  {imgs_log / (now - t_log):8.1f} img/s", flush=True)
            t_log, imgs_log = now, 0
            log = {"step": step, "loss_d": ld, "gp": lgp, "drift": ldr, "loss_g": lg}
            if not all(math.isfinite(v) for v in (ld, lgp, ldr, lg)):
                raise FloatingPointError(f"non-finite loss at step {step}: {log}")
    elapsed = time.perf_counter() - t_start
    print(f"done: {args.steps} steps in {elapsed:.1f} s", flush=True)
    if args.save:
        with torch.no_grad():
            sample = G(torch.randn(16, G.latent_size, device=device)).float().cpu()
        torch.save({"G": G.state_dict(), "D": D.state_dict(), "sample": sample,
                    "args": vars(args)}, args.save)
        print(f"saved {args.save}")
    log["seconds"] = elapsed
    return log


if __name__ == "__main__":
    main()
