"""The developer scripts in scripts/ still run (they are not part of the package)."""

import pathlib
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


def test_gpu_check_dry_run_prints_the_plan():
    r = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for step in ("build:", "GPU tests:", "other tests:", "benchmarks:"):
        assert step in r.stdout
