"""Benchmarks of pixel_norm: eager reference, torch.compile of it, triton, cuda (see conftest.py)."""

OP = "pixel_norm"


def test_pixel_norm(benchmark, bench_case, provider, run_bench):
    run_bench(benchmark, bench_case, provider)
