"""fastgan.bench: measuring fastgan's ops against plain torch, on whatever device is present.

`python -m fastgan.bench` prints the side-by-side table (see `__main__`). The benchmark suite
(`pytest benchmarks/ --benchmark-only`) and `scripts/gpu_check.py` use the same cases, byte
model and timer. Modules, each with one job:

    specs      op specs and byte models: inputs, reference and fastgan calls, minimum bytes
    cases      benchmark cases (op x shape x dtype x pass) at ProGAN's shapes; shape sets
               "all", "quick", "largest"; dtype names and option parsing
    timing     `measure` (CUDA events with the L2 flushed, or perf_counter on CPU)
    providers  eager / compile / triton / cuda: availability, the timed step, the check
               against eager, `run_case`
    report     environment, the text table and its footer
    __main__   the command

The names below are the kit benchmark modules use (`from fastgan import bench as B`).
"""

from .cases import SHORT, Case, make_cases, parse_dtypes, parse_list
from .providers import PROVIDERS, backend_scope, compare, make_step, provider_status, tolerance
from .report import environment, format_table
from .specs import OPS, SPECS
from .timing import cuda_sync_timer, measure

__all__ = ["OPS", "PROVIDERS", "SHORT", "SPECS", "Case", "backend_scope", "compare",
           "cuda_sync_timer", "environment", "format_table", "make_cases", "make_step",
           "measure", "parse_dtypes", "parse_list", "provider_status", "tolerance"]
