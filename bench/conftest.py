"""Benchmark session setup: pin BLAS / OpenMP / torch threads, keep the heap warm (benchmark.keep_heap_warm) and
record the CPU and BLAS in the results.

    pytest bench/ --benchmark-group-by=group                 # 1 thread (default)
    pytest bench/ --bench-threads 2 --benchmark-autosave     # 2 threads, saved for --benchmark-compare

bench/ is outside `testpaths`, so a plain `pytest` never collects it.
"""

import numpy  # noqa: F401  (numpy's and scipy's OpenBLAS must be loaded before the limits are set)
import pytest
import scipy.linalg.cython_blas  # noqa: F401
from threadpoolctl import threadpool_limits

from fastlstm.benchmark import blas_line, cpu_line, keep_heap_warm


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=1,
                     help="BLAS/OpenMP/torch threads for the benchmarks (default 1)")


@pytest.fixture(scope="session")
def bench_threads(request):
    return request.config.getoption("--bench-threads")


@pytest.fixture(scope="session", autouse=True)
def pinned_threads(bench_threads):
    """Every native thread pool (numpy's and scipy's OpenBLAS, OpenMP) and torch limited for the session; freed
    memory kept at the top of the heap for every runtime (benchmark.keep_heap_warm)."""
    keep_heap_warm()
    try:
        import torch
        saved = torch.get_num_threads()
        torch.set_num_threads(bench_threads)
    except ImportError:
        torch = None
    with threadpool_limits(bench_threads):
        yield bench_threads
    if torch is not None:
        torch.set_num_threads(saved)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cpu_model"] = cpu_line()
    machine_info["blas"] = blas_line()
    machine_info["bench_threads"] = config.getoption("--bench-threads")


@pytest.fixture
def record_env(benchmark, bench_threads):
    """Put threads, CPU and BLAS into each benchmark's extra_info."""
    benchmark.extra_info.update(threads=bench_threads, cpu=cpu_line(), blas=blas_line())
    return benchmark
