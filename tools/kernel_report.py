"""Verify every kernel backend against the NumPy reference, then time it next to torch and onnxruntime.

    python tools/kernel_report.py                  # all workloads, threads 1 and 2
    python tools/kernel_report.py --quick          # fewer repeats, no batch_b256 workload (under a minute)
    python tools/kernel_report.py --threads 1 --workloads latency_b1_t100_h128,train_b32_t200_h128

First every backend (reference, numba when its module imports, cython when built) runs each workload once
and its outputs (and, for training workloads, every gradient) are compared with the reference; a backend
that fails is reported and not timed. Then each one is timed (median of repeats after a warm-up, BLAS and
OpenMP threads pinned with threadpoolctl) beside torch nn.LSTM / nn.GRU (inference_mode; autograd for
training) and a single onnxruntime LSTM / GRU node built with onnx.helper, when those import. Peers get
the same weights, converted from the canonical layout, and are checked against the reference too.
GFLOP/s counts 2*B*T*G*(I+H) per forward (G = 4H for LSTM, 3H for GRU) and 3x that for forward+backward;
"%peak" is the fraction of a 2048x2048 float32 NumPy matmul measured here with the same thread count.

The workload table and the peer builders are importable (bench/test_bench_kernels.py uses them).
"""
import argparse
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastlstm._kernels import get_backend, gru_ref, lstm_ref  # noqa: E402
from fastlstm._kernels.args import (copy_args, gru_args, gru_backward_args, lstm_args,  # noqa: E402
                                    lstm_backward_args)

TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}

# name -> (cell, B, T, I, H, training)
WORKLOADS = OrderedDict([
    ("latency_b1_t100_h128", ("lstm", 1, 100, 128, 128, False)),
    ("batch_b64_t100_h256", ("lstm", 64, 100, 256, 256, False)),
    ("batch_b256_t50_h512", ("lstm", 256, 50, 512, 512, False)),
    ("train_b32_t200_h128", ("lstm", 32, 200, 128, 128, True)),
    ("gru_latency_b1_t100_h128", ("gru", 1, 100, 128, 128, False)),
    ("gru_batch_b64_t100_h256", ("gru", 64, 100, 256, 256, False)),
    ("gru_train_b32_t200_h128", ("gru", 32, 200, 128, 128, True)),
])
QUICK_SKIP = ("batch_b256_t50_h512",)
FWD_OUT = {"lstm": ("y_out", "hT_out", "cT_out"), "gru": ("y_out", "hT_out")}
BWD_OUT = {"lstm": ("dx_out", "dw_x_out", "dw_h_out", "db_out", "dh0_out", "dc0_out"),
           "gru": ("dx_out", "dw_x_out", "dw_h_out", "db_x_out", "db_h_out", "dh0_out")}


def flops(cell, B, T, I, H, training):
    """2*B*T*G*(I+H) for a forward pass; a forward+backward pass counts 3x."""
    G = (4 if cell == "lstm" else 3) * H
    return 2.0 * B * T * G * (I + H) * (3 if training else 1)


def make_args(cell, B, T, I, H, training, dtype=np.float32, seed=0):
    """Forward arguments (training outputs when `training`), with small weights like a trained net."""
    make = lstm_args if cell == "lstm" else gru_args
    return make(T, B, I, H, dtype, np.random.default_rng(seed), training=training, scale=0.1)


def backward_args(cell, fwd):
    return (lstm_backward_args if cell == "lstm" else gru_backward_args)(fwd, np.random.default_rng(1))


class KernelRun:
    """One backend on one workload: preallocated arguments, `run()` = forward (+ backward when training)."""

    def __init__(self, backend, cell, args, training):
        self.k = get_backend(backend)
        self.cell, self.training = cell, training
        self.fwd = copy_args(args)
        self._forward = getattr(self.k, f"{cell}_forward")
        self._backward = getattr(self.k, f"{cell}_backward")
        self._fvals = list(self.fwd.values())
        self.bwd = None
        if training:
            self._forward(*self._fvals)
            self.bwd = backward_args(cell, self.fwd)   # shares the forward's output arrays
            self._bvals = list(self.bwd.values())

    def run(self):
        self._forward(*self._fvals)
        if self.training:
            self._backward(*self._bvals)

    def outputs(self):
        out = {n: self.fwd[n] for n in FWD_OUT[self.cell]}
        if self.training:
            out.update({n: self.bwd[n] for n in BWD_OUT[self.cell]})
        return out


def reference_outputs(cell, args, training):
    """Outputs of the NumPy reference (backward accumulators start from zero)."""
    r = KernelRun("reference", cell, args, training)
    if not training:
        r.run()
    else:
        for n in BWD_OUT[cell]:
            r.bwd[n][...] = 0
        r._backward(*r._bvals)
    return r.outputs()


