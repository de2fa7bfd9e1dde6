#!/usr/bin/env python3
"""One command for a machine with a GPU: build, test, benchmark, and write the results down.

    python scripts/gpu_check.py [--out DIR] [--quick] [--budget SECONDS] [--commit SHA]

Steps (each one's failure is recorded, and the next steps still run):
  1. environment: GPU name, driver, torch / CUDA / triton / Python versions, TF32 mode, git commit,
     and the device's copy bandwidth (a 1 GiB device-to-device copy; "floor" = bytes / that).
  2. build:        python -m fastgan.build
  3. GPU tests:    python -m pytest tests -m cuda   (CUDA_LAUNCH_BLOCKING=1)
  4. other tests:  python -m pytest tests -m "not cuda"   (3 + 4 = the full suite, each test once)
  5. benchmarks:   python -m pytest benchmarks/ --benchmark-only --benchmark-json=...
Then writes, in --out (default benchmarks/results/):
  <YYYY-MM-DD>-<gpu-name-slug>.md            the report: environment, step outcomes, per-op test
                                             verdicts, timing tables (ms, GB/s, speedups)
  <YYYY-MM-DD>-<gpu-name-slug>.json          pytest-benchmark's raw JSON
  <YYYY-MM-DD>-<gpu-name-slug>.records.jsonl one line per benchmark (what the tables are made of)
  <YYYY-MM-DD>-<gpu-name-slug>.log           every step's full output
(a rerun on the same day and GPU overwrites them). All files sit directly in --out, so
`--out $OUT` works on a remote machine that returns only plain files.

Without a GPU it says so and exits with status 2; --dry-run prints the plan instead, and
--allow-cpu runs every step anyway (to try this script itself on a CPU machine).
Exit status: 0 when every step passed, 1 when one failed or timed out, 2 without a GPU.

Time: the whole run is held to --budget seconds (default 450, inside an 8-minute GPU session):
each step gets a timeout from what is left, and the benchmarks switch to the quick shape set
when less than 300 s remain for them (or always with --quick). A step that times out is killed
(its process group) and recorded as "timeout"; the test and benchmark results that finished
before are kept (they are logged per test as they happen).

This file is also a tiny pytest plugin (`-p gpu_check`, active only when FASTGAN_GPU_CHECK_TESTLOG
is set): it appends one JSON line per test phase, so an interrupted run still leaves its outcomes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
OPS = ("pixel_norm", "minibatch_stddev", "bias_act")
PROVIDERS = ("eager", "compile", "triton", "cuda")
TAIL_CHARS = 3000


# ---------------------------------------------------------------------------------------------
# pytest plugin part

def pytest_runtest_logreport(report):  # pragma: no cover - runs inside the pytest subprocess
    path = os.environ.get("FASTGAN_GPU_CHECK_TESTLOG")
    if not path:
        return
    if report.when != "call" and report.outcome == "passed":
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
    message = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.outcome == "failed":
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)[-500:]
    with open(path, "a") as fh:
        fh.write(json.dumps({"nodeid": report.nodeid, "when": report.when, "outcome": outcome,
                             "duration": round(report.duration, 4),
                             "message": message.strip()[:400]}) + "\n")


# ---------------------------------------------------------------------------------------------
# environment

ENV_PROBE = r"""
import json, platform, time
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


def _run_quiet(cmd: list[str], timeout: float = 30, cwd: Path = ROOT) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError) as err:
        return -1, f"{type(err).__name__}: {err}"


def probe_environment(env: dict[str, str], timeout: float = 180) -> dict:
    rc, out = _run_quiet([sys.executable, "-c", ENV_PROBE], timeout=timeout)
    info: dict = {}
    for line in out.splitlines():
        if line.startswith("GPU_CHECK_ENV="):
            info = json.loads(line[len("GPU_CHECK_ENV="):])
    if not info:
        info = {"probe_error": out[-TAIL_CHARS:] or f"rc={rc}"}
    rc, smi = _run_quiet(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], timeout=30)
    info["nvidia_smi"] = smi.splitlines()[0] if rc == 0 and smi else None
    return info


