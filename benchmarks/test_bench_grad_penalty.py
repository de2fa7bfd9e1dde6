"""Benchmarks of the fused per-sample gradient norm + penalty: eager reference, torch.compile of it,
triton, cuda (see conftest.py)."""

OP = "grad_penalty"


def test_grad_penalty(benchmark, bench_case, provider, run_bench):
    run_bench(benchmark, bench_case, provider)
