"""Quality metrics that need no download: the sliced Wasserstein distance of ProGAN.

Karras et al. 2017, section 5: each image is split into a Laplacian pyramid (a 5x5 binomial
filter, [1, 4, 6, 4, 1]^2 / 256, mirrored borders; the finest levels are band-pass, the coarsest
is the low-pass image). From every level, 7x7 neighbourhoods (7 * 7 * C values each) are taken
at random places, each set of descriptors is normalized by its own per-channel mean and standard
deviation, and the two sets are compared by the sliced Wasserstein distance: project both on
random unit directions, sort each projection, and average |a_sorted - b_sorted| over the samples
and the directions (the 1-D earth mover's distance of equal-size sets). Levels run from the full
resolution down to 16x16, as in the paper (smaller images get one level); the paper reports
values x 1e3. Lower is better; a set against itself gives about 0.

    from fastgan.metrics import sliced_wasserstein
    swd = sliced_wasserstein(real, fake)          # images [N, C, H, W], any range
    swd.mean, swd.per_level                       # float, {resolution: float}
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["SlicedWasserstein", "sliced_wasserstein", "laplacian_pyramid"]

PATCH = 7
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


class SlicedWasserstein(NamedTuple):
    """`per_level` maps each pyramid level's resolution to its distance; `mean` averages them."""

    per_level: dict
    mean: float


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device)
    k = torch.outer(k, k) / 256.0
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(x, k.expand(c, 1, 5, 5), groups=c)


def _down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, size[0], size[1])
    up[:, :, ::2, ::2] = x
    return _blur(up) * 4.0


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """`levels` images, finest first: images - up(down(images)), ..., then the low-pass rest.

    Args:
        images: [N, C, H, W] floating point, H and W divisible by 2^(levels - 1).
        levels: number of levels, >= 1 (1 gives the images themselves).
    Returns:
        list of tensors [N, C, H / 2^l, W / 2^l], l = 0 .. levels - 1.
    """
    out = [images]
    for _ in range(1, levels):
        low = _down(out[-1])
        out[-1] = out[-1] - _up(low, out[-1].shape[-2:])
        out.append(low)
    return out


def _patches(level: torch.Tensor, per_image: int | None,
             generator: torch.Generator) -> torch.Tensor:
    """[N * per_image, C, 7, 7] neighbourhoods centred at uniformly random places (per_image
    None: every neighbourhood that fits, in raster order)."""
    n, c, h, w = level.shape
    if per_image is None:
        tiles = level.unfold(2, PATCH, 1).unfold(3, PATCH, 1)  # [N, C, H-6, W-6, 7, 7]
        return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, PATCH, PATCH)
    half = PATCH // 2
    ys = torch.randint(half, h - half, (n, per_image), generator=generator).to(level.device)
    xs = torch.randint(half, w - half, (n, per_image), generator=generator).to(level.device)
    offs = torch.arange(-half, half + 1, device=level.device)
    rows = (ys[..., None] + offs).view(n, per_image, 1, PATCH, 1)
    cols = (xs[..., None] + offs).view(n, per_image, 1, 1, PATCH)
    imgs = torch.arange(n, device=level.device).view(n, 1, 1, 1, 1)
    chans = torch.arange(c, device=level.device).view(1, 1, c, 1, 1)
    return level[imgs, chans, rows, cols].reshape(n * per_image, c, PATCH, PATCH)


def _normalize(desc: torch.Tensor) -> torch.Tensor:
    """Per-channel zero mean and unit std over all descriptors and pixels; flattened [M, D]."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-12)
    return desc.flatten(1)


def _directions(dim: int, count: int, generator: torch.Generator, device) -> torch.Tensor:
    d = torch.randn(dim, count, generator=generator, dtype=torch.float64).to(device)
    return d / d.norm(dim=0, keepdim=True)


def _swd(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> float:
    # Projections as [P, M] in fp32: sorting along the contiguous dim is several times faster.
    dirs = directions.t().float()
    pa = torch.sort(dirs @ a.float().t(), dim=1).values
    pb = torch.sort(dirs @ b.float().t(), dim=1).values
    return (pa - pb).abs().mean().item()


def _check(real, fake):
    for name, t in (("real", real), ("fake", fake)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise ValueError(f"{name} must be a floating-point tensor [N, C, H, W], got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake must have the same [C, H, W], got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if real.shape[0] != fake.shape[0] or real.shape[0] == 0:
        raise ValueError(f"real and fake must hold the same number (>= 1) of images, got "
                         f"{real.shape[0]} and {fake.shape[0]}")
    if min(real.shape[-2:]) < PATCH:
        raise ValueError(f"images must be at least {PATCH}x{PATCH}, got {tuple(real.shape[-2:])}")


def _default_levels(h: int, w: int) -> int:
    levels, size = 1, min(h, w)
    while size // 2 >= 16 and size % 2 == 0:
        levels, size = levels + 1, size // 2
    return levels


@torch.no_grad()
def sliced_wasserstein(real: torch.Tensor, fake: torch.Tensor, *, levels: int | None = None,
                       patches: int | None = 128, projections: int | torch.Tensor = 512,
                       seed: int = 0) -> SlicedWasserstein:
    """ProGAN's multi-scale sliced Wasserstein distance between two sets of images.

    Args:
        real, fake: [N, C, H, W] images (same shape, H and W >= 7), any value range.
        levels: Laplacian pyramid levels, finest first; default: H, H/2, ... down to 16 (>= 1).
        patches: 7x7 neighbourhoods drawn per image and level (the paper: 128); None takes
            every neighbourhood (exact for small images).
        projections: number of random unit directions per level (the paper: 512), or a
            [7 * 7 * C, P] tensor of unit directions used at every level.
        seed: seeds the patch places and directions (same seed, same estimate).
    Returns:
        SlicedWasserstein(per_level={resolution: distance}, mean=average over the levels).
    """
    _check(real, fake)
    n, c, h, w = real.shape
    if levels is None:
        levels = _default_levels(h, w)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an int >= 1, got {levels!r}")
    if h % 2 ** (levels - 1) or w % 2 ** (levels - 1) or min(h, w) >> (levels - 1) < PATCH:
        raise ValueError(f"levels={levels} is too many for {h}x{w} images (each level halves "
                         f"them and must stay >= {PATCH}x{PATCH})")
    if patches is not None and (isinstance(patches, bool) or not isinstance(patches, int)
                                or patches < 1):
        raise ValueError(f"patches must be an int >= 1 or None, got {patches!r}")
    dim = c * PATCH * PATCH
    if isinstance(projections, torch.Tensor):
        if projections.dim() != 2 or projections.shape[0] != dim:
            raise ValueError(f"projections must be [{dim}, P] directions, got shape "
                             f"{tuple(projections.shape)}")
    elif isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be an int >= 1 or a tensor, got {projections!r}")

    gen = torch.Generator().manual_seed(seed)
    real_pyr = laplacian_pyramid(real.double(), levels)
    fake_pyr = laplacian_pyramid(fake.double(), levels)
    per_level = {}
    for lr, lf in zip(real_pyr, fake_pyr):
        a = _normalize(_patches(lr, patches, gen))
        b = _normalize(_patches(lf, patches, gen))
        dirs = (projections.to(a) if isinstance(projections, torch.Tensor)
                else _directions(dim, projections, gen, a.device))
        per_level[lr.shape[-1]] = _swd(a, b, dirs)
    return SlicedWasserstein(per_level, sum(per_level.values()) / len(per_level))
