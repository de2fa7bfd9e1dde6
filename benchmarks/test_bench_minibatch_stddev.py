"""Benchmarks of minibatch_stddev: eager reference, torch.compile of it, triton, cuda (see conftest.py)."""

OP = "minibatch_stddev"


def test_minibatch_stddev(benchmark, bench_case, provider, run_bench):
    run_bench(benchmark, bench_case, provider)
