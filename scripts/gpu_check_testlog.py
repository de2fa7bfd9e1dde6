"""pytest plugin of scripts/gpu_check.py (`-p gpu_check_testlog`, scripts/ on PYTHONPATH).

When FASTGAN_GPU_CHECK_TESTLOG names a file, it appends one JSON line per test phase that did not
simply pass (and one per passed call), and one per test file that was skipped or failed as a
whole while it was collected (when "collect": a module-level pytest.importorskip, an import
error): nodeid, when, outcome, duration, message. Lines are written as tests finish, so a stage
cut at its timeout still leaves the outcomes it reached.
"""

from __future__ import annotations

import json
import os


def pytest_runtest_logreport(report):
    """pytest hook. Args: report, a TestReport. Returns: None (appends to the log file)."""
    if report.when != "call" and report.outcome == "passed":
        return
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
    _log(report, report.when, outcome, report.duration)


def pytest_collectreport(report):
    """pytest hook. Args: report, a CollectReport. Returns: None (logs a test file skipped or
    failed as a whole)."""
    if report.outcome != "passed" and report.nodeid:
        _log(report, "collect", report.outcome, 0.0)


def _log(report, when: str, outcome: str, duration: float) -> None:
    path = os.environ.get("FASTGAN_GPU_CHECK_TESTLOG")
    if not path:
        return
    message = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.outcome == "failed":
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)[-500:]
    with open(path, "a") as fh:
        fh.write(json.dumps({"nodeid": report.nodeid, "when": when, "outcome": outcome,
                             "duration": round(duration, 4),
                             "message": message.strip()[:400]}) + "\n")
