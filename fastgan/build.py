"""Build the CUDA extension into the cache: ``python -m fastgan.build``.

The build settings (sources, flags, archs, toolkit) live in ``fastgan._build_config``; the
building and loading in ``fastgan._ext``. This is only the command.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastgan.build",
        description="Build fastgan's CUDA extension into the cache (a no-op when fastgan._C was "
                    "built at install or the cache already holds a build), then load it.")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)

    from fastgan import _ext

    ok, why = _ext.status()
    print(f"fastgan: before: {'ready' if ok else 'not ready'} ({why})")
    try:
        where = _ext.load(build=True, verbose=args.verbose)
    except RuntimeError as err:
        print(f"fastgan: build failed: {err}")
        return 1
    print(f"fastgan: CUDA extension loaded from {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
