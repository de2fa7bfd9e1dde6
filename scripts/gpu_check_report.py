"""The markdown report of scripts/gpu_check.py, rewritten after every stage.

Sections: environment (device, versions, commit, TF32, copy bandwidth, budget); stages (status,
time, timeout, test counts, command) and what was skipped or cut, and why; correctness (test
outcomes per file and per op); the step benchmarks, each its own table: the D step with the
gradient penalty and pro-gan-pth's D step unconverted and converted (ms, speedup, peak memory,
gradient error per provider), one ProGAN training iteration (ms, img/s, speedup, peak memory,
loss difference from eager), the spectral-norm overhead of a D step (ms, overhead, floor); op
and layer timings (ms, GB/s where the row has a byte model, floor, speedups); the tail of every
failed or cut stage's output.
"""

from __future__ import annotations

import json
from pathlib import Path

OPS = ("pixel_norm", "minibatch_stddev", "bias_act", "grad_penalty")
PROVIDERS = ("eager", "compile", "triton", "cuda")
PENALTY_OP = "d_step_gp"  # the records of benchmarks/test_bench_penalty.py
CONVERT_OP = "progan_pth_d_step_gp"  # benchmarks/test_bench_convert.py
TRAIN_OP = "train_iteration"  # benchmarks/test_bench_train.py
SN_PREFIX = "spectral_norm_"  # benchmarks/test_bench_spectral_norm.py: spectral_norm_<model>
TAIL_CHARS = 3000


