"""pytest-benchmark suite of fastgan's ops: `pytest benchmarks/ --benchmark-only`.

Each test is one (case, provider): case = op x shape x dtype x pass ("fwd" or "fwdbwd"),
provider = "eager" (the plain-torch reference), "compile" (torch.compile of the reference),
"triton", "cuda" (fastgan.functional with that backend). Cases, byte model and timer come from
`fastgan.bench` (cases, providers, timing, report), shared with `python -m fastgan.bench`.

On a GPU: ProGAN activation shapes at batch 16 (pixel_norm and bias_act: 512ch at 4..32 px,
256ch 64 px, 128ch 128 px, 64ch 256 px; minibatch_stddev [16|128, 512, 4, 4]), fp32 and bf16.
Two timings per row, both honest about the asynchronous GPU:
  * pytest-benchmark's own columns (Min/Mean/Median...) are wall-clock seconds per call, taken
    with a timer that calls torch.cuda.synchronize() before reading perf_counter, over rounds of
    K back-to-back calls (launch overhead counts; one sync is spread over K calls; L2 warm).
  * extra_info["ms"] is the median of per-call CUDA-event times with the L2 cache flushed before
    each call (the `triton.testing.do_bench` method docs/baselines.md used); extra_info["gbps"] is
    extra_info["min_bytes"] / that time. scripts/gpu_check.py reports these.
Before timing, every non-eager provider's output (and gradients) is compared with eager's on
the same inputs; a mismatch fails that benchmark, and the numbers are still recorded.

On CPU: only "eager" runs, at small shapes, timed by pytest-benchmark (perf_counter) alone; the
GPU providers are skipped with the reason, and the terminal summary says so. The Triton
interpreter is never timed.

Options: --fastgan-quick (fewer shapes; or FASTGAN_BENCH_QUICK=1), --fastgan-largest (only the
largest shape per op; layers: 64ch 256 px; penalty: 256 px), --fastgan-providers=eager,...,
--fastgan-dtypes=fp32,bf16, --fastgan-records=PATH (or FASTGAN_BENCH_RECORDS): append one JSON
line per test (timed or skipped) as it finishes, so an interrupted run still leaves its results.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import pathlib
import sys
import time

# OpenMP worker threads that spin between parallel regions (libgomp's default) made small-op CPU
# timings erratic on small VMs (medians off 20x); the policy is read when torch loads OpenMP, so
# it is set before torch is imported (unless the caller chose one, or torch came in first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if importlib.util.find_spec("fastgan") is None:  # a plain checkout, not installed
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

from fastgan.bench.cases import SHORT, make_cases, parse_dtypes, parse_list  # noqa: E402
from fastgan.bench.providers import (PROVIDERS, backend_scope, base_record,  # noqa: E402
                                     compare, make_step, provider_status)
from fastgan.bench.report import environment, format_table  # noqa: E402
from fastgan.bench.timing import cuda_sync_timer, measure  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    group = parser.getgroup("fastgan", "fastgan benchmarks")
    group.addoption("--fastgan-quick", action="store_true", default=False,
                    help="fewer shapes (also FASTGAN_BENCH_QUICK=1)")
    group.addoption("--fastgan-largest", action="store_true", default=False,
                    help="only the largest ProGAN shape per op (what scripts/gpu_check.py runs)")
    group.addoption("--fastgan-providers", default=",".join(PROVIDERS),
                    help="comma list from eager,compile,triton,cuda")
    group.addoption("--fastgan-dtypes", default="auto",
                    help="comma list (fp32,bf16,fp16); auto: fp32,bf16 (on CPU too, small shapes)")
    group.addoption("--fastgan-records", default=os.environ.get("FASTGAN_BENCH_RECORDS"),
                    help="append one JSON line per benchmark to this file")


def shape_set(config) -> str:
    """The shape set the options ask for: "largest", "quick" or "all" (fastgan.bench.cases);
    --fastgan-largest wins over --fastgan-quick (or FASTGAN_BENCH_QUICK=1)."""
    if config.getoption("--fastgan-largest"):
        return "largest"
    quick = config.getoption("--fastgan-quick") or \
        os.environ.get("FASTGAN_BENCH_QUICK", "0") not in ("", "0")
    return "quick" if quick else "all"


def _dtypes(config):
    text = config.getoption("--fastgan-dtypes")
    if text == "auto":
        return [torch.float32, torch.bfloat16]
    return parse_dtypes(text, DEVICE)


def _providers(config):
    return parse_list(config.getoption("--fastgan-providers"), PROVIDERS, "--fastgan-providers")


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    op = metafunc.module.OP
    cases = make_cases([op], DEVICE, _dtypes(metafunc.config), shape_set(metafunc.config))
    providers = _providers(metafunc.config)
    params = [(c, p) for c in cases for p in providers]  # eager first within each case
    metafunc.parametrize(("bench_case", "provider"), params,
                         ids=[f"{c.id[len(op) + 1:]}-{p}" for c, p in params])


# ---------------------------------------------------------------------------------------------

class _Session:
    def __init__(self, config):
        self.config = config
        self.records: list[dict] = []
        self.ref_key = None
        self.ref_outs = None
        path = config.getoption("--fastgan-records")
        self.records_path = pathlib.Path(path) if path else None

    def add(self, rec: dict) -> None:
        self.records.append(rec)
        if self.records_path is not None:
            self.records_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.records_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    def keep_reference(self, case, outs) -> None:
        self.ref_key, self.ref_outs = case.id, outs

    def reference(self, case):
        """Eager outputs (and grads) of `case`, computed once per case (one case held at a time)."""
        if self.ref_key != case.id:
            self.ref_key, self.ref_outs = None, None  # free the previous case first
            _, check = make_step(case, "eager", DEVICE)
            self.ref_outs = [t.detach() for t in check()]
            self.ref_key = case.id
        return self.ref_outs


_SESSION: _Session | None = None


def pytest_configure(config):
    global _SESSION
    _SESSION = _Session(config)


def _warm(step, budget_s=0.2, calls=500) -> float:
    """Warm-up calls for `budget_s` (at least 3, at most `calls`); returns the fastest call's
    seconds. On CPU the first calls of a new shape are slow (page faults, waking thread pools)."""
    best, t_end = math.inf, time.perf_counter() + budget_s
    for i in range(calls):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        best = min(best, t1 - t0)
        if t1 > t_end and i >= 2:
            break
    return max(best, 1e-7)


def _time(benchmark, step, rec: dict) -> None:
    """Time `step`: GPU, CUDA events with L2 flush into rec (+ pytest-benchmark's synchronized
    wall clock); CPU, pytest-benchmark's perf_counter rounds. Sets rec["ms"] and rec["gbps"]."""
    est = _warm(step)
    if DEVICE == "cuda":
        timing = measure(step, DEVICE, rep_ms=100.0, warmup_ms=10.0)
        rec.update(timing.as_dict())
        benchmark._timer = cuda_sync_timer  # pytest-benchmark's wall clock, synchronized
        iterations = max(1, min(50, int(1e-3 / est)))
        rounds = max(5, min(30, int(0.1 / (est * iterations))))
        benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=1)
        rec["wall_ms"] = benchmark.stats.stats.median * 1e3
    else:
        rounds = max(3, min(50, int(0.15 / est)))
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
        rec.update(ms=benchmark.stats.stats.median * 1e3, ms_min=benchmark.stats.stats.min * 1e3,
                   reps=rounds, timer="perf_counter (pytest-benchmark median)")
    rec["gbps"] = rec["min_bytes"] / (rec["ms"] * 1e-3) / 1e9


