"""Report: the environment a run saw, and the side-by-side text table of `python -m fastgan.bench`
(also printed by the benchmark suite's terminal summary), with a footer that explains exactly
the columns the table has.
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Sequence

import torch

from .providers import PROVIDERS, provider_status
from .specs import SPECS


def environment(device: str) -> dict[str, Any]:
    """Args: device, "cuda" or "cpu". Returns: a JSON-able dict of the date, Python, torch, CUDA,
    Triton and fastgan versions, the GPU (or CPU) and the TF32 settings."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": device,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    try:
        import fastgan

        info["fastgan"] = fastgan.__version__
    except Exception as err:
        info["fastgan"] = f"import failed: {err}"
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_sms=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_threads"] = torch.get_num_threads()
    info["tf32"] = {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    return info


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}"


def _fmt_gbps(rec: dict) -> str:
    """GB/s of a timed record; "" where the record has no byte model (min_bytes 0 or absent)."""
    if not rec.get("min_bytes") or "gbps" not in rec:
        return ""
    return f"{rec['gbps']:.0f}" if rec["gbps"] >= 10 else f"{rec['gbps']:.2f}"


def _cell(rec: dict | None) -> tuple[str, str]:
    if rec is None:
        return "-", "-"
    if rec["status"] in ("skipped", "error"):
        return rec["status"], ""
    flag = "!" if rec["status"] == "mismatch" else ""
    return _fmt_ms(rec["ms"]) + flag, _fmt_gbps(rec)


def shown_providers(records: list[dict[str, Any]]) -> list[str]:
    """Args: records as `providers.run_case` makes them. Returns: the providers, in PROVIDERS
    order, that have at least one record not skipped (eager when none has)."""
    return [p for p in PROVIDERS if any(
        r["provider"] == p and r["status"] != "skipped" for r in records)] or ["eager"]


def format_table(records: list[dict[str, Any]], providers: Sequence[str] | None = None) -> str:
    """Side-by-side text table: a row per (op, shape, dtype, pass), columns per provider.

    Args:
        records: dicts with op, shape, dtype, pass, provider, status and, when timed, ms (and
            gbps where the record has a byte model: other rows leave the GB/s cell empty).
        providers: the column groups, in order; default: `shown_providers(records)`.
    Returns:
        the table, with a note under it for every error or mismatch."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in records:
        key = (r["op"], tuple(r["shape"]), r["dtype"], r["pass"])
        rows.setdefault(key, {})[r["provider"]] = r
    if providers is None:
        providers = shown_providers(records)
    header = ["op", "shape", "dtype", "pass"]
    for p in providers:
        header += [f"{p} ms", "GB/s"]
        if p != "eager":
            header.append("x eager")
        if p in ("triton", "cuda") and "compile" in providers:
            header.append("x compile")
    lines = [header]
    notes: list[str] = []
    for (op, shape, dtype, pass_), row in rows.items():
        line = [op, "x".join(map(str, shape)), dtype, pass_]
        base = {b: row[b]["ms"] for b in ("eager", "compile")
                if b in row and row[b]["status"] in ("ok", "mismatch")}
        for p in providers:
            rec = row.get(p)
            ms, gb = _cell(rec)
            line += [ms, gb]
            timed = rec is not None and rec["status"] in ("ok", "mismatch")
            if p != "eager":
                line.append(f"{base['eager'] / rec['ms']:.2f}x" if timed and "eager" in base else "-")
            if p in ("triton", "cuda") and "compile" in providers:
                line.append(f"{base['compile'] / rec['ms']:.2f}x" if timed and "compile" in base else "-")
            if rec is not None and rec["status"] in ("error", "mismatch"):
                notes.append(f"{op} {'x'.join(map(str, shape))} {dtype} {pass_} {p}: "
                             f"{rec['status']}: {rec.get('reason', '')}")
        lines.append(line)
    widths = [max(len(str(l[i])) for l in lines) for i in range(len(header))]
    out = []
    for n, l in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) if i < 4 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(l, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    if notes:
        out.append("")
        out += ["! " + n for n in notes]
    return "\n".join(out)


def footer_lines(records: list[dict[str, Any]], providers: Sequence[str], device: str) -> list[str]:
    """What the columns of `format_table(records, providers)` mean: only the columns it has.

    Args:
        records: the records in the table; providers: its column groups; device: "cuda"/"cpu".
    Returns:
        the lines: GB/s and each op's byte model, the speedup columns when there are any, the
        mismatch flag when a row carries it, and on CPU that the timings are indicative only."""
    ops = list(dict.fromkeys(r["op"] for r in records if r["op"] in SPECS))
    lines = []
    if ops:
        lines.append("GB/s = minimum bytes moved / time, with minimum bytes:")
        lines += [f"  {op}: {SPECS[op].byte_model}" for op in ops]
    speedups = []
    if any(p != "eager" for p in providers):
        speedups.append("x eager")
    if "compile" in providers and any(p in ("triton", "cuda") for p in providers):
        speedups.append("x compile")
    if speedups:
        lines.append(f"{' / '.join(speedups)}: that provider's speedup over "
                     f"{' / '.join(s[2:] for s in speedups)} (>1 is faster).")
    if any(r["status"] == "mismatch" for r in records):
        lines.append("'!': output differs from eager (see the notes under the table).")
    if device == "cpu":
        lines.append("CPU timings are indicative only: fastgan's kernels are for GPUs; run this on "
                     "a GPU machine (or scripts/gpu_check.py) for the comparison that matters.")
    return lines


def unavailable_lines(device: str, providers: Sequence[str] = PROVIDERS) -> list[str]:
    """Args: device, "cuda" or "cpu"; providers: to look at. Returns: one line per provider that
    cannot be timed here, with the reason."""
    lines = []
    for p in providers:
        ok, why = provider_status(p, device)
        if not ok:
            lines.append(f"  {p}: not timed: {why}")
    return lines


def backend_lines() -> list[str]:
    """Returns: one line per fastgan backend: available or not, and why."""
    try:
        import fastgan

        avail = fastgan.available_backends()
    except Exception as err:
        return [f"  fastgan.available_backends() failed: {type(err).__name__}: {err}"]
    return [f"  {name}: {'available' if ok else 'unavailable'}: {why}" for name, (ok, why) in avail.items()]

