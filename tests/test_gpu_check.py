"""scripts/gpu_check.py spends its budget right: stages in priority order, a stage that does not
fit is skipped and one that overruns is cut, both reported, the report rewritten after every
stage, and the exit status says what happened. Fake stages and a fake clock: no real stage runs
(only the process-group kill is tried on a real, tiny subprocess)."""

import json
import os
import subprocess
import sys
import time

import pytest

from helpers import load_script

gc = load_script("gpu_check")


class FakeClock:
    """A clock that moves only when a fake stage says it took time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(gc, "clock", fake)
    return fake


def _stage(key, min_s=10.0, max_s=None):
    return gc.Stage(key, f"stage {key}", "tests", (key,), min_s, max_s)


def _runner(clock, took, status=None):
    """run_one(stage, timeout) that takes took[key] seconds; longer than the timeout: cut;
    status "skipped": every test skipped, reason "no package"."""
    calls = []

    def run_one(stage, timeout):
        calls.append((stage.key, timeout))
        if took[stage.key] > timeout:
            clock.now += timeout
            return "cut", None, "killed", ""
        clock.now += took[stage.key]
        st = (status or {}).get(stage.key, "passed")
        return (st, 0 if st in ("passed", "skipped") else 1, f"output of {stage.key}",
                "no package" if st == "skipped" else "")

    return run_one, calls


def test_stages_run_in_priority_order_with_timeouts_from_what_is_left(clock):
    stages = (_stage("a", max_s=50), _stage("b", max_s=500), _stage("c"))
    run_one, calls = _runner(clock, {"a": 30, "b": 40, "c": 5})
    snapshots = []
    runs = gc.run_stages(stages, gc.Budget(200, margin=20), {}, run_one,
                         lambda rs: snapshots.append([r.status for r in rs]))
    # a: its cap; b: 200 - 20 - 30 left; c: 200 - 20 - 70
    assert calls == [("a", 50), ("b", 150), ("c", 110)]
    assert [r.status for r in runs] == ["passed"] * 3
    assert [r.seconds for r in runs] == [30, 40, 5]
    assert snapshots == [["pending"] * 3, ["passed", "pending", "pending"],
                         ["passed", "passed", "pending"], ["passed"] * 3]
    assert gc.exit_status(runs) == 0


def test_a_stage_that_does_not_fit_is_skipped_and_a_cheaper_later_one_still_runs(clock):
    stages = (_stage("a"), _stage("big", min_s=50), _stage("small", min_s=20))
    run_one, calls = _runner(clock, {"a": 60, "big": 1, "small": 1})
    runs = gc.run_stages(stages, gc.Budget(100, margin=10), {}, run_one, lambda rs: None)
    assert [c[0] for c in calls] == ["a", "small"]
    big = runs[1]
    assert big.status == "skipped" and big.timeout is None
    assert big.reason == "budget: it needs at least 50 s, 30 s were left"
    assert runs[2].status == "passed" and runs[2].timeout == 30
    assert gc.exit_status(runs) == 3


def test_a_stage_that_overruns_is_cut_and_the_rest_get_what_remains(clock):
    stages = (_stage("slow", max_s=100), _stage("next", min_s=10))
    run_one, calls = _runner(clock, {"slow": 1000, "next": 1})
    runs = gc.run_stages(stages, gc.Budget(300, margin=20), {}, run_one, lambda rs: None)
    assert runs[0].status == "cut" and runs[0].seconds == 100
    assert "timeout (100 s)" in runs[0].reason
    assert calls[1] == ("next", 180)
    assert gc.exit_status(runs) == 1


def test_option_skips_never_run_and_a_failure_gives_status_1(clock):
    stages = (_stage("a"), _stage("b"))
    run_one, calls = _runner(clock, {"a": 1, "b": 1}, status={"b": "failed"})
    runs = gc.run_stages(stages, gc.Budget(100), {"a": "option --skip-tests"}, run_one,
                         lambda rs: None)
    assert calls == [("b", 80)]
    assert (runs[0].status, runs[0].reason) == ("skipped", "option --skip-tests")
    assert runs[1].status == "failed"
    assert gc.exit_status(runs) == 1


def test_a_stage_that_ran_but_skipped_every_test_is_skipped_with_its_reason(clock):
    stages = (_stage("a"), _stage("b"))
    run_one, calls = _runner(clock, {"a": 5, "b": 1}, status={"a": "skipped"})
    runs = gc.run_stages(stages, gc.Budget(100), {}, run_one, lambda rs: None)
    assert [c[0] for c in calls] == ["a", "b"]
    assert (runs[0].status, runs[0].reason, runs[0].seconds) == ("skipped", "no package", 5)
    assert gc.exit_status(runs) == 0  # not a failure, nor a lack of budget


def test_the_table_stages_in_the_issue_order():
    assert [s.key for s in gc.STAGES] == ["build", "gpu-tests", "penalty", "ops", "sn", "train",
                                          "layers", "convert", "other-tests"]
    ctx = gc.Context(gc.ROOT / "out", "stem", gc.ROOT / "tmp", {"TRITON_INTERPRET": "1"})
    cmd = {s.key: gc.stage_command(s, ctx) for s in gc.STAGES}
    assert cmd["build"][1:] == ["-m", "fastgan.build"]
    assert "-m" in cmd["gpu-tests"] and "cuda" in cmd["gpu-tests"]
    assert "benchmarks/test_bench_penalty.py" in cmd["penalty"] and "--fastgan-quick" in cmd["penalty"]
    assert "--fastgan-largest" in cmd["ops"]
    for key, module in (("sn", "spectral_norm"), ("train", "train"), ("layers", "layers"),
                        ("convert", "convert")):
        assert f"benchmarks/test_bench_{module}.py" in cmd[key]
        assert ("--fastgan-quick" in cmd[key]) == (key != "sn")  # sn has one set of cases
    for key in ("penalty", "ops", "sn", "train", "layers", "convert"):
        assert "--benchmark-only" in cmd[key]
        assert f"--fastgan-records={ctx.records}" in cmd[key]
        stage = next(s for s in gc.STAGES if s.key == key)
        assert "TRITON_INTERPRET" not in gc.stage_env(stage, ctx)  # never time the interpreter
    gpu_tests = gc.STAGES[1]
    assert gc.stage_env(gpu_tests, ctx)["CUDA_LAUNCH_BLOCKING"] == "1"
    added = gc.bench("gan", "a GAN", "benchmarks/test_bench_gan.py")
    assert added.kind == "bench" and "--benchmark-only" in gc.stage_command(added, ctx)


# ---------------------------------------------------------------------------------------------
# the whole command, with a fake environment, fake stages and a fake clock

NO_PROGAN = "times pro_gan_pytorch's Discriminator: pip install --no-deps pro-gan-pth==3.4"


def _rec(op, provider, ms, **extra):
    """A benchmark record as the step benchmarks write them (256 px, fp32, batch 16)."""
    return {"op": op, "shape": [16, 3, 256, 256], "dtype": "fp32", "provider": provider,
            "status": "ok", "min_bytes": 0, "ms": ms, **extra}


FAKE_RECORDS = {  # stage key -> the records its fake writes
    "penalty": [_rec("d_step_gp", "eager", 210.0, peak_mib=11000.0, grad_rel_err=1e-4,
                     **{"pass": "D step, official order"})],
    "train": [_rec("train_iteration", "eager", 300.0, img_per_s=53.3, peak_mib=9000.0,
                   **{"pass": "D+G step"}),
              _rec("train_iteration", "triton", 100.0, img_per_s=160.0, peak_mib=8000.0,
                   loss_rel_diff=2e-4, **{"pass": "D+G step"})],
    "sn": [{"op": "spectral_norm_sngan", "provider": "none", "status": "ok", "ms": 1.0},
           {"op": "spectral_norm_sngan", "provider": "torch", "status": "ok", "ms": 3.0,
            "max_rel_err": 0.0},
           {"op": "spectral_norm_sngan", "provider": "triton", "status": "ok", "ms": 1.2,
            "max_rel_err": 1e-6, "floor_ms": 0.05}],
}


@pytest.fixture
def fake_machine(monkeypatch, clock):
    monkeypatch.setattr(gc, "probe_environment", lambda env: {
        "gpu_available": True, "gpu": "Fake GPU 1", "torch": "2.11.0", "triton": "3.6.0",
        "copy_gbps": 4000.0})
    monkeypatch.setattr(gc, "git_info", lambda commit: {"commit": commit or "abc",
                                                        "dirty_files": 0})

    def install(took, status=None):
        """Fake stages: each logs one passed test, except convert, skipped as a whole while
        collected (pro-gan-pth absent, as on the GPU machine); penalty, train and sn write a
        record or two."""
        seen = {}

        def run_stage(stage, timeout, ctx, log):
            seen[stage.key] = ctx.report.read_text()  # the report as this stage starts
            if stage.kind != "build":
                with open(ctx.testlog(stage), "a") as fh:
                    fh.write(json.dumps(
                        {"nodeid": "benchmarks/test_bench_convert.py", "when": "collect",
                         "outcome": "skipped", "message": f"Skipped: {NO_PROGAN}"}
                        if stage.key == "convert" else
                        {"nodeid": f"tests/test_{stage.key}.py::t", "when": "call",
                         "outcome": "passed", "duration": 0.1}) + "\n")
            with open(ctx.records, "a") as fh:
                for rec in FAKE_RECORDS.get(stage.key, ()):
                    fh.write(json.dumps(rec) + "\n")
            if stage.key == "convert":
                clock.now += took[stage.key]
                return "no tests", 5, "1 skipped"
            if took[stage.key] > timeout:
                clock.now += timeout
                return "cut", None, f"{stage.key} was killed"
            clock.now += took[stage.key]
            st = (status or {}).get(stage.key, "passed")
            return st, 0 if st == "passed" else 1, f"{stage.key} output"

        monkeypatch.setattr(gc, "run_stage", run_stage)
        return seen

    return install


def _report(out):
    (path,) = out.glob("*-fake-gpu-1.md")
    return path.read_text()


def test_the_report_is_rewritten_after_every_stage_and_says_what_was_cut_or_skipped(
        fake_machine, tmp_path):
    # build 100 s, GPU tests 100 s, the penalty benchmark overruns its 150 s cap, the op
    # benchmarks 50 s, spectral norm 40 s: 20 s are left, the stages after it are skipped.
    seen = fake_machine({"build": 100, "gpu-tests": 100, "penalty": 10**6, "ops": 50, "sn": 40,
                         "train": 1, "layers": 1, "convert": 1, "other-tests": 1})
    assert gc.main(["--out", str(tmp_path), "--budget", "480"]) == 1
    assert list(seen) == ["build", "gpu-tests", "penalty", "ops", "sn"]
    assert "| 1 | build: build the CUDA extension | not reached yet |" in seen["build"]
    assert "| 1 | build: build the CUDA extension | ok | 100 s | 240 s |" in seen["gpu-tests"]
    assert "| 3 | penalty:" in seen["ops"] and "**CUT**" in seen["ops"]
    assert "| 4 | ops: op benchmarks, largest ProGAN shape per op | ok | 50 s | 100 s | " \
        "1 passed |" in seen["sn"]
    final = _report(tmp_path)
    assert "- penalty: cut: still running at its timeout (150 s): killed" in final
    assert "- train: skipped: budget: it needs at least 60 s, 20 s were left" in final
    assert "- other-tests: skipped: budget: it needs at least 45 s, 20 s were left" in final
    assert "penalty was killed" in final  # the cut stage's output tail
    assert "| 256 | fp32 | D step, official order | eager | 210.000 |" in final  # kept results
    assert "| sngan | triton | 1.200 | 0.200 | 10.0x | 0.0500 | 1.0e-06 | ok |" in final
    assert "`tests/test_gpu-tests.py` | 1 passed |" in final
    stem = next(tmp_path.glob("*.md")).stem
    assert (tmp_path / f"{stem}.log").exists() and (tmp_path / f"{stem}.records.jsonl").exists()


def test_a_benchmark_whose_package_is_absent_shows_as_skipped_with_the_install_line(
        fake_machine, tmp_path):
    fake_machine(dict.fromkeys([s.key for s in gc.STAGES], 10))
    assert gc.main(["--out", str(tmp_path)]) == 0
    final = _report(tmp_path)
    row = next(line for line in final.splitlines() if line.startswith("| 8 | convert:"))
    assert f"| skipped ({NO_PROGAN}) | 10 s |" in row and "**FAILED**" not in final
    assert f"- convert: skipped: {NO_PROGAN}" in final
    assert "| 256 | fp32 | triton | 100.000 | 3.00x | 160.0 | 8000 | 2.0e-04 | ok |" in final


_ALL_10 = dict.fromkeys([s.key for s in gc.STAGES], 10)


@pytest.mark.parametrize("took, status, expected", [
    (_ALL_10, {}, 0),
    (_ALL_10, {"build": "failed"}, 1),
    (dict(_ALL_10, build=200, **{"gpu-tests": 170}), {}, 3),  # convert, other-tests: no time
])
def test_exit_status(fake_machine, tmp_path, took, status, expected):
    fake_machine(took, status)
    assert gc.main(["--out", str(tmp_path)]) == expected
    final = _report(tmp_path)
    assert "not reached yet" not in final
    assert ("**FAILED** (rc 1)" in final) == (expected == 1)
    assert ("skipped (budget:" in final) == (expected == 3)


def test_skip_options_and_no_gpu(fake_machine, monkeypatch, tmp_path):
    seen = fake_machine(dict.fromkeys([s.key for s in gc.STAGES], 1))
    assert gc.main(["--out", str(tmp_path), "--skip-build", "--skip-bench"]) == 0
    assert list(seen) == ["gpu-tests", "other-tests"]
    assert "skipped (option --skip-bench)" in _report(tmp_path)
    monkeypatch.setattr(gc, "probe_environment", lambda env: {"gpu_available": False})
    assert gc.main(["--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


def test_the_test_log_keeps_a_file_skipped_while_collected_and_the_stage_counts_as_skipped(
        tmp_path):
    """A module-level pytest.importorskip, as in benchmarks/test_bench_convert.py, run for real
    under the gpu_check_testlog plugin."""
    (tmp_path / "test_needs_pkg.py").write_text(
        "import pytest\n"
        "pytest.importorskip('fastgan_no_such_package', reason='pip install no-such-package')\n"
        "def test_x():\n    pass\n")
    ctx = gc.Context(tmp_path / "out", "stem", tmp_path)
    stage = gc.bench("needs-pkg", "needs a package", str(tmp_path / "test_needs_pkg.py"))
    env = dict(os.environ, PYTHONPATH=str(gc.SCRIPTS),
               FASTGAN_GPU_CHECK_TESTLOG=str(ctx.testlog(stage)))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "gpu_check_testlog",
                        "-p", "no:cacheprovider", str(tmp_path / "test_needs_pkg.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 5, r.stdout + r.stderr  # pytest: nothing collected
    (row,) = [json.loads(line) for line in ctx.testlog(stage).read_text().splitlines()]
    assert (row["when"], row["outcome"]) == ("collect", "skipped")
    assert gc.skip_if_nothing_ran(stage, ctx, "no tests") == ("skipped",
                                                              "pip install no-such-package")
    assert gc.skip_if_nothing_ran(stage, ctx, "failed") == ("failed", "")


def test_merge_bench_json_appends_every_stage(tmp_path):
    into = tmp_path / "run.json"
    for i in range(2):
        stage = tmp_path / f"s{i}.json"
        stage.write_text(json.dumps({"machine_info": {"i": i}, "benchmarks": [{"name": f"b{i}"}]}))
        gc.merge_bench_json(stage, into)
    gc.merge_bench_json(tmp_path / "cut-stage.json", into)  # a cut stage leaves none
    merged = json.loads(into.read_text())
    assert [b["name"] for b in merged["benchmarks"]] == ["b0", "b1"]
    assert merged["machine_info"] == {"i": 0}


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_run_processes_cuts_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    quick = [sys.executable, "-c", "print('done')"]
    status, rc, output = gc.run_processes([quick, [sys.executable, "-c", code]], dict(os.environ),
                                          timeout=2)
    assert (status, rc) == ("cut", None)
    assert time.monotonic() - t0 < 20
    assert "done" in output  # the shard that finished keeps its output
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild went with its group (gone, or a zombie until reaped)
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child)
    status, rc, output = gc.run_processes(
        [[sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"]], dict(os.environ), 30)
    assert (status, rc, output.strip()) == ("failed", 3, "hi")
    no_tests = [sys.executable, "-c", "import sys; sys.exit(5)"]  # pytest: nothing collected
    assert gc.run_processes([no_tests, quick], dict(os.environ), 30)[:2] == ("passed", 0)
    assert gc.run_processes([no_tests], dict(os.environ), 30)[:2] == ("passed", 5)


def test_a_sharded_test_stage_runs_every_test_file_once():
    ctx = gc.Context(gc.ROOT / "out", "stem", gc.ROOT / "tmp")
    stage = next(s for s in gc.STAGES if s.key == "gpu-tests")
    cmds = gc.shard_commands(stage, ctx)
    assert len(cmds) == stage.shards > 1
    files = [a for cmd in cmds for a in cmd if a.startswith("tests/")]
    assert sorted(files) == sorted(f"tests/{f.name}" for f in (gc.ROOT / "tests").glob("test_*.py"))
    for cmd in cmds:
        assert cmd[cmd.index("-m", 3):][:2] == ["-m", "cuda"] and "gpu_check_testlog" in cmd
    assert "(as 4 processes side by side, by test file)" in gc.describe(stage, ctx)
