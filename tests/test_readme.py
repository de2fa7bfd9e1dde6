"""Every ```python block of README.md runs as copied, on its own, in a fresh interpreter on the
CPU; every path a ```bash block names exists. So the README cannot drift from the code."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def _blocks(lang: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of `lang`."""
    return [(README.count("\n", 0, m.start()) + 1, m.group(2)) for m in FENCE.finditer(README)
            if m.group(1) == lang]


PYTHON_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")


def test_readme_has_its_blocks():
    assert len(PYTHON_BLOCKS) >= 5 and len(BASH_BLOCKS) >= 2


def _user_env() -> dict:
    """The environment of a user on a CPU machine: no test-suite settings, no GPU."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "FASTGAN_BACKEND", "PYTHONPATH")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.mark.parametrize("line,code", PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs_standalone(line, code):
    if "pro_gan_pytorch" in code:  # a test-only dependency; .ci/run installs it and checks it
        pytest.importorskip("pro_gan_pytorch")
    # cwd = the checkout, so `import fastgan` is this tree's package, as after `pip install -e .`
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_user_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README block at line {line} failed:\n{proc.stderr[-3000:]}"


def test_bash_blocks_name_existing_files():
    named = [(line, p) for line, code in BASH_BLOCKS
             for p in re.findall(r"[\w./-]+\.(?:py|txt|sh)\b", code)]
    assert named, "the README's bash blocks name no file: this test checks nothing"
    for line, p in named:
        assert (ROOT / p).is_file(), f"README bash block at line {line} names missing {p}"
