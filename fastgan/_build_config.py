"""How ``csrc/`` is compiled: the one source of the build settings, and torch-free.

``setup.py`` (ahead-of-time build of ``fastgan._C``) loads this file by path, ``fastgan._ext``
(JIT build into the cache) imports it, and ``CMakeLists.txt`` globs by the same rule, so all
three compile the same sources with the same flags. It imports nothing from fastgan and never
imports torch (setup.py runs where the package may not import).

Adding an op's CUDA code:
    csrc/<op>.cu           kernels with a torch-free C API (declared in csrc/fastgan_kernels.h)
    csrc/bind_<op>.cpp     tensor checks + launches, and its own TORCH_LIBRARY_IMPL block
    fastgan/_ext.py        the op's schemas in SCHEMAS
Every ``csrc/*.cu`` and ``csrc/*.cpp`` is compiled (``sources()``) and every csrc file, headers
included, goes into the JIT cache key (``source_hash()``): nothing else to register.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import sys

#: Where the sources live: ``fastgan/csrc`` in an installed wheel (setup.py copies them there),
#: ``<checkout>/csrc`` in a source tree or an editable install.
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_CSRC_CANDIDATES = (os.path.join(_PKG_DIR, "csrc"), os.path.join(os.path.dirname(_PKG_DIR), "csrc"))
_CSRC_MARKER = "fastgan_kernels.h"

#: Translation units (compiled) and headers (only hashed and shipped).
SOURCE_PATTERNS = ("*.cu", "*.cpp")
HEADER_PATTERNS = ("*.h", "*.cuh")

#: Arch list of the ahead-of-time build when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset:
#: A100 and H100 SASS, plus compute_90 PTX that newer GPUs JIT-compile at load.
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"

#: Name of the extension in the JIT cache (also its TORCH_EXTENSION_NAME).
JIT_NAME = "fastgan_C"

#: Bump when a build flag changes, so existing caches are not reused.
BUILD_ABI = "1"

CXX_FLAGS = ["-O3", "-g0"]  # -g0: Python's sysconfig CFLAGS carry -g (a 6 MB library)
NVCC_FLAGS = ["-O3"]


def csrc_dir() -> str | None:
    """The directory holding the CUDA sources, or None when this install has none."""
    for d in _CSRC_CANDIDATES:
        if os.path.isfile(os.path.join(d, _CSRC_MARKER)):
            return d
    return None


def _glob(directory: str | None, patterns: tuple[str, ...]) -> list[str]:
    directory = directory or csrc_dir()
    if directory is None:
        return []
    files = {f for pat in patterns for f in glob.glob(os.path.join(directory, pat))}
    return sorted(files, key=os.path.basename)


def sources(directory: str | None = None) -> list[str]:
    """The translation units: every .cu (kernels) and .cpp (bindings, module stub) in csrc."""
    return _glob(directory, SOURCE_PATTERNS)


def csrc_files(directory: str | None = None) -> list[str]:
    """Every csrc file that goes into the build (sources and headers), sorted by name."""
    return _glob(directory, SOURCE_PATTERNS + HEADER_PATTERNS)


def source_hash(directory: str | None = None) -> str | None:
    """Hash of the names and contents of every csrc file and of the build flags."""
    files = csrc_files(directory)
    if not files:
        return None
    h = hashlib.sha256()
    h.update(f"abi={BUILD_ABI};cxx={CXX_FLAGS};nvcc={NVCC_FLAGS}".encode())
    for f in files:
        h.update(os.path.basename(f).encode() + b"\0")
        with open(f, "rb") as fh:
            h.update(fh.read())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _has_toolkit(home: str | None) -> bool:
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
        os.path.join(home, "include", "cuda_runtime_api.h"))


def find_cuda_home() -> str | None:
    """The CUDA toolkit to compile with: $CUDA_HOME / $CUDA_PATH when set, else the toolkit of
    the nvcc on PATH when its headers sit beside it, else /usr/local/cuda. (torch's own guess
    takes dirname(dirname(which nvcc)), which is wrong for a wrapper script such as
    /usr/local/bin/nvcc.)"""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env if _has_toolkit(env) else None
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(nvcc)),
                       os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if _has_toolkit(home):
            return home
    return None


def configure_cuda_home() -> str | None:
    """Point torch.utils.cpp_extension at find_cuda_home() (environment and, when already
    imported, the module attribute). Returns the toolkit path, or None when there is none."""
    home = find_cuda_home()
    if home is None:
        return None
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        os.environ["CUDA_HOME"] = home
    cpp_ext = sys.modules.get("torch.utils.cpp_extension")
    if cpp_ext is not None and getattr(cpp_ext, "CUDA_HOME", None) != home:
        cpp_ext.CUDA_HOME = home
    return home


def parse_arch_list(arch_list: str) -> list[tuple[int, int, bool]]:
    """"8.0;9.0+PTX" -> [(8, 0, False), (9, 0, True)]. Accepts ';', ',' or spaces as
    separators and an optional trailing letter on the minor version (9.0a)."""
    out = []
    for item in re.split(r"[;,\s]+", arch_list.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)[a-z]?(\+PTX)?", item)
        if m is None:
            raise ValueError(f"bad CUDA arch {item!r} in {arch_list!r}")
        out.append((int(m.group(1)), int(m.group(2)), m.group(3) is not None))
    return out


def arch_runs_on(arch_list: str, capability: tuple[int, int]) -> bool:
    """Whether a binary built for `arch_list` has code for a GPU of compute `capability`:
    SASS for X.Y runs on X.Z with Z >= Y; PTX for X.Y is JIT-compiled for anything >= X.Y."""
    major, minor = capability
    for a_major, a_minor, ptx in parse_arch_list(arch_list):
        if a_major == major and a_minor <= minor:
            return True
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
    return False


def gencode_flags(arch_list: str) -> list[str]:
    """nvcc -gencode flags for an arch list (SASS for each, PTX where marked +PTX)."""
    flags = []
    for major, minor, ptx in parse_arch_list(arch_list):
        num = f"{major}{minor}"
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags
