"""The training command's options: parsing, device-dependent defaults, checks, the schedule of
batch sizes and learning rates per resolution.

Defaults on a GPU are the paper's (official widths, 600 kimg of fade-in and 600 of stabilization
per resolution, the official 1-GPU batch sizes). On a CPU they shrink to a run that finishes in
minutes on two cores: 16x16, narrow networks, a few kimg per phase, batch 32, learning rate 0.003.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from .. import BACKENDS

LOSSES = ("wgan-gp", "logistic", "hinge", "lsgan", "ragan")

# progressive_growing_of_gans, config.py, preset-v2-1gpu: minibatch per resolution (base 4) and
# learning rates (0.001 except where listed), for both G and D.
OFFICIAL_BATCH = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
OFFICIAL_LR = {1024: 0.0015}
BASE_LR = 0.001
MBSTD_GROUP = 4
# The short CPU run at tiny widths learns visibly in minutes only with a larger step.
CPU_LR = 0.003

# Options that change what is trained: a checkpoint resumes only under the same values.
RUN_KEYS = ("resolution", "data", "loss", "kimg_per_phase", "batch", "lr_g", "lr_d", "gp_weight",
            "drift", "r1_gamma", "label_smoothing", "ema_beta", "fmap_base", "fmap_max", "seed",
            "amp", "world_size")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; `None` fields take device-dependent defaults
    (`resolve_defaults`)."""

    out: str = "fastgan-run"
    data: str | None = None
    resolution: int | None = None
    kimg_per_phase: float | None = None
    loss: str = "wgan-gp"
    batch: int | None = None
    lr_g: float | None = None
    lr_d: float | None = None
    gp_weight: float = 10.0
    drift: float = 1e-3
    r1_gamma: float | None = None
    label_smoothing: float = 0.1
    ema_beta: float = 0.999
    fmap_base: int | None = None
    fmap_max: int | None = None
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    device: str = "auto"
    backend: str | None = None
    seed: int = 0
    log_every: int = 10
    checkpoint_kimg: float | None = None
    metric_images: int | None = None
    resume: str | None = None
    world_size: int = 1

    def batch_for(self, resolution: int) -> int:
        """Global batch (all processes together) at `resolution`."""
        return self.batch if self.batch is not None else OFFICIAL_BATCH.get(resolution, 4)

    def lr_for(self, resolution: int) -> tuple[float, float]:
        """(G, D) learning rates at `resolution`."""
        official = OFFICIAL_LR.get(resolution, BASE_LR)
        return (self.lr_g if self.lr_g is not None else official,
                self.lr_d if self.lr_d is not None else official)

    def run_values(self) -> dict:
        """The values a resumed run must share with its checkpoint."""
        return {k: getattr(self, k) for k in RUN_KEYS}


def parse_args(argv=None) -> TrainConfig:
    """Command-line arguments -> TrainConfig (defaults not yet resolved).

    Args:
        argv: the arguments (default: sys.argv[1:]).
    Returns:
        TrainConfig.
    """
    p = argparse.ArgumentParser(
        prog="python -m fastgan.train",
        description="Train ProGAN with progressive growing on fastgan's kernels. With no "
                    "arguments: colored discs drawn in code, outputs in ./fastgan-run.")
    a = p.add_argument
    a("--out", default="fastgan-run", help="output folder (samples, plot, log, checkpoint)")
    a("--data", default=None, help="folder of images (any size; center-cropped and resized); "
                                    "default: colored discs drawn in code")
    a("--resolution", type=int, default=None,
      help="final resolution, a power of two >= 8 (default: 128 on a GPU, 16 on a CPU)")
    a("--kimg-per-phase", type=float, default=None,
      help="thousands of images for each fade-in and each stabilization (default: 600 on a GPU, "
           "the paper's; 15 on a CPU)")
    a("--loss", choices=LOSSES, default="wgan-gp",
      help="wgan-gp: WGAN + gradient penalty + drift (ProGAN); logistic: non-saturating with "
           "one-sided label smoothing and R1; hinge; lsgan; ragan (relativistic average)")
    a("--batch", type=int, default=None,
      help="global batch at every resolution (default: the official per-resolution sizes on a "
           "GPU, 32 on a CPU)")
    a("--lr-g", type=float, default=None,
      help="G learning rate (default: official, 0.001; 0.003 on a CPU)")
    a("--lr-d", type=float, default=None,
      help="D learning rate (default: official, 0.001; 0.003 on a CPU)")
    a("--gp-weight", type=float, default=10.0, help="wgan-gp: gradient penalty weight")
    a("--drift", type=float, default=1e-3, help="wgan-gp: drift weight")
    a("--r1-gamma", type=float, default=None,
      help="R1 weight for the other losses (default: 10 for logistic, 0 otherwise)")
    a("--label-smoothing", type=float, default=0.1,
      help="logistic: real target 1 - this (one-sided label smoothing)")
    a("--ema-beta", type=float, default=0.999, help="G's exponential moving average")
    a("--fmap-base", type=int, default=None, help="widths min(fmap_base / 2^stage, fmap_max); "
                                                   "default 8192 on a GPU, 256 on a CPU")
    a("--fmap-max", type=int, default=None, help="default 512 on a GPU, 32 on a CPU")
    a("--amp", action="store_true", help="bf16 autocast")
    a("--compile", action="store_true", help="torch.compile G and D (the penalty pass stays "
                                             "eager, as fastgan.penalties does it)")
    a("--channels-last", action="store_true")
    a("--device", default="auto",
      help="auto | cpu | cuda (torchrun: one GPU per process). On a CPU the run uses one "
           "thread unless OMP_NUM_THREADS is set: its networks are too small for more to help, "
           "and OpenMP's spinning threads slow a shared machine down many times")
    a("--backend", default=None, choices=BACKENDS, help="fastgan backend (default: auto)")
    a("--seed", type=int, default=0)
    a("--log-every", type=int, default=10, help="steps between log lines")
    a("--checkpoint-kimg", type=float, default=None,
      help="kimg between checkpoints, besides every phase end (default: half a phase)")
    a("--metric-images", type=int, default=None,
      help="images per set for the sliced Wasserstein distance (default: 2048 on a GPU, fewer "
           "above 128x128; 256 on a CPU)")
    a("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
      help="continue the run in --out (or from CHECKPOINT) where it stopped")
    ns = p.parse_args(argv)
    return TrainConfig(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)
                          if hasattr(ns, f.name)})


