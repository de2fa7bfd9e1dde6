"""fastgan.compat.akanimax and fastgan.convert against the real pro_gan_pytorch (pro-gan-pth 3.4,
a test-only dependency: `pip install --no-deps pro-gan-pth==3.4`).

Every comparison builds the port's own layers and models, converts a copy, and compares outputs,
input gradients, parameter gradients and the WGAN-GP step in fp64 to 1e-10. The port's
EqualizedConvTranspose2d cannot run on torch 2.x (see test_port_transposed_conv_fails_on_torch2);
where the port's generator must run, its transposed conv gets torch 1.x's `_output_padding`
(what the port's call did on the torch it was written for), and nothing else is changed.
"""

import copy
import io
import math

import pytest
import torch

import fastgan
import fastgan.penalties as P
from fastgan.compat import akanimax as A
from compat_checks import F64, compare_penalty_steps
from compat_checks import close as _close, compare as _compare, randn as _x
from helpers import _CPU_CASES

# The real port, a test-only dependency that .ci/run installs; a machine without it (the GPU
# machine installs nothing) reports these tests as skipped, with the line that installs it.
pytest.importorskip("pro_gan_pytorch", reason="needs pro-gan-pth: pip install --no-deps "
                    "pro-gan-pth==3.4 (.ci/run does)")
from pro_gan_pytorch import custom_layers as PC, losses as PL  # noqa: E402
from pro_gan_pytorch import modules as PM, networks as PN  # noqa: E402

CPU_BACKENDS = [b for _, b in _CPU_CASES]  # fp64 on the CPU: ref, and Triton when interpreted


def _torch1_output_padding(module):
    """Give a port transposed conv torch 1.x's `_output_padding(input, output_size, stride,
    padding, kernel_size, dilation=None)`: with no output_size, the module's output_padding."""
    def output_padding(input, output_size, stride, padding, kernel_size, dilation=None):
        assert output_size is None  # the port passes the builtin `input`: only None worked
        return list(module.output_padding)
    module._output_padding = output_padding
    return module


def _runnable(model):
    for m in model.modules():
        if type(m) is PC.EqualizedConvTranspose2d:
            _torch1_output_padding(m)
    return model


@pytest.fixture
def tiny_widths(monkeypatch):
    """The port's nf() with widths 8, 8, 4, 2, 2, ... (its own are 512 down to 16)."""
    monkeypatch.setattr(PN, "nf", lambda stage, **kw: max(2, 8 >> max(stage - 2, 0)))


# --- the layers -----------------------------------------------------------------------------

