"""Build script for the optional CUDA extension ``fastgan._C`` (metadata: pyproject.toml).

    pip install .                         pure Python (Triton kernels); build isolation hides
                                          torch, so the extension is not built
    pip install --no-build-isolation .    also compiles fastgan._C against the installed torch
                                          when it is a CUDA build and nvcc is found
    python setup.py build_ext --inplace   compiles fastgan._C into the checkout's fastgan/
                                          (with its build record), without installing
Environment:
    FASTGAN_BUILD_CUDA=1     compile the extension or fail with the reason; =0 never compile it
    TORCH_CUDA_ARCH_LIST     archs to compile for (default: the visible GPUs, else 8.0;9.0+PTX)
    CUDA_HOME                the toolkit (default: nvcc on PATH, else /usr/local/cuda)
    MAX_JOBS                 parallel compile jobs

Without the extension, fastgan still ships csrc/ (as fastgan/csrc) so the first explicit use of
the `cuda` backend, or `python -m fastgan.build`, can compile it into a cache.
"""

import importlib.util
import json
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(HERE, "csrc")


def _load_build_config():
    # A leaf module (no fastgan or torch imports), loaded by path: the package itself may not be
    # importable in the build environment.
    spec = importlib.util.spec_from_file_location(
        "_fastgan_build_config", os.path.join(HERE, "fastgan", "_build_config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config = _load_build_config()


def _note(message):
    print(f"fastgan setup: {message}", file=sys.stderr)


class BuildPy(build_py):
    """Also ships csrc/ inside the package as fastgan/csrc, for JIT builds from a wheel."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install finds the checkout's csrc/ directly
        target = os.path.join(self.build_lib, "fastgan", "csrc")
        self.mkpath(target)
        for path in config.csrc_files(CSRC):
            self.copy_file(path, os.path.join(target, os.path.basename(path)))


def _arch_list(torch):
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if arch and arch != "native":
        return arch
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
                  ) if torch.cuda.is_available() else []
    if not caps:
        return config.DEFAULT_ARCH_LIST
    return ";".join(f"{major}.{minor}" for major, minor in caps) + "+PTX"


def _cuda_extension():
    """(ext_modules, cmdclass) for fastgan._C, or ([], {}) when it is not built."""
    mode = os.environ.get("FASTGAN_BUILD_CUDA", "").strip().lower()
    if mode in ("0", "false", "no", "off"):
        _note("FASTGAN_BUILD_CUDA=0: not building the CUDA extension")
        return [], {}
    forced = mode in ("1", "true", "yes", "on")

    def skip(why):
        if forced:
            raise RuntimeError(f"FASTGAN_BUILD_CUDA=1 but the CUDA extension cannot be built: {why}")
        _note(f"not building the CUDA extension: {why}")
        return [], {}

    try:
        import torch
    except ImportError:
        return skip("torch is not importable in the build environment (install with "
                    "`pip install --no-build-isolation .` to build against the installed torch)")
    if torch.version.cuda is None:
        return skip(f"torch {torch.__version__} is a CPU-only build")
    cuda_home = config.configure_cuda_home()  # before torch.utils.cpp_extension reads CUDA_HOME
    if cuda_home is None:
        return skip("no CUDA toolkit found (nvcc and its headers); set CUDA_HOME")
    sources = config.sources(CSRC)
    if not sources:
        return skip(f"no sources in {CSRC}")

    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    arch = _arch_list(torch)
    ext = CUDAExtension(
        "fastgan._C",
        sources=[os.path.relpath(s, HERE) for s in sources],
        include_dirs=[CSRC],
        extra_compile_args={"cxx": list(config.CXX_FLAGS),
                            "nvcc": list(config.NVCC_FLAGS) + config.gencode_flags(arch)},
    )

    class BuildExt(BuildExtension):
        """Writes fastgan/_C_build.json beside the library: fastgan._ext loads fastgan._C only
        when it names the running torch (a mismatched build can abort the process at load)."""

        def run(self):
            super().run()
            record = {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "arch_list": arch,
                "sources": config.source_hash(CSRC),
                "cuda_home": cuda_home,
            }
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_C_build.json")
            with open(path, "w") as fh:
                json.dump(record, fh, indent=1)

    _note(f"building the CUDA extension fastgan._C for archs {arch} with {cuda_home}")
    return [ext], {"build_ext": BuildExt}


ext_modules, ext_cmdclass = _cuda_extension()

setup(
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPy, **ext_cmdclass},
)
