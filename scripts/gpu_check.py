#!/usr/bin/env python3
"""One command for a machine with a GPU: build, test, benchmark and write the results down, all
inside one time budget that fits a single call of a short GPU lease.

    python scripts/gpu_check.py [--budget SECONDS] [--out DIR] [--commit SHA]
                                [--skip-build] [--skip-tests] [--skip-bench] [--dry-run]
                                [--allow-cpu]

Stages, in priority order (the table STAGES below), one after the other, each a subprocess (the
test stages: 4 pytest processes side by side, their test files dealt among them; a fresh machine
compiles every Triton kernel variant on first use). Benchmarks always run alone.
  build        python -m fastgan.build: the CUDA extension, into the cache
  gpu-tests    pytest tests -m cuda: every op on both kernel backends (triton, cuda) against the
               reference on the GPU, fp64 gradcheck/gradgradcheck included, second-order paths
               with TF32 off (tests/conftest.py); CUDA_LAUNCH_BLOCKING=1
  penalty      benchmarks/test_bench_penalty.py --fastgan-quick: the ProGAN D step with WGAN-GP
               at 256x256 in fp32 and bf16, fastgan against plain torch: time, peak memory and
               gradient error against fp64
  ops          the op benchmarks (pixel_norm, minibatch_stddev, bias_act, grad_penalty) at their
               largest ProGAN shape (--fastgan-largest)
  sn           benchmarks/test_bench_spectral_norm.py: the spectral-norm overhead of a D step,
               SNGAN's CIFAR-10 D and a BigGAN-128-like D (its one set of cases)
  train        benchmarks/test_bench_train.py --fastgan-quick: one ProGAN training iteration (D
               step with WGAN-GP, G step, Adam) at 256x256 in fp32 and bf16
  layers       benchmarks/test_bench_layers.py --fastgan-quick: equalized-lr layers
  convert      benchmarks/test_bench_convert.py --fastgan-quick: pro-gan-pth's own D step at
               256x256, as it is and after fastgan.convert; it needs the test-only package
               pro-gan-pth, and without it the stage shows as skipped with the install line
  other-tests  pytest tests -m "not cuda": the rest of the suite (CI runs it on every change;
               here it only checks the GPU machine's stack, so it comes last)

Budget: --budget seconds (default 480) from the start of the command, the environment probe
included. Before each stage, left = budget - elapsed - MARGIN_S (the margin pays for killing a
stage and writing the report; the budget leaves room in a 10-minute command and a 15-minute
lease that includes the machine's start). A stage needs at least its min_s: with less left it is
skipped, and a later, cheaper stage still gets its chance. Otherwise it runs with the timeout
min(max_s, left); still running then, it is cut: its process group is killed and what it
recorded so far is kept (tests and benchmarks log every result as it finishes). A stage that ran
without failing but whose every test was skipped (a missing test-only package) is reported as
skipped, with the skip message as its reason.

Adding a benchmark module to a stage is one line in STAGES, where its position is its priority:
    bench("gan", "what it shows", "benchmarks/test_bench_gan.py", "--fastgan-quick"),
(`min_s=` / `max_s=` bound its time; several files may share one stage; its records join the
report's op and layer tables by their "op", unless scripts/gpu_check_report.py's _STEP_SECTIONS
gives that op a table of its own, as it does for the step benchmarks.)

Results, all directly in --out (default benchmarks/results/), so `--out $OUT` works on a remote
machine that returns only plain files; written after every stage, so a run cut short still
leaves them, saying which stages were skipped or cut and why:
  <YYYY-MM-DD>-<gpu-name-slug>.md            the report (scripts/gpu_check_report.py): environment
                                             (scripts/gpu_check_env.py), stages, test outcomes,
                                             timing tables
  <YYYY-MM-DD>-<gpu-name-slug>.json          pytest-benchmark's raw JSON, every benchmark stage
  <YYYY-MM-DD>-<gpu-name-slug>.records.jsonl one line per benchmark (what the tables are made of)
  <YYYY-MM-DD>-<gpu-name-slug>.log           every stage's full output
(a rerun on the same day and GPU overwrites them).

Without a GPU it says so and exits with status 2; --dry-run prints the plan instead, and
--allow-cpu runs the stages anyway (to try this script on a CPU machine).
Exit status: 0 every stage passed (or was skipped by an option, or had every test skipped); 1 a
stage failed or was cut;
2 no GPU; 3 nothing failed, but stages were skipped for lack of budget.
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpu_check_env import git_info, probe_environment
from gpu_check_report import test_outcomes, write_report

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
DEFAULT_BUDGET_S = 480.0
MARGIN_S = 20.0  # kept back from every stage's timeout: killing a cut stage, writing the report
clock: Callable[[], float] = time.monotonic  # the budget's clock (tests put a fake one here)


@dataclass(frozen=True)
class Stage:
    """One entry of STAGES.

    key: short name (logs, report); title: what it shows; kind: "build", "tests" or "bench"
    (how its command is made, which --skip-* option skips it); args: what follows
    `python -m fastgan.build` or `python -m pytest`; min_s: the least time worth starting it;
    max_s: its timeout at most (None: whatever is left); env: extra environment variables;
    shards: test stages only, how many pytest processes run its test files side by side (a
    fresh machine compiles every Triton kernel variant on first use, one process at a time)."""

    key: str
    title: str
    kind: str
    args: tuple[str, ...]
    min_s: float = 30.0
    max_s: float | None = None
    env: tuple[tuple[str, str], ...] = ()
    shards: int = 1


def tests(key: str, title: str, *args: str, min_s: float = 30.0, max_s: float | None = None,
          env: tuple[tuple[str, str], ...] = (), shards: int = 1) -> Stage:
    """Args: key, title, pytest arguments, time bounds, extra environment, parallel processes.
    Returns: a test Stage."""
    return Stage(key, title, "tests", args, min_s, max_s, env, shards)


def bench(key: str, title: str, *args: str, min_s: float = 30.0,
          max_s: float | None = None) -> Stage:
    """Args: key, title, benchmark files and options, time bounds. Returns: a benchmark Stage
    (run with --benchmark-only, its records and JSON collected into the results)."""
    return Stage(key, title, "bench", args, min_s, max_s)


OP_BENCHMARKS = tuple(f"benchmarks/test_bench_{op}.py" for op in
                      ("pixel_norm", "minibatch_stddev", "bias_act", "grad_penalty"))

STAGES: tuple[Stage, ...] = (
    Stage("build", "build the CUDA extension", "build", (), min_s=30, max_s=240),
    tests("gpu-tests", "GPU correctness: every op, both kernel backends, against the reference",
          "tests", "-m", "cuda", min_s=60, max_s=180, env=(("CUDA_LAUNCH_BLOCKING", "1"),),
          shards=4),
    bench("penalty", "ProGAN D step with WGAN-GP, 256 px, fp32 and bf16",
          "benchmarks/test_bench_penalty.py", "--fastgan-quick", min_s=60, max_s=150),
    bench("ops", "op benchmarks, largest ProGAN shape per op",
          *OP_BENCHMARKS, "--fastgan-largest", min_s=45, max_s=100),
    bench("sn", "spectral-norm overhead of a D step, SNGAN and BigGAN-like",
          "benchmarks/test_bench_spectral_norm.py", min_s=45, max_s=120),
    bench("train", "one ProGAN training iteration, 256 px, fp32 and bf16",
          "benchmarks/test_bench_train.py", "--fastgan-quick", min_s=60, max_s=150),
    bench("layers", "equalized-lr layers, quick shapes",
          "benchmarks/test_bench_layers.py", "--fastgan-quick", min_s=45, max_s=120),
    bench("convert", "pro-gan-pth's D step, as it is and converted, 256 px, fp32 and bf16",
          "benchmarks/test_bench_convert.py", "--fastgan-quick", min_s=60, max_s=150),
    tests("other-tests", "the rest of the suite", "tests", "-m", "not cuda", min_s=45, shards=4),
)

SKIP_OPTIONS = {"build": "--skip-build", "tests": "--skip-tests", "bench": "--skip-bench"}


@dataclass
class StageRun:
    """What happened to a stage: status "pending", "passed", "failed", "cut", "no tests" or
    "skipped" (reason says why); rc, seconds it ran, the timeout it was given, its output."""

    stage: Stage
    status: str = "pending"
    reason: str = ""
    rc: int | None = None
    seconds: float = 0.0
    timeout: float | None = None
    output: str = ""


class Budget:
    """Seconds for the whole run, counted on `clock` from creation."""

    def __init__(self, seconds: float, margin: float = MARGIN_S):
        self.seconds, self.margin, self.start = seconds, margin, clock()

    def elapsed(self) -> float:
        """Returns: seconds since the start."""
        return clock() - self.start

    def left(self) -> float:
        """Returns: seconds a stage may still take: budget - elapsed - margin."""
        return self.seconds - self.elapsed() - self.margin


@dataclass
class Context:
    """Where a run writes: out (results folder), stem (file names), tmp (per-stage logs and
    JSON), env (the environment of the stages), py (the interpreter)."""

    out: Path
    stem: str
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    py: str = sys.executable

    @property
    def records(self) -> Path:
        return self.out / f"{self.stem}.records.jsonl"

    @property
    def report(self) -> Path:
        return self.out / f"{self.stem}.md"

    @property
    def bench_json(self) -> Path:
        return self.out / f"{self.stem}.json"

    @property
    def log(self) -> Path:
        return self.out / f"{self.stem}.log"

    def testlog(self, stage: Stage) -> Path:
        """Returns: the file where the stage's pytest logs one line per test."""
        return self.tmp / f"{stage.key}.testlog.jsonl"

    def stage_json(self, stage: Stage) -> Path:
        """Returns: the file where a benchmark stage's pytest-benchmark writes its JSON."""
        return self.tmp / f"{stage.key}.json"