LAYERS = [
    ("EqualizedConv2d", (5, 6, 3), dict(padding=1), (4, 5, 7, 6)),
    ("EqualizedConv2d", (6, 4, (1, 3)), dict(stride=2, dilation=(1, 2)), (3, 6, 9, 11)),
    ("EqualizedConv2d", (6, 4, 3), dict(groups=2, bias=False, padding_mode="reflect"),
     (2, 6, 5, 5)),
    ("EqualizedLinear", (7, 5), {}, (3, 7)),
    ("EqualizedLinear", (7, 5), dict(bias=False), (2, 4, 7)),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name,args,kwargs,shape", LAYERS)
def test_layer_equals_port(backend, name, args, kwargs, shape):
    torch.manual_seed(0)
    orig = getattr(PC, name)(*args, **kwargs).to(F64)
    mine = getattr(A, name)(*args, **kwargs).to(F64)
    assert list(mine.state_dict()) == list(orig.state_dict())
    assert math.isclose(mine.scale, orig.scale, rel_tol=0, abs_tol=0)
    mine.load_state_dict(orig.state_dict())
    with fastgan.use_backend(backend):
        _compare(orig, mine, _x(*shape), name=name)


def test_layer_init_and_constructor_mirror_the_port():
    torch.manual_seed(0)
    orig = PC.EqualizedConv2d(64, 32, 3, padding=1)
    mine = A.EqualizedConv2d(64, 32, 3, padding=1)
    for m in (orig, mine):  # N(0, 1) weights, zero bias
        assert abs(m.weight.std().item() - 1) < 0.05 and m.bias.abs().max().item() == 0
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode"):
        assert getattr(mine, attr) == getattr(orig, attr), attr
    assert isinstance(mine, torch.nn.Conv2d)
    assert isinstance(A.EqualizedLinear(3, 2), torch.nn.Linear)
    with pytest.raises(ValueError, match="padding"):
        A.EqualizedConv2d(3, 4, 3, padding="same")


def test_port_transposed_conv_fails_on_torch2():
    """The quirk the compat layer fixes: the port's forward calls torch 1.x's signature."""
    with pytest.raises(TypeError, match="_output_padding"):
        PC.EqualizedConvTranspose2d(4, 3, 4)(torch.randn(2, 4, 1, 1))


@pytest.mark.parametrize("kwargs,shape", [(dict(), (3, 6, 1, 1)),
                                          (dict(stride=2, padding=1, output_padding=1),
                                           (2, 6, 3, 4))])
def test_transposed_conv_equals_port_on_torch1_semantics(kwargs, shape):
    torch.manual_seed(0)
    orig = _torch1_output_padding(PC.EqualizedConvTranspose2d(6, 5, 4, **kwargs).to(F64))
    mine = A.EqualizedConvTranspose2d(6, 5, 4, **kwargs).to(F64)
    assert mine.scale == orig.scale == math.sqrt(2) / math.sqrt(6)  # fan_in: in_channels alone
    mine.load_state_dict(orig.state_dict())
    _compare(orig, mine, _x(*shape), name="EqualizedConvTranspose2d")


def test_transposed_conv_honours_output_size():
    mine = A.EqualizedConvTranspose2d(3, 2, 3, stride=2, padding=1).to(F64)
    x = _x(2, 3, 4, 4)
    out = mine(x, output_size=[8, 8])
    ref = torch.nn.functional.conv_transpose2d(x, mine.weight * mine.scale, mine.bias, 2, 1, 1)
    _close(out, ref)


@pytest.mark.parametrize("n,group", [(8, 4), (4, 4), (3, 4), (6, 2)])
def test_minibatch_stddev_equals_port(n, group):
    orig, mine = PC.MinibatchStdDev(group), A.MinibatchStdDev(group)
    assert repr(mine) == repr(orig).replace("pro_gan_pytorch.custom_layers.", "")
    _compare(orig, mine, _x(n, 5, 4, 3), name="MinibatchStdDev")
    _compare(orig, mine, _x(n, 5, 4, 3), 1e-3, name="MinibatchStdDev alpha")
    with pytest.raises(ValueError):
        A.MinibatchStdDev(4)(_x(6, 2, 4, 4))  # the port asserts; fastgan names the argument


def test_pixelwise_norm_equals_port():
    _compare(PC.PixelwiseNorm(), A.PixelwiseNorm(), _x(3, 5, 4, 4), name="PixelwiseNorm")
    _compare(PC.PixelwiseNorm(), A.PixelwiseNorm(), _x(3, 5, 4, 4), 1e-2, name="alpha")


BLOCKS = [("GenInitialBlock", (6, 5), (4, 6)), ("GenGeneralConvBlock", (6, 5), (2, 6, 4, 4)),
          ("DisGeneralConvBlock", (6, 5), (2, 6, 8, 8)), ("DisFinalBlock", (6, 5), (8, 6, 4, 4))]


@pytest.mark.parametrize("use_eql", [True, False])
@pytest.mark.parametrize("name,args,shape", BLOCKS)
def test_block_equals_port(name, args, shape, use_eql):
    torch.manual_seed(0)
    orig = _runnable(getattr(PM, name)(*args, use_eql).to(F64))
    mine = getattr(A, name)(*args, use_eql).to(F64)
    assert list(mine.state_dict()) == list(orig.state_dict())
    assert [n for n, _ in mine.named_modules()] == [n for n, _ in orig.named_modules()]
    mine.load_state_dict(orig.state_dict())
    _compare(orig, mine, _x(*shape), name=name)


# --- whole models through fastgan.convert ---------------------------------------------------

def _models(depth, seed=0):
    torch.manual_seed(seed)
    G = _runnable(PN.Generator(depth=depth, latent_size=8).to(F64))
    D = PN.Discriminator(depth=depth, latent_size=8).to(F64)
    return G, D


def _images(n, depth, seed):
    return _x(n, 3, 2 ** depth, 2 ** depth, seed=seed)


@pytest.mark.parametrize("depth,alpha", [(2, 1.0), (3, 0.3), (4, 0.0), (4, 0.7)])
def test_converted_models_equal_the_port(tiny_widths, depth, alpha):
    G, D = _models(depth=4)
    G2, D2 = (fastgan.convert(m, inplace=False).model for m in (G, D))
    assert G2.layers[0].conv_1 is not G.layers[0].conv_1
    assert type(G.layers[0]) is PM.GenInitialBlock  # inplace=False left the originals alone
    _compare(G, G2, _x(8, 8, seed=2), depth, alpha, name="G")
    _compare(D, D2, _images(8, depth, 3), depth, alpha, name="D")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_converted_d_wgan_gp_step_equals_the_port(tiny_widths, backend):
    """The port's own WganGP loss (drift, its gradient penalty), and fastgan's
    gradient_penalty, on the port's D and the converted one: values and D's gradients."""
    depth, alpha = 3, 0.4
    _, D = _models(depth=depth)
    D2 = fastgan.convert(D, inplace=False).model
    real, fake = _images(8, depth, 4), _images(8, depth, 5)
    loss = PL.WganGP()

    def dis_loss(model):
        torch.manual_seed(11)  # the port draws its epsilon with torch.rand
        return loss.dis_loss(model, real, fake, depth, alpha)

    with fastgan.use_backend(backend):
        eps = torch.rand(8, generator=torch.Generator().manual_seed(12), dtype=F64)
        compare_penalty_steps(D, D2, dis_loss, "WganGP.dis_loss")
        compare_penalty_steps(D, D2, lambda m: P.gradient_penalty(
            lambda x: m(x, depth, alpha), real, fake, epsilon=eps), "fastgan gradient_penalty")
        # fastgan's penalty on the converted D is the port's penalty on its own D
        torch.manual_seed(13)
        port_eps = torch.rand((8, 1, 1, 1)).to(F64)
        torch.manual_seed(13)
        v1 = loss._gradient_penalty(D, real, fake, depth, alpha)
        v2 = P.gradient_penalty(lambda x: D2(x, depth, alpha), real, fake,
                                epsilon=port_eps.view(8))
        _close(v2, v1, "gradient_penalty vs WganGP._gradient_penalty")


def test_checkpoints_load_both_ways(tiny_widths):
    G, D = _models(depth=3, seed=0)
    G_other, D_other = _models(depth=3, seed=1)
    for orig, fresh in ((G, G_other), (D, D_other)):
        buf = io.BytesIO()
        torch.save(orig.state_dict(), buf)
        converted = fastgan.convert(fresh).model
        converted.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
        for (k1, v1), (k2, v2) in zip(orig.state_dict().items(), converted.state_dict().items()):
            assert k1 == k2 and torch.equal(v1, v2)
        back = copy.deepcopy(orig)
        for p in back.parameters():
            torch.nn.init.zeros_(p)
        back.load_state_dict(converted.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                      orig.state_dict().values()))


