"""The environment of a scripts/gpu_check.py run: versions, GPU, TF32 mode, the device's copy
bandwidth and fastgan's backends (probed in a subprocess, so gpu_check itself never imports
torch), nvidia-smi's line, and the git commit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


ENV_PROBE = r"""
import json, platform
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, cuda_runtime=torch.version.cuda,
                gpu_available=torch.cuda.is_available(),
                tf32={"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                      "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "float32_matmul_precision": torch.get_float32_matmul_precision()})
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
        a = torch.empty(2**30, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
        for _ in range(3): b.copy_(a)
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(10):
            s.record(); b.copy_(a); e.record(); torch.cuda.synchronize(); times.append(s.elapsed_time(e))
        times.sort()
        info["copy_gbps"] = 2 * 2**30 / (times[len(times) // 2] * 1e-3) / 1e9
except Exception as err:
    info["torch_error"] = f"{type(err).__name__}: {err}"
try:
    import triton
    info["triton"] = triton.__version__
except Exception as err:
    info["triton"] = f"not importable ({type(err).__name__})"
try:
    import fastgan
    info["fastgan"] = fastgan.__version__
    info["backends"] = {k: [bool(v[0]), str(v[1])] for k, v in fastgan.available_backends().items()}
except Exception as err:
    info["fastgan_error"] = f"{type(err).__name__}: {err}"
print("GPU_CHECK_ENV=" + json.dumps(info))
"""


def _run_quiet(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError) as err:
        return -1, f"{type(err).__name__}: {err}"


def probe_environment(env: dict[str, str], timeout: float = 120) -> dict:
    """Args: the stages' environment; timeout: seconds. Returns: versions, GPU, TF32 mode, the
    device copy bandwidth and fastgan's backends, probed in a subprocess (this process never
    imports torch), plus nvidia-smi's line; "probe_error" when the probe failed."""
    try:
        p = subprocess.run([sys.executable, "-c", ENV_PROBE], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
        out = p.stdout + p.stderr
    except (OSError, subprocess.SubprocessError) as err:
        out = f"{type(err).__name__}: {err}"
    info: dict = {}
    for line in out.splitlines():
        if line.startswith("GPU_CHECK_ENV="):
            info = json.loads(line[len("GPU_CHECK_ENV="):])
    if not info:
        info = {"probe_error": out[-3000:] or "no output"}
    rc, smi = _run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"])
    info["nvidia_smi"] = smi.splitlines()[0] if rc == 0 and smi else None
    return info


def git_info(commit_arg: str | None) -> dict:
    """Args: --commit's value. Returns: commit (and subject), and how many files were changed or
    untracked in the checkout."""
    info: dict = {}
    rc, sha = _run_quiet(["git", "rev-parse", "HEAD"])
    info["commit"] = commit_arg or (sha if rc == 0 else None)
    rc, subject = _run_quiet(["git", "log", "-1", "--format=%s"])
    info["subject"] = subject if rc == 0 and not commit_arg else None
    rc, status = _run_quiet(["git", "status", "--porcelain"])
    info["dirty_files"] = len(status.splitlines()) if rc == 0 else None
    if info["commit"] is None:
        info["commit"] = "unknown (no git metadata here; pass --commit SHA)"
    return info