def git_info(commit_arg: str | None) -> dict:
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


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------------------------------------
# steps

class Step:
    def __init__(self, name: str, cmd: list[str], timeout: float, env: dict[str, str],
                 testlog: Path | None = None):
        self.name, self.cmd, self.timeout, self.env, self.testlog = name, cmd, timeout, env, testlog
        self.status = "not run"
        self.rc: int | None = None
        self.seconds = 0.0
        self.output = ""
        self.note = ""

    @property
    def command(self) -> str:
        cmd = [("python" if c == sys.executable else c) for c in self.cmd]
        return " ".join(shlex.quote(c) for c in cmd)

    def run(self, log) -> None:
        env = dict(self.env)
        if self.testlog is not None:
            env["FASTGAN_GPU_CHECK_TESTLOG"] = str(self.testlog)
        print(f"[gpu_check] {self.name}: {self.command}  (timeout {self.timeout:.0f} s)", flush=True)
        t0 = time.perf_counter()
        with tempfile.TemporaryFile(mode="w+") as out:
            try:
                proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=out,
                                        stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
            except OSError as err:
                self.status, self.output = "failed", f"could not start: {err}"
            else:
                try:
                    self.rc = proc.wait(timeout=self.timeout)
                    self.status = "passed" if self.rc == 0 else "failed"
                    if self.rc == 5 and "pytest" in self.cmd:  # pytest: no tests collected
                        self.status, self.note = "no tests", "(pytest selected no tests)"
                except subprocess.TimeoutExpired:
                    self.status = "timeout"
                    _kill_group(proc)
                out.seek(0)
                self.output = out.read()
        self.seconds = time.perf_counter() - t0
        log.write(f"\n{'=' * 100}\n== {self.name}: {self.command}\n== status {self.status}, "
                  f"rc {self.rc}, {self.seconds:.1f} s\n{'=' * 100}\n{self.output}\n")
        log.flush()
        print(f"[gpu_check] {self.name}: {self.status} (rc {self.rc}) in {self.seconds:.1f} s",
              flush=True)

    def tail(self, n: int = TAIL_CHARS) -> str:
        return self.output[-n:]


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the step we started: its whole process group (pytest workers, nvcc), by id."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill
    return rows


def test_outcomes(path: Path) -> dict[str, dict]:
    """nodeid -> {"outcome", "message"}: failed (or error, outside the call) beats skipped beats passed."""
    rank = {"passed": 0, "xfailed": 0, "xpassed": 1, "skipped": 2, "failed": 3, "error": 3}
    tests: dict[str, dict] = {}
    for row in read_jsonl(path):
        outcome = row["outcome"]
        if outcome == "failed" and row["when"] != "call":
            outcome = "error"
        cur = tests.get(row["nodeid"])
        if cur is None or rank[outcome] > rank[cur["outcome"]]:
            tests[row["nodeid"]] = {"outcome": outcome, "message": row.get("message", "")}
    return tests


def count(tests: dict[str, dict]) -> dict[str, int]:
    c: dict[str, int] = {}
    for t in tests.values():
        c[t["outcome"]] = c.get(t["outcome"], 0) + 1
    return c


def fmt_counts(c: dict[str, int]) -> str:
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    parts = [f"{c[k]} {k}" for k in order if c.get(k)]
    return ", ".join(parts) if parts else "no tests ran"


# ---------------------------------------------------------------------------------------------
# report

def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}"


def _gbps(v) -> str:
    return "-" if v is None else (f"{v:.0f}" if v >= 10 else f"{v:.2f}")


