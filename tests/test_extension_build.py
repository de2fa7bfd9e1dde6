"""The compiled CUDA extension's build and loader, without a GPU: the op schemas, the sources and
flags every build uses (fastgan._build_config), the JIT cache key and lock, status()/load(), and
(with a CUDA toolkit) the ahead-of-time build fastgan._C. The raw ops themselves, on a GPU:
test_extension_ops.py.
"""

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch

import fastgan
from fastgan import _build_config as config
from fastgan import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
OPS_WITH_CUDA = ("pixel_norm", "minibatch_stddev", "bias_act", "grad_penalty")
CUDA_TORCH = torch.version.cuda is not None
TOOLKIT = config.find_cuda_home() if CUDA_TORCH else None
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
    assert len(_ext.OPS) == len(set(_ext.OPS))
    for op in OPS_WITH_CUDA:
        for suffix in ("forward", "backward", "double_backward"):
            assert f"fastgan_cuda::{op}_{suffix}" in _ext.OPS
    for name in _ext.OPS:
        schema = torch._C._dispatch_find_schema_or_throw(name, "")
        assert schema is not None
    assert "minibatch_stddev_double_backward" in str(
        torch.ops.fastgan_cuda.minibatch_stddev_double_backward.default._schema)
    assert str(torch.ops.fastgan_cuda.bias_act_forward.default._schema).endswith(
        "(Tensor x, Tensor? b, str act, float alpha, float gain, int dim, bool save_mask)"
        " -> (Tensor, Tensor)")
    assert str(torch.ops.fastgan_cuda.grad_penalty_double_backward.default._schema).endswith(
        "(Tensor gg, Tensor dp, Tensor? dnorm, Tensor g, Tensor norm, float weight,"
        " float target, bool r1) -> (Tensor, Tensor, Tensor, Tensor)")


def test_every_schema_has_one_cuda_impl_in_csrc():
    """Each fastgan_cuda schema is implemented by exactly one m.impl line, in bind_<its op>.cpp
    (checked on the sources, so it holds where nothing can be compiled)."""
    impls = {}
    for path in config.sources(CSRC):
        if path.endswith(".cpp"):
            with open(path) as fh:
                for name in re.findall(r'm\.impl\(\s*"(\w+)"', fh.read()):
                    impls.setdefault(name, []).append(os.path.basename(path))
    names = [op.split("::", 1)[1] for op in _ext.OPS]
    assert sorted(impls) == sorted(names)
    for name, files in impls.items():
        assert len(files) == 1, (name, files)
        assert name.startswith(files[0][len("bind_"):-len(".cpp")] + "_"), (name, files)


# ------------------------------------------------------------------------------ sources and flags

def test_sources_are_every_cu_and_cpp_in_csrc():
    files = config.sources()
    assert files == sorted(glob.glob(os.path.join(CSRC, "*.cu"))
                           + glob.glob(os.path.join(CSRC, "*.cpp")), key=os.path.basename)
    names = [os.path.basename(f) for f in files]
    assert "module.cpp" in names
    for op in OPS_WITH_CUDA:
        assert f"{op}.cu" in names and f"bind_{op}.cpp" in names
    headers = set(config.csrc_files()) - set(files)
    assert {os.path.basename(h) for h in headers} >= {"binding_utils.h", "fastgan_kernels.h",
                                                      "fastgan_common.cuh"}
    assert config.source_hash()


@pytest.fixture
def csrc_copy(tmp_path, monkeypatch):
    """A copy of csrc/ that the build config (and so fastgan._ext) takes for the sources."""
    copy = tmp_path / "csrc"
    shutil.copytree(CSRC, copy)
    monkeypatch.setattr(config, "_CSRC_CANDIDATES", (str(copy),))
    assert config.csrc_dir() == str(copy)
    return copy


def _add_op(csrc):
    (csrc / "spectral_norm.cu").write_text('#include "fastgan_common.cuh"\n')
    (csrc / "bind_spectral_norm.cpp").write_text('#include "binding_utils.h"\n')


