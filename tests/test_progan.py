"""fastgan.models.progan: structure, fastgan D == plain-torch D (values, penalty gradients),
progressive growing (the training command and the example script: tests/test_train.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
import fastgan.losses as L
import fastgan.penalties as P
from fastgan.models import Discriminator, Generator, PlainDiscriminator, fade_images, nf
from helpers import DEVICE_BACKENDS, assert_close

TINY = dict(fmap_base=64, fmap_max=16)  # widths 16, 16, 16, 8, 4, ...


def _pair(res=16, order="official", dtype=torch.float64, device="cpu", seed=0, **kw):
    torch.manual_seed(seed)
    fast = Discriminator(res, down_order=order, **TINY, **kw).to(device, dtype)
    plain = PlainDiscriminator(res, down_order=order, **TINY, **kw).to(device, dtype)
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _images(n=4, res=16, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, res, res, generator=g, dtype=torch.float64).to(device, dtype),
            torch.randn(n, 3, res, res, generator=g, dtype=torch.float64).to(device, dtype))


def test_official_widths():
    assert [nf(s) for s in range(10)] == [512] * 5 + [256, 128, 64, 32, 16]
    assert nf(3, fmap_base=64, fmap_max=16) == 8
    for res, rgb in ((128, 128), (256, 64)):
        with torch.device("meta"):
            D = Discriminator(res)
        assert D.from_rgb[f"r{res}"].out_channels == rgb
        assert D.final.conv.in_channels == 513 and D.final.dense.out_features == 512
        assert len(D.blocks) == int(math.log2(res)) - 2
    with torch.device("meta"):
        G = Generator(256)
    assert G.latent_size == 512 and G.to_rgb["r256"].in_channels == 64


def test_layer_order():
    fast, _ = _pair(order="official")
    assert fast.blocks[0].conv1.resample == "down" and fast.blocks[0].conv1.activation == "lrelu"
    fast, _ = _pair(order="port")
    assert fast.blocks[0].conv1.resample is None and isinstance(fast.blocks[0].pool,
                                                                torch.nn.AvgPool2d)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("order", ["official", "port"])
def test_fastgan_d_equals_plain_d_with_penalty(device, backend, order):
    """Same weights: same scores, and the same D step (WGAN + GP + drift) parameter gradients."""
    fast, plain = _pair(order=order, device=device)
    real, fake = _images(device=device)
    eps = torch.rand(4, dtype=torch.float64, device=device)

    def step(D):
        D.zero_grad(set_to_none=True)
        rs, fs = D(real), D(fake)
        loss = (L.wgan_d_loss(rs, fs) + P.gradient_penalty(D, real, fake, epsilon=eps)
                + P.drift_penalty(rs))
        loss.backward()
        return rs.detach(), loss.detach(), [p.grad for p in D.parameters()]

    with fastgan.use_backend(backend):
        got = step(fast)
    want = step(plain)
    assert_close(got[0], want[0], name="scores")
    assert_close(got[1], want[1], name="loss")
    for (name, _), a, b in zip(fast.named_parameters(), got[2], want[2]):
        assert_close(a, b, name=name)


def test_channels_last_and_fp32():
    fast, plain = _pair(dtype=torch.float32)
    real, _ = _images(dtype=torch.float32)
    out = fast(real.to(memory_format=torch.channels_last))
    assert_close(out, plain(real), torch.float32, "channels_last")


def test_generator_shapes_and_pixel_norm():
    torch.manual_seed(0)
    G = Generator(16, **TINY)
    z = torch.randn(3, G.latent_size)
    out = G(z)
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all()
    assert_close(G(z * 7.0), out, torch.float32, "latent pixel norm")  # scale-invariant in z
    with pytest.raises(ValueError, match="z must be"):
        G(torch.randn(3, 5))


def test_growing_generator_fades_in():
    torch.manual_seed(0)
    G = Generator(16, growing=True, **TINY).double()
    z = torch.randn(2, G.latent_size, dtype=torch.float64)
    full, low = G(z), G(z, resolution=8)
    assert low.shape == (2, 3, 8, 8)
    assert_close(G(z, resolution=16, alpha=0.0), F.interpolate(low, scale_factor=2.0), name="a=0")
    assert_close(G(z, alpha=0.25), 0.75 * F.interpolate(low, scale_factor=2.0) + 0.25 * full,
                 name="a=0.25")
    assert G(z, resolution=4).shape == (2, 3, 4, 4)


def test_growing_discriminator_fades_in():
    fast, plain = _pair(growing=True)
    x, _ = _images()
    for D in (fast, plain):
        lowres = D(F.avg_pool2d(x, 2))
        assert_close(D(x, alpha=0.0), lowres, name="a=0")
        assert D(F.avg_pool2d(x, 4)).shape == (4, 1)
    assert_close(fast(x, alpha=0.4), plain(x, alpha=0.4), name="fast vs plain, a=0.4")
    assert_close(fade_images(x, 1.0), x)
    assert_close(fade_images(x, 0.0), F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(48, **TINY)
    with pytest.raises(ValueError, match="down_order"):
        Discriminator(16, down_order="tf", **TINY)
    D = Discriminator(16, **TINY)
    with pytest.raises(ValueError, match="growing=True"):
        D(torch.randn(4, 3, 16, 16), alpha=0.5)
    with pytest.raises(ValueError, match="growing=True"):
        D(torch.randn(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"x must be \[N, 3, R, R\]"):
        D(torch.randn(4, 1, 16, 16))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("order", ["official", "port"])
def test_gpu_d_step_fp32_against_fp64(backend, order):
    """On the GPU (TF32 off): the fastgan D step (WGAN + GP + drift) in fp32, channels_last,
    against the plain D in fp64 on the same weights."""
    fast, plain = _pair(res=32, order=order, dtype=torch.float32, device="cuda")
    plain = plain.double()
    fast = fast.to(memory_format=torch.channels_last)
    real, fake = _images(8, 32, torch.float32, "cuda")
    eps = torch.rand(8, device="cuda")

    def step(D, r, f, e):
        D.zero_grad(set_to_none=True)
        rs, fs = D(r), D(f)
        loss = L.wgan_d_loss(rs, fs) + P.gradient_penalty(D, r, f, epsilon=e) + P.drift_penalty(rs)
        loss.backward()
        return torch.cat([loss.reshape(1)] + [p.grad.flatten() for p in D.parameters()]).double()

    with fastgan.use_backend(backend):
        got = step(fast, real.contiguous(memory_format=torch.channels_last),
                   fake.contiguous(memory_format=torch.channels_last), eps)
    want = step(plain, real.double(), fake.double(), eps.double())
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 1e-4, f"relative error {rel:.2e}"
