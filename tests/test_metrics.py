"""fastgan.metrics.sliced_wasserstein against a direct implementation of ProGAN's section 5."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgan.metrics import laplacian_pyramid, sliced_wasserstein

BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _mirror(i, n):
    """Index i reflected into [0, n) without repeating the edge (..., 2, 1, 0, 1, 2, ...)."""
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def _blur_direct(img):
    """5x5 binomial filter of one [H, W] image with mirrored borders, as a double loop."""
    h, w = img.shape
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            out[y, x] = sum(BINOMIAL[i] * BINOMIAL[j]
                            * img[_mirror(y + i - 2, h), _mirror(x + j - 2, w)]
                            for i in range(5) for j in range(5))
    return out


def _pyramid_direct(img, levels):
    """Laplacian pyramid of one [H, W] channel: band-pass levels, then the low-pass rest."""
    out, cur = [], img
    for _ in range(levels - 1):
        low = _blur_direct(cur)[::2, ::2]
        up = np.zeros_like(cur)
        up[::2, ::2] = low
        out.append(cur - 4.0 * _blur_direct(up))
        cur = low
    return out + [cur]


def _w1_by_cdf(a, b):
    """1-D earth mover's distance of two equal-size samples: integral of |F_a(t) - F_b(t)| dt."""
    t = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), t[:-1], side="right") / len(a)
    fb = np.searchsorted(np.sort(b), t[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(t)))


def _swd_direct(real, fake, levels, directions):
    """The paper's formula with every 7x7 neighbourhood of every level as a descriptor."""
    def descriptors(images, level):
        n, c = images.shape[:2]
        pyr = [[_pyramid_direct(images[i, ch], levels)[level] for ch in range(c)] for i in range(n)]
        lev = np.array(pyr)  # [N, C, h, w]
        h, w = lev.shape[-2:]
        desc = np.array([lev[i, :, y - 3:y + 4, x - 3:x + 4] for i in range(n)
                         for y in range(3, h - 3) for x in range(3, w - 3)])
        desc = (desc - desc.mean(axis=(0, 2, 3), keepdims=True)) / desc.std(axis=(0, 2, 3),
                                                                             keepdims=True)
        return desc.reshape(len(desc), -1)

    dists = []
    for level in range(levels):
        a, b = descriptors(real, level), descriptors(fake, level)
        dists.append(np.mean([_w1_by_cdf(a @ d, b @ d) for d in directions.T]))
    return dists


def _noise(n, seed, res=16, c=3):
    return torch.rand(n, c, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_matches_direct_implementation_of_the_paper():
    real, fake = _noise(2, 0), F.avg_pool2d(_noise(2, 1), 3, 1, 1) * 3
    g = torch.Generator().manual_seed(2)
    dirs = torch.randn(3 * 49, 6, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    got = sliced_wasserstein(real, fake, levels=2, patches=None, projections=dirs)
    want = _swd_direct(real.double().numpy(), fake.double().numpy(), 2, dirs.numpy())
    assert list(got.per_level) == [16, 8]
    np.testing.assert_allclose(list(got.per_level.values()), want, rtol=1e-4)
    assert got.mean == pytest.approx(sum(want) / 2, rel=1e-4)
    assert min(want) > 0


def test_pyramid_levels_rebuild_the_image():
    x = _noise(2, 3, res=32).double()
    pyr = laplacian_pyramid(x, 3)
    assert [p.shape[-1] for p in pyr] == [32, 16, 8]
    rebuilt = pyr[-1]
    for band in reversed(pyr[:-1]):
        up = torch.zeros_like(band)
        up[:, :, ::2, ::2] = rebuilt
        blurred = torch.from_numpy(np.array([[_blur_direct(up[i, ch].numpy()) for ch in range(3)]
                                             for i in range(2)]))
        rebuilt = band + 4.0 * blurred
    torch.testing.assert_close(rebuilt, x)


def test_a_set_against_itself_is_about_zero_and_different_sets_are_far():
    x = _noise(64, 4, res=32)
    same_dist = _noise(64, 5, res=32)
    smooth = F.interpolate(_noise(64, 6, res=4), size=32, mode="bilinear")  # correlated pixels
    assert sliced_wasserstein(x, x, patches=None, projections=32).mean == pytest.approx(0, abs=1e-6)
    # With sampled patches the estimate has a noise floor (different draws for the two sets).
    itself = sliced_wasserstein(x, x, patches=64, projections=64).mean
    twin = sliced_wasserstein(x, same_dist, patches=64, projections=64).mean
    far = sliced_wasserstein(x, smooth, patches=64, projections=64)
    assert list(far.per_level) == [32, 16]  # the paper's levels: down to 16x16
    assert itself < far.mean / 2.5 and twin < far.mean / 2.5


def test_seed_makes_the_estimate_repeatable():
    x, y = _noise(8, 7), _noise(8, 8)
    a = sliced_wasserstein(x, y, patches=8, projections=16, seed=3)
    assert a == sliced_wasserstein(x, y, patches=8, projections=16, seed=3)
    assert a != sliced_wasserstein(x, y, patches=8, projections=16, seed=4)


@pytest.mark.parametrize("kwargs,words", [
    (dict(real=torch.zeros(4, 3, 16, 16), fake=torch.zeros(4, 1, 16, 16)), "same \\[C, H, W\\]"),
    (dict(real=torch.zeros(4, 3, 16, 16), fake=torch.zeros(2, 3, 16, 16)), "same number"),
    (dict(real=torch.zeros(4, 3, 4, 4), fake=torch.zeros(4, 3, 4, 4)), "at least 7x7"),
    (dict(real=torch.zeros(4, 3, 16), fake=torch.zeros(4, 3, 16)), "real must be"),
    (dict(levels=3), "levels=3 is too many"),
    (dict(levels=0), "levels must be"),
    (dict(patches=0), "patches must be"),
    (dict(projections=torch.zeros(5, 2)), "projections must be \\[147, P\\]"),
])
def test_bad_input_raises(kwargs, words):
    args = dict(real=torch.zeros(2, 3, 16, 16), fake=torch.zeros(2, 3, 16, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        sliced_wasserstein(args.pop("real"), args.pop("fake"), **args)
