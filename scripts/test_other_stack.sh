#!/usr/bin/env bash
# Run the test suite, on the CPU, under another torch/Triton pair than CI's, in a throwaway venv.
#
#   scripts/test_other_stack.sh [TORCH_VERSION] [TRITON_SPEC] [pytest args...]
#
# Defaults to the GPU machine's stack (torch 2.11.0, Triton 3.6): the lower end of what
# pyproject.toml admits, and the versions any GPU result will come from. Downloads torch from
# PyPI (several GB) the first time; the venv is kept in $FASTGAN_STACK_VENV (default
# /tmp/fastgan-torch<version>) and the checkout is copied, so the working tree's build is untouched.
# Triton < 3.7's interpreter needs numpy < 2.4 (it calls int() on 1-element arrays).
set -euo pipefail
torch_version=${1:-2.11.0}
triton_spec=${2:-3.6.*}
shift $(( $# < 2 ? $# : 2 ))
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${FASTGAN_STACK_VENV:-/tmp/fastgan-torch$torch_version}
tree=$venv/fastgan-src

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==$torch_version" "triton==$triton_spec" "numpy<2.4" \
    "setuptools>=64" wheel ninja pybind11 "pytest>=8" "pytest-benchmark>=4"
rm -rf "$tree" && mkdir -p "$tree"
git -C "$root" ls-files -z --cached --others --exclude-standard \
    | (cd "$root" && xargs -0 cp --parents -t "$tree")
cd "$tree"
FASTGAN_BUILD_CUDA=1 "$venv/bin/pip" install -q --no-build-isolation -e .
"$venv/bin/python" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
FASTGAN_BUILD_CUDA=1 exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
