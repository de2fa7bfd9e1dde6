"""The developer scripts in scripts/ still run (they are not part of the package)."""

import pathlib
import shlex
import subprocess
import sys

import pytest

from helpers import load_script

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("args", [[], ["--bf16", "--order", "port"]])
def test_step_traffic_reports_both_discriminators(args, capsys):
    assert load_script("step_traffic").main(["--res", "16", "--batch", "2", *args]) == 0
    out = capsys.readouterr().out
    assert "plain-torch D, eager penalty" in out and "fastgan D + penalty" in out
    kept = [float(line.split(":")[1].split()[0]) for line in out.splitlines()
            if line.startswith("kept by autograd")]
    assert len(kept) == 2 and min(kept) > 0


@pytest.mark.parametrize("options", [[], ["--skip-bench", "--budget", "300"]])
def test_gpu_check_dry_run_prints_the_plan(options):
    """Run as a script (it imports its sibling modules): every stage of its table, in priority
    order, with the command it would run, what an option skips, and the budget."""
    gc = load_script("gpu_check")
    r = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", *options],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"budget {300 if options else 480} s" in lines[0]
    heads = [line.split()[1].rstrip(":") for line in lines if line[:4].strip().endswith(".")]
    assert heads == [s.key for s in gc.STAGES]
    for stage in gc.STAGES:
        head = next(i for i, line in enumerate(lines) if line.split()[1] == f"{stage.key}:")
        assert ("skipped (option --skip-bench)" in lines[head]) == (
            bool(options) and stage.kind == "bench")
        assert shlex.split(lines[head + 1])[:3 + len(stage.args)] == ["python", "-m", (
            "fastgan.build" if stage.kind == "build" else "pytest"), *stage.args]
