"""fastgan.bench on CPU: shape sets, the table's GB/s cells, its footer, and the command."""

import math
import pathlib
import subprocess
import sys

import pytest
import torch

from fastgan.bench.__main__ import main
from fastgan.bench.cases import make_cases, shapes_for
from fastgan.bench.report import footer_lines, format_table
from fastgan.bench.specs import OPS


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("op", OPS)
def test_largest_is_the_one_biggest_shape_of_the_full_set(op, device):
    full = shapes_for(op, device, "all")
    assert shapes_for(op, device, "largest") == [max(full, key=math.prod)]
    assert set(shapes_for(op, device, "quick")) <= set(full)
    with pytest.raises(ValueError, match="shapes"):
        shapes_for(op, device, "biggest")


def test_the_largest_gpu_cases_are_progans_biggest_maps():
    cases = make_cases(OPS, "cuda", [torch.float32], "largest", ["fwd"])
    assert {c.op: c.shape for c in cases} == {
        "pixel_norm": (16, 64, 256, 256), "minibatch_stddev": (128, 512, 4, 4),
        "bias_act": (16, 64, 256, 256), "grad_penalty": (16, 3, 256, 256)}


def _rec(op, pass_, provider, ms, min_bytes, status="ok"):
    return {"op": op, "shape": [2, 4, 8, 8], "dtype": "fp32", "pass": pass_,
            "provider": provider, "status": status, "ms": ms, "min_bytes": min_bytes,
            "gbps": min_bytes / (ms * 1e-3) / 1e9}  # 0.0 without a byte model


def test_rows_without_a_byte_model_leave_gb_s_empty():
    table = format_table([_rec("layer_up", "fwdbwd", "eager", 2.0, 4_000_000),
                          _rec("layer_up", "gp", "eager", 3.0, 0)])
    fwdbwd, gp = table.splitlines()[2:4]
    assert fwdbwd.split()[-1] == "2.00"  # 4e6 bytes in 2 ms
    assert gp.split()[-1] == "3.000" and "0.00" not in gp


def test_the_footer_explains_only_the_columns_the_table_has():
    eager_only = [_rec("pixel_norm", "fwd", "eager", 1.0, 1000)]
    lines = footer_lines(eager_only, ["eager"], "cpu")
    text = "\n".join(lines)
    assert "pixel_norm:" in text and "bias_act" not in text
    assert "x eager" not in text and "x compile" not in text and "'!'" not in text
    assert "indicative only" in text
    both = eager_only + [_rec("pixel_norm", "fwd", p, 0.5, 1000, s) for p, s in
                         (("compile", "ok"), ("triton", "mismatch"))]
    text = "\n".join(footer_lines(both, ["eager", "compile", "triton"], "cuda"))
    assert "x eager / x compile" in text and "'!'" in text and "indicative" not in text
    header = format_table(both, ["eager", "compile", "triton"]).splitlines()[0]
    assert "x eager" in header and "x compile" in header


def test_the_cpu_command_prints_the_table_and_its_footer(capsys):
    assert main(["--device", "cpu", "--ops", "bias_act", "--passes", "fwd", "--largest"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("bias_act"))
    assert row.split()[1] == "4x32x64x64"
    assert "bias_act: fwd 2|x| + |b|" in out and "x eager" not in out


def test_every_benchmark_module_collects():
    """The suite does not run benchmarks/: a module that no longer imports would first fail on
    the GPU machine, inside the one device call a session gets."""
    root = pathlib.Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tests collected" in proc.stdout, proc.stdout[-2000:]
