"""fastgan.nn.utils.spectral_norm against torch.nn.utils.parametrizations.spectral_norm on every
backend: buffers, outputs and gradients after each training forward, eval mode, several calls
per step, state dicts both ways, the legacy loader, layers, removal and bad input."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations as P
from torch.nn.utils import parametrize

import fastgan
from fastgan.nn import EqualConv2d, EqualLinear, SNConv2d, SNEmbedding, SNLinear
from fastgan.nn.utils import (fuse_spectral_norm, load_legacy_spectral_norm,
                              remove_spectral_norm, spectral_norm)
from helpers import DEVICE_BACKENDS, KERNEL_DEVICE_BACKENDS, assert_close


def _layer(kind):
    return {
        "linear": lambda: nn.Linear(5, 7),
        "conv2d": lambda: nn.Conv2d(3, 4, 3, padding=1),
        "conv_transpose2d": lambda: nn.ConvTranspose2d(3, 5, 3),
        "embedding": lambda: nn.Embedding(10, 6),
        "conv3d": lambda: nn.Conv3d(2, 3, 2),
        "conv_transpose1d": lambda: nn.ConvTranspose1d(3, 2, 3),
        "equal_conv2d": lambda: EqualConv2d(3, 4, 3, padding=1),
        "equal_linear": lambda: EqualLinear(6, 3),
    }[kind]()


def _input(kind, device, g):
    if kind == "embedding":
        return torch.randint(0, 10, (4, 3), generator=g).to(device)
    shape = {"linear": (4, 5), "equal_linear": (4, 6), "conv3d": (2, 2, 3, 3, 3),
             "conv_transpose1d": (2, 3, 5)}.get(kind, (2, 3, 5, 5))
    return torch.randn(shape, generator=g).to(device)


def _pair(kind, device, n_iter, seed=0):
    """(torch's module, fastgan's module): same weights, same u, v (same random draws)."""
    torch.manual_seed(seed)
    base = _layer(kind).to(device)
    theirs, ours = copy.deepcopy(base), copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    P.spectral_norm(theirs, n_power_iterations=n_iter)
    torch.manual_seed(seed + 1)
    spectral_norm(ours, n_power_iterations=n_iter)
    return theirs, ours


def _sn(m, name="weight"):
    return m.parametrizations[name][0]


def _check_same(theirs, ours, exact, what):
    """Buffers, original weight's gradient: bitwise when `exact` (the "ref" backend runs torch's
    own ops on torch modules), else within fp32's tolerance."""
    pairs = [(_sn(ours)._u, _sn(theirs)._u, "u"), (_sn(ours)._v, _sn(theirs)._v, "v")]
    go = ours.parametrizations.weight.original.grad
    gt = theirs.parametrizations.weight.original.grad
    if gt is not None:
        pairs.append((go, gt, "grad"))
    for a, b, n in pairs:
        if exact:
            assert torch.equal(a, b), f"{what}: {n} differs"
        else:
            assert_close(a, b, torch.float32, f"{what}: {n}")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("n_iter", [1, 3])
@pytest.mark.parametrize("kind", ["linear", "conv2d", "conv_transpose2d", "embedding",
                                  "conv3d", "conv_transpose1d", "equal_conv2d", "equal_linear"])