def timing_tables(records: list[dict], copy_gbps: float | None) -> list[str]:
    out: list[str] = []
    by_op: dict[str, dict] = {}
    for r in records:
        key = (tuple(r["shape"]), r["dtype"], r["pass"])
        by_op.setdefault(r["op"], {}).setdefault(key, {})[r["provider"]] = r
    for op in list(OPS) + [o for o in by_op if o not in OPS]:
        rows = by_op.get(op)
        out.append(f"\n### {op}\n")
        if not rows:
            out.append("No benchmark results.")
            continue
        any_rec = next(iter(next(iter(rows.values())).values()))
        out.append(f"Minimum bytes: {any_rec.get('byte_model', '?')}.\n")
        timed_prov = [p for p in PROVIDERS if any(
            p in row and "ms" in row[p] for row in rows.values())]
        if not timed_prov:
            reasons = sorted({r.get("reason", r["status"]) for row in rows.values()
                              for r in row.values() if r["provider"] == "eager"})
            out.append("Not timed: " + "; ".join(reasons))
            continue
        head = ["shape", "dtype", "pass"]
        if copy_gbps:
            head.append("floor ms")
        for p in timed_prov:
            head += [f"{p} ms", f"{p} GB/s"]
        for p in ("triton", "cuda"):
            if p in timed_prov:
                head.append(f"{p} x eager")
                if "compile" in timed_prov:
                    head.append(f"{p} x compile")
        if "compile" in timed_prov:
            head.append("compile x eager")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        notes: list[str] = []
        for (shape, dtype, pass_), row in rows.items():
            cells = ["x".join(map(str, shape)), dtype, pass_]
            if copy_gbps:
                nbytes = next(iter(row.values()))["min_bytes"]
                cells.append(_ms(nbytes / (copy_gbps * 1e9) * 1e3))
            ms = {p: row[p]["ms"] for p in row if "ms" in row[p]}
            for p in timed_prov:
                r = row.get(p)
                if r is None:
                    cells += ["-", "-"]
                elif "ms" in r:
                    flag = " (mismatch)" if r["status"] == "mismatch" else ""
                    cells += [_ms(r["ms"]) + flag, _gbps(r.get("gbps"))]
                else:
                    cells += [r["status"], ""]
            for p in ("triton", "cuda"):
                if p in timed_prov:
                    cells.append(f"{ms['eager'] / ms[p]:.2f}x" if p in ms and "eager" in ms else "-")
                    if "compile" in timed_prov:
                        cells.append(f"{ms['compile'] / ms[p]:.2f}x" if p in ms and "compile" in ms else "-")
            if "compile" in timed_prov:
                cells.append(f"{ms['eager'] / ms['compile']:.2f}x" if "compile" in ms and "eager" in ms else "-")
            out.append("| " + " | ".join(cells) + " |")
            for p, r in row.items():
                if r["status"] in ("error", "mismatch") or (
                        r["status"] == "skipped" and p in timed_prov):
                    notes.append(f"- {'x'.join(map(str, shape))} {dtype} {pass_} {p}: "
                                 f"{r['status']}: {r.get('reason', '')}")
        if notes:
            out.append("")
            out += notes
    return out


def not_timed_lines(records: list[dict]) -> list[str]:
    """Providers skipped for a whole op, with the reason, once per (provider, reason)."""
    timed = {(r["op"], r["provider"]) for r in records if "ms" in r}
    groups: dict[tuple, list[str]] = {}
    for r in records:
        if r["status"] == "skipped" and (r["op"], r["provider"]) not in timed:
            ops = groups.setdefault((r["provider"], r.get("reason", "")), [])
            if r["op"] not in ops:
                ops.append(r["op"])
    return [f"- {p} ({', '.join(ops)}): {why}" for (p, why), ops in groups.items()]


