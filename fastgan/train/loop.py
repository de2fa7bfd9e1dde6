"""The training loop: progressive growing ProGAN with fastgan's models, losses and penalties.

`run(cfg)` checks everything (options, output folder, checkpoint, data) before any training,
then alternates one D step and one G step per minibatch, following the growing schedule
(`schedule.py`). At every phase end (and at the start) it measures the sliced Wasserstein
distance between real images and samples of G's moving average, and writes the sample grid,
the plot and a checkpoint; it also checkpoints every `checkpoint_kimg`.

Randomness comes from four torch.Generators (data, latents, penalty mixing, evaluation) seeded
from --seed and saved in every checkpoint, so a resumed run repeats the uninterrupted one
exactly (on the CPU). Adam's state is reset when a fade-in or a stabilization starts
(the official code's reset_opt_for_new_lod).
"""

from __future__ import annotations

import copy
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import fastgan

from ..metrics import sliced_wasserstein
from ..models.progan import Discriminator, Generator, fade_images
from . import checkpoints, outputs
from .config import TrainConfig, check, resolve_defaults
from .data import make_source
from .distributed import World, setup
from .schedule import Schedule
from .steps import d_step, g_step, update_ema

ADAM_BETAS = (0.0, 0.99)
GRID_IMAGES = 16
LOSS_KEYS = ("loss_d", "loss_g", "gp", "drift", "r1", "real_score", "fake_score")


def ema_beta_at(beta: float, step: int) -> float:
    """The EMA decay after `step` G updates: min(beta, (1 + step) / (10 + step)), the warm-up of
    tf.train.ExponentialMovingAverage, so that short runs are not dominated by the initial G."""
    return min(beta, (1.0 + step) / (10.0 + step))