def test_training_forwards_match_torch(device, backend, n_iter, kind):
    """Five training forwards with an SGD step between them: u, v, outputs and gradients equal
    after each; then eval mode (u, v frozen, outputs equal)."""
    theirs, ours = _pair(kind, device, n_iter)
    exact = backend == "ref" and not kind.startswith("equal")
    _check_same(theirs, ours, True, "init")
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    for step in range(5):
        x = _input(kind, device, g)
        yt = theirs(x)
        dy = torch.randn(yt.shape, generator=g).to(device)
        with fastgan.use_backend(backend):
            yo = ours(x)
            (yo * dy).sum().backward()
        (yt * dy).sum().backward()
        if exact:
            assert torch.equal(yo, yt), f"step {step}: outputs differ"
        else:
            assert_close(yo, yt, torch.float32, f"step {step}: y")
        _check_same(theirs, ours, exact, f"step {step}")
        opt_t.step(), opt_o.step(), opt_t.zero_grad(), opt_o.zero_grad()
    theirs.eval(), ours.eval()
    u, v = _sn(ours)._u.clone(), _sn(ours)._v.clone()
    x = _input(kind, device, g)
    with fastgan.use_backend(backend):
        yo = ours(x)
    assert torch.equal(_sn(ours)._u, u) and torch.equal(_sn(ours)._v, v), "eval advanced u, v"
    assert_close(yo, theirs(x), torch.float32, "eval y")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_several_forwards_per_step(device, backend):
    """loss = D(a) - D(b) + D(c): each call advances u, v once, the backward goes through all."""
    theirs, ours = _pair("conv2d", device, 1)
    g = torch.Generator().manual_seed(4)
    xs = [_input("conv2d", device, g) for _ in range(3)]
    lt = theirs(xs[0]).sum() - theirs(xs[1]).square().sum() + theirs(xs[2]).mean()
    lt.backward()
    with fastgan.use_backend(backend):
        lo = ours(xs[0]).sum() - ours(xs[1]).square().sum() + ours(xs[2]).mean()
        lo.backward()
    assert_close(lo, lt, torch.float32, "loss")
    _check_same(theirs, ours, backend == "ref", "3 calls")


def test_state_dict_round_trip_with_torch():
    theirs, ours = _pair("conv2d", "cpu", 1)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    x = _input("conv2d", "cpu", torch.Generator().manual_seed(5))
    for _ in range(2):
        theirs(x), ours(x)
    torch.manual_seed(9)
    fresh_ours = spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    fresh_ours.load_state_dict(theirs.state_dict())
    fresh_theirs = P.spectral_norm(nn.Conv2d(3, 4, 3, padding=1))
    fresh_theirs.load_state_dict(ours.state_dict())
    for a, b in ((fresh_ours, theirs), (fresh_theirs, ours)):
        for k, t in b.state_dict().items():
            assert torch.equal(a.state_dict()[k], t), k
        assert torch.equal(a(x), b(x))


def test_legacy_loader():
    """A state dict of torch.nn.utils.spectral_norm (weight_orig, weight_u, weight_v) loads; eval
    outputs then equal the legacy module's, and training continues from its u, v."""
    torch.manual_seed(0)
    legacy = nn.Sequential(nn.utils.spectral_norm(nn.Conv2d(3, 4, 3)), nn.ReLU(),
                           nn.utils.spectral_norm(nn.ConvTranspose2d(4, 2, 3)))
    x = torch.randn(2, 3, 6, 6)
    for _ in range(3):
        legacy(x)
    sd = legacy.state_dict()
    assert "0.weight_orig" in sd and "2.weight_v" in sd
    ours = nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3)), nn.ReLU(),
                         spectral_norm(nn.ConvTranspose2d(4, 2, 3)))
    load_legacy_spectral_norm(ours, sd)
    assert torch.equal(_sn(ours[0])._u, sd["0.weight_u"])
    assert torch.equal(ours[2].parametrizations.weight.original, sd["2.weight_orig"])
    legacy.eval(), ours.eval()
    assert_close(ours(x), legacy(x), torch.float32, "eval y")
    bad = {k: v for k, v in sd.items() if k != "0.weight_v"}
    with pytest.raises(ValueError, match="0.weight_u and 0.weight_v"):
        load_legacy_spectral_norm(ours, bad)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_sigma_converges_to_matrix_norm(device, backend):
    torch.manual_seed(1)
    m = spectral_norm(nn.Conv2d(4, 6, 3), n_power_iterations=20).to(device)
    w = m.parametrizations.weight.original.detach()
    with fastgan.use_backend(backend):
        for _ in range(5):
            sigma = _sn(m).sigma(w)
    exact = torch.linalg.matrix_norm(w.reshape(6, -1).double(), ord=2)
    assert abs(sigma.item() - exact.item()) <= 1e-5 * exact.item()
    assert abs(torch.linalg.matrix_norm(m.weight.reshape(6, -1), ord=2).item() - 1) < 1e-5


