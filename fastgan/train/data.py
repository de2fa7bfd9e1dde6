"""Training images: colored discs drawn in code (the default: no download), or a folder.

Both hand out batches in [-1, 1] at the current phase's resolution, drawn with a
torch.Generator the caller owns (so a checkpoint of its state resumes the same batches). Images
are made at the final resolution and box-filtered down (2x2 averages, as ProGAN's dataset tool
makes its lower levels).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def draw_discs(n: int, resolution: int, generator: torch.Generator, *, max_discs: int = 3,
               device="cpu") -> torch.Tensor:
    """n images [n, 3, R, R] in [-1, 1]: 1..max_discs soft discs of random color, size and
    place on a dark background, later discs painted over earlier ones.

    Args:
        n: number of images.
        resolution: R.
        generator: the random source (CPU generator).
        max_discs: most discs per image.
        device: where the images go.
    Returns:
        tensor [n, 3, R, R].
    """
    k = max_discs
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    cy, cx = u(n, k, 1, 1) * 0.8 + 0.1, u(n, k, 1, 1) * 0.8 + 0.1
    radius = u(n, k, 1, 1) * 0.2 + 0.08
    count = torch.randint(1, k + 1, (n, 1), generator=generator)
    present = (torch.arange(k).view(1, k) < count).float().view(n, k, 1, 1)
    color = u(n, k, 3) * 2.0 - 1.0
    coords = torch.linspace(0.0, 1.0, resolution)
    dist2 = (coords.view(1, 1, -1, 1) - cy) ** 2 + (coords.view(1, 1, 1, -1) - cx) ** 2
    mask = torch.sigmoid((radius**2 - dist2) / (radius**2 * 0.15)) * present
    img = torch.full((n, 3, resolution, resolution), -0.9)
    for i in range(k):
        m = mask[:, i:i + 1]
        img = img * (1 - m) + color[:, i].view(n, 3, 1, 1) * m
    return img.to(device)


def downscale(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Box-filter square images down to `resolution` (a power-of-two fraction of theirs)."""
    factor = images.shape[-1] // resolution
    return F.avg_pool2d(images, factor) if factor > 1 else images


class Discs:
    """The default data: discs drawn at `resolution` for every batch."""

    description = "colored discs drawn in code"

    def __init__(self, resolution: int):
        self.resolution = resolution

    def batch(self, n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, 3, resolution, resolution] in [-1, 1] (CPU)."""
        return downscale(draw_discs(n, self.resolution, generator), resolution)


def find_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively, sorted), by extension.

    Raises:
        ValueError when `folder` is not a directory or holds no image files.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"--data {folder!r} is not a folder: pass a folder of images "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"--data {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
                         ": put images there, or leave --data out to train on the built-in discs")
    return paths


def _load_square(path: str, resolution: int, image_module) -> torch.Tensor:
    """One image, center-cropped to a square and resized to resolution: uint8 [3, R, R]."""
    with image_module.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
        im = im.resize((resolution, resolution), image_module.Resampling.LANCZOS)
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(resolution, resolution, 3).permute(2, 0, 1).contiguous()


class ImageFolder:
    """Every readable image of a folder, center-cropped and resized to `resolution` once and
    kept in memory (uint8). A file that cannot be read is skipped with one warning naming it."""

    def __init__(self, folder: str, resolution: int):
        paths = find_images(folder)
        try:
            from PIL import Image
        except ImportError as err:
            raise ImportError("--data needs pillow: pip install 'fastgan[train]'") from err
        images = []
        for path in paths:
            try:
                images.append(_load_square(path, resolution, Image))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
        if not images:
            raise ValueError(f"--data {folder!r}: none of its {len(paths)} image files could "
                             f"be read: check the files (see the warnings above)")
        self.images = torch.stack(images)
        self.resolution = resolution
        self.description = f"{len(images)} images from {folder}"

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, n: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
        """n images drawn uniformly (with replacement), [n, 3, resolution, resolution] in
        [-1, 1] (CPU)."""
        idx = torch.randint(len(self), (n,), generator=generator)
        x = self.images[idx].float() / 127.5 - 1.0
        return downscale(x, resolution)


def make_source(folder: str | None, resolution: int):
    """The data of a run: an ImageFolder for `folder`, else the built-in discs."""
    return Discs(resolution) if folder is None else ImageFolder(folder, resolution)