def resolve_defaults(cfg: TrainConfig, gpu: bool, world_size: int) -> TrainConfig:
    """Fill the `None` fields for a GPU or CPU run of `world_size` processes.

    Args:
        cfg: parsed options.
        gpu: whether the run trains on CUDA devices.
        world_size: number of processes.
    Returns:
        a new TrainConfig with every default filled in.
    """
    def pick(value, on_gpu, on_cpu):
        return value if value is not None else (on_gpu if gpu else on_cpu)

    kimg = pick(cfg.kimg_per_phase, 600.0, 15.0)
    return dataclasses.replace(
        cfg,
        resolution=pick(cfg.resolution, 128, 16),
        kimg_per_phase=kimg,
        batch=pick(cfg.batch, None, 32),
        lr_g=pick(cfg.lr_g, None, CPU_LR),
        lr_d=pick(cfg.lr_d, None, CPU_LR),
        r1_gamma=cfg.r1_gamma if cfg.r1_gamma is not None else
        (10.0 if cfg.loss == "logistic" else 0.0),
        fmap_base=pick(cfg.fmap_base, 8192, 256),
        fmap_max=pick(cfg.fmap_max, 512, 32),
        checkpoint_kimg=cfg.checkpoint_kimg if cfg.checkpoint_kimg is not None else kimg / 2,
        metric_images=pick(cfg.metric_images, _gpu_metric_images(pick(cfg.resolution, 128, 16)),
                           256),
        world_size=world_size,
    )


def _gpu_metric_images(resolution: int) -> int:
    """2048 images per set, fewer above 128x128 so that each set stays near 0.5 GiB (>= 256)."""
    return max(256, min(2048, 2**27 // (3 * resolution * resolution)))


def check(cfg: TrainConfig) -> None:
    """Refuse bad values (resolved config) with what to do, before any work.

    Args:
        cfg: a resolved TrainConfig.
    Raises:
        ValueError naming the option.
    """
    r = cfg.resolution
    if r < 8 or r & (r - 1):
        raise ValueError(f"--resolution must be a power of two >= 8 (8, 16, 32, ..., 1024), "
                         f"got {r}")
    if not (math.isfinite(cfg.kimg_per_phase) and cfg.kimg_per_phase > 0):
        raise ValueError(f"--kimg-per-phase must be > 0, got {cfg.kimg_per_phase}")
    res = 4
    while res <= r:
        b = cfg.batch_for(res)
        if b < 1 or b % cfg.world_size or (b // cfg.world_size) % MBSTD_GROUP:
            raise ValueError(
                f"--batch: the batch at {res}x{res} is {b}; it must split into {cfg.world_size} "
                f"process(es) of a multiple of {MBSTD_GROUP} images each (the minibatch-stddev "
                f"group): pass --batch as a multiple of {MBSTD_GROUP * cfg.world_size}")
        res *= 2
    positive = {"--lr-g": cfg.lr_g, "--lr-d": cfg.lr_d, "--checkpoint-kimg": cfg.checkpoint_kimg,
                "--metric-images": cfg.metric_images, "--log-every": cfg.log_every,
                "--fmap-base": cfg.fmap_base, "--fmap-max": cfg.fmap_max}
    for name, v in positive.items():
        if v is not None and not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    nonneg = {"--gp-weight": cfg.gp_weight, "--drift": cfg.drift, "--r1-gamma": cfg.r1_gamma}
    for name, v in nonneg.items():
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0.0 <= cfg.ema_beta < 1.0:
        raise ValueError(f"--ema-beta must be in [0, 1), got {cfg.ema_beta}")
