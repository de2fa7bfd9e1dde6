"""Locating, building and loading fastgan's compiled CUDA extension.

The ``fastgan_cuda::*`` op schemas are defined here, in Python, at import: ``import fastgan``
works without the extension, and only a call to an op whose CUDA kernel is missing fails.
Loading the extension registers those kernels. It comes from one of two places, tried in order:

1. ``fastgan._C``, built ahead of time by ``setup.py`` (``pip install --no-build-isolation .``
   with a CUDA build of torch and nvcc present). Its build record ``fastgan/_C_build.json``
   must name this torch (a library built against another torch can abort the process at load),
   and its arch list must cover the GPU.
2. The JIT cache ``<root>/<key>/`` with root ``$FASTGAN_CACHE`` or ``~/.cache/fastgan`` and key =
   fastgan version + torch version + CUDA version + Python version + GPU arch (the current
   device's compute capability, or ``$TORCH_CUDA_ARCH_LIST`` when set) + a hash of the csrc
   sources. ``load(build=True)`` (the ``cuda`` backend asked for explicitly, or
   ``python -m fastgan.build``) compiles into it with ninja when neither exists, under a
   cross-process file lock.

Public: ``define_schemas()``, ``status()``, ``load(build=False)``, ``is_loaded()``,
``cache_dir()``, ``OPS``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import json
import os
import sys
import threading

import torch

from . import _build_config as config
from ._version import __version__

NAMESPACE = "fastgan_cuda"

#: Schemas of the ops csrc/bind_<op>.cpp implement for the CUDA dispatch key. Adding an op: add
#: its schema(s) here and its m.impl line(s) in its csrc/bind_<op>.cpp (the rule for its CUDA
#: sources: fastgan/_build_config.py). Call them as torch.ops.fastgan_cuda.<name>(...) on CUDA
#: tensors once load() has succeeded.
SCHEMAS = (
    "pixel_norm_forward(Tensor x, float eps, int dim) -> Tensor",
    "pixel_norm_backward(Tensor grad, Tensor x, float eps, int dim) -> Tensor",
    "pixel_norm_double_backward(Tensor gg, Tensor grad, Tensor x, float eps, int dim)"
    " -> (Tensor, Tensor)",
    "minibatch_stddev_forward(Tensor x, int group_size, int num_features, float eps,"
    " bool strided, bool unbiased) -> Tensor",
    "minibatch_stddev_backward(Tensor grad, Tensor x, int group_size, int num_features,"
    " float eps, bool strided, bool unbiased) -> Tensor",
    "minibatch_stddev_double_backward(Tensor gg, Tensor grad, Tensor x, int group_size,"
    " int num_features, float eps, bool strided, bool unbiased) -> (Tensor, Tensor)",
    # bias_act: act in "linear" | "relu" | "lrelu"; returns (y, mask) with mask bool like y (empty
    # [0] for linear or save_mask=False); (dx, db) with db [C] fp32 (fp64 for fp64), [0] without
    # has_bias; dx / g_dy laid out like mask (like grad / gg_x for linear).
    "bias_act_forward(Tensor x, Tensor? b, str act, float alpha, float gain, int dim,"
    " bool save_mask) -> (Tensor, Tensor)",
    "bias_act_backward(Tensor grad, Tensor mask, bool has_bias, str act, float alpha, float gain,"
    " int dim) -> (Tensor, Tensor)",
    "bias_act_double_backward(Tensor gg_x, Tensor? gg_b, Tensor mask, str act, float alpha,"
    " float gain, int dim) -> Tensor",
    # grad_penalty: (p, norm) [N] fp32 (fp64 for fp64 g); dg / g_g like g; g_dp, g_dnorm, g_norm
    # [N] in the dtypes of dp, dnorm (dp when None), norm.
    "grad_penalty_forward(Tensor g, float weight, float target, bool r1) -> (Tensor, Tensor)",
    "grad_penalty_backward(Tensor dp, Tensor? dnorm, Tensor g, Tensor norm, float weight,"
    " float target, bool r1) -> Tensor",
    "grad_penalty_double_backward(Tensor gg, Tensor dp, Tensor? dnorm, Tensor g, Tensor norm,"
    " float weight, float target, bool r1) -> (Tensor, Tensor, Tensor, Tensor)",
)

#: Qualified names of the ops, e.g. "fastgan_cuda::pixel_norm_forward".
OPS = tuple(f"{NAMESPACE}::{s.split('(', 1)[0]}" for s in SCHEMAS)

_PKG_DIR = os.path.dirname(os.path.realpath(__file__))
_AOT_MODULE = "fastgan._C"
_AOT_RECORD = "_C_build.json"
_CACHE_RECORD = "build.json"
_HINT = ("build it with `python -m fastgan.build` (needs nvcc), or reinstall with "
         "`pip install --no-build-isolation .` where a CUDA toolkit is present")

_libs: list[torch.library.Library] = []  # keeps the schema definitions alive
_lock = threading.RLock()
_loaded_from: str | None = None


# ------------------------------------------------------------------------------------ schemas

def _op_defined(qualname: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
        return True
    except RuntimeError:
        return False


def define_schemas() -> None:
    """Define the fastgan_cuda::* schemas (idempotent; runs at import of this module)."""
    with _lock:
        missing = [s for s, name in zip(SCHEMAS, OPS) if not _op_defined(name)]
        if not missing:
            return
        lib = torch.library.Library(NAMESPACE, "FRAGMENT")
        for schema in missing:
            lib.define(schema)
        _libs.append(lib)


define_schemas()


# ------------------------------------------------------------------------------------ helpers

@functools.lru_cache(maxsize=None)
def _nvml_capability() -> tuple[int, int] | None:
    """Compute capability of the GPUs through NVML (no CUDA context, fork-safe): the common
    capability of all GPUs, or None when they differ or NVML is unavailable."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
    except AttributeError:
        return None
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return None
        caps = set()
        for i in range(count.value):
            handle = ctypes.c_void_p()
            major, minor = ctypes.c_int(), ctypes.c_int()
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
                return None
            if nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major),
                                                       ctypes.byref(minor)) != 0:
                return None
            caps.add((major.value, minor.value))
        return caps.pop() if len(caps) == 1 else None
    except AttributeError:
        return None
    finally:
        nvml.nvmlShutdown()