def test_a_new_ops_files_join_the_sources_and_change_the_cache_key(csrc_copy, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    hash0, dir0 = config.source_hash(), _ext.cache_dir()
    _add_op(csrc_copy)
    names = [os.path.basename(f) for f in config.sources()]
    assert "spectral_norm.cu" in names and "bind_spectral_norm.cpp" in names
    hash1, dir1 = config.source_hash(), _ext.cache_dir()
    assert hash1 != hash0 and dir1 != dir0 and dir1.endswith(hash1)

    # headers are not compiled but are part of the key
    with open(csrc_copy / "binding_utils.h", "a") as fh:
        fh.write("// changed\n")
    assert config.source_hash() != hash1
    assert "binding_utils.h" not in [os.path.basename(f) for f in config.sources()]
    # other files are neither
    hash2 = config.source_hash()
    (csrc_copy / "notes.txt").write_text("not a source")
    assert config.source_hash() == hash2


def test_the_flags_are_part_of_the_key(monkeypatch):
    before = config.source_hash()
    monkeypatch.setattr(config, "NVCC_FLAGS", config.NVCC_FLAGS + ["-lineinfo"])
    assert config.source_hash() != before


def test_cmake_globs_the_same_sources():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as fh:
        text = fh.read()
    globs = re.findall(r"file\(GLOB\s+\w+\s+CONFIGURE_DEPENDS\s+\$\{FASTGAN_CSRC\}/(\*\.\w+)\)",
                       text)
    assert sorted(globs) == sorted(config.SOURCE_PATTERNS)


def test_build_config_is_a_torch_free_leaf():
    """setup.py loads fastgan/_build_config.py by path where fastgan (and torch) may not import."""
    code = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('cfg', sys.argv[1])\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert m.sources(sys.argv[2]), 'no sources'\n"
            "bad = [n for n in sys.modules if n == 'torch' or n.startswith('fastgan')]\n"
            "assert not bad, bad\n"
            "print('OK')\n")
    out = subprocess.run([sys.executable, "-c", code, config.__file__, CSRC],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_version_has_one_home():
    from fastgan import _version

    assert fastgan.__version__ == _version.__version__
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:
        assert 'version = { attr = "fastgan._version.__version__" }' in fh.read()


def test_arch_helpers():
    assert config.parse_arch_list("8.0;9.0+PTX") == [(8, 0, False), (9, 0, True)]
    assert config.parse_arch_list("8.6 9.0a") == [(8, 6, False), (9, 0, False)]
    with pytest.raises(ValueError):
        config.parse_arch_list("sm_90")
    assert config.arch_runs_on("8.0;9.0+PTX", (8, 9))       # sm_80 SASS runs on 8.9
    assert config.arch_runs_on("8.0;9.0+PTX", (12, 0))      # compute_90 PTX JIT
    assert not config.arch_runs_on("8.0;9.0", (10, 0))
    assert not config.arch_runs_on("9.0+PTX", (8, 6))
    assert config.gencode_flags("9.0+PTX") == ["-gencode=arch=compute_90,code=sm_90",
                                               "-gencode=arch=compute_90,code=compute_90"]


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


def test_no_sources_no_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "_CSRC_CANDIDATES", (str(tmp_path),))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert _ext.cache_dir() is None
    ok, why = _ext._cache_status(allow_cuda_init=False)
    assert not ok and "no CUDA sources" in why


def test_a_library_of_another_copy_of_fastgan_is_not_ours(monkeypatch, tmp_path):
    """An editable install's finder hands its checkout's fastgan._C to a worktree without one."""
    import importlib.machinery

    other = tmp_path / "main" / "fastgan" / "_C.so"
    spec = importlib.machinery.ModuleSpec("fastgan._C", None, origin=str(other))
    monkeypatch.delitem(sys.modules, "fastgan._C", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "fastgan._C" else None)
    ok, why = _ext._aot_status(allow_cuda_init=False)
    assert not ok and "another copy of fastgan" in why


def _record_cached_build(directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "fastgan_C.so"), "w") as fh:
        fh.write("not a library; never loaded here")
    with open(os.path.join(directory, "build.json"), "w") as fh:
        json.dump({"library": "fastgan_C.so"}, fh)


def test_cached_build_is_found_by_key(tmp_path, monkeypatch):
    """status() finds a JIT build recorded under this exact key, and only that one."""
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    directory, arch, key = _ext._cache_location(allow_cuda_init=False)
    assert directory is not None and directory.startswith(str(tmp_path)) and arch == "9.0"
    assert torch.__version__ in key and fastgan.__version__ in key and "sm90" in key
    assert _ext._cache_status(allow_cuda_init=False)[0] is False
    _record_cached_build(directory)
    assert _ext._cache_status(allow_cuda_init=False)[0] is True
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # another key
    assert _ext._cache_status(allow_cuda_init=False)[0] is False


@pytest.fixture
def fake_compiler(monkeypatch):
    """_build_into with a stand-in for torch's cpp_extension.load: records its arguments and
    writes a file where the library would be. Nothing is compiled or loaded."""
    from torch.utils import cpp_extension

    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        path = os.path.join(kwargs["build_directory"], kwargs["name"] + ".so")
        with open(path, "w") as fh:
            fh.write("not a library")
        return path

    monkeypatch.setattr(config, "configure_cuda_home", lambda: "/nowhere/cuda")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return calls