def stage_command(stage: Stage, ctx: Context) -> list[str]:
    """Args: a Stage and the run's Context. Returns: the stage's command line."""
    if stage.kind == "build":
        return [ctx.py, "-m", "fastgan.build", *stage.args]
    cmd = [ctx.py, "-m", "pytest", *stage.args, "-q", "-rfE", "-p", "gpu_check_testlog"]
    if stage.kind == "bench":
        cmd += ["--benchmark-only", f"--benchmark-json={ctx.stage_json(stage)}",
                f"--fastgan-records={ctx.records}"]
    return cmd


def shard_commands(stage: Stage, ctx: Context) -> list[list[str]]:
    """The processes that run a stage: its command, or for a test stage with shards > 1, one
    command per shard, each with the stage's options and a share of its test files.

    Args:
        stage, ctx: the Stage and the run's Context.
    Returns:
        the command lines. The test files under the stage's paths are dealt largest first, each
        to the shard with the fewest bytes of test code so far."""
    if stage.kind != "tests" or stage.shards <= 1:
        return [stage_command(stage, ctx)]
    paths = [a for a in stage.args if not a.startswith("-") and (ROOT / a).exists()]
    options = [a for a in stage.args if a not in paths]
    files = sorted({f for a in paths for f in ([ROOT / a] if (ROOT / a).is_file()
                                                else (ROOT / a).glob("test_*.py"))},
                   key=lambda f: (-f.stat().st_size, f.name))
    shards: list[list[Path]] = [[] for _ in range(min(stage.shards, len(files)))]
    for f in files:
        min(shards, key=lambda group: sum(g.stat().st_size for g in group)).append(f)
    return [stage_command(Stage(stage.key, stage.title, stage.kind, (
        *(str(f.relative_to(ROOT)) for f in sorted(group)), *options)), ctx) for group in shards]