def verify(outputs, ref, dtype=np.float32):
    """(ok, worst) where worst = max over arrays of max |a - r| / (atol + rtol |r|) (<= 1 passes)."""
    tol = TOL[dtype]
    worst = 0.0
    for n, r in ref.items():
        a = outputs[n]
        with np.errstate(invalid="ignore"):
            err = np.abs(a.astype(np.float64) - r) / (tol["atol"] + tol["rtol"] * np.abs(r))
        worst = max(worst, float(np.nanmax(err)) if err.size else 0.0)
        if np.isnan(a).any() != np.isnan(r).any():
            worst = np.inf
    return worst <= 1.0, worst


# ------------------------------------------------------------------------------------------------ peers

def torch_peer(cell, args, training):
    """A callable running torch nn.LSTM / nn.GRU on the same weights and input, and its outputs dict.
    Returns None when torch does not import."""
    try:
        import torch
    except ImportError:
        return None
    x, w_x, w_h, h0 = (torch.from_numpy(args[n].copy()) for n in ("x", "w_x", "w_h", "h0"))
    T, B, I = x.shape
    H = w_h.shape[0]
    if cell == "lstm":
        # torch gate order i, f, g, o = canonical; weight_ih (4H, I) = w_x^T; one bias is enough
        net = torch.nn.LSTM(I, H)
        wi, wh, bi, bh = w_x.T, w_h.T, torch.from_numpy(args["b"]), torch.zeros(4 * H)
        state = (h0[None], torch.from_numpy(args["c0"].copy())[None])
    else:
        # torch gate order r, z, n (canonical z, r, n); reset_after semantics = torch's
        net = torch.nn.GRU(I, H)
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
        wi, wh = w_x.T[perm], w_h.T[perm]
        bi, bh = torch.from_numpy(args["b_x"][perm]), torch.from_numpy(args["b_h"][perm])
        state = h0[None]
    with torch.no_grad():
        net.weight_ih_l0.copy_(wi)
        net.weight_hh_l0.copy_(wh)
        net.bias_ih_l0.copy_(bi)
        net.bias_hh_l0.copy_(bh)
    if not training:
        def run():
            with torch.inference_mode():
                return net(x, state)
    else:
        xg = x.clone().requires_grad_(True)
        rng = np.random.default_rng(1)
        dy = torch.from_numpy(rng.standard_normal((T, B, H)).astype(np.float32))
        dhT = torch.from_numpy(rng.standard_normal((1, B, H)).astype(np.float32))

        def run():
            for p in net.parameters():
                p.grad = None
            y, hT = net(xg, state)
            hT = hT[0] if cell == "lstm" else hT
            torch.autograd.backward([y, hT], [dy, dhT])
            return y
    def outputs():
        if training:
            return None
        y, st = run()
        out = {"y_out": y.numpy(), "hT_out": (st[0] if cell == "lstm" else st)[0].numpy()}
        if cell == "lstm":
            out["cT_out"] = st[1][0].numpy()
        return out
    return run, outputs


def ort_peer(cell, args):
    """A callable running one onnxruntime LSTM / GRU node on the same weights, and its outputs dict.
    Returns None when onnx or onnxruntime does not import. Threads are fixed when the session is made,
    so this is called once per thread count (set `ort_peer.threads` first)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    x, w_x, w_h, h0 = args["x"], args["w_x"], args["w_h"], args["h0"]
    T, B, I = x.shape
    H = w_h.shape[0]
    if cell == "lstm":
        # ONNX gate order i, o, f, c; canonical i, f, g, o. W = w_x^T with the row blocks reordered
        perm = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]
        W, R = w_x.T[perm][None], w_h.T[perm][None]
        Bias = np.concatenate([args["b"][perm], np.zeros(4 * H, np.float32)])[None]
        inits = [W, R, Bias, h0[None], args["c0"][None]]
        names = ["W", "R", "B", "", "initial_h", "initial_c"]
        outs = ["Y", "Y_h", "Y_c"]
        attrs = {}
    else:
        # ONNX gate order z, r, h = canonical; linear_before_reset=1 is reset_after
        W, R = w_x.T[None], w_h.T[None]
        Bias = np.concatenate([args["b_x"], args["b_h"]])[None]
        inits = [W, R, Bias, h0[None]]
        names = ["W", "R", "B", "", "initial_h"]
        outs = ["Y", "Y_h"]
        attrs = {"linear_before_reset": 1}
    node = helper.make_node(cell.upper(), ["X"] + names, outs, hidden_size=H, **attrs)
    init_tensors = [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n)
                    for a, n in zip(inits, [n for n in names if n])]
    graph = helper.make_graph(
        [node], cell, [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s)
         for o, s in zip(outs, [[T, 1, B, H], [1, B, H], [1, B, H]])], init_tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = getattr(ort_peer, "threads", 1)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"X": x}

    def run():
        return sess.run(None, feed)

    def outputs():
        res = run()
        out = {"y_out": res[0][:, 0], "hT_out": res[1][0]}
        if cell == "lstm":
            out["cT_out"] = res[2][0]
        return out
    return run, outputs


# ------------------------------------------------------------------------------------------------ timing

def median_time(fn, repeats, min_time=0.0):
    """Median wall time of fn() over `repeats` calls (after one warm-up call); keeps calling until
    `min_time` seconds were spent, so that quick kernels get enough samples."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) > 2000:
            break
    return statistics.median(times)