def test_layers_and_remove():
    assert fastgan.nn.utils.spectral_norm is spectral_norm  # the attribute path works too
    torch.manual_seed(2)
    layers = [SNConv2d(3, 4, 3, n_power_iterations=2), SNLinear(5, 6, bias=False),
              SNEmbedding(7, 3, eps=1e-6)]
    assert _sn(layers[0]).n_power_iterations == 2 and _sn(layers[2]).eps == 1e-6
    assert "parametrizations.weight.0._u" in layers[1].state_dict()
    assert isinstance(layers[0], nn.Conv2d)
    for m in layers:
        m.eval()
        w = m.weight.detach().clone()
        remove_spectral_norm(m)
        assert not parametrize.is_parametrized(m) and isinstance(m.weight, nn.Parameter)
        assert torch.equal(m.weight, w)
    with pytest.raises(ValueError, match="no spectral_norm"):
        remove_spectral_norm(layers[0])


def test_dim_defaults_and_1d():
    assert _sn(spectral_norm(nn.ConvTranspose1d(2, 3, 3))).dim == 1
    assert _sn(spectral_norm(nn.Conv3d(2, 3, 1))).dim == 0
    assert _sn(spectral_norm(nn.Linear(2, 3), dim=-1)).dim == 1
    m = spectral_norm(nn.Linear(3, 4), name="bias")  # 1-D: W / ||W||, as torch
    b = m.parametrizations.bias.original
    assert_close(m.bias, b / b.norm(), torch.float32, "1-D")


def test_bad_input():
    with pytest.raises(ValueError, match="dim"):
        spectral_norm(nn.Linear(2, 3), dim=2)
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_norm(nn.Linear(2, 3), n_power_iterations=0)
    with pytest.raises(ValueError, match="no parameter or buffer named 'kernel'"):
        spectral_norm(nn.Linear(2, 3), name="kernel")
    m = nn.Linear(2, 3)
    m.scalar = nn.Parameter(torch.tensor(2.0))
    with pytest.raises(ValueError, match="0-d"):
        spectral_norm(m, name="scalar")
    with pytest.raises(ValueError, match="already registered"):
        spectral_norm(spectral_norm(nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="legacy"):
        spectral_norm(nn.utils.spectral_norm(nn.Linear(2, 3)))
    with pytest.raises(ValueError, match="eps"):
        spectral_norm(nn.Linear(2, 3), eps=-1.0)
    with pytest.raises(TypeError, match="module"):
        spectral_norm("linear")


class _Many(nn.Module):
    """Many SN layers (dims 0 and 1, a 1-D one), one used twice per call, one never used."""

    def __init__(self):
        super().__init__()
        self.c1 = spectral_norm(nn.Conv2d(3, 6, 3, padding=1))
        self.c2 = spectral_norm(nn.Conv2d(6, 6, 3, padding=1), n_power_iterations=2)
        self.t = spectral_norm(nn.ConvTranspose2d(6, 4, 2, stride=2))
        self.e = spectral_norm(EqualConv2d(4, 5, 3, padding=1, activation="lrelu"))
        self.fc = spectral_norm(nn.Linear(5, 1))
        self.n1 = spectral_norm(nn.Linear(3, 3), name="bias")
        self.unused = spectral_norm(nn.Linear(4, 4))

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h))
        h = torch.relu(self.c2(h))
        h = self.e(self.t(h))
        return self.fc(h.mean((2, 3))) + self.n1.bias.sum()