def read_jsonl(path: Path) -> list[dict]:
    """Args: a JSON-lines file (may be absent). Returns: its objects; a line cut by a kill is
    dropped."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def test_outcomes(path: Path) -> dict[str, dict]:
    """Args: a stage's test log (gpu_check_testlog). Returns: nodeid -> {"outcome", "message"};
    failed (or error, outside the call) beats skipped beats passed."""
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
    """Args: test outcomes. Returns: outcome -> how many."""
    c: dict[str, int] = {}
    for t in tests.values():
        c[t["outcome"]] = c.get(t["outcome"], 0) + 1
    return c


def fmt_counts(c: dict[str, int]) -> str:
    """Args: outcome counts. Returns: "3 passed, 1 failed" (or "no tests ran")."""
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed"]
    parts = [f"{c[k]} {k}" for k in order if c.get(k)]
    return ", ".join(parts) if parts else "no tests ran"


def _ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if v < 0.1 else f"{v:.3f}"


def _gbps(rec: dict) -> str:
    """GB/s of a record; empty where it has no byte model (min_bytes 0)."""
    if not rec.get("min_bytes") or rec.get("gbps") is None:
        return ""
    return f"{rec['gbps']:.0f}" if rec["gbps"] >= 10 else f"{rec['gbps']:.2f}"


# ---------------------------------------------------------------------------------------------
# sections

def _environment(env: dict, git: dict, started: str, command: str, budget) -> list[str]:
    gpu = env.get("gpu") or "no GPU"
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
        ("TF32 (torch defaults, as the benchmarks ran; the tests turn it off)",
         ", ".join(f"{k}={v}" for k, v in tf32.items()) or "?"),
        ("device copy bandwidth", f"{env['copy_gbps']:.0f} GB/s (1 GiB device copy, read + write)"
         if env.get("copy_gbps") else "-"),
        ("command", command),
        ("budget", f"{budget.seconds:.0f} s, {budget.elapsed():.0f} s used when this was written"),
    ]
    out = ["| | |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]
    if env.get("backends"):
        out.append("\nfastgan backends (`fastgan.available_backends()`, before the build stage):\n")
        out += [f"- {k}: {'available' if ok else 'unavailable'}: {why}"
                for k, (ok, why) in env["backends"].items()]
    if env.get("probe_error") or env.get("torch_error"):
        out.append(f"\nEnvironment probe problem: `{env.get('probe_error') or env.get('torch_error')}`")
    return out


def _stages(ctx, runs, commands: dict[str, str]) -> list[str]:
    out = ["| # | stage | status | time | timeout | outcome | command |",
           "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        status = {"passed": "ok", "failed": f"**FAILED** (rc {r.rc})", "cut": "**CUT**",
                  "pending": "not reached yet"}.get(r.status, r.status)
        if r.status == "skipped":
            status = f"skipped ({r.reason})"
        ran = r.status != "pending" and r.timeout is not None  # ran, perhaps then counted skipped
        outcome = ""
        if r.stage.kind != "build" and ran:
            outcome = fmt_counts(count(test_outcomes(ctx.testlog(r.stage))))
        out.append(f"| {i} | {r.stage.key}: {r.stage.title} | {status} | "
                   f"{f'{r.seconds:.0f} s' if ran else '-'} | "
                   f"{f'{r.timeout:.0f} s' if r.timeout is not None else '-'} | {outcome} | "
                   f"`{commands.get(r.stage.key, '')}` |")
    notes = [f"- {r.stage.key}: {'cut' if r.status == 'cut' else 'skipped'}: {r.reason}"
             for r in runs if r.status in ("cut", "skipped")]
    if notes:
        out += ["\nSkipped or cut, and why (a cut stage's results up to the cut are kept below):\n",
                *notes]
    return out


def _correctness(ctx, runs) -> list[str]:
    per_stage = {r.stage.key: test_outcomes(ctx.testlog(r.stage))
                 for r in runs if r.stage.kind == "tests"}
    all_tests = {k: v for tests in per_stage.values() for k, v in tests.items()}
    if not all_tests:
        return ["No test outcomes were recorded."]
    keys = list(per_stage)
    out = ["| test file | " + " | ".join(keys) + " | verdict |",
           "|---|" + "---|" * len(keys) + "---|"]
    for f in sorted({n.split("::")[0] for n in all_tests}):
        cells, bad, ran = [], 0, 0
        for key in keys:
            mine = {k: v for k, v in per_stage[key].items() if k.split("::")[0] == f}
            cells.append(fmt_counts(count(mine)) if mine else "-")
            bad += sum(1 for t in mine.values() if t["outcome"] in ("failed", "error"))
            ran += sum(1 for t in mine.values() if t["outcome"] in ("passed", "xfailed", "xpassed"))
        verdict = "**FAIL**" if bad else ("pass" if ran else "nothing ran")
        out.append(f"| `{f}` | " + " | ".join(cells) + f" | {verdict} |")
    out.append("\nPer op (all its tests, any file whose name contains the op):\n")
    for op in OPS:
        mine = {k: v for k, v in all_tests.items() if op in k.split("::")[0]}
        out.append(f"- {op}: {fmt_counts(count(mine)) if mine else 'no tests found'}")
    failed = [(k, v) for k, v in all_tests.items() if v["outcome"] in ("failed", "error")]
    if failed:
        out.append(f"\nFailures ({len(failed)}):\n")
        for k, v in failed[:60]:
            first = v["message"].splitlines()[0] if v["message"] else ""
            out.append(f"- `{k}`: {v['outcome']}: {first}")
        if len(failed) > 60:
            out.append(f"- ... and {len(failed) - 60} more (see the log)")
    return out


def penalty_table(records: list[dict]) -> list[str]:
    """Args: records of a D-step benchmark (penalty, convert). Returns: the markdown table:
    per row (resolution, dtype, layer order) and provider, ms, speedup over eager, peak MiB,
    gradient and loss error against fp64, and the status with its reason."""
    out = ["| res | dtype | step | provider | ms | x eager | peak MiB | grad err vs fp64 | "
           "loss err | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    eager = {(r["shape"][2], r["dtype"], r["pass"]): r["ms"] for r in records
             if r["provider"] == "eager" and "ms" in r}
    for r in records:
        key = (r["shape"][2], r["dtype"], r["pass"])
        speed = f"{eager[key] / r['ms']:.2f}x" if "ms" in r and key in eager else "-"
        mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        grad = f"{r['grad_rel_err']:.1e}" if "grad_rel_err" in r else "-"
        loss = f"{r['loss_rel_err']:.1e}" if "loss_rel_err" in r else "-"
        out.append(f"| {key[0]} | {r['dtype']} | {r['pass']} | {r['provider']} | "
                   f"{_ms(r.get('ms'))} | {speed} | {mem} | {grad} | {loss} | {_status(r)} |")
    return out


def _status(r: dict) -> str:
    return (r["status"] + (f": {r['reason']}" if r.get("reason") else "")).replace("|", "/")


def train_table(records: list[dict]) -> list[str]:
    """Args: records of the training-iteration benchmark. Returns: the markdown table: per
    (resolution, dtype) and provider, ms per iteration, speedup over eager, images per second,
    peak MiB, the largest difference of the first iterations' losses from eager's (relative to
    their scale), and the status with its reason."""
    out = ["| res | dtype | provider | ms | x eager | img/s | peak MiB | loss diff vs eager | "
           "status |", "|---|---|---|---|---|---|---|---|---|"]
    eager = {(r["shape"][2], r["dtype"]): r["ms"] for r in records
             if r["provider"] == "eager" and "ms" in r}
    for r in records:
        key = (r["shape"][2], r["dtype"])
        speed = f"{eager[key] / r['ms']:.2f}x" if "ms" in r and key in eager else "-"
        img = f"{r['img_per_s']:.1f}" if "img_per_s" in r else "-"
        mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        diff = f"{r['loss_rel_diff']:.1e}" if "loss_rel_diff" in r else "-"
        out.append(f"| {key[0]} | {r['dtype']} | {r['provider']} | {_ms(r.get('ms'))} | {speed} "
                   f"| {img} | {mem} | {diff} | {_status(r)} |")
    return out


def spectral_norm_table(records: list[dict]) -> list[str]:
    """Args: records of the spectral-norm benchmark. Returns: the markdown table: per model and
    provider, ms of the D step, the overhead over the same D without spectral norm, torch's
    overhead over it, the floor of the power iterations' bytes, the largest difference from
    torch's spectral norm, and the status with its reason."""
    out = ["| model | provider | ms | overhead ms | torch overhead / this | floor ms | "
           "err vs torch | status |", "|---|---|---|---|---|---|---|---|"]
    ms = {(r["op"], r["provider"]): r["ms"] for r in records if "ms" in r}
    for r in records:
        base, torch_ms = ms.get((r["op"], "none")), ms.get((r["op"], "torch"))
        over = r["ms"] - base if "ms" in r and base is not None else None
        ratio = "-"
        if over is not None and over > 0 and torch_ms is not None and r["provider"] != "none":
            ratio = f"{(torch_ms - base) / over:.1f}x"
        floor = f"{r['floor_ms']:.4f}" if "floor_ms" in r else "-"
        err = f"{r['max_rel_err']:.1e}" if "max_rel_err" in r else "-"
        out.append(f"| {r['op'][len(SN_PREFIX):]} | {r['provider']} | {_ms(r.get('ms'))} | "
                   f"{_ms(over) if over is not None else '-'} | {ratio} | {floor} | {err} | "
                   f"{_status(r)} |")
    return out


