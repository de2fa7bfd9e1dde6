"""fastgan.penalties: values and D-parameter gradients against an eager plain-torch reference."""

import math

import pytest
import torch
from torch import nn

import fastgan
import fastgan.penalties as P
from helpers import DEVICE_BACKENDS, assert_close

N = 4


class PlainD(nn.Module):
    """A small plain-torch critic: conv, leaky ReLU, pool, conv, linear; scores [N, k]."""

    def __init__(self, k=1, c=3):
        super().__init__()
        self.c1 = nn.Conv2d(c, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, k)

    def forward(self, x):
        h = nn.functional.avg_pool2d(nn.functional.leaky_relu(self.c1(x), 0.2), 2)
        h = nn.functional.leaky_relu(self.c2(h), 0.2)
        return self.fc(h.flatten(1))


class FastD(nn.Module):
    """A critic with fastgan layers inside (pixel norm, minibatch stddev)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = fastgan.nn.PixelNorm()
        self.mbstd = fastgan.nn.MinibatchStdDev(group_size=2)
        self.c2 = nn.Conv2d(7, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 1)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.norm(self.c1(x)), 0.2)
        h = nn.functional.leaky_relu(self.c2(self.mbstd(h)), 0.2)
        return self.fc(h.flatten(1)).squeeze(1)  # scores [N]


def _images(device="cpu", dtype=torch.float32, seed=0, n=N, res=8):
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, 3, res, res, generator=g, dtype=torch.float64)
    fake = torch.randn(n, 3, res, res, generator=g, dtype=torch.float64)
    return real.to(device, dtype), fake.to(device, dtype)


def _model(cls, device="cpu", dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw).to(device, dtype)


def _reduce(p, reduction):
    return {"mean": p.mean, "sum": p.sum, "none": lambda: p}[reduction]()


def ref_gp(D, real, fake, eps, weight=10.0, target=1.0, reduction="mean"):
    """WGAN-GP as usually written in plain torch."""
    e = eps.view(-1, *([1] * (real.dim() - 1)))
    x = (e * real + (1 - e) * fake).detach().requires_grad_()
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    p = weight * (g.flatten(1).norm(dim=1) - target) ** 2 / target**2
    return _reduce(p, reduction)


def ref_r1(D, real, gamma=10.0, reduction="mean"):
    x = real.detach().requires_grad_()
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return _reduce(gamma / 2 * g.flatten(1).square().sum(1), reduction)


def _value_and_grads(D, fn):
    D.zero_grad(set_to_none=True)
    p = fn()
    p.sum().backward()
    # the last layer's bias does not reach the input gradient: no grad from a penalty alone
    return p.detach(), [torch.zeros_like(q) if q.grad is None else q.grad.clone()
                        for q in D.parameters()]


def _check(D, got_fn, want_fn, dtype=torch.float64, name=""):
    got, got_grads = _value_and_grads(D, got_fn)
    want, want_grads = _value_and_grads(D, want_fn)
    assert_close(got, want.to(got.dtype), dtype, f"{name} value")
    for i, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert_close(a, b, dtype, f"{name} grad of parameter {i}")


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("model", [PlainD, FastD])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_penalty_matches_eager(device, backend, model, reduction):
    D = _model(model, device, torch.float64)
    real, fake = _images(device, torch.float64)
    eps = torch.rand(N, dtype=torch.float64, device=device)
    with fastgan.use_backend(backend):
        _check(D, lambda: P.gradient_penalty(D, real, fake, epsilon=eps, reduction=reduction),
               lambda: ref_gp(D, real, fake, eps, reduction=reduction), name="gp")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_gradient_penalty_fp32_target_weight_and_k_outputs(device, backend):
    D = _model(PlainD, device, k=3)  # [N, 3] scores: the penalty differentiates their sum
    real, fake = _images(device)
    eps = torch.rand(N, device=device)
    with fastgan.use_backend(backend):
        _check(D, lambda: P.gradient_penalty(D, real, fake, weight=3.0, target=750.0, epsilon=eps),
               lambda: ref_gp(D, real, fake, eps, weight=3.0, target=750.0),
               torch.float32, "gp target 750")


def test_random_epsilon_is_seeded_uniform_per_sample():
    D = _model(PlainD, dtype=torch.float64)
    real, fake = _images(dtype=torch.float64)
    torch.manual_seed(123)
    got = P.gradient_penalty(D, real, fake, reduction="none")
    torch.manual_seed(123)
    want = ref_gp(D, real, fake, torch.rand(N, dtype=torch.float64), reduction="none")
    assert_close(got, want, name="seeded")
    gen = torch.Generator().manual_seed(7)
    got = P.gradient_penalty(D, real, fake, reduction="none", generator=gen)
    eps = torch.rand(N, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert_close(got, ref_gp(D, real, fake, eps, reduction="none"), name="generator")
    # a float epsilon is the same for every sample; epsilon=1 is the penalty at the reals
    assert_close(P.gradient_penalty(D, real, fake, epsilon=1.0),
                 ref_gp(D, real, fake, torch.ones(N, dtype=torch.float64)), name="eps=1")


def test_real_and_fake_are_detached():
    G = nn.Linear(5, 3 * 8 * 8)
    D = _model(PlainD)
    fake = G(torch.randn(N, 5)).view(N, 3, 8, 8)
    real = torch.randn(N, 3, 8, 8, requires_grad=True)
    P.gradient_penalty(D, real, fake).backward()
    assert G.weight.grad is None and real.grad is None
    assert D.c1.weight.grad is not None and D.fc.weight.grad is not None


def test_channels_last_images_same_penalty():
    D = _model(PlainD, dtype=torch.float64)
    real, fake = _images(dtype=torch.float64)
    eps = torch.rand(N, dtype=torch.float64)
    cl = torch.channels_last
    with fastgan.use_backend("triton" if fastgan.available_backends()["triton"][0] else "ref"):
        _check(D, lambda: P.gradient_penalty(D, real.to(memory_format=cl),
                                             fake.to(memory_format=cl), epsilon=eps),
               lambda: ref_gp(D, real, fake, eps), name="channels_last")


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_r1_and_r2(device, backend, reduction):
    D = _model(FastD, device, torch.float64)
    real, fake = _images(device, torch.float64)
    with fastgan.use_backend(backend):
        _check(D, lambda: P.r1_penalty(D, real, gamma=0.3, reduction=reduction),
               lambda: ref_r1(D, real, 0.3, reduction), name="r1")
        _check(D, lambda: P.r2_penalty(D, fake, reduction=reduction),
               lambda: ref_r1(D, fake, 10.0, reduction), name="r2")
        p, scores = P.r1_penalty(D, real, return_scores=True)
    assert_close(scores, D(real), name="scores")
    assert scores.grad_fn is not None


def test_drift_penalty():
    s = torch.randn(N, 1, dtype=torch.float64, requires_grad=True)
    d = P.drift_penalty(s)
    assert_close(d, 1e-3 * (s**2).mean(), name="drift")
    d.backward()
    assert_close(s.grad, 2e-3 * s.detach() / N, name="drift grad")
    assert P.drift_penalty(s.detach().bfloat16(), epsilon=0.5).dtype == torch.float32
    with pytest.raises(TypeError):
        P.drift_penalty([1.0])


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_bf16_autocast_penalty_fp32_and_keeps_graph(device, backend):
    """Under autocast the input gradient is fp32 and keeps its graph; the fused norm equals the
    eager one on the same (bf16) D. (bf16 GP gradients are ~20% off fp64 on either path.)"""
    D = _model(FastD, device)
    real, fake = _images(device)
    eps = torch.rand(N, device=device)
    with torch.autocast(device, dtype=torch.bfloat16), fastgan.use_backend(backend):
        got, got_grads = _value_and_grads(D, lambda: P.gradient_penalty(D, real, fake, epsilon=eps))
        want, want_grads = _value_and_grads(D, lambda: ref_gp(D, real, fake, eps))
        g = P.input_gradient(D, real.clone().requires_grad_())
    assert got.dtype == torch.float32 and g.dtype == torch.float32 and g.grad_fn is not None
    assert_close(got, want, torch.bfloat16, "value")
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b, torch.bfloat16, "grad")


def test_compiled_discriminator_same_penalty_and_grads():
    """The penalty pass runs the compiled module's eager original; compile still serves the plain
    passes (no recompilation), and the loss gradient equals the all-eager one."""
    torch._dynamo.reset()
    D = _model(PlainD)
    cD = torch.compile(D)
    real, fake = _images()
    eps = torch.rand(N)

    def step(d):
        return d(fake).mean() - d(real).mean() + P.gradient_penalty(d, real, fake, epsilon=eps)

    compiled_loss, compiled_grads = _value_and_grads(D, lambda: step(cD))
    eager_loss, eager_grads = _value_and_grads(D, lambda: step(D))
    assert_close(compiled_loss, eager_loss, torch.float32, "loss")
    for a, b in zip(compiled_grads, eager_grads):
        assert_close(a, b, torch.float32, "grad")
    # a lambda around the compiled module and a bound method work too (force_eager / unwrap)
    for d in (lambda x: cD(x), cD.forward, cD.__call__):
        assert_close(P.gradient_penalty(d, real, fake, epsilon=eps),
                     P.gradient_penalty(D, real, fake, epsilon=eps), torch.float32, "wrapped")
    assert P.eager_discriminator(cD) is D


# --- never a silent constant --------------------------------------------------------------------

class _NoGraphScale(torch.autograd.Function):
    """y = x * w whose backward is not differentiable (the input gradient carries no graph)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        with torch.no_grad():
            return gy * w, (gy * x).sum(0)