def _torch_twin(model):
    """The same model with torch's parametrization (same originals and buffers). The
    parametrization is swapped in place: removing it would edit the class the copies share."""
    twin = copy.deepcopy(model)
    for sub in twin.modules():
        if parametrize.is_parametrized(sub):
            for name, plist in sub.parametrizations.items():
                ours = plist[0]
                theirs = P._SpectralNorm(plist.original, getattr(ours, "n_power_iterations", 1),
                                         ours.dim, ours.eps)
                if hasattr(ours, "_u"):
                    theirs._u.copy_(ours._u), theirs._v.copy_(ours._v)
                plist[0] = theirs
    return twin


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_model_path_matches_torch(device, backend):
    """fuse_spectral_norm: two calls per step for three steps; every buffer, output and gradient
    as torch's (a layer used twice per call, an unused layer, 1-D and dim-1 weights)."""
    torch.manual_seed(3)
    model = _Many().to(device)
    twin = _torch_twin(model)
    handle = fuse_spectral_norm(model)
    g = torch.Generator().manual_seed(6)
    for step in range(3):
        x1, x2 = (torch.randn(2, 3, 4, 4, generator=g).to(device) for _ in range(2))
        lt = twin(x1).sum() - twin(x2).square().sum()
        lt.backward()
        with fastgan.use_backend(backend):
            lo = model(x1).sum() - model(x2).square().sum()
            lo.backward()
        assert_close(lo, lt, torch.float32, f"step {step}: loss")
        for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
            assert_close(a, b, torch.float32, f"step {step}: {n}")
        for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
            if b.grad is not None:
                assert_close(a.grad, b.grad, torch.float32, f"step {step}: grad {n}")
            else:
                assert a.grad is None, n
        assert all(m._pending is None for m in model.modules() if hasattr(m, "_pending"))
    handle.remove()
    assert not model._forward_pre_hooks and not model._forward_hooks
    fuse_spectral_norm(model).remove()  # allowed again once removed