def stage_env(stage: Stage, ctx: Context) -> dict[str, str]:
    """Args: a Stage and the run's Context. Returns: the stage's environment (benchmarks never
    run with TRITON_INTERPRET: the interpreter is never timed)."""
    env = dict(ctx.env, **dict(stage.env))
    if stage.kind != "build":
        env["FASTGAN_GPU_CHECK_TESTLOG"] = str(ctx.testlog(stage))
    if stage.kind == "bench":
        env.pop("TRITON_INTERPRET", None)
    return env


def describe(stage: Stage, ctx: Context) -> str:
    """Args: a Stage and the Context. Returns: its command as a shell line, and in how many
    processes it runs when it is sharded."""
    n = len(shard_commands(stage, ctx))
    return shown_command(stage_command(stage, ctx), ctx) + (
        f"  (as {n} processes side by side, by test file)" if n > 1 else "")


def shown_command(cmd: list[str], ctx: Context) -> str:
    """Args: a command line and the Context. Returns: it as a shell line, `python` for the
    interpreter and paths relative to the temporary and results folders."""
    text = " ".join(shlex.quote("python" if c == ctx.py else c) for c in cmd)
    return text.replace(str(ctx.tmp), "<tmp>").replace(str(ctx.out), "<out>")


# ---------------------------------------------------------------------------------------------
# running