class NoGraphD(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 8, 8))

    def forward(self, x):
        return _NoGraphScale.apply(x, self.w).sum((1, 2, 3))


class NoGradD(PlainD):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


def test_gradient_without_graph_raises():
    real, fake = _images()
    with pytest.raises(RuntimeError, match="without a graph"):
        P.gradient_penalty(NoGraphD(), real, fake)
    D = NoGraphD()
    with pytest.raises(RuntimeError, match="without a graph"):  # the graph walk sees D.w
        P.gradient_penalty(lambda x: D(x) * 2, real, fake)
    w = torch.randn(3, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="without a graph"):  # the closure holds w
        P.r1_penalty(lambda x: (x * w.detach()).sum((1, 2, 3)), real)
    b = nn.Parameter(torch.zeros(1))
    with pytest.raises(RuntimeError, match="without a graph"):  # affine D: documented rule
        P.gradient_penalty(lambda x: x.sum((1, 2, 3)) + b, real, fake)


def test_detached_input_or_no_grad_raises():
    real, fake = _images()
    D = _model(PlainD)
    with pytest.raises(RuntimeError, match="does not depend on its input"):
        P.gradient_penalty(lambda x: D(x.detach()), real, fake)
    with pytest.raises(RuntimeError, match="does not require grad"):
        P.gradient_penalty(_model(NoGradD), real, fake)
    with pytest.raises(RuntimeError, match="does not require grad"):
        P.r1_penalty(lambda x: D(x).detach(), real)


