"""`python -m fastgan.bench`: every fastgan op, reference against each available backend.

Prints one row per (op, shape, dtype, pass) and one column group per provider (eager, compile,
triton, cuda: see `fastgan.bench.providers`) with the time in ms, the achieved bandwidth in GB/s
(`fastgan.bench.specs`' byte models) and speedups ("x eager", "x compile"; above 1 means faster).

Options: --device {auto,cpu,cuda}, --dtype (float32, bfloat16, float16, a comma list, or auto:
float32 on CPU, float32,bfloat16 on GPU), --quick (fewer shapes and shorter timing), --largest
(only the largest shape per op), --json PATH, --ops, --providers, --passes, --no-flush. Exit
status 1 when a triton or cuda provider raised or disagreed with eager. On CPU the command
restarts itself once with OMP_WAIT_POLICY=PASSIVE (unless set): spinning OpenMP threads made
small-op timings erratic on small VMs. CPU numbers are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import torch

from .cases import PASSES, make_cases, parse_dtypes, parse_list
from .providers import PROVIDERS, run_case
from .report import (backend_lines, environment, footer_lines, format_table, shown_providers,
                     unavailable_lines)
from .specs import OPS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fastgan.bench",
        description="Time every fastgan op: plain-torch reference (eager), torch.compile of it, "
                    "and each available fastgan backend, side by side (ms, GB/s, speedups).")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: cuda when a GPU is visible, else cpu")
    ap.add_argument("--dtype", default="auto",
                    help="float32, bfloat16, float16, or a comma list; auto: float32 on CPU, "
                         "float32,bfloat16 on GPU")
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    sizes.add_argument("--largest", action="store_true", help="only the largest shape per op")
    ap.add_argument("--json", metavar="PATH", help="also write environment and results as JSON")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list from {', '.join(OPS)}")
    ap.add_argument("--providers", default=",".join(PROVIDERS),
                    help=f"comma list from {', '.join(PROVIDERS)}")
    ap.add_argument("--passes", default=",".join(PASSES), help="fwd, fwdbwd or both")
    ap.add_argument("--no-flush", action="store_true",
                    help="GPU: do not flush the L2 cache before each timed call")
    return ap


def _print_header(env: dict[str, Any], device: str, providers: Sequence[str], flush: bool) -> None:
    where = env.get("gpu") or f"CPU ({env.get('cpu')}, {env.get('cpu_threads')} threads)"
    timer = ("CUDA events, L2 flushed before each call" if flush else "CUDA events") \
        if device == "cuda" else "perf_counter"
    print(f"fastgan {env.get('fastgan')} bench on {device}: {where}")
    print(f"torch {env['torch']} (CUDA {env['cuda_runtime']}), triton {env['triton']}, "
          f"python {env['python']}; median time per call ({timer})")
    if device == "cpu":
        print(f"CPU threads: {torch.get_num_threads()}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    if device == "cuda":
        print(f"TF32: cudnn.allow_tf32={env['tf32']['cudnn.allow_tf32']}, "
              f"matmul.allow_tf32={env['tf32']['cuda.matmul.allow_tf32']}")
    print("fastgan backends on this machine:")
    for line in backend_lines():
        print(line)
    skipped = unavailable_lines(device, providers)
    if skipped:
        print("providers not timed:")
        for line in skipped:
            print(line)
    print(flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The command.

    Args:
        argv: the options (default: sys.argv[1:]; given, the command never restarts itself).
    Returns:
        the exit status: 0, 1 when a fastgan backend failed or disagreed with eager, 2 when
        --device cuda was asked for without a GPU."""
    args = _parser().parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and "OMP_WAIT_POLICY" not in os.environ and argv is None:
        # OpenMP worker threads that spin between parallel regions (libgomp's default) made
        # small-op CPU timings erratic on small VMs (medians off 20x). The policy is read when
        # torch loads OpenMP, so restart once with it set.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "fastgan.bench", *sys.argv[1:]])
    if device == "cuda" and not torch.cuda.is_available():
        print("fastgan.bench: --device cuda, but no CUDA GPU is visible "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    dtypes = parse_dtypes(args.dtype, device)
    ops = parse_list(args.ops, OPS, "--ops")
    providers = parse_list(args.providers, PROVIDERS, "--providers")
    if "eager" not in providers:
        providers.insert(0, "eager")  # the baseline every ratio is against
    passes = parse_list(args.passes, PASSES, "--passes")

    env = environment(device)
    _print_header(env, device, providers, not args.no_flush)
    shapes = "quick" if args.quick else ("largest" if args.largest else "all")
    cases = make_cases(ops, device, dtypes, shapes, passes)
    records: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    progress = sys.stderr.isatty()
    for i, case in enumerate(cases):
        if progress:
            print(f"\r[{i + 1}/{len(cases)}] {case.id} ...".ljust(70), end="", file=sys.stderr,
                  flush=True)
        eager_rec, reference = run_case(case, "eager", device, quick=args.quick,
                                        flush_l2=not args.no_flush)
        records.append(eager_rec)
        for p in providers:
            if p == "eager":
                continue
            rec, _ = run_case(case, p, device, quick=args.quick, flush_l2=not args.no_flush,
                              reference=reference)
            records.append(rec)
        if device == "cuda":
            torch.cuda.empty_cache()

    if progress:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    # ops that could not run at all (e.g. not written yet): say so once, not in every row
    missing: dict[str, str] = {}
    for r in records:
        if r["provider"] == "eager" and r["status"] != "ok":
            missing.setdefault(r["op"], r.get("reason", ""))
    shown = [r for r in records if r["op"] not in missing]
    columns = [p for p in providers if p in shown_providers(shown)] or ["eager"]
    print(format_table(shown, columns) if shown else "(no op could be timed)")
    for op, why in missing.items():
        print(f"{op}: not timed: {why}")
    print()
    for line in footer_lines(shown, columns, device):
        print(line)
    print(f"{len(cases)} cases in {time.perf_counter() - t_start:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "results": records}, fh, indent=1)
        print(f"wrote {args.json}")
    bad = [r for r in records if r["status"] in ("error", "mismatch")
           and r["provider"] in ("triton", "cuda")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