@pytest.mark.parametrize("device,backend", KERNEL_DEVICE_BACKENDS)
def test_fused_path_is_one_launch_group(device, backend, monkeypatch):
    """The model-level path launches the power-iteration kernels once per call of the model
    (per dtype and n_power_iterations), and the layers then launch none of their own."""
    from fastgan.ops import spectral_norm as ops

    torch.manual_seed(4)
    model = _Many().to(device)
    fuse_spectral_norm(model)
    calls = []
    real = ops._KERNELS[backend]

    def counting(*args):
        calls.append(len(args[0]))
        return real(*args)

    monkeypatch.setitem(ops._KERNELS, backend, counting)
    with fastgan.use_backend(backend):
        model(torch.randn(2, 3, 4, 4, device=device))
    # one group per n_power_iterations (c2 has 2), then c2's second use runs per layer
    assert sorted(calls) == [1, 1, 5]


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_wgan_gp_discriminator_gradients_match_torch(device, backend):
    """An SNGAN-style discriminator with fastgan's WGAN-GP penalty: torch's parameter gradients."""
    from fastgan import penalties

    def disc():
        return nn.Sequential(
            spectral_norm(nn.Conv2d(3, 8, 3, padding=1)), nn.LeakyReLU(0.1),
            spectral_norm(nn.Conv2d(8, 8, 4, stride=2, padding=1)), nn.LeakyReLU(0.1),
            nn.Flatten(), spectral_norm(nn.Linear(8 * 4 * 4, 1)))

    torch.manual_seed(5)
    ours = disc().double().to(device)
    twin = _torch_twin(ours)
    fuse_spectral_norm(ours)
    g = torch.Generator().manual_seed(7)
    real, fake = (torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64).to(device)
                  for _ in range(2))
    eps = torch.rand(3, generator=g, dtype=torch.float64).to(device)
    for model, be in ((twin, "ref"), (ours, backend)):
        with fastgan.use_backend(be):
            loss = model(fake).mean() - model(real).mean() + penalties.gradient_penalty(
                model, real, fake, epsilon=eps)
            loss.backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), twin.named_parameters()):
        assert_close(a.grad, b.grad, torch.float64 if backend == "ref" else torch.float32, n)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_autocast_iterates_in_fp32(device, backend):
    """Under bf16 autocast the power iteration still runs in fp32: u, v equal the fp32 ones."""
    theirs, ours = _pair("linear", device, 1)
    x = torch.randn(4, 5, device=device)
    theirs(x)
    with fastgan.use_backend(backend), torch.autocast(device, dtype=torch.bfloat16):
        y = ours(x)
    assert y.dtype == torch.bfloat16
    _check_same(theirs, ours, False, "autocast")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_half_weights(device, backend):
    """bf16 weights: u, v stay bf16 buffers, the iteration runs in fp32."""
    theirs, ours = _pair("linear", device, 1)
    ours.to(torch.bfloat16)
    x = torch.randn(4, 5, device=device)
    with fastgan.use_backend(backend):
        y = ours(x.bfloat16())
    assert _sn(ours)._u.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert_close(y.float(), theirs(x), torch.bfloat16, "bf16 y")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_compile_fullgraph(device, backend):
    """torch.compile(fullgraph=True) traces a spectrally normalized model (the per-layer path;
    the model-level hook stands aside while dynamo traces) and matches torch."""
    theirs, ours = _pair("conv2d", device, 1)
    fuse_spectral_norm(ours)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = _input("conv2d", device, torch.Generator().manual_seed(8))
    with fastgan.use_backend(backend):
        for _ in range(2):
            yo = compiled(x)
            yo.sum().backward()
    for _ in range(2):
        yt = theirs(x)
        yt.sum().backward()
    assert_close(yo, yt, torch.float32, "y")
    _check_same(theirs, ours, False, "compiled")


class _Nested(nn.Module):
    """Calls itself once from inside its forward: the inner call must not end the outer's."""

    def __init__(self):
        super().__init__()
        self.a = spectral_norm(nn.Linear(3, 3))
        self.b = spectral_norm(nn.Linear(3, 3))

    def forward(self, x, inner=True):
        h = self.a(x)
        if inner:
            h = self(h, inner=False)
        return self.b(h)


def _assert_runs_as_twin(model, twin, x, backend, steps=1):
    """Call `model` (fastgan, on `backend`) and its torch twin on x `steps` times: every output,
    then every buffer (u, v), must agree."""
    for _ in range(steps):
        yt = twin(x)
        with fastgan.use_backend(backend):
            yo = model(x)
        assert_close(yo, yt, torch.float32, "y")
    for (n, a), (_, b) in zip(model.named_buffers(), twin.named_buffers()):
        assert_close(a, b, torch.float32, n)


def _fused_nested(device, seed):
    """Args: device, a seed. Returns: (a fused _Nested model made from the seed, its torch twin)."""
    torch.manual_seed(seed)
    model = _Nested().to(device)
    twin = _torch_twin(model)
    fuse_spectral_norm(model)
    return model, twin


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_path_nested_call(device, backend):
    model, twin = _fused_nested(device, 7)
    _assert_runs_as_twin(model, twin, torch.randn(2, 3, device=device), backend)