def test_parameter_free_linear_critic_is_a_true_constant():
    real, fake = _images()
    p = P.gradient_penalty(lambda x: x.sum((1, 2, 3)), real, fake)
    assert math.isclose(p.item(), 10.0 * (math.sqrt(3 * 8 * 8) - 1) ** 2, rel_tol=1e-6)


def test_penalty_inside_no_grad_block_still_differentiable():
    D = _model(PlainD)
    real, fake = _images()
    with torch.no_grad():
        p = P.gradient_penalty(D, real, fake)
    assert p.requires_grad


@pytest.mark.parametrize("call,exc,words", [
    (lambda D, r, f: P.gradient_penalty(D, r, f[:2]), ValueError, "same shape"),
    (lambda D, r, f: P.gradient_penalty(D, r, f.double()), TypeError, "same dtype"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, reduction="avg"), ValueError, "reduction"),
    (lambda D, r, f: P.r1_penalty(D, r, reduction=None), ValueError, "reduction"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, target=0.0), ValueError, "target"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, weight="x"), TypeError, "weight"),
    (lambda D, r, f: P.gradient_penalty(D, r, f, epsilon=torch.rand(3)), ValueError, "epsilon"),
    (lambda D, r, f: P.gradient_penalty(D, r.long(), f.long()), TypeError, "floating"),
    (lambda D, r, f: P.gradient_penalty(lambda x: D(x).sum(), r, f), ValueError, "batch dim"),
    (lambda D, r, f: P.r1_penalty(lambda x: D(x)[:2], r), ValueError, "batch dim"),
    (lambda D, r, f: P.r1_penalty(lambda x: (D(x),), r), TypeError, "tensor of scores"),
])
def test_bad_input_raises(call, exc, words):
    D = _model(PlainD)
    real, fake = _images()
    with pytest.raises(exc, match=words):
        call(D, real, fake)


# --- lazy regularization ------------------------------------------------------------------------

def test_lazy_adam_adjustment():
    params = [nn.Parameter(torch.zeros(2))]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.99))
    P.adjust_adam_for_lazy_regularization(opt, 16)
    c = 16 / 17
    group = opt.param_groups[0]
    assert math.isclose(group["lr"], 1e-3 * c)
    assert group["betas"] == (0.0, 0.99**c)
    P.adjust_adam_for_lazy_regularization(opt, 16)  # idempotent
    assert math.isclose(group["lr"], 1e-3 * c)
    with pytest.raises(ValueError, match="already adjusted"):
        P.adjust_adam_for_lazy_regularization(opt, 4)
    assert P.lazy_adam_hyperparameters(2e-3, (0.5, 0.9), 4) == (2e-3 * 0.8, (0.5**0.8, 0.9**0.8))
    with pytest.raises(TypeError, match="betas"):
        P.adjust_adam_for_lazy_regularization(torch.optim.SGD(params, lr=0.1), 4)
    with pytest.raises(ValueError, match="interval"):
        P.LazyRegularizer(0)


