"""pytest plugin of scripts/gpu_check.py (`-p gpu_check_testlog`, scripts/ on PYTHONPATH).

When FASTGAN_GPU_CHECK_TESTLOG names a file, it appends one JSON line per test phase that did not
simply pass (and one per passed call): nodeid, when, outcome, duration, message. Lines are
written as tests finish, so a stage cut at its timeout still leaves the outcomes it reached.
"""

from __future__ import annotations

import json
import os


def pytest_runtest_logreport(report):
    """pytest hook. Args: report, a TestReport. Returns: None (appends to the log file)."""
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
