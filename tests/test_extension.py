"""The compiled CUDA extension: build, registration, locating/loading (fastgan._ext) and, on a GPU,
the raw fastgan_cuda::* ops' bindings (layouts, strides, checks) against plain-torch math.

Without a CUDA toolkit the build checks are skipped (with the reason); fastgan._ext's
status()/load() contract is checked everywhere.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import _ext
from fastgan import build as fbuild

CUDA_TORCH = torch.version.cuda is not None
TOOLKIT = fbuild.find_cuda_home() if CUDA_TORCH else None
BUILD_DISABLED = os.environ.get("FASTGAN_BUILD_CUDA", "").strip() == "0"


def _no_compiling(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("fastgan._ext compiled something")

    monkeypatch.setattr(_ext, "_build_into", boom)
    monkeypatch.setattr("torch.utils.cpp_extension.load", boom)


# ------------------------------------------------------------------------------ schemas

def test_schemas_are_defined_without_the_extension():
    _ext.define_schemas()  # idempotent
    _ext.define_schemas()
    assert len(_ext.OPS) == len(set(_ext.OPS)) == 6
    for name in _ext.OPS:
        schema = torch._C._dispatch_find_schema_or_throw(name, "")
        assert schema is not None
    assert "minibatch_stddev_double_backward" in str(
        torch.ops.fastgan_cuda.minibatch_stddev_double_backward.default._schema)


# ------------------------------------------------------------------------------ status / load

def test_status_is_bool_and_reason_and_never_compiles(monkeypatch):
    _no_compiling(monkeypatch)
    ok, why = _ext.status()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    if not CUDA_TORCH:
        assert not ok


def test_load_without_build_never_compiles(monkeypatch):
    _no_compiling(monkeypatch)
    ok, _ = _ext.status()
    try:
        where = _ext.load()
    except RuntimeError as err:
        assert not ok, f"status() said loadable but load() failed: {err}"
        assert str(err)
    else:
        assert isinstance(where, str) and _ext.is_loaded()


def test_import_and_status_initialize_no_cuda():
    code = ("import torch, fastgan, fastgan._ext as e; ok, why = e.status(); "
            "assert isinstance(ok, bool) and isinstance(why, str); "
            "assert not torch.cuda.is_initialized(), 'CUDA initialized'; print('OK')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_cached_build_is_found_by_key(tmp_path, monkeypatch):
    """status() finds a JIT build recorded under this exact key, and only that one."""
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    directory, arch, key = _ext._cache_location(allow_cuda_init=False)
    assert directory is not None and directory.startswith(str(tmp_path)) and arch == "9.0"
    assert torch.__version__ in key and fastgan.__version__ in key and "sm90" in key
    assert _ext._cache_status(allow_cuda_init=False)[0] is False
    os.makedirs(directory)
    with open(os.path.join(directory, "fastgan_C.so"), "w") as fh:
        fh.write("not a library; never loaded here")
    with open(os.path.join(directory, "build.json"), "w") as fh:
        json.dump({"library": "fastgan_C.so"}, fh)
    assert _ext._cache_status(allow_cuda_init=False)[0] is True
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # another key
    assert _ext._cache_status(allow_cuda_init=False)[0] is False


def test_arch_helpers():
    assert fbuild.parse_arch_list("8.0;9.0+PTX") == [(8, 0, False), (9, 0, True)]
    assert fbuild.parse_arch_list("8.6 9.0a") == [(8, 6, False), (9, 0, False)]
    with pytest.raises(ValueError):
        fbuild.parse_arch_list("sm_90")
    assert fbuild.arch_runs_on("8.0;9.0+PTX", (8, 9))       # sm_80 SASS runs on 8.9
    assert fbuild.arch_runs_on("8.0;9.0+PTX", (12, 0))      # compute_90 PTX JIT
    assert not fbuild.arch_runs_on("8.0;9.0", (10, 0))
    assert not fbuild.arch_runs_on("9.0+PTX", (8, 6))
    assert fbuild.gencode_flags("9.0+PTX") == ["-gencode=arch=compute_90,code=sm_90",
                                               "-gencode=arch=compute_90,code=compute_90"]


def test_sources_are_found():
    files = [os.path.basename(f) for f in fbuild.sources()]
    assert "bindings.cpp" in files and "pixel_norm.cu" in files and "minibatch_stddev.cu" in files
    assert fbuild.source_hash()


# ------------------------------------------------------------------------------ the AOT build

needs_toolkit = pytest.mark.skipif(
    not CUDA_TORCH or TOOLKIT is None or BUILD_DISABLED,
    reason=("torch is a CPU-only build" if not CUDA_TORCH else
            "no CUDA toolkit (nvcc) found" if TOOLKIT is None else
            "FASTGAN_BUILD_CUDA=0"))


@needs_toolkit
def test_extension_was_built_at_install_and_registers_cuda_kernels():
    try:
        import fastgan._C  # noqa: F401
    except ImportError as err:
        pytest.fail(f"fastgan._C was not built at install ({err}): with a CUDA toolkit present, "
                    "install with `FASTGAN_BUILD_CUDA=1 pip install --no-build-isolation -e .`")

    for name in _ext.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
    ok, why = _ext.status()
    assert ok, why
    assert _ext.is_loaded()


@needs_toolkit
def test_build_record_names_this_torch():
    C = pytest.importorskip("fastgan._C", reason="not built (see the test above)")

    with open(os.path.join(os.path.dirname(C.__file__), "_C_build.json")) as fh:
        record = json.load(fh)
    assert record["torch"] == torch.__version__
    assert record["cuda"] == torch.version.cuda
    assert record["sources"] == fbuild.source_hash(), "fastgan._C is stale: reinstall"
    fbuild.parse_arch_list(record["arch_list"])


# ------------------------------------------------------------------------------ GPU: raw ops

def _pn_ref(x, eps, dim):
    return x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + eps)


def _mbsd_ref(x, G, F, eps, strided, unbiased):
    N, C, H, W = x.shape
    M = N // G
    xg = x.reshape(G, M, F, C // F, H, W) if strided else x.reshape(M, G, F, C // F, H, W)
    gdim = 0 if strided else 1
    sigma = (xg.var(dim=gdim, unbiased=unbiased, keepdim=True) + eps).sqrt()
    s = sigma.mean(dim=(3, 4, 5))  # [1, M, F] or [M, 1, F]
    s = s.expand(G, M, F) if strided else s.expand(M, G, F)
    s = s.reshape(N, F, 1, 1).expand(N, F, H, W)
    return torch.cat([x, s], dim=1)


def _check_three_passes(op_fwd, op_bwd, op_dbwd, ref, x, grad, gg, tol):
    """forward/backward/double backward of the raw ops against autograd through `ref` (fp64)."""
    x64 = x.detach().double().requires_grad_(True)
    grad64 = grad.detach().double().requires_grad_(True)
    y64 = ref(x64)
    (dx64,) = torch.autograd.grad(y64, x64, grad64, create_graph=True)
    g_grad64, g_x64 = torch.autograd.grad(dx64, (grad64, x64), gg.double())

    y = op_fwd(x)
    dx = op_bwd(grad, x)
    g_grad, g_x = op_dbwd(gg, grad, x)
    for got, want in ((y, y64), (dx, dx64), (g_grad, g_grad64), (g_x, g_x64)):
        assert got.dtype == x.dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)


_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}

PN_CASES = [  # (shape, dim, layout)
    ((5, 7), 1, "contiguous"),
    ((3, 33, 5, 6), 1, "contiguous"),
    ((3, 33, 5, 6), 1, "channels_last"),
    ((2, 512, 4, 4), 1, "contiguous"),
    ((2, 512, 4, 4), 1, "channels_last"),
    ((4, 6, 7), -1, "contiguous"),
    ((3, 5, 6, 4), 2, "channels_last"),  # does not collapse: contiguous copy / output
    ((3, 8, 6, 4), 1, "sliced"),
    ((2, 3, 1, 1), 1, "contiguous"),
]


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        return x[..., ::2]
    return x


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dim,layout", PN_CASES)
def test_cuda_pixel_norm_raw_ops(shape, dim, layout, dtype):
    _ext.load(build=True)
    torch.manual_seed(0)
    if layout == "sliced":
        shape = (*shape[:-1], shape[-1] * 2)
    x = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    grad = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    gg = torch.randn(x.shape, device="cuda", dtype=dtype)
    eps = 1e-8
    ops = torch.ops.fastgan_cuda
    _check_three_passes(lambda x: ops.pixel_norm_forward(x, eps, dim),
                        lambda g, x: ops.pixel_norm_backward(g, x, eps, dim),
                        lambda gg, g, x: ops.pixel_norm_double_backward(gg, g, x, eps, dim),
                        lambda x: _pn_ref(x, eps, dim), x, grad, gg, _TOL[dtype])


@pytest.mark.cuda
def test_cuda_pixel_norm_stride0_grad_and_layout():
    _ext.load(build=True)
    x = torch.randn(4, 16, 5, 5, device="cuda").contiguous(memory_format=torch.channels_last)
    grad = torch.ones((), device="cuda").expand(x.shape)  # what y.sum().backward() hands over
    dx = torch.ops.fastgan_cuda.pixel_norm_backward(grad, x, 1e-8, 1)
    xr = x.detach().double().requires_grad_(True)
    _pn_ref(xr, 1e-8, 1).sum().backward()
    torch.testing.assert_close(dx.double(), xr.grad, rtol=2e-5, atol=2e-5)
    y = torch.ops.fastgan_cuda.pixel_norm_forward(x, 1e-8, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.ops.fastgan_cuda.pixel_norm_forward(x[:0], 1e-8, 1).shape == (0, 16, 5, 5)


MBSD_CASES = [  # (shape, group_size, num_features, strided, unbiased, layout)
    ((8, 5, 3, 4), 4, 1, True, False, "contiguous"),
    ((8, 6, 3, 4), 4, 2, False, False, "contiguous"),
    ((8, 6, 3, 4), 2, 3, True, True, "channels_last"),
    ((6, 4, 5, 5), 3, 1, False, True, "channels_last"),
    ((4, 512, 4, 4), 4, 1, True, False, "contiguous"),
    ((4, 16, 64, 64), 4, 1, True, False, "channels_last"),  # several blocks per slice
    ((5, 3, 2, 2), 1, 1, True, False, "contiguous"),          # G = 1: sigma = sqrt(eps)
    ((4, 6, 3, 8), 2, 2, True, False, "sliced"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,G,F,strided,unbiased,layout", MBSD_CASES)
def test_cuda_minibatch_stddev_raw_ops(shape, G, F, strided, unbiased, layout, dtype):
    _ext.load(build=True)
    torch.manual_seed(0)
    if layout == "sliced":
        shape = (*shape[:-1], shape[-1] * 2)
    x = _layout(torch.randn(shape, device="cuda", dtype=dtype), layout)
    N, C, H, W = x.shape
    grad = _layout(torch.randn(N, C + F, H, W * (2 if layout == "sliced" else 1), device="cuda",
                               dtype=dtype), layout)
    gg = torch.randn(x.shape, device="cuda", dtype=dtype)
    eps = 1e-8 if dtype == torch.float64 else 1e-4
    args = (G, F, eps, strided, unbiased)
    ops = torch.ops.fastgan_cuda
    _check_three_passes(lambda x: ops.minibatch_stddev_forward(x, *args),
                        lambda g, x: ops.minibatch_stddev_backward(g, x, *args),
                        lambda gg, g, x: ops.minibatch_stddev_double_backward(gg, g, x, *args),
                        lambda x: _mbsd_ref(x, *args), x, grad, gg, _TOL[dtype])


@pytest.mark.cuda
def test_cuda_minibatch_stddev_layout_and_determinism():
    _ext.load(build=True)
    x = torch.randn(16, 32, 33, 31, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.ops.fastgan_cuda.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False)
    assert y.shape == (16, 33, 33, 31) and y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.ones((), device="cuda").expand(y.shape)
    dx1 = torch.ops.fastgan_cuda.minibatch_stddev_backward(grad, x, 4, 1, 1e-8, True, False)
    dx2 = torch.ops.fastgan_cuda.minibatch_stddev_backward(grad, x, 4, 1, 1e-8, True, False)
    assert torch.equal(dx1, dx2)
    assert torch.equal(y, torch.ops.fastgan_cuda.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False))


@pytest.mark.cuda
def test_cuda_binding_checks():
    _ext.load(build=True)
    ops = torch.ops.fastgan_cuda
    x = torch.randn(6, 4, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="group_size"):
        ops.minibatch_stddev_forward(x, 4, 1, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="num_features"):
        ops.minibatch_stddev_forward(x, 2, 3, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="unbiased"):
        ops.minibatch_stddev_forward(x, 1, 1, 1e-8, True, True)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        ops.minibatch_stddev_backward(x, x, 2, 1, 1e-8, True, False)
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        ops.pixel_norm_forward(x.int(), 1e-8, 1)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.pixel_norm_backward(x.double(), x, 1e-8, 1)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        ops.pixel_norm_backward(x.cuda(), x.cpu(), 1e-8, 1)
    with pytest.raises(RuntimeError, match="dim"):
        ops.pixel_norm_forward(x, 1e-8, 4)