@pytest.fixture
def run_bench(request):
    """run_bench(benchmark, case, provider): check against eager, then time."""
    session = _SESSION

    def run(benchmark, case, provider):
        rec = base_record(case, provider, DEVICE)
        rec["test"] = request.node.nodeid

        def skip(reason):
            rec.update(status="skipped", reason=reason)
            session.add(rec)
            pytest.skip(reason)

        ok, why = provider_status(provider, DEVICE)
        if not ok:
            skip(why)
        # GPU: one pytest-benchmark group per case, so the providers sit side by side;
        # CPU (eager only): one group per op.
        benchmark.group = (f"{case.op} {case.shape_str} {SHORT[case.dtype]} {case.pass_}"
                           if DEVICE == "cuda" else f"{case.op} (cpu, eager only)")
        scope = backend_scope(provider) if provider in ("triton", "cuda") else contextlib.nullcontext()
        with scope:
            try:
                step, check = make_step(case, provider, DEVICE)
                ref = None if provider == "eager" else session.reference(case)
                outs = [t.detach() for t in check()]
            except LookupError as err:  # op not written yet (e.g. bias_act)
                skip(str(err))
            except Exception as err:
                if provider == "compile":  # torch.compile of the reference: not fastgan's to fix
                    skip(f"torch.compile of the reference failed: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}"[:300])
                rec.update(status="error", reason=f"{type(err).__name__}: {err}"[:300])
                session.add(rec)
                raise
            mismatch = None
            if ref is None:
                session.keep_reference(case, outs)  # eager's outputs: the other providers' truth
            else:
                good, err, what = compare(outs, ref, case.dtype)
                rec["max_abs_err"] = err
                if not good:
                    mismatch = f"{provider} differs from eager: {what}"
                    rec.update(status="mismatch", reason=mismatch)
            del outs, ref
            if benchmark.disabled:
                benchmark(step)
                return
            try:
                _time(benchmark, step, rec)
            except Exception as err:
                rec.update(status="error", reason=f"timing failed: {type(err).__name__}: {err}"[:300])
                session.add(rec)
                raise
        info = {k: rec[k] for k in ("op", "shape", "dtype", "pass", "provider", "device",
                                    "min_bytes", "byte_model", "ms", "gbps", "timer",
                                    "wall_ms", "max_abs_err") if k in rec}
        benchmark.extra_info.update(info)
        session.add(rec)
        if mismatch:
            pytest.fail(mismatch)

    return run