def test_lazy_regularizer_every_k_steps_scaled_by_k():
    D = _model(PlainD)
    real, _ = _images()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    lazy = P.LazyRegularizer(4, optimizer=opt)
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3 * 0.8)
    applied = [s for s in range(9) if lazy(s, P.r1_penalty, D, real) is not None]
    assert applied == [0, 4, 8]
    assert_close(lazy(8, P.r1_penalty, D, real, gamma=2.0), 4 * P.r1_penalty(D, real, gamma=2.0),
                 torch.float32, "scaled")
    p, scores = lazy(4, P.r1_penalty, D, real, return_scores=True)
    assert_close(p, 4 * P.r1_penalty(D, real), torch.float32, "tuple")


def test_ddp_single_process(tmp_path):
    """DDP (gloo, world size 1): the penalty through DDP gives the plain module's gradients."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        D = _model(PlainD)
        ddp = nn.parallel.DistributedDataParallel(_model(PlainD))
        real, fake = _images()
        eps = torch.rand(N)

        _, got = _value_and_grads(ddp, lambda: _ddp_step(ddp, real, fake, eps))
        _, want = _value_and_grads(D, lambda: _ddp_step(D, real, fake, eps))
        for a, b in zip(got, want):
            assert_close(a, b, torch.float32, "ddp grad")
    finally:
        dist.destroy_process_group()


def _ddp_step(d, real, fake, eps):
    return (d(fake).mean() - d(real).mean() + P.gradient_penalty(d, real, fake, epsilon=eps)
            + P.drift_penalty(d(real)))


def _ddp_worker(rank, world, tmp_path, backend):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=rank,
                            world_size=world)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model(PlainD))
        real, fake = _images(n=N * world)
        eps = torch.rand(N * world, generator=torch.Generator().manual_seed(1))
        mine = slice(rank * N, (rank + 1) * N)
        with fastgan.use_backend(backend):
            _, grads = _value_and_grads(ddp, lambda: _ddp_step(ddp, real[mine], fake[mine],
                                                               eps[mine]))
        torch.save(grads, tmp_path / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes, each with half the batch: DDP's all-reduced gradients of the whole D
    step (penalty included) equal one process's on the whole batch (every term is a mean)."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    backend = "triton" if fastgan._backend.triton_interpreter_on() else "ref"
    world = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world, tmp_path, backend), nprocs=world)
    D = _model(PlainD)
    real, fake = _images(n=N * world)
    eps = torch.rand(N * world, generator=torch.Generator().manual_seed(1))
    with fastgan.use_backend(backend):
        _, want = _value_and_grads(D, lambda: _ddp_step(D, real, fake, eps))
    for rank in range(world):
        got = torch.load(tmp_path / f"grads{rank}.pt")
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, torch.float32, f"rank {rank} grad of parameter {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("penalty", ["gp", "r1"])
def test_gpu_fp32_against_fp64(backend, penalty):
    """On the GPU (TF32 off, by the conftest fixture): fp32 fastgan penalty vs fp64 eager."""
    D = _model(FastD, "cuda")
    D64 = _model(FastD, "cuda", torch.float64)
    D64.load_state_dict(D.state_dict())
    real, fake = _images("cuda")
    eps = torch.rand(N, device="cuda")
    with fastgan.use_backend(backend):
        if penalty == "gp":
            got, got_grads = _value_and_grads(D, lambda: P.gradient_penalty(D, real, fake,
                                                                            epsilon=eps))
        else:
            got, got_grads = _value_and_grads(D, lambda: P.r1_penalty(D, real))
    if penalty == "gp":
        want, want_grads = _value_and_grads(D64, lambda: ref_gp(D64, real.double(), fake.double(),
                                                                eps.double()))
    else:
        want, want_grads = _value_and_grads(D64, lambda: ref_r1(D64, real.double()))
    a = torch.cat([got.reshape(1)] + [t.flatten() for t in got_grads]).double()
    b = torch.cat([want.reshape(1)] + [t.flatten() for t in want_grads])
    rel = ((a - b).norm() / b.norm()).item()
    assert rel < 1e-4, f"fp32 {penalty} vs fp64: relative error {rel:.2e}"