def sgemm_peak(threads, repeats=5):
    """GFLOP/s of a 2048x2048 float32 NumPy matmul with `threads` BLAS threads."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    b = a.T.copy()
    with threadpool_limits(threads):
        t = median_time(lambda: a @ b, repeats)
    return 2 * 2048 ** 3 / t / 1e9


def set_peer_threads(n):
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass
    ort_peer.threads = n


def blas_line():
    libs = {(i.get("internal_api"), i.get("version"), i.get("architecture")) for i in threadpool_info()
            if i.get("user_api") == "blas"}
    return ", ".join(f"{a} {v} ({arch})" for a, v, arch in sorted(libs, key=str))


def cpu_line():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def available_backends():
    names = []
    for name in ("reference", "numba", "cython"):
        try:
            get_backend(name)
            names.append(name)
        except ImportError:
            pass
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--quick", action="store_true", help="3 repeats, skip the largest workload")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 7)")
    p.add_argument("--workloads", default=None, help="comma-separated names (default: all)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: all available)")
    p.add_argument("--no-reference-timing", action="store_true", help="verify with the reference, time the rest")
    a = p.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    repeats = a.repeats or (3 if a.quick else 7)
    names = a.workloads.split(",") if a.workloads else [n for n in WORKLOADS if not (a.quick and n in QUICK_SKIP)]
    backends = a.backends.split(",") if a.backends else available_backends()
    print(f"CPU: {cpu_line()};  BLAS: {blas_line()};  backends: {', '.join(backends)};  repeats: {repeats}")
    peaks = {n: sgemm_peak(n) for n in threads}
    print("SGEMM 2048^3 peak: " + ", ".join(f"{n} thread{'s' * (n > 1)} {g:.1f} GFLOP/s" for n, g in peaks.items()))

    rows = []
    failures = 0
    for name in names:
        cell, B, T, I, H, training = WORKLOADS[name]
        args = make_args(cell, B, T, I, H, training)
        ref = reference_outputs(cell, args, training)
        kernels = {}
        checks = []
        for be in backends:
            run = KernelRun(be, cell, args, training)
            if training:
                for n in BWD_OUT[cell]:
                    run.bwd[n][...] = 0
                run._backward(*run._bvals)
            else:
                run.run()
            ok, worst = verify(run.outputs(), ref)
            checks.append(f"{be} {'ok' if ok else 'FAIL'} ({worst:.2g})")
            failures += not ok
            if ok and not (be == "reference" and a.no_reference_timing):
                kernels[be] = run
        fl = flops(cell, B, T, I, H, training)
        print(f"\n== {name}  ({cell.upper()} B={B} T={T} I={I} H={H}, {'forward+backward' if training else 'forward'}, "
              f"{fl / 1e9:.3f} GFLOP)   verify (max err / tol): {', '.join(checks)}")
        for n in threads:
            set_peer_threads(n)
            peers = {}
            tp = torch_peer(cell, args, training)
            if tp is not None:
                peers["torch"] = tp
            if not training:
                op = ort_peer(cell, args)
                if op is not None:
                    peers["onnxruntime"] = op
            timings = OrderedDict()
            with threadpool_limits(n):
                peer_notes = []
                for pn, (prun, pout) in peers.items():
                    po = pout()
                    if po is not None:
                        ok, worst = verify(po, {k: ref[k] for k in po})
                        peer_notes.append(f"{pn} {'ok' if ok else 'differs'} ({worst:.2g})")
                min_time = 0.3 if a.quick else 1.0
                for be, run in kernels.items():
                    timings[be] = median_time(run.run, repeats if be != "reference" else min(repeats, 3), min_time)
                for pn, (prun, _) in peers.items():
                    timings[pn] = median_time(prun, repeats, min_time)
            if peer_notes and n == threads[0]:
                print("   peers vs reference: " + ", ".join(peer_notes))
            print(f"   threads={n:<2d} {'backend':12s} {'time ms':>10s} {'GFLOP/s':>8s} {'%peak':>6s} "
                  f"{'vs torch':>9s} {'vs ort':>7s}")
            for be, t in timings.items():
                vs_t = f"{t / timings['torch']:.2f}x" if "torch" in timings else "-"
                vs_o = f"{t / timings['onnxruntime']:.2f}x" if "onnxruntime" in timings else "-"
                gf = fl / t / 1e9
                print(f"   {'':10s} {be:12s} {t * 1e3:10.3f} {gf:8.1f} {100 * gf / peaks[n]:5.0f}% {vs_t:>9s} {vs_o:>7s}")
                rows.append(dict(workload=name, threads=n, backend=be, ms=t * 1e3, gflops=gf))
    if failures:
        print(f"\n{failures} backend/workload verification failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
