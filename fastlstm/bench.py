"""`fastlstm bench`: runs tools/kernel_report.py (verify every backend against the reference, then time it
beside torch and onnxruntime). The report lives in the source tree; from an installed wheel without it,
the command says where to get it."""
import importlib.util
import os
import sys


def _report_module():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "kernel_report.py")
    if not os.path.exists(path):
        raise ImportError("fastlstm bench needs tools/kernel_report.py from the source tree "
                          "(install with `pip install -e .` from a checkout)")
    spec = importlib.util.spec_from_file_location("fastlstm_kernel_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(a):
    missing = [m for m in ("torch", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"note: {', '.join(missing)} not installed; peers skipped (pip install '.[bench]')", file=sys.stderr)
    argv = ["--threads", a.bench_threads]
    if a.quick:
        argv.append("--quick")
    if a.workloads:
        argv += ["--workloads", a.workloads]
    return _report_module().main(argv)