def test_jit_build_compiles_the_configured_sources_and_records_them(csrc_copy, tmp_path,
                                                                    fake_compiler):
    _add_op(csrc_copy)
    directory = str(tmp_path / "cache" / "key")
    path = _ext._build_into(directory, "9.0", verbose=False)
    (call,) = fake_compiler
    assert call["sources"] == config.sources()
    assert os.path.join(str(csrc_copy), "bind_spectral_norm.cpp") in call["sources"]
    assert call["extra_include_paths"] == [str(csrc_copy)]
    assert "-gencode=arch=compute_90,code=sm_90" in call["extra_cuda_cflags"]
    assert call["build_directory"] == directory and not call["is_python_module"]
    with open(os.path.join(directory, "build.json")) as fh:
        record = json.load(fh)
    assert record["sources"] == config.source_hash() and record["arch_list"] == "9.0"
    assert record["torch"] == torch.__version__ and record["fastgan"] == fastgan.__version__
    assert _ext._cached_library(directory) == path


def test_jit_build_waits_on_the_lock_and_uses_a_build_made_meanwhile(tmp_path, fake_compiler,
                                                                     monkeypatch):
    """Another process holding the cache lock builds; this one then loads that build and does
    not compile."""
    from filelock import FileLock

    loaded = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    directory = str(tmp_path / "key")
    result = []
    with FileLock(directory + ".lock"):
        worker = threading.Thread(
            target=lambda: result.append(_ext._build_into(directory, "9.0", verbose=False)))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive(), "_build_into did not wait for the lock"
        _record_cached_build(directory)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert fake_compiler == []
    assert result == loaded == [os.path.join(directory, "fastgan_C.so")]


def test_jit_build_failure_says_why_without_the_command_lines(tmp_path, monkeypatch,
                                                              fake_compiler):
    from torch.utils import cpp_extension

    def failing_load(**kwargs):
        raise RuntimeError("Error building extension 'fastgan_C':\n"
                           "c++ -MMD -MF bind_x.o.d -O3 -c bind_x.cpp -o bind_x.o\n"
                           "bind_x.cpp:3:1: error: 'foo' was not declared in this scope")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    with pytest.raises(RuntimeError, match="compiling in") as info:
        _ext._build_into(str(tmp_path / "key"), "9.0", verbose=False)
    message = str(info.value)
    assert "'foo' was not declared" in message and "-MMD" not in message
    assert _ext._cached_library(str(tmp_path / "key")) is None


# ------------------------------------------------------------------------------ the AOT build

needs_toolkit = pytest.mark.skipif(
    not CUDA_TORCH or TOOLKIT is None or BUILD_DISABLED,
    reason=("torch is a CPU-only build" if not CUDA_TORCH else
            "no CUDA toolkit (nvcc) found" if TOOLKIT is None else
            "FASTGAN_BUILD_CUDA=0"))


@needs_toolkit
def test_setup_py_compiles_the_configured_sources():
    """setup.py's extension has config.sources() (read without building anything)."""
    code = ("import runpy, setuptools\n"
            "setuptools.setup = lambda **kw: print('SOURCES',"
            " sorted(kw['ext_modules'][0].sources))\n"
            "runpy.run_path('setup.py')\n")
    env = dict(os.environ, FASTGAN_BUILD_CUDA="1", TORCH_CUDA_ARCH_LIST="9.0")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = out.stdout.split("SOURCES", 1)[1].strip()
    want = sorted(os.path.relpath(s, ROOT) for s in config.sources(CSRC))
    assert listed == str(want)


# FASTGAN_BUILD_CUDA=1 (exported by .ci/run around its install and its tests) means the build was
# forced at install: fastgan._C must then exist, beside this package. Elsewhere (a checkout used in
# place, as the GPU check does, which builds into the JIT cache instead) the extension must load
# from either place.
BUILD_FORCED = os.environ.get("FASTGAN_BUILD_CUDA", "").strip() == "1"


@needs_toolkit
def test_extension_was_built_and_registers_cuda_kernels():
    if BUILD_FORCED:
        ok, why = _ext._aot_status(allow_cuda_init=False)
        if not ok:
            pytest.fail(f"fastgan._C is not usable ({why}) although FASTGAN_BUILD_CUDA=1: "
                        "install with `FASTGAN_BUILD_CUDA=1 pip install --no-build-isolation "
                        "-e .`")
        import fastgan._C  # noqa: F401
    else:
        ok, why = _ext.status()
        if not ok:
            pytest.skip(f"no build of the extension here ({why}); `python -m fastgan.build` "
                        "makes one")
        _ext.load()

    for name in _ext.OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
    ok, why = _ext.status()
    assert ok, why
    assert _ext.is_loaded()


@needs_toolkit
def test_build_record_names_this_torch():
    spec = importlib.util.find_spec("fastgan._C")
    if spec is None or os.path.dirname(os.path.realpath(spec.origin)) != _ext._PKG_DIR:
        pytest.skip("fastgan._C is not built beside this package (see the test above)")

    with open(os.path.join(_ext._PKG_DIR, "_C_build.json")) as fh:
        record = json.load(fh)
    assert record["torch"] == torch.__version__
    assert record["cuda"] == torch.version.cuda
    assert record["sources"] == config.source_hash(), "fastgan._C is stale: reinstall"
    config.parse_arch_list(record["arch_list"])
