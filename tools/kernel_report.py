"""Verify every kernel backend against a float64 NumPy reference run, then time it next to torch and onnxruntime.

    python tools/kernel_report.py                  # the kernel workloads, threads 1 and 2
    python tools/kernel_report.py --quick          # fewer samples, no batch_b256 workload (under a minute)
    python tools/kernel_report.py --threads 1 --workloads latency_b1_t100_h128,train_b32_t200_h128

A thin wrapper: the logic lives in the package (fastlstm/benchmark.py, fastlstm/bench.py) and is the same as
`fastlstm bench --workloads kernel`, except that JSON and PNG files are written only when asked (--json, --png).
The workload table and the peer builders are re-exported here (bench/test_bench_kernels.py uses them).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastlstm.benchmark import (BWD_OUT, FWD_OUT, QUICK_SKIP, WORKLOADS, KernelRun, available_backends,  # noqa: E402,F401
                                backward_args, blas_line, cpu_line, flops, get_backend, make_args, median_time,
                                ort_peer, reference_outputs, set_peer_threads, sgemm_peak, torch_peer, verify,
                                verify_detail)
from fastlstm.bench import cli  # noqa: E402


def main(argv=None):
    return cli(argv, prog="kernel_report.py", workloads="kernel", json="", png="")


if __name__ == "__main__":
    sys.exit(main())