def test_convert_keeps_parameter_objects_for_the_optimizer(tiny_widths):
    _, D = _models(depth=3)
    params = list(D.parameters())
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    report = fastgan.convert(D)
    assert report.model is D and all(a is b for a, b in zip(params, D.parameters()))
    real = _images(4, 3, 6)
    D(real, 3, 1.0).mean().backward()
    opt.step()  # the optimizer still holds the model's parameters
    assert all(p.grad is not None for p in params)


def test_plain_layer_models_get_their_blocks_fused(tiny_widths):
    """use_eql=False: the port's blocks hold plain torch convs; the blocks still fuse."""
    torch.manual_seed(0)
    D = PN.Discriminator(depth=3, latent_size=8, use_eql=False).to(F64)
    D2 = fastgan.convert(D, inplace=False).model
    assert type(D2.layers[0]) is A.DisGeneralConvBlock
    assert type(D2.layers[0].conv_1) is torch.nn.Conv2d
    _compare(D, D2, _images(8, 3, 9), 3, 0.5, name="D use_eql=False")


def test_converted_generator_runs_where_the_port_cannot(tiny_widths):
    torch.manual_seed(0)
    G = PN.Generator(depth=3, latent_size=8)
    with pytest.raises(TypeError):
        G(torch.randn(2, 8))
    fastgan.convert(G)
    assert G(torch.randn(2, 8)).shape == (2, 3, 8, 8)


def test_report_lists_replacements_and_fusions(tiny_widths):
    _, D = _models(depth=3)
    report = fastgan.convert(D, dry_run=True)
    assert type(D.layers[0]) is PM.DisGeneralConvBlock  # dry run: unchanged
    replaced = {p: b for p, _, b in report.replaced}
    assert replaced["layers.0"] == "fastgan.compat.akanimax.DisGeneralConvBlock"
    assert replaced["layers.1.batch_discriminator"].endswith("akanimax.MinibatchStdDev")
    assert ("from_rgb.0", "[1] LeakyReLU(0.2) folded into [0]") in report.fused
    assert report.left_alone == []
    report = fastgan.convert(D)
    assert type(D.layers[0]) is A.DisGeneralConvBlock
    assert isinstance(D.from_rgb[0][1], torch.nn.Identity)
    assert D.from_rgb[0][0].fused_negative_slope == 0.2