def write_report(path: Path, *, args, env: dict, git: dict, steps: list[Step], tests_cuda: dict,
                 tests_rest: dict, bench_tests: dict, records: list[dict], bench_quick: bool,
                 stem: str, started: str, elapsed: float) -> None:
    L: list[str] = []
    gpu = env.get("gpu") or "no GPU"
    L.append(f"# fastgan GPU check: {gpu}, {started[:10]}\n")
    L.append("Written by `scripts/gpu_check.py`. Raw data beside this file: "
             f"`{stem}.json` (pytest-benchmark), `{stem}.records.jsonl` (one line per benchmark), "
             f"`{stem}.log` (every step's full output).\n")
    dirty = git.get("dirty_files")
    commit = git["commit"] + (f" ({git['subject']})" if git.get("subject") else "")
    if dirty:
        commit += f", plus {dirty} uncommitted changed/untracked files"
    tf32 = env.get("tf32", {})
    rows = [
        ("device", f"{gpu}" + (f" (sm_{env['capability'].replace('.', '')}, {env.get('sms')} SMs, "
                               f"{env.get('memory_gib')} GiB)" if env.get("capability") else "")),
        ("nvidia-smi", env.get("nvidia_smi") or "-"),
        ("torch / CUDA runtime", f"{env.get('torch', '?')} / {env.get('cuda_runtime', '?')}"),
        ("triton", env.get("triton", "?")),
        ("python", env.get("python", "?")),
        ("fastgan", env.get("fastgan") or env.get("fastgan_error", "?")),
        ("git commit", commit),
        ("date", started),
        ("TF32 (torch defaults, as the tests and benchmarks ran unless a test sets its own)",
         ", ".join(f"{k}={v}" for k, v in tf32.items()) or "?"),
        ("device copy bandwidth", f"{env['copy_gbps']:.0f} GB/s (1 GiB device copy, read + write)"
         if env.get("copy_gbps") else "-"),
        ("command", "python scripts/gpu_check.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])),
        ("total time", f"{elapsed:.0f} s"),
    ]
    L.append("| | |\n|---|---|")
    L += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    if env.get("backends"):
        L.append("\nfastgan backends (`fastgan.available_backends()`, before the build step):\n")
        L += [f"- {k}: {'available' if ok else 'unavailable'}: {why}"
              for k, (ok, why) in env["backends"].items()]
    if env.get("probe_error") or env.get("torch_error"):
        L.append(f"\nEnvironment probe problem: `{env.get('probe_error') or env.get('torch_error')}`")

    L.append("\n## Steps\n")
    L.append("| step | status | time | outcome | command |\n|---|---|---|---|---|")
    outcome_of = {"GPU tests": fmt_counts(count(tests_cuda)), "other tests": fmt_counts(count(tests_rest)),
                  "benchmarks": fmt_counts(count(bench_tests)) + (" (quick shape set)" if bench_quick else "")}
    for s in steps:
        status = {"passed": "ok", "failed": f"**FAILED** (rc {s.rc})", "timeout":
                  f"**TIMEOUT** after {s.timeout:.0f} s"}.get(s.status, s.status)
        outcome = outcome_of.get(s.name, "") + (f" {s.note}" if s.note else "")
        L.append(f"| {s.name} | {status} | {s.seconds:.0f} s | {outcome.strip()} | `{s.command}` |")

    L.append("\n## Correctness (test outcomes)\n")
    all_tests = {**tests_rest, **tests_cuda}
    if not all_tests:
        L.append("No test outcomes were recorded.")
    else:
        L.append("| test file | op | GPU tests (-m cuda) | other tests | verdict |\n|---|---|---|---|---|")
        files = sorted({n.split("::")[0] for n in all_tests})
        for f in files:
            cu = {k: v for k, v in tests_cuda.items() if k.split("::")[0] == f}
            ot = {k: v for k, v in tests_rest.items() if k.split("::")[0] == f}
            both = {**ot, **cu}
            bad = sum(1 for t in both.values() if t["outcome"] in ("failed", "error"))
            ran = sum(1 for t in both.values() if t["outcome"] in ("passed", "xfailed", "xpassed"))
            verdict = "**FAIL**" if bad else ("pass" if ran else "nothing ran")
            op = next((o for o in OPS if o in f), "")
            L.append(f"| `{f}` | {op} | {fmt_counts(count(cu)) if cu else '-'} | "
                     f"{fmt_counts(count(ot)) if ot else '-'} | {verdict} |")
        L.append("\nPer op (all its tests, any file whose name contains the op):\n")
        for op in OPS:
            mine = {k: v for k, v in all_tests.items() if op in k.split("::")[0]}
            L.append(f"- {op}: {fmt_counts(count(mine)) if mine else 'no tests found'}")
        failed = [(k, v) for k, v in all_tests.items() if v["outcome"] in ("failed", "error")]
        if failed:
            L.append(f"\nFailures ({len(failed)}):\n")
            for k, v in failed[:60]:
                L.append(f"- `{k}`: {v['outcome']}: {v['message'].splitlines()[0] if v['message'] else ''}")
            if len(failed) > 60:
                L.append(f"- ... and {len(failed) - 60} more (see the log)")

    L.append("\n## Timings\n")
    if records:
        timers = sorted({r.get("timer", "") for r in records if "ms" in r})
        if all(t.startswith("cuda-events") for t in timers):
            how = ("median time per call over CUDA events, the L2 cache flushed before each call "
                   "(the `triton.testing.do_bench` method used in docs/baselines.md)")
        else:
            how = f"median time per call ({', '.join(timers)}; no GPU: indicative only)"
        L.append(
            f"ms: {how}. GB/s: minimum bytes "
            "moved / that time. floor: minimum bytes / the device copy bandwidth above. "
            "`x eager`, `x compile`: speedup of that provider (above 1 is faster). eager = the "
            "op's plain-torch reference; compile = `torch.compile(reference, fullgraph=True, "
            "dynamic=False)`; triton / cuda = `fastgan.functional` with that backend. "
            "fwdbwd = forward, then `torch.autograd.grad` for all inputs with a fixed dy. "
            "Before timing, each provider's outputs and gradients were compared with eager's "
            "on the same inputs.")
        skipped = not_timed_lines(records)
        if skipped:
            L.append("\nNot timed:\n")
            L += skipped
        L += timing_tables(records, env.get("copy_gbps"))
    else:
        L.append("No benchmark results were recorded.")

    failed_steps = [s for s in steps if s.status in ("failed", "timeout")]
    if failed_steps:
        L.append("\n## Output of failed steps (tail)\n")
        for s in failed_steps:
            L.append(f"### {s.name} ({s.status})\n\n```\n{s.tail()}\n```")
    path.write_text("\n".join(L) + "\n")


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python scripts/gpu_check.py",
        description="On a GPU machine: build the CUDA extension, run the GPU tests and the full "
                    "suite, run the benchmarks, and write benchmarks/results/<date>-<gpu>.md "
                    "(+ raw JSON and the full log).")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="directory for the report, JSON and log (default: benchmarks/results/)")
    ap.add_argument("--quick", action="store_true", help="benchmarks on the quick shape set")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds for the whole run; step timeouts come out of it (default 450)")
    ap.add_argument("--commit", help="git commit to record (where the checkout has no .git)")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run every step even without a GPU (to try this script on CPU)")
    ap.add_argument("--bench", nargs="+", default=["benchmarks/"], metavar="PATH",
                    help="benchmark files or folders to run (default: benchmarks/); with "
                         "--tag, lets a short GPU lease split the suite over several calls")
    ap.add_argument("--tag", default="",
                    help="suffix of the report's file names, so that split runs don't overwrite "
                         "each other (e.g. --tag penalty -> <date>-<gpu>-penalty.md)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(SCRIPTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    bench_env = dict(env)
    bench_env.pop("TRITON_INTERPRET", None)  # never time the interpreter
    # a kernel fault is reported by the op that caused it, not by a later one
    gpu_test_env = dict(env, CUDA_LAUNCH_BLOCKING="1")

    py = sys.executable
    plan = [
        ("build", [py, "-m", "fastgan.build"]),
        ("GPU tests", [py, "-m", "pytest", "tests", "-m", "cuda", "-q", "-rfE", "-p", "gpu_check"]),
        ("other tests", [py, "-m", "pytest", "tests", "-m", "not cuda", "-q", "-rfE", "-p", "gpu_check"]),
        ("benchmarks", [py, "-m", "pytest", *args.bench, "--benchmark-only", "-q", "-p", "gpu_check",
                        "--benchmark-json=<out>/<stem>.json", "--fastgan-records=<out>/<stem>.records.jsonl"]
         + (["--fastgan-quick"] if args.quick else [])),
    ]
    if args.dry_run:
        print("gpu_check plan (dry run; nothing is run):")
        for name, cmd in plan:
            print(f"  {name}: {' '.join(shlex.quote('python' if c == py else c) for c in cmd)}")
        print(f"  report: {args.out}/<YYYY-MM-DD>-<gpu-name-slug>.md (+ .json, .records.jsonl, .log)")
        return 0

    print("[gpu_check] probing the environment ...", flush=True)
    info = probe_environment(env)
    if not info.get("gpu_available"):
        why = info.get("torch_error") or info.get("probe_error") or \
            "torch.cuda.is_available() is False"
        msg = f"[gpu_check] no CUDA GPU present ({why}); nothing to check on this machine."
        if not args.allow_cpu:
            print(msg + " Run it on a GPU machine; --dry-run shows the plan, --allow-cpu runs the "
                  "steps anyway.", file=sys.stderr)
            return 2
        print(msg + " --allow-cpu: running the steps anyway.", flush=True)

    gpu_name = info.get("gpu") or "cpu"
    stem = f"{started[:10]}-{slug(gpu_name)}" + (f"-{slug(args.tag)}" if args.tag else "")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    md, bench_json = out / f"{stem}.md", out / f"{stem}.json"
    records_path, log_path = out / f"{stem}.records.jsonl", out / f"{stem}.log"
    for p in (bench_json, records_path):
        if p.exists():
            p.unlink()
    git = git_info(args.commit)
    print(f"[gpu_check] {gpu_name}; torch {info.get('torch')}, triton {info.get('triton')}; "
          f"commit {git['commit']}; report -> {md}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    logs = {"GPU tests": tmp / "tests_cuda.jsonl", "other tests": tmp / "tests_rest.jsonl",
            "benchmarks": tmp / "bench_tests.jsonl"}
    # (planned timeout, least time to keep for each later step)
    limits = {"build": (300, 0), "GPU tests": (150, 30), "other tests": (180, 30), "benchmarks": (10**6, 60)}
    skip = {"build": args.skip_build, "GPU tests": args.skip_tests, "other tests": args.skip_tests,
            "benchmarks": args.skip_bench}
    steps: list[Step] = []
    bench_quick = args.quick
    with open(log_path, "w") as log:
        log.write(f"gpu_check {started}\nenvironment: {json.dumps(info, indent=1)}\ngit: {git}\n")
        names = [n for n, _ in plan]
        for i, (name, cmd) in enumerate(plan):
            cmd = [c.replace("<out>", str(out)).replace("<stem>", stem) for c in cmd]
            left = args.budget - (time.perf_counter() - t0)
            reserve = sum(limits[n][1] for n in names[i + 1:] if not skip[n])
            timeout = max(30.0, min(limits[name][0], left - reserve - 10))
            if name == "benchmarks" and not bench_quick and timeout < 300:
                bench_quick = True
                cmd.append("--fastgan-quick")
            step_env = {"benchmarks": bench_env, "GPU tests": gpu_test_env}.get(name, env)
            step = Step(name, cmd, timeout, step_env, logs.get(name))
            steps.append(step)
            if skip[name]:
                step.status = "skipped (option)"
                continue
            if name == "benchmarks" and bench_quick and not args.quick:
                step.note = f"(switched to quick: {timeout:.0f} s were left)"
            step.run(log)

    tests_cuda = test_outcomes(logs["GPU tests"])
    tests_rest = test_outcomes(logs["other tests"])
    bench_tests = test_outcomes(logs["benchmarks"])
    records = read_jsonl(records_path)
    elapsed = time.perf_counter() - t0
    write_report(md, args=args, env=info, git=git, steps=steps, tests_cuda=tests_cuda,
                 tests_rest=tests_rest, bench_tests=bench_tests, records=records,
                 bench_quick=bench_quick, stem=stem, started=started, elapsed=elapsed)
    shutil.rmtree(tmp, ignore_errors=True)
    if bench_json.exists() and bench_json.stat().st_size == 0:
        bench_json.unlink()  # pytest-benchmark opens it at start; empty = the run never finished
    print(f"[gpu_check] wrote {md}")
    for p in (bench_json, records_path, log_path):
        if p.exists():
            print(f"[gpu_check] wrote {p}")
    bad = [s.name for s in steps if s.status in ("failed", "timeout")]
    print(f"[gpu_check] {'all steps passed' if not bad else 'FAILED steps: ' + ', '.join(bad)} "
          f"in {elapsed:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
