"""`python -m fastgan.train` / `fastgan-train`: parse, train, report."""

from __future__ import annotations

import os
import sys

from .config import parse_args
from .loop import run


def main(argv=None) -> dict | None:
    """Run the training command.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    Returns:
        the run's summary (see fastgan.train.loop.Trainer.train); exits with status 2 on bad
        input and 130 when interrupted.
    """
    cfg = parse_args(argv)
    try:
        summary = run(cfg)
    except ValueError as err:
        print(f"fastgan.train: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"\nfastgan.train: interrupted; continue from the last checkpoint with the same "
              f"options and --resume (--out {cfg.out})", file=sys.stderr)
        raise SystemExit(130) from None
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: the other ranks measure nothing
        print(f"done: {summary['images'] / 1000:.1f} kimg in {summary['steps']} steps, "
              f"{summary['seconds']:.0f} s; sliced Wasserstein distance "
              f"{_distance(summary['swd_start'])} at the start, {_distance(summary['swd_end'])} "
              f"at the end; outputs in {summary['out']}")
    return summary


def _distance(value) -> str:
    """A distance of the summary; None where none was measured (a resumed run that had nothing
    left to train measures none at its end)."""
    return "not measured" if value is None else f"{value:.4f}"


def console_main() -> int:
    """`fastgan-train`'s entry point: exit status 0 after a finished run (the console-script
    wrapper passes the return value to sys.exit)."""
    main()
    return 0