def _ddp_worker(rank, world, port, backend, queue):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.manual_seed(rank)  # different u, v per rank: DDP must broadcast rank 0's
    model = nn.Sequential(spectral_norm(nn.Linear(4, 5)), nn.ReLU(),
                          spectral_norm(nn.Linear(5, 2)))
    twin = _torch_twin(model) if rank == 0 else None
    ddp = nn.parallel.DistributedDataParallel(model)
    fuse_spectral_norm(ddp)
    if rank == 1:  # diverge after DDP's initial broadcast (v is where the iteration starts)
        with torch.no_grad():
            v = model[0].parametrizations.weight[0]._v
            v.copy_(torch.nn.functional.normalize(torch.randn(v.shape), dim=0))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        with fastgan.use_backend(backend):
            ddp(x).sum().backward()
    bufs = torch.cat([b.reshape(-1) for b in model.buffers()])
    gathered = [torch.empty_like(bufs) for _ in range(world)]
    dist.all_gather(gathered, bufs)
    if rank == 0:
        for _ in range(2):
            twin(x).sum().backward()
        want = torch.cat([b.reshape(-1) for b in twin.buffers()])
        grads = [(p.grad - q.grad).abs().max().item()
                 for p, q in zip(model.parameters(), twin.parameters())]
        queue.put(((gathered[1] - gathered[0]).abs().max().item(),
                   (gathered[0] - want).abs().max().item(), max(grads)))
    dist.barrier()  # a rank that leaves while the other still works can abort gloo (SIGABRT)
    dist.destroy_process_group()


@pytest.mark.parametrize("device,backend", [p for p in DEVICE_BACKENDS if p.values[0] == "cpu"])
def test_ddp_broadcasts_u_v_from_rank_0(device, backend):
    """Two gloo processes: rank 1's v differs from rank 0's before the first forward; DDP's buffer
    broadcast puts rank 0's back before the fused hook runs, so both ranks hold torch's u, v."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, backend, queue), nprocs=2,
                       start_method="spawn")
    across, vs_torch, grad_err = queue.get()
    assert across == 0.0
    assert vs_torch <= 1e-6 and grad_err <= 1e-5


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_path_after_layers_change(device, backend):
    """The hook scans the model once: a layer added later runs its own update, a removed one is
    skipped; results stay torch's."""
    torch.manual_seed(8)
    model = nn.Sequential(spectral_norm(nn.Linear(3, 4)), spectral_norm(nn.Linear(4, 4))).to(device)
    twin = _torch_twin(model)
    fuse_spectral_norm(model)
    x = torch.randn(2, 3, device=device)
    with fastgan.use_backend(backend):
        model(x)
    twin(x)
    torch.manual_seed(9)
    model.append(spectral_norm(nn.Linear(4, 2)).to(device))
    twin.append(_torch_twin(model[2:])[0])
    model[1].eval()
    remove_spectral_norm(model[1])
    twin[1] = copy.deepcopy(model[1])  # (removing from the twin too would edit the shared class)
    _assert_runs_as_twin(model, twin, x, backend, steps=2)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_model_inside_fused_model(device, backend):
    """A fused block inside a fused model: each layer still advances once per call."""
    model, twin = _fused_nested(device, 10)
    fuse_spectral_norm(model.a)
    with pytest.raises(ValueError, match="already active"):
        fuse_spectral_norm(model)
    _assert_runs_as_twin(model, twin, torch.randn(2, 3, device=device), backend, steps=2)