def run_processes(cmds: list[list[str]], env: dict[str, str],
                  timeout: float) -> tuple[str, int | None, str]:
    """Run the commands side by side in ROOT, each in its own process group, for at most
    `timeout` seconds in all.

    Args:
        cmds: the command lines; env: their environment; timeout: seconds.
    Returns:
        (status, rc, output): status "passed" (every rc 0, or pytest's 5, "no tests collected",
        beside a 0), "failed" (rc: the first other), or "cut" (still running at the timeout:
        killed, rc None); output: stdout and stderr of each, one after the other."""
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in cmds]
        procs: list[subprocess.Popen | None] = []
        for cmd, out in zip(cmds, outs):
            try:
                procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                              stderr=subprocess.STDOUT, text=True,
                                              start_new_session=True))
            except OSError as err:
                out.write(f"could not start: {err}\n")
                procs.append(None)
        rcs: list[int | None] = []
        for proc in procs:
            if proc is None:
                rcs.append(-1)
                continue
            try:
                rcs.append(proc.wait(timeout=max(deadline - time.monotonic(), 0.01)))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rcs.append(None)
        texts = []
        for cmd, out, rc in zip(cmds, outs, rcs):
            out.seek(0)
            head = f"--- {' '.join(cmd)} (rc {rc})\n" if len(cmds) > 1 else ""
            texts.append(head + out.read())
    output = "\n".join(texts)
    if None in rcs:
        return "cut", None, output
    bad = [rc for rc in rcs if rc not in (0, 5)]
    if bad:
        return "failed", bad[0], output
    return "passed", (0 if 0 in rcs else 5), output


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the stage we started: its whole process group (pytest workers, nvcc), by id."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_stage(stage: Stage, timeout: float, ctx: Context, log) -> tuple[str, int | None, str]:
    """Run one stage for at most `timeout` seconds and append its output to `log`.

    Args:
        stage, ctx: what to run and where; timeout: seconds; log: an open text file.
    Returns:
        (status, rc, output) as `run_processes`; pytest's "no tests collected" (rc 5) is
        status "no tests"."""
    cmds = shard_commands(stage, ctx)
    shown = describe(stage, ctx)
    print(f"[gpu_check] {stage.key}: {shown}  (timeout {timeout:.0f} s)", flush=True)
    status, rc, output = run_processes(cmds, stage_env(stage, ctx), timeout)
    if rc == 5 and stage.kind != "build":
        status = "no tests"
    log.write(f"\n{'=' * 100}\n== {stage.key}: {shown}\n== status {status}, "
              f"rc {rc}\n{'=' * 100}\n{output}\n")
    log.flush()
    return status, rc, output


def skip_if_nothing_ran(stage: Stage, ctx: Context, status: str) -> tuple[str, str]:
    """A test or benchmark stage that ran without failing, but whose every test was skipped (a
    benchmark whose test-only dependency is absent from the machine), counts as skipped.

    Args:
        stage, ctx: the Stage and the run's Context (its test log); status: as run_stage says.
    Returns:
        (status, reason): ("skipped", the skip messages) in that case, else (status, "")."""
    if stage.kind == "build" or status not in ("passed", "no tests"):
        return status, ""
    outcomes = test_outcomes(ctx.testlog(stage)).values()
    if not outcomes or any(t["outcome"] != "skipped" for t in outcomes):
        return status, ""
    reasons = dict.fromkeys(t["message"].removeprefix("Skipped: ") for t in outcomes)
    return "skipped", "; ".join(list(reasons)[:3])