# ---------------------------------------------------------------------------------------------
# Reporting

def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastgan"] = environment(DEVICE)


def pytest_report_header(config):
    lines = [f"fastgan benchmarks: device={DEVICE}"
             + (f" ({torch.cuda.get_device_name(0)})" if DEVICE == "cuda" else
                " (no CUDA GPU: eager reference only, small CPU shapes)")]
    return lines


_MODULE_SUMMARIES: list = []  # (results, write) of benchmark modules with their own cases


def record(rec: dict, config, results: list) -> None:
    """For benchmark modules with their own cases (layers, penalty): keep `rec` in `results` and
    append it to the --fastgan-records file (JSON lines)."""
    results.append(rec)
    path = config.getoption("--fastgan-records")
    if path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def summarize_at_end(results: list, write) -> None:
    """Have write(terminalreporter) print a module's summary at the session's end, if `results`
    holds anything by then."""
    _MODULE_SUMMARIES.append((results, write))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _write_op_summary(terminalreporter)
    for results, write in _MODULE_SUMMARIES:
        if results:
            write(terminalreporter)


def _write_op_summary(tr):
    session = _SESSION
    if session is None or not session.records:
        return
    tr.write_sep("=", "fastgan benchmarks")
    recs = session.records
    skipped_prov = {}
    other_skips = {}
    for r in recs:
        if r["status"] != "skipped":
            continue
        if r["provider"] != "eager" and not provider_status(r["provider"], DEVICE)[0]:
            skipped_prov.setdefault(r["provider"], r["reason"])
        else:
            other_skips.setdefault(r["op"], r["reason"])
    if DEVICE == "cpu":
        tr.write_line("device: CPU; no CUDA GPU present (torch.cuda.is_available() is False).")
        tr.write_line("Timed: the eager reference only, at small CPU shapes (indicative only).")
    else:
        tr.write_line(f"device: {torch.cuda.get_device_name(0)}; ms = median CUDA-event time per "
                      "call, L2 flushed (pytest-benchmark's columns above: synchronized wall clock)")
    if skipped_prov:
        names = ", ".join("torch.compile" if p == "compile" else p for p in skipped_prov)
        tr.write_line(f"SKIPPED providers: {names}")
        for p, why in skipped_prov.items():
            tr.write_line(f"  {p}: {why}")
    for op, why in other_skips.items():
        tr.write_line(f"SKIPPED {op}: {why}")
    timed = [r for r in recs if r["status"] != "skipped"]
    if timed:
        tr.write_line("")
        for line in format_table(timed).splitlines():
            tr.write_line(line)
    if session.records_path is not None:
        tr.write_line(f"records: {session.records_path}")