class _TwoWeights(nn.Module):
    """Two spectrally normalized Linear layers whose weights the forward just reads."""

    def __init__(self, sn):
        super().__init__()
        self.a, self.b = sn(nn.Linear(5, 3)), sn(nn.Linear(9, 3))

    def forward(self):
        return self.a.weight.sum() + self.b.weight.sum()


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("fused", [False, True])
def test_weight_replaced_with_another_shape_raises(device, backend, fused):
    """A weight set to another number of columns leaves v stale: torch's mv raises. The kernels
    must not start from v (they would read past it, or take another layer's part of the
    concatenated v when the sizes swap): the same RuntimeError, before any launch."""
    torch.manual_seed(12)
    theirs = _TwoWeights(P.spectral_norm).to(device)
    ours = _TwoWeights(spectral_norm).to(device)
    if fused:
        fuse_spectral_norm(ours)
    for m in (theirs, ours):  # the column counts swap: 5 <-> 9, the total stays 14
        m.a.weight = torch.randn(3, 9, device=device)
        m.b.weight = torch.randn(3, 5, device=device)
    with pytest.raises(RuntimeError, match="size mismatch"):
        theirs()
    with fastgan.use_backend(backend), pytest.raises(RuntimeError, match="size mismatch"):
        ours()
    assert all(m._pending is None for m in ours.modules() if hasattr(m, "_pending"))


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("kind", ["equal_linear", "equal_conv2d"])
def test_equalized_layer_honours_parametrize_cached(device, backend, kind):
    """Inside torch's `parametrize.cached()` a parametrized weight is computed once: two calls
    of an equalized layer with spectral norm advance u, v once, as reading `.weight` twice
    does, and both calls see the same normalized weight."""
    from torch.nn.utils import parametrize as PZ

    torch.manual_seed(13)
    ours = spectral_norm(_layer(kind)).to(device)
    torch.manual_seed(13)  # not a deep copy: that shares the class, whose cache key is ours
    twin = spectral_norm(_layer(kind)).to(device)
    g = torch.Generator().manual_seed(14)
    x = _input(kind, device, g)
    with fastgan.use_backend(backend), PZ.cached():
        twin.weight, twin.weight  # computed once, cached
        y1, y2 = ours(x), ours(x)
    assert torch.equal(y1, y2)
    assert torch.equal(_sn(ours)._u, _sn(twin)._u) and torch.equal(_sn(ours)._v, _sn(twin)._v)


class _Interruptible(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = spectral_norm(nn.Linear(3, 4)), spectral_norm(nn.Linear(4, 2))
        self.stop = False

    def forward(self, x):
        h = self.a(x)
        if self.stop:
            raise KeyboardInterrupt  # not an Exception: torch runs no always_call hook
        return self.b(h)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_fused_path_recovers_from_an_interrupted_call(device, backend, monkeypatch):
    """A call ended by KeyboardInterrupt (Ctrl-C in a notebook) skips the forward hook. The next
    call must not be taken for a nested one: layer b, which the interrupted call never reached,
    is put back (torch did not advance it) and its result dropped (a later call would take it,
    computed from the weight before the step), later calls run fused again, u, v stay torch's."""
    from fastgan.ops import spectral_norm as ops

    torch.manual_seed(15)
    model = _Interruptible().to(device)
    twin = _torch_twin(model)
    fuse_spectral_norm(model)
    x = torch.randn(2, 3, device=device)
    for m in (model, twin):
        m.stop = True
        with fastgan.use_backend(backend), pytest.raises(KeyboardInterrupt):
            m(x)
        m.stop = False
    noise = torch.randn(2, 4, device=device)  # an optimizer step: a stale result would show
    with torch.no_grad():
        for m in (model, twin):
            m.b.parametrizations.weight.original.add_(noise)
    calls = []
    if backend != "ref":
        real = ops._KERNELS[backend]
        monkeypatch.setitem(ops._KERNELS, backend,
                            lambda *a: (calls.append(len(a[0])), real(*a))[1])
    _assert_runs_as_twin(model, twin, x, backend, steps=2)
    assert calls == ([2, 2] if backend != "ref" else [])
    assert all(m._pending is None for m in model.modules() if hasattr(m, "_pending"))


def test_meta_device_deferred_init():
    """Built under torch.device("meta") (deferred initialization, as accelerate / FSDP do), a
    layer with spectral norm is made and runs in training and eval mode, as torch's does."""
    for sn in (P.spectral_norm, spectral_norm):
        with torch.device("meta"):
            layer = sn(nn.Linear(3, 4))
        x = torch.randn(2, 3, device="meta")
        assert layer(x).shape == (2, 4)
        layer.eval()
        assert layer(x).shape == (2, 4)
        assert _sn(layer)._u.device.type == "meta"