def timing_tables(records: list[dict], copy_gbps: float | None) -> list[str]:
    """Args: records of the op and layer benchmarks; the device copy bandwidth (or None).
    Returns: one markdown table per op: per (shape, dtype, pass), the floor (rows with a byte
    model), each provider's ms and GB/s, and the speedups of triton/cuda over eager and
    compile; notes for errors, mismatches and skips."""
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
        timed = [p for p in PROVIDERS if any(p in row and "ms" in row[p] for row in rows.values())]
        if not timed:
            reasons = sorted({r.get("reason", r["status"]) for row in rows.values()
                              for r in row.values() if r["provider"] == "eager"})
            out.append("Not timed: " + "; ".join(reasons))
            continue
        head = ["shape", "dtype", "pass"] + (["floor ms"] if copy_gbps else [])
        for p in timed:
            head += [f"{p} ms", f"{p} GB/s"]
        for p in ("triton", "cuda"):
            if p in timed:
                head.append(f"{p} x eager")
                if "compile" in timed:
                    head.append(f"{p} x compile")
        if "compile" in timed:
            head.append("compile x eager")
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        notes: list[str] = []
        for (shape, dtype, pass_), row in rows.items():
            cells = ["x".join(map(str, shape)), dtype, pass_]
            if copy_gbps:
                nbytes = max(r.get("min_bytes", 0) for r in row.values())
                cells.append(_ms(nbytes / (copy_gbps * 1e9) * 1e3) if nbytes else "")
            ms = {p: row[p]["ms"] for p in row if "ms" in row[p]}
            for p in timed:
                r = row.get(p)
                if r is None:
                    cells += ["-", "-"]
                elif "ms" in r:
                    flag = " (mismatch)" if r["status"] == "mismatch" else ""
                    cells += [_ms(r["ms"]) + flag, _gbps(r)]
                else:
                    cells += [r["status"], ""]
            for p in ("triton", "cuda"):
                if p in timed:
                    cells.append(f"{ms['eager'] / ms[p]:.2f}x" if p in ms and "eager" in ms else "-")
                    if "compile" in timed:
                        cells.append(f"{ms['compile'] / ms[p]:.2f}x"
                                     if p in ms and "compile" in ms else "-")
            if "compile" in timed:
                cells.append(f"{ms['eager'] / ms['compile']:.2f}x"
                             if "compile" in ms and "eager" in ms else "-")
            out.append("| " + " | ".join(cells) + " |")
            for p, r in row.items():
                if r["status"] in ("error", "mismatch") or (r["status"] == "skipped" and p in timed):
                    notes.append(f"- {'x'.join(map(str, shape))} {dtype} {pass_} {p}: "
                                 f"{r['status']}: {r.get('reason', '')}")
        if notes:
            out += [""] + notes
    return out