def _check_out(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from, or None; refuses an output folder holding another run."""
    ckpt_path = os.path.join(cfg.out, checkpoints.CHECKPOINT)
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"--out {cfg.out!r} is a file, not a folder")
    if cfg.resume is not None:
        return cfg.resume or ckpt_path
    if os.path.isfile(os.path.join(cfg.out, outputs.LOG)) or os.path.isfile(ckpt_path):
        raise ValueError(f"--out {cfg.out!r} already holds a run ({outputs.LOG} / "
                         f"{checkpoints.CHECKPOINT}): pass --resume to continue it, or choose "
                         "another --out")
    return None


class Trainer:
    """Holds a run's networks, optimizers, generators and counters; `train()` runs it."""

    def __init__(self, cfg: TrainConfig, world: World):
        self.world, self.device = world, world.device
        gpu = world.device.type == "cuda"
        self.cfg = cfg = resolve_defaults(cfg, gpu, world.size)
        check(cfg)
        resume = _check_out(cfg)
        ckpt = checkpoints.load(resume) if resume is not None else None
        if ckpt is not None:
            diff = checkpoints.differences(ckpt["run"], cfg.run_values())
            if diff:
                raise ValueError("--resume: the checkpoint comes from another configuration ("
                                 + "; ".join(diff) + "): rerun with the checkpoint's values, or "
                                 "start a new run in another --out")
        self.source = make_source(cfg.data, cfg.resolution)
        world.barrier()  # every process has checked before rank 0 writes anything

        if cfg.backend:
            fastgan.set_backend(cfg.backend)
        self.schedule = Schedule(cfg.resolution, cfg.kimg_per_phase)
        self._build_networks()
        seeds = {name: cfg.seed * 16 + i for i, name in
                 enumerate(("data", "latents", "mixing", "eval"))}
        self.gens = {name: torch.Generator().manual_seed(s) for name, s in seeds.items()}
        self.images, self.step, self.segment, self.swd_start = 0, 0, 0, None
        self._make_eval_sets()
        self.log = outputs.JsonLog(os.path.join(cfg.out, outputs.LOG))
        if ckpt is not None:
            self._restore(ckpt)
        self.metric_kwargs = dict(patches=128, projections=512) if gpu else \
            dict(patches=64, projections=128)

    # -- setup ----------------------------------------------------------------------------

    def _build_networks(self):
        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        widths = dict(fmap_base=cfg.fmap_base, fmap_max=cfg.fmap_max, growing=True)
        self.G = Generator(cfg.resolution, **widths).to(dev)
        self.D = Discriminator(cfg.resolution, **widths).to(dev)
        if cfg.channels_last:
            self.G = self.G.to(memory_format=torch.channels_last)
            self.D = self.D.to(memory_format=torch.channels_last)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        lr_g, lr_d = cfg.lr_for(4)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=ADAM_BETAS, eps=1e-8)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=ADAM_BETAS, eps=1e-8)
        self.g_plain = torch.compile(self.G) if cfg.compile else self.G
        self.d_plain = torch.compile(self.D) if cfg.compile else self.D
        self.g_train, self.d_train = self.g_plain, self.d_plain
        if self.world.size > 1:
            # Growing leaves the layers of other resolutions unused at each step.
            ids = [dev] if dev.type == "cuda" else None
            self.g_train = DistributedDataParallel(self.g_plain, device_ids=ids,
                                                   find_unused_parameters=True)
            self.d_train = DistributedDataParallel(self.d_plain, device_ids=ids,
                                                   find_unused_parameters=True)

    def _make_eval_sets(self):
        """Fixed latents and real images for the grids and the metric (from --seed alone)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 16 + 8)
        full = cfg.resolution
        self.grid_z = torch.randn(GRID_IMAGES, self.G.latent_size, generator=g)
        self.grid_reals = self.source.batch(GRID_IMAGES, full, g)
        self.eval_z = torch.randn(cfg.metric_images, self.G.latent_size, generator=g)
        self.eval_reals = self.source.batch(cfg.metric_images, full, g)

    def _restore(self, ckpt):
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.G_ema.load_state_dict(ckpt["G_ema"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        checkpoints.restore_rng(ckpt["rng"], self.gens)
        self.images, self.step = ckpt["images"], ckpt["step"]
        self.segment, self.swd_start = ckpt["segment"], ckpt["swd_start"]
        if self.world.main:
            os.makedirs(self.cfg.out, exist_ok=True)  # --resume CHECKPOINT into a new --out
            self.log.truncate_after(self.step)

    def _checkpoint(self):
        if self.world.main:
            checkpoints.save(os.path.join(self.cfg.out, checkpoints.CHECKPOINT), {
                "run": self.cfg.run_values(), "images": self.images, "step": self.step,
                "segment": self.segment, "swd_start": self.swd_start,
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "rng": checkpoints.rng_states(self.gens),
                "fastgan": fastgan.__version__})
        self.world.barrier()

    # -- evaluation -------------------------------------------------------------------------

    @torch.no_grad()
    def samples(self, z: torch.Tensor, resolution: int, alpha: float) -> torch.Tensor:
        """G_ema's images for latents z at a stage, upsampled (nearest) to the final resolution,
        as the network's output is shown (CPU, fp32)."""
        out = []
        for chunk in z.split(64):
            x = self.G_ema(chunk.to(self.device), resolution=resolution, alpha=alpha).float()
            out.append(F.interpolate(x, size=self.cfg.resolution, mode="nearest").cpu())
        return torch.cat(out)

    def evaluate(self, event: str, stage) -> dict:
        """Sliced Wasserstein distance (real vs G_ema samples at the final resolution), logged;
        at a phase end also the sample grid and the plot."""
        fakes = self.samples(self.eval_z, stage.resolution, stage.alpha)
        swd = sliced_wasserstein(self.eval_reals.to(self.device), fakes.to(self.device),
                                 seed=self.cfg.seed, **self.metric_kwargs)
        record = {"event": event, "step": self.step, "kimg": self.images / 1000.0,
                  "phase": stage.phase, "resolution": stage.resolution, "swd": swd.mean,
                  "swd_levels": {str(k): v for k, v in swd.per_level.items()}}
        if event == "phase_end":
            grid = self.samples(self.grid_z, stage.resolution, stage.alpha)
            name = f"samples-phase{stage.phase}-{stage.resolution}x{stage.resolution}.png"
            if outputs.save_grid(os.path.join(self.cfg.out, name), grid, self.grid_reals):
                record["grid"] = name
        self.log.write(record)
        if event == "phase_end":
            outputs.save_plot(os.path.join(self.cfg.out, outputs.PLOT), self.log.records())
        return record

    # -- training ---------------------------------------------------------------------------

    def _batch(self, stage):
        cfg, w = self.cfg, self.world
        n = cfg.batch_for(stage.resolution)
        real = fade_images(self.source.batch(n, stage.resolution, self.gens["data"]), stage.alpha)
        z_d = torch.randn(n, self.G.latent_size, generator=self.gens["latents"])
        z_g = torch.randn(n, self.G.latent_size, generator=self.gens["latents"])
        eps = torch.rand(n, generator=self.gens["mixing"])
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        real = w.slice(real).to(self.device, non_blocking=True).contiguous(memory_format=fmt)
        return n, real, *(w.slice(t).to(self.device, non_blocking=True) for t in (z_d, z_g, eps))

    def _set_segment(self, stage):
        segment = 2 * stage.phase - int(stage.fading)
        if segment != self.segment:
            self.opt_g.state.clear()
            self.opt_d.state.clear()
            self.segment = segment
        lr_g, lr_d = self.cfg.lr_for(stage.resolution)
        for group in self.opt_g.param_groups:
            group["lr"] = lr_g
        for group in self.opt_d.param_groups:
            group["lr"] = lr_d

    def train_step(self, stage) -> dict:
        """One D step and one G step at `stage`; returns their losses (0-d tensors)."""
        self._set_segment(stage)
        n, real, z_d, z_g, eps = self._batch(stage)
        out = d_step(self.d_train, self.g_plain, self.opt_d, real, z_d, eps, alpha=stage.alpha,
                     cfg=self.cfg, amp=self.cfg.amp)
        out.update(g_step(self.g_train, self.d_plain, self.opt_g, z_g, real, alpha=stage.alpha,
                          cfg=self.cfg, amp=self.cfg.amp))
        update_ema(self.G_ema, self.G, ema_beta_at(self.cfg.ema_beta, self.step))
        self.images += n
        self.step += 1
        return out

    def _log_step(self, stage, losses, rate, bar):
        keys = [k for k in LOSS_KEYS if k in losses]
        values = self.world.mean(torch.stack([losses[k].float() for k in keys])).tolist()
        lr_g, lr_d = self.cfg.lr_for(stage.resolution)
        record = {"step": self.step, "kimg": self.images / 1000.0, "phase": stage.phase,
                  "resolution": stage.resolution, "alpha": stage.alpha,
                  "batch": self.cfg.batch_for(stage.resolution), "lr_g": lr_g, "lr_d": lr_d,
                  **dict(zip(keys, values)), "img_per_s": rate}
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite {', '.join(bad)} at step {self.step} "
                                     f"(kimg {record['kimg']:.2f}): {record}")
        if self.world.main:
            self.log.write(record)
            bar.update(record["kimg"], {"phase": stage.phase, "res": stage.resolution,
                                        "alpha": stage.alpha, "img/s": rate,
                                        "D": record["loss_d"], "G": record["loss_g"]})

    def train(self) -> dict:
        """Train to the end of the schedule (or on from the checkpoint).

        Returns:
            dict: images, steps, seconds, swd_start, swd_end, out.
        """
        cfg, sched, main = self.cfg, self.schedule, self.world.main
        if main:
            os.makedirs(cfg.out, exist_ok=True)
        self.world.barrier()
        if self.images == 0 and main:
            self.swd_start = self.evaluate("start", sched.at(0))["swd"]
        ckpt_images = cfg.checkpoint_kimg * 1000.0
        next_ckpt = (math.floor(self.images / ckpt_images) + 1) * ckpt_images
        bar = outputs.Progress(sched.total_images / 1000.0, self.images / 1000.0, main)
        t0 = t_log = time.perf_counter()
        images_log, paused, swd_end = self.images, 0.0, None  # paused: evaluation, checkpoints
        try:
            while self.images < sched.total_images:
                stage = sched.at(self.images)
                losses = self.train_step(stage)
                phase_done = self.images >= sched.phase_end(stage.phase)
                if self.step % cfg.log_every == 0 or phase_done:
                    now = time.perf_counter()
                    rate = (self.images - images_log) / max(now - t_log - paused, 1e-9)
                    self._log_step(stage, losses, rate, bar)
                    t_log, images_log, paused = now, self.images, 0.0
                t_pause = time.perf_counter()
                if phase_done:
                    if main:
                        swd_end = self.evaluate("phase_end", stage)["swd"]
                    self._checkpoint()
                elif self.images >= next_ckpt:
                    self._checkpoint()
                while next_ckpt <= self.images:
                    next_ckpt += ckpt_images
                paused += time.perf_counter() - t_pause
        finally:
            bar.close()
        if main:
            outputs.save_grid(os.path.join(cfg.out, "samples-final.png"),
                              self.samples(self.grid_z, cfg.resolution, 1.0), self.grid_reals)
        return {"images": self.images, "steps": self.step, "seconds": time.perf_counter() - t0,
                "swd_start": self.swd_start, "swd_end": swd_end, "out": cfg.out}


def run(cfg: TrainConfig) -> dict:
    """Check, then train; joins torchrun's process group when there is one.

    Args:
        cfg: the options (None fields take device defaults).
    Returns:
        Trainer.train()'s summary.
    """
    world = setup(cfg.device)
    if world.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # see --device's help
    try:
        summary = Trainer(cfg, world).train()
        world.barrier()  # no process tears its group down while another still works (gloo aborts)
        return summary
    finally:
        world.close()
