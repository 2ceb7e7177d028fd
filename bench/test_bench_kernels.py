"""Kernel benchmarks: every backend x workload, with torch and onnxruntime in the same groups.

    pytest bench/test_bench_kernels.py --benchmark-group-by=group [--bench-threads 2]
    pytest bench/test_bench_kernels.py -k latency                 # one workload

Workloads come from tools/kernel_report.py (float32, arguments built once per workload). Each kernel
benchmark checks its outputs (and gradients, for training workloads) against the NumPy reference after
the timing: fast and wrong is a failure. The peers (torch nn.LSTM / nn.GRU under inference_mode or
autograd; one onnxruntime LSTM / GRU node) get the same weights and are skipped when not installed.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import kernel_report as kr  # noqa: E402

BACKENDS = ("cython", "numba")
_REF = {}


def _workload(name):
    cell, B, T, I, H, training = kr.WORKLOADS[name]
    args = kr.make_args(cell, B, T, I, H, training)
    return cell, training, args, kr.flops(cell, B, T, I, H, training)


def _reference(name):
    """Reference outputs of a workload, computed once per session."""
    if name not in _REF:
        cell, training, args, _ = _workload(name)
        _REF[name] = kr.reference_outputs(cell, args, training)
    return _REF[name]


def _finish(benchmark, fl):
    # (no statistics under --benchmark-disable: the benchmark ran once, untimed)
    median = benchmark.stats.stats.median if benchmark.stats else None
    benchmark.extra_info.update(dtype="float32", gflop=fl / 1e9,
                                gflops_median=fl / median / 1e9 if median else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workload", list(kr.WORKLOADS))
def test_bench_kernel(record_env, workload, backend):
    benchmark = record_env
    try:
        kr.get_backend(backend)
    except ImportError as e:
        pytest.skip(str(e))
    cell, training, args, fl = _workload(workload)
    run = kr.KernelRun(backend, cell, args, training)
    run.run()                                    # JIT compile / warm caches outside the timing
    benchmark.group = workload
    benchmark.extra_info["backend"] = backend
    benchmark(run.run)
    _finish(benchmark, fl)
    # verify a fresh run (backward accumulators from zero) against the reference
    check = kr.KernelRun(backend, cell, args, training)
    if training:
        for n in kr.BWD_OUT[cell]:
            check.bwd[n][...] = 0
        check._backward(*check._bvals)
    else:
        check.run()
    ok, worst = kr.verify(check.outputs(), _reference(workload))
    assert ok, f"{backend} on {workload}: max error {worst:.3g} x tolerance"


@pytest.mark.parametrize("workload", list(kr.WORKLOADS))
def test_bench_torch(record_env, workload):
    benchmark = record_env
    pytest.importorskip("torch")
    cell, training, args, fl = _workload(workload)
    run, outputs = kr.torch_peer(cell, args, training)
    benchmark.group = workload
    benchmark.extra_info["backend"] = "torch"
    benchmark(run)
    _finish(benchmark, fl)
    out = outputs()
    if out is not None:                          # the peer is set up right: same numbers as the reference
        ok, worst = kr.verify(out, {k: _reference(workload)[k] for k in out})
        assert ok, f"torch on {workload}: max error {worst:.3g} x tolerance"


@pytest.mark.parametrize("workload", [w for w, spec in kr.WORKLOADS.items() if not spec[-1]])
def test_bench_onnxruntime(record_env, bench_threads, workload):
    benchmark = record_env
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    cell, training, args, fl = _workload(workload)
    kr.ort_peer.threads = bench_threads
    run, outputs = kr.ort_peer(cell, args)
    benchmark.group = workload
    benchmark.extra_info["backend"] = "onnxruntime"
    benchmark(run)
    _finish(benchmark, fl)
    out = outputs()
    ok, worst = kr.verify(out, {k: _reference(workload)[k] for k in out})
    assert ok, f"onnxruntime on {workload}: max error {worst:.3g} x tolerance"