def not_timed_lines(records: list[dict]) -> list[str]:
    """Args: benchmark records. Returns: providers skipped for a whole op, with the reason, once
    per (provider, reason)."""
    timed = {(r["op"], r["provider"]) for r in records if "ms" in r}
    groups: dict[tuple, list[str]] = {}
    for r in records:
        if r["status"] == "skipped" and (r["op"], r["provider"]) not in timed:
            ops = groups.setdefault((r["provider"], r.get("reason", "")), [])
            if r["op"] not in ops:
                ops.append(r["op"])
    return [f"- {p} ({', '.join(ops)}): {why}" for (p, why), ops in groups.items()]


_STEP_SECTIONS = (  # (title, which records, what the table shows, table)
    ("ProGAN D step with WGAN-GP", lambda op: op == PENALTY_OP,
     "One D step (D(real), D(fake), penalty, drift, backward), batch 16, official widths. ms: "
     "median CUDA-event time of one step, L2 flushed; peak MiB: torch.cuda.max_memory_allocated "
     "over one step; grad err: ||grad - grad64|| / ||grad64|| of all parameter gradients against "
     "an fp64 eager step on the same weights and inputs. Providers: see "
     "benchmarks/test_bench_penalty.py.", penalty_table),
    ("pro-gan-pth's D step, as it is and after fastgan.convert", lambda op: op == CONVERT_OP,
     "The same step for pro_gan_pytorch's own Discriminator (pro-gan-pth 3.4), its blocks in its "
     "own order; columns as above. Providers: see benchmarks/test_bench_convert.py.",
     penalty_table),
    ("One ProGAN training iteration", lambda op: op == TRAIN_OP,
     "A D step (WGAN loss, gradient penalty, drift, Adam) and a G step (Adam), batch 16, official "
     "widths. ms: median CUDA-event time of one iteration, L2 flushed; loss diff: the largest "
     "difference of the first iterations' losses from eager's, from the same start with TF32 "
     "off, relative to their scale. Providers: see benchmarks/test_bench_train.py.", train_table),
    ("Spectral-norm overhead of a D step", lambda op: op.startswith(SN_PREFIX),
     "Three training forwards and the backward of SNGAN's CIFAR-10 D (batch 64, 32x32) and a "
     "BigGAN-128-like D (batch 32). overhead: ms over the same D without spectral norm (row "
     "none); floor: the power iterations' weight reads at the copy rate measured in the same run; "
     "err: the largest difference from torch's spectral norm (loss, gradients, u, v). Providers: "
     "see benchmarks/test_bench_spectral_norm.py.", spectral_norm_table),
)