def _device_capability(allow_cuda_init: bool) -> tuple[int, int] | None:
    """The current GPU's compute capability. Without `allow_cuda_init` it never initializes
    CUDA: torch's answer when CUDA is already up, else NVML's."""
    if torch.cuda.is_initialized():
        return torch.cuda.get_device_capability()
    if allow_cuda_init:
        return torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    return _nvml_capability()


def _target_arch(allow_cuda_init: bool) -> tuple[str | None, str]:
    """(arch list a JIT build targets, why). None when it cannot be told."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        try:
            config.parse_arch_list(env)
        except ValueError as err:
            return None, f"TORCH_CUDA_ARCH_LIST is invalid: {err}"
        return env, "TORCH_CUDA_ARCH_LIST"
    cap = _device_capability(allow_cuda_init)
    if cap is None:
        if allow_cuda_init:
            return None, "no CUDA GPU is visible and TORCH_CUDA_ARCH_LIST is unset"
        return None, ("the GPU arch is unknown without initializing CUDA (NVML reports no GPU, "
                      "or GPUs of several archs) and TORCH_CUDA_ARCH_LIST is unset")
    return f"{cap[0]}.{cap[1]}", "current GPU"


def _arch_tag(arch_list: str) -> str:
    parts = config.parse_arch_list(arch_list)
    return "sm" + "_".join(f"{a}{b}{'ptx' if p else ''}" for a, b, p in parts)


def _cache_root() -> str:
    root = os.environ.get("FASTGAN_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fastgan")
    return os.path.abspath(root)


def _cache_location(allow_cuda_init: bool) -> tuple[str | None, str | None, str]:
    """(cache dir for this exact key, target arch list, why) or (None, None, why)."""
    src = config.source_hash()
    if src is None:
        return None, None, "this install has no CUDA sources (csrc) to build from"
    arch, why = _target_arch(allow_cuda_init)
    if arch is None:
        return None, None, why
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    key = (f"fastgan{__version__}-torch{torch.__version__}-cuda{torch.version.cuda}-{py}-"
           f"{_arch_tag(arch)}-{src}")
    return os.path.join(_cache_root(), key), arch, key


def cache_dir() -> str | None:
    """The JIT cache directory for this torch / GPU / source combination (None when it cannot
    be told without initializing CUDA or when there are no sources)."""
    directory, _, _ = _cache_location(allow_cuda_init=False)
    return directory


def _cached_library(directory: str) -> str | None:
    try:
        with open(os.path.join(directory, _CACHE_RECORD)) as fh:
            record = json.load(fh)
        path = os.path.join(directory, record["library"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if os.path.isfile(path) else None


def _aot_status(allow_cuda_init: bool) -> tuple[bool, str]:
    """Whether fastgan._C exists and was built for this torch, these sources and this GPU."""
    if _AOT_MODULE in sys.modules:
        return True, f"{_AOT_MODULE} is imported"
    spec = importlib.util.find_spec(_AOT_MODULE)
    if spec is None or not spec.origin:
        return False, f"{_AOT_MODULE} was not built at install"
    # An editable install's finder serves fastgan._C from its own checkout to any other copy of
    # the package (a git worktree) that lacks one: only a library beside this package is ours.
    if os.path.dirname(os.path.realpath(spec.origin)) != _PKG_DIR:
        return False, f"{_AOT_MODULE} at {spec.origin} belongs to another copy of fastgan"
    try:
        with open(os.path.join(os.path.dirname(spec.origin), _AOT_RECORD)) as fh:
            record = json.load(fh)
        built_torch, built_cuda, arch = record["torch"], record["cuda"], record["arch_list"]
    except (OSError, ValueError, KeyError, TypeError):
        return False, f"{_AOT_MODULE} has no readable build record ({_AOT_RECORD}); not loading it"
    if built_torch != torch.__version__ or built_cuda != torch.version.cuda:
        return False, (f"{_AOT_MODULE} was built against torch {built_torch} (CUDA {built_cuda}), "
                       f"this is torch {torch.__version__} (CUDA {torch.version.cuda})")
    src = config.source_hash()
    if src is not None and record.get("sources") not in (None, src):
        return False, f"{_AOT_MODULE} is stale: csrc changed since it was built"
    cap = _device_capability(allow_cuda_init)
    if cap is not None and not config.arch_runs_on(arch, cap):
        return False, f"{_AOT_MODULE} was built for CUDA archs {arch}, the GPU is sm_{cap[0]}{cap[1]}"
    return True, f"{_AOT_MODULE} built at install for CUDA archs {arch} ({spec.origin})"


def _cache_status(allow_cuda_init: bool) -> tuple[bool, str]:
    directory, _, why = _cache_location(allow_cuda_init)
    if directory is None:
        return False, f"no usable JIT cache: {why}"
    lib = _cached_library(directory)
    if lib is None:
        return False, f"no cached build in {directory}"
    return True, f"cached build {lib}"


# ------------------------------------------------------------------------------------ public

def is_loaded() -> bool:
    """Whether the CUDA kernels are registered in this process."""
    return _loaded_from is not None or _AOT_MODULE in sys.modules


def status() -> tuple[bool, str]:
    """(ok, reason): ok when the extension is loaded, or loadable without compiling (fastgan._C
    built at install for this torch, or a cached JIT build for this exact key). Never compiles,
    never initializes CUDA (the GPU arch comes from NVML when CUDA is not up yet)."""
    if is_loaded():
        return True, f"loaded ({_loaded_from or _AOT_MODULE})"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    ok_aot, why_aot = _aot_status(allow_cuda_init=False)
    if ok_aot:
        return True, why_aot
    ok_cache, why_cache = _cache_status(allow_cuda_init=False)
    if ok_cache:
        return True, why_cache
    return False, f"{why_aot}; {why_cache}; {_HINT}"


def load(build: bool = False, verbose: bool = False) -> str:
    """Load the CUDA kernels (registering the fastgan_cuda::* CUDA implementations) and return
    where they came from. With `build`, compile into the JIT cache first when neither fastgan._C
    nor a cached build can be used. Raises RuntimeError saying why otherwise."""
    global _loaded_from
    with _lock:
        if is_loaded():
            return _loaded_from or _AOT_MODULE
        if torch.version.cuda is None:
            raise RuntimeError(f"fastgan CUDA extension: torch {torch.__version__} is a CPU-only "
                               "build; install a CUDA build of torch")
        reasons = []
        ok, why = _aot_status(allow_cuda_init=True)
        if ok:
            try:
                module = importlib.import_module(_AOT_MODULE)
                _loaded_from = module.__file__
                return _loaded_from
            except Exception as err:  # a broken install must not hide the cache
                reasons.append(f"importing {_AOT_MODULE} failed: {type(err).__name__}: {err}")
        else:
            reasons.append(why)

        directory, arch, why = _cache_location(allow_cuda_init=True)
        if directory is None:
            raise RuntimeError(f"fastgan CUDA extension unavailable: {'; '.join(reasons)}; "
                               f"cannot use the JIT cache: {why}")
        lib = _cached_library(directory)
        if lib is not None:
            torch.ops.load_library(lib)
            _loaded_from = lib
            return lib
        if not build:
            raise RuntimeError(f"fastgan CUDA extension not built: {'; '.join(reasons)}; no "
                               f"cached build in {directory}; {_HINT}")
        _loaded_from = _build_into(directory, arch, verbose)
        return _loaded_from


def _compiler_messages(log: str, limit: int = 6000) -> str:
    """The diagnostics of a failed ninja build, without the (very long) compiler command lines."""
    keep = [line for line in log.splitlines()
            if not (" -MD " in line or " -MMD " in line or line.startswith("g++ ")
                    or line.startswith("c++ "))]
    text = "\n".join(keep).strip()
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _build_into(directory: str, arch: str, verbose: bool) -> str:
    cuda_home = config.configure_cuda_home()
    if cuda_home is None:
        raise RuntimeError(
            "fastgan CUDA extension: cannot build, no CUDA toolkit found (no nvcc with its "
            f"headers; set CUDA_HOME to a CUDA {torch.version.cuda} toolkit)")
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("fastgan CUDA extension: cannot build, ninja is not installed "
                           "(pip install ninja)")
    from filelock import FileLock

    os.makedirs(os.path.dirname(directory), exist_ok=True)
    with FileLock(directory + ".lock"):
        lib = _cached_library(directory)  # built by another process while we waited
        if lib is not None:
            torch.ops.load_library(lib)
            return lib
        os.makedirs(directory, exist_ok=True)
        print(f"fastgan: compiling the CUDA extension (once; about a minute) for CUDA archs "
              f"{arch} into {directory}", file=sys.stderr)
        try:
            path = cpp_extension.load(
                name=config.JIT_NAME,
                sources=config.sources(),
                extra_cflags=config.CXX_FLAGS,
                extra_cuda_cflags=config.NVCC_FLAGS + config.gencode_flags(arch),
                extra_include_paths=[config.csrc_dir()],
                build_directory=directory,
                verbose=verbose,
                with_cuda=True,
                is_python_module=False,
            )
        except Exception as err:  # compiler errors come back as RuntimeError with the log
            raise RuntimeError(
                f"fastgan CUDA extension: compiling in {directory} failed (CUDA_HOME={cuda_home}, "
                f"archs {arch}; `python -m fastgan.build --verbose` shows the commands):\n"
                f"{_compiler_messages(str(err))}") from None
        record = {
            "library": os.path.basename(path),
            "fastgan": __version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "arch_list": arch,
            "sources": config.source_hash(),
        }
        tmp = os.path.join(directory, _CACHE_RECORD + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, os.path.join(directory, _CACHE_RECORD))
        return path