def run_stages(stages: tuple[Stage, ...], budget: Budget, skipped: dict[str, str],
               run_one: Callable[[Stage, float], tuple[str, int | None, str, str]],
               after_each: Callable[[list[StageRun]], None]) -> list[StageRun]:
    """Spend the budget on the stages in their order.

    Args:
        stages: in priority order.
        budget: the run's Budget.
        skipped: stage key -> why it is skipped regardless (an option).
        run_one: run_one(stage, timeout) -> (status, rc, output, reason); reason: why a stage
            that ran counts as "skipped" ("" otherwise).
        after_each: called with all StageRuns before the first stage and after every stage
            (writes the report).
    Returns:
        one StageRun per stage, in order."""
    runs = [StageRun(s) for s in stages]
    after_each(runs)
    for run in runs:
        stage = run.stage
        left = budget.left()
        if stage.key in skipped:
            run.status, run.reason = "skipped", skipped[stage.key]
        elif left < stage.min_s:
            run.status = "skipped"
            run.reason = (f"budget: it needs at least {stage.min_s:.0f} s, "
                          f"{max(left, 0.0):.0f} s were left")
        else:
            run.timeout = left if stage.max_s is None else min(stage.max_s, left)
            t0 = clock()
            run.status, run.rc, run.output, run.reason = run_one(stage, run.timeout)
            run.seconds = clock() - t0
            if run.status == "cut":
                run.reason = f"still running at its timeout ({run.timeout:.0f} s): killed"
            print(f"[gpu_check] {stage.key}: {run.status} (rc {run.rc}) in {run.seconds:.0f} s; "
                  f"{max(budget.left(), 0.0):.0f} s of the budget left", flush=True)
        if run.status == "skipped":
            print(f"[gpu_check] {stage.key}: skipped: {run.reason}", flush=True)
        after_each(runs)
    return runs


def exit_status(runs: list[StageRun]) -> int:
    """Args: the StageRuns. Returns: 1 when a stage failed or was cut, 3 when one was skipped
    for lack of budget, else 0."""
    if any(r.status in ("failed", "cut") for r in runs):
        return 1
    if any(r.status == "skipped" and r.reason.startswith("budget") for r in runs):
        return 3
    return 0


def merge_bench_json(stage_json: Path, into: Path) -> None:
    """Append the benchmarks of one stage's pytest-benchmark JSON to the run's JSON.

    Args:
        stage_json: the stage's file (absent or empty when the stage was cut: pytest-benchmark
            writes it at the end); into: the run's file, created from the first stage's."""
    if not stage_json.exists() or stage_json.stat().st_size == 0:
        return
    new = json.loads(stage_json.read_text())
    if into.exists():
        merged = json.loads(into.read_text())
        merged["benchmarks"] += new.get("benchmarks", [])
    else:
        merged = new
    into.write_text(json.dumps(merged, indent=1))