def _timings(records: list[dict], copy_gbps: float | None) -> list[str]:
    out: list[str] = []
    for title, mine, text, table in _STEP_SECTIONS:
        rows = [r for r in records if mine(r["op"])]
        out.append(f"\n## {title}\n")
        out += [text + "\n", *table(rows)] if rows else ["No results."]
    others = [r for r in records if not any(own(r["op"]) for _, own, _, _ in _STEP_SECTIONS)]
    out.append("\n## Op and layer timings\n")
    if not others:
        return out + ["No results."]
    timers = sorted({r.get("timer", "") for r in others if "ms" in r})
    if timers and all(t.startswith("cuda-events") for t in timers):
        how = ("median time per call over CUDA events, the L2 cache flushed before each call "
               "(the `triton.testing.do_bench` method used in docs/baselines.md)")
    else:
        how = f"median time per call ({', '.join(timers)}; no GPU: indicative only)"
    out.append(
        f"ms: {how}. GB/s: minimum bytes moved / that time, for rows with a byte model (empty "
        "elsewhere). floor: minimum bytes / the device copy bandwidth above. `x eager`, "
        "`x compile`: speedup of that provider (above 1 is faster). eager = the plain-torch "
        "reference; compile = `torch.compile` of it; triton / cuda = fastgan with that backend. "
        "Before timing, each provider's outputs and gradients were compared with eager's on the "
        "same inputs.")
    skipped = not_timed_lines(others)
    if skipped:
        out += ["\nNot timed:\n"] + skipped
    return out + timing_tables(others, copy_gbps)


def write_report(ctx, runs, *, commands: dict[str, str], env: dict, git: dict, started: str,
                 command: str, budget) -> None:
    """Write the report to ctx.report (replacing it).

    Args:
        ctx: gpu_check's Context (paths of the report, test logs and records).
        runs: the StageRuns so far, in priority order (pending ones included).
        commands: stage key -> its command line, as shown.
        env: the environment probe; git: commit info; started: ISO date of the start;
        command: the command line; budget: the run's Budget."""
    gpu = env.get("gpu") or "no GPU"
    lines = [f"# fastgan GPU check: {gpu}, {started[:10]}\n",
             "Written by `scripts/gpu_check.py`, after every stage. Raw data beside this file: "
             f"`{ctx.stem}.json` (pytest-benchmark), `{ctx.stem}.records.jsonl` (one line per "
             f"benchmark), `{ctx.stem}.log` (every stage's full output).\n"]
    lines += _environment(env, git, started, command, budget)
    lines += ["\n## Stages, in priority order\n"] + _stages(ctx, runs, commands)
    lines += ["\n## Correctness (test outcomes)\n"] + _correctness(ctx, runs)
    lines += _timings(read_jsonl(ctx.records), env.get("copy_gbps"))
    bad = [r for r in runs if r.status in ("failed", "cut")]
    if bad:
        lines.append("\n## Output of failed or cut stages (tail)\n")
        for r in bad:
            lines.append(f"### {r.stage.key} ({r.status})\n\n```\n{r.output[-TAIL_CHARS:]}\n```")
    ctx.report.write_text("\n".join(lines) + "\n")
