"""Benchmarks of bias_act: eager reference, torch.compile of it, triton, cuda (see conftest.py)."""

OP = "bias_act"


def test_bias_act(benchmark, bench_case, provider, run_bench):
    run_bench(benchmark, bench_case, provider)