def slug(text: str) -> str:
    """Args: any text. Returns: it lower-cased, runs of other characters as one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


# ---------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python scripts/gpu_check.py",
        description="On a GPU machine, inside one time budget: build the CUDA extension, run the "
                    "GPU tests, the penalty, op, spectral-norm, training, layer and convert "
                    "benchmarks (in that priority), and write "
                    "benchmarks/results/<date>-<gpu>.md (+ raw JSON and the full log) after every "
                    "stage.")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f})")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder for the report, JSON and log (default: benchmarks/results/)")
    ap.add_argument("--commit", help="git commit to record (where the checkout has no .git)")
    ap.add_argument("--skip-build", action="store_true", help="skip the build stage")
    ap.add_argument("--skip-tests", action="store_true", help="skip the test stages")
    ap.add_argument("--skip-bench", action="store_true", help="skip the benchmark stages")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    ap.add_argument("--allow-cpu", action="store_true",
                    help="run the stages even without a GPU (to try this script on CPU)")
    return ap


def _skipped_by_options(args) -> dict[str, str]:
    chosen = {kind for kind, flag in SKIP_OPTIONS.items()
              if getattr(args, flag[2:].replace("-", "_"))}
    return {s.key: f"option {SKIP_OPTIONS[s.kind]}" for s in STAGES if s.kind in chosen}


def _print_plan(args, ctx: Context, skipped: dict[str, str]) -> None:
    print(f"gpu_check plan (dry run; nothing is run): budget {args.budget:.0f} s, "
          f"{MARGIN_S:.0f} s of it kept back for killing a cut stage and writing the report")
    for i, s in enumerate(STAGES, 1):
        bounds = f"needs >= {s.min_s:.0f} s, timeout " + (
            f"<= {s.max_s:.0f} s" if s.max_s is not None else "what is left")
        state = f"skipped ({skipped[s.key]})" if s.key in skipped else bounds
        print(f"  {i}. {s.key}: {s.title} [{state}]\n     {describe(s, ctx)}")
    print(f"  report: {ctx.report} (+ .json, .records.jsonl, .log), rewritten after every stage")


def main(argv: list[str] | None = None) -> int:
    """The command.

    Args:
        argv: the options (default: sys.argv[1:]).
    Returns:
        the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    budget = Budget(args.budget)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(SCRIPTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    skipped = _skipped_by_options(args)
    out = args.out.resolve()
    if args.dry_run:
        _print_plan(args, Context(out, "<YYYY-MM-DD>-<gpu-name-slug>", Path("<tmp>"), env), skipped)
        return 0

    print("[gpu_check] probing the environment ...", flush=True)
    info = probe_environment(env)
    if not info.get("gpu_available"):
        why = info.get("torch_error") or info.get("probe_error") or \
            "torch.cuda.is_available() is False"
        msg = f"[gpu_check] no CUDA GPU present ({why}); nothing to check on this machine."
        if not args.allow_cpu:
            print(msg + " Run it on a GPU machine; --dry-run shows the plan, --allow-cpu runs the "
                  "stages anyway.", file=sys.stderr)
            return 2
        print(msg + " --allow-cpu: running the stages anyway.", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Context(out, f"{started[:10]}-{slug(info.get('gpu') or 'cpu')}", tmp, env)
    out.mkdir(parents=True, exist_ok=True)
    for p in (ctx.bench_json, ctx.records):
        p.unlink(missing_ok=True)
    git = git_info(args.commit)
    print(f"[gpu_check] {info.get('gpu') or 'cpu'}; torch {info.get('torch')}, triton "
          f"{info.get('triton')}; commit {git['commit']}; budget {args.budget:.0f} s; report -> "
          f"{ctx.report}", flush=True)
    command = "python scripts/gpu_check.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    with open(ctx.log, "w") as log:
        log.write(f"gpu_check {started}\nenvironment: {json.dumps(info, indent=1)}\ngit: {git}\n")

        def run_one(stage: Stage, timeout: float):
            status, rc, output = run_stage(stage, timeout, ctx, log)
            if stage.kind == "bench":
                merge_bench_json(ctx.stage_json(stage), ctx.bench_json)
            status, reason = skip_if_nothing_ran(stage, ctx, status)
            return status, rc, output, reason

        commands = {s.key: describe(s, ctx) for s in STAGES}

        def report(runs: list[StageRun]) -> None:
            write_report(ctx, runs, commands=commands, env=info, git=git, started=started,
                         command=command, budget=budget)

        runs = run_stages(STAGES, budget, skipped, run_one, report)
    shutil.rmtree(tmp, ignore_errors=True)
    status = exit_status(runs)
    print(f"[gpu_check] wrote {ctx.report}")
    for p in (ctx.bench_json, ctx.records, ctx.log):
        if p.exists():
            print(f"[gpu_check] wrote {p}")
    problems = [f"{r.stage.key} {r.status}" for r in runs if r.status in ("failed", "cut")] + \
        [f"{r.stage.key} skipped ({r.reason})" for r in runs if r.reason.startswith("budget")]
    print(f"[gpu_check] done in {budget.elapsed():.0f} s, exit status {status}: "
          f"{'; '.join(problems) if problems else 'every stage that ran passed'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
