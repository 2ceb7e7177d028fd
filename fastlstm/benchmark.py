"""Benchmark logic behind `fastlstm bench` (and tools/kernel_report.py): workloads, peers, verification, timing.

Every fastlstm backend and every peer is first checked against a float64 run of the NumPy reference on the same
inputs and weights; a backend that fails is reported and not timed (fast and wrong is a bug). Then each one is
timed: median of repeated calls after a warm-up, threads pinned (threadpoolctl for BLAS/OpenMP,
fastlstm.set_num_threads, torch.set_num_threads, onnxruntime intra_op threads).

Workloads (design.md, "Measuring"):
    kernel  latency_b1_t100_h128, batch_b64_t100_h256, batch_b256_t50_h512, train_b32_t200_h128 and the GRU
            ones: the kernels called directly (peers: torch nn.LSTM / nn.GRU, one onnxruntime LSTM / GRU node).
            A custom kernel workload is named CELL[_train]_bB_tT_iI_hH, e.g. lstm_b2_t8_i16_h16.
    model   stream_step_b1_h128 / _h512: one `session.step` of Sequential([Input((None, H)), LSTM(H)]) streamed
            with batch 1 (peers: onnxruntime LSTM node with T=1 fed its own states back, torch nn.LSTM);
            train_imdb_b32_t200: Embedding(20000,128) + LSTM(128) + Dense(1, sigmoid), BCE + Adam, one step on
            32 real IMDB reviews (fastlstm/data/imdb_bench_batch.npz); _uniform: the same on uniform random ids,
            where no token repeats for the per-token input projection to exploit (peer: torch with the same
            weights, autograd, torch.optim.Adam);
            predict_imdb_b64: predict on 64 real reviews of length 200 (peers: the model exported to ONNX
            in onnxruntime, torch under inference_mode).

FLOPs: 2*B*T*G*(I+H) per recurrent forward (G = 4H for LSTM, 3H for GRU), 3x that for forward+backward;
"%peak" is the fraction of a 2048x2048 float32 NumPy matmul (its fastest call) with the same thread count.

Verification: per output array a, float64 reference r:
    rel = ||a - r|| / ||r|| <= NORM_TOL  and  max |a - r| / (ELEM_ATOL * max|r| + ELEM_RTOL * |r|) <= 1
The reported error is the largest rel over the arrays; the score (<= 1 passes) the larger of the two ratios.
"""
import os
import re
import statistics
import tempfile
import time
from collections import OrderedDict

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from ._kernels import get_backend, kernel_kw
from ._kernels.args import copy_args, gru_args, gru_backward_args, lstm_args, lstm_backward_args

NORM_TOL = 1e-4          # relative Frobenius error of float32 results against the float64 reference
ELEM_RTOL, ELEM_ATOL = 1e-2, 1e-3   # loose per-element check; atol is relative to the array's largest value

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
MODEL_WORKLOADS = ("stream_step_b1_h128", "stream_step_b1_h512", "train_imdb_b32_t200", "train_imdb_b32_t200_uniform",
                   "predict_imdb_b64")
QUICK_SKIP = ("batch_b256_t50_h512", "train_imdb_b32_t200_uniform")
FWD_OUT = {"lstm": ("y_out", "hT_out", "cT_out"), "gru": ("y_out", "hT_out")}
BWD_OUT = {"lstm": ("dx_out", "dw_x_out", "dw_h_out", "db_out", "dh0_out", "dc0_out"),
           "gru": ("dx_out", "dw_x_out", "dw_h_out", "db_x_out", "db_h_out", "dh0_out")}
_CUSTOM = re.compile(r"^(lstm|gru)(_train)?_b(\d+)_t(\d+)_i(\d+)_h(\d+)$")


def kernel_spec(name):
    """(cell, B, T, I, H, training) of a named or custom kernel workload (KeyError when neither)."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    m = _CUSTOM.match(name)
    if m is None:
        raise KeyError(name)
    return (m.group(1), *(int(m.group(k)) for k in range(3, 7)), m.group(2) is not None)


def resolve_workloads(spec, quick=False):
    """Workload names from a comma list of names and groups ("kernel", "model", "all"). Raises ValueError
    on an unknown name."""
    groups = {"kernel": [n for n in WORKLOADS if not (quick and n in QUICK_SKIP)],
              "model": [n for n in MODEL_WORKLOADS if not (quick and n in QUICK_SKIP)]}
    groups["all"] = groups["kernel"] + groups["model"]
    names = []
    for item in (spec or "all").split(","):
        item = item.strip()
        if not item:
            continue
        if item in groups:
            names += groups[item]
        elif item in MODEL_WORKLOADS:
            names.append(item)
        else:
            try:
                kernel_spec(item)
            except KeyError:
                raise ValueError(f"unknown workload {item!r}; known: {', '.join(list(WORKLOADS) + list(MODEL_WORKLOADS))}"
                                 f", groups kernel/model/all, or a custom CELL[_train]_bB_tT_iI_hH") from None
            names.append(item)
    return list(OrderedDict.fromkeys(names))


def flops(cell, B, T, I, H, training):
    """2*B*T*G*(I+H) for a forward pass; a forward+backward pass counts 3x."""
    G = (4 if cell == "lstm" else 3) * H
    return 2.0 * B * T * G * (I + H) * (3 if training else 1)


# ------------------------------------------------------------------------------------------------ verification

def verify_detail(outputs, ref, norm_tol=NORM_TOL):
    """Compare float32 results with a (float64) reference, array by array.

    Parameters
    ----------
    outputs, ref : dict name -> array (same shapes); ref's keys are the ones checked.

    Returns
    -------
    dict ok (bool), error (largest relative norm error), score (<= 1 passes), arrays {name: relative error}
    """
    worst, err, arrays = 0.0, 0.0, {}
    for n, r in ref.items():
        r = np.asarray(r, np.float64)
        a = np.asarray(outputs[n], np.float64)
        if a.shape != r.shape or np.isnan(a).any() != np.isnan(r).any():
            arrays[n], worst, err = float("inf"), float("inf"), float("inf")
            continue
        d = np.nan_to_num(a - r, nan=0.0)
        rn, dn = float(np.linalg.norm(np.nan_to_num(r))), float(np.linalg.norm(d))
        rel = dn / rn if rn > 0 else (0.0 if dn == 0 else float("inf"))
        scale = float(np.nanmax(np.abs(r))) if r.size else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            elem = np.abs(d) / (ELEM_ATOL * scale + ELEM_RTOL * np.abs(np.nan_to_num(r)))
        elem_worst = float(np.nanmax(np.where(d == 0, 0.0, elem))) if d.size else 0.0
        arrays[n] = rel
        err = max(err, rel)
        worst = max(worst, rel / norm_tol, elem_worst)
    return {"ok": bool(worst <= 1.0), "error": err, "score": worst, "arrays": arrays}


def verify(outputs, ref):
    """(ok, score): verify_detail's verdict and score (<= 1 passes)."""
    d = verify_detail(outputs, ref)
    return d["ok"], d["score"]


def verdict(name, d):
    """'name ok (err 3.1e-07)' for the report's verify lines."""
    if d is None:
        return f"{name} not checked"
    if "exception" in d:
        return f"{name} FAIL (raised {d['exception'][:120]})"
    tail = "" if d["ok"] else f", {d['score']:.3g}x tol"
    return f"{name} {'ok' if d['ok'] else 'FAIL'} (err {d['error']:.2g}{tail})"


# ------------------------------------------------------------------------------------------------ kernel workloads

def make_args(cell, B, T, I, H, training, dtype=np.float32, seed=0):
    """Forward arguments (training outputs when `training`), with small weights like a trained net."""
    make = lstm_args if cell == "lstm" else gru_args
    return make(T, B, I, H, dtype, np.random.default_rng(seed), training=training, scale=0.1)


def backward_args(cell, fwd, **given):
    return (lstm_backward_args if cell == "lstm" else gru_backward_args)(fwd, np.random.default_rng(1), **given)


class KernelRun:
    """One backend on one workload: preallocated arguments, `run()` = forward (+ backward when training)."""

    def __init__(self, backend, cell, args, training, threads=1, given=None):
        """given: the backward's output gradients (dy, dhT, dcT) instead of backward_args' draws."""
        self.k = get_backend(backend)
        self.cell, self.training = cell, training
        self.fwd = copy_args(args)
        self._forward = getattr(self.k, f"{cell}_forward")
        self._backward = getattr(self.k, f"{cell}_backward")
        self._fvals = list(self.fwd.values())
        # weights fixed for the run: the kernels keep their packed copies across calls (kernel_kw), as a loaded
        # model does (onnxruntime likewise packs its weights once per session); `threads` for the kernel call
        self._fkw = kernel_kw(self.k, {})
        if "threads" in self._fkw:
            self._fkw["threads"] = threads
        self.bwd = None
        if training:
            self._forward(*self._fvals, **self._fkw)
            self.bwd = backward_args(cell, self.fwd, **(given or {}))   # shares the forward's output arrays
            self._bvals = list(self.bwd.values())

    def run(self):
        self._forward(*self._fvals, **self._fkw)
        if self.training:
            self._backward(*self._bvals)

    def check_run(self):
        """One forward (training: one backward, accumulators from zero) whose outputs are then verified."""
        if self.training:
            for n in BWD_OUT[self.cell]:
                self.bwd[n][...] = 0
            self._backward(*self._bvals)
        else:
            self.run()
        return self.outputs()

    def outputs(self):
        out = {n: self.fwd[n] for n in FWD_OUT[self.cell]}
        if self.training:
            out.update({n: self.bwd[n] for n in BWD_OUT[self.cell]})
        return out


# argument names by how a batch-row split cuts them (the rest, weights and options, are shared)
_ROWS_AXIS1 = {"x", "z_ws", "hz_ws", "y_out", "mask", "gates_out", "cs_out", "dy", "dx_out"}  # (T, B, ...), (T, B)
_ROWS_AXIS0 = {"h0", "c0", "hT_out", "cT_out", "dhT", "dcT", "dh0_out", "dc0_out"}      # (B, H)
_ROWS_SUMMED = {"dw_x_out", "dw_h_out", "db_out", "db_x_out", "db_h_out", "dp_out"}       # sums over the rows


def _rows(args, r0, r1):
    """The arguments of batch rows r0:r1 (weights and options shared)."""
    sl = OrderedDict()
    for name, v in args.items():
        if name in _ROWS_AXIS1 and isinstance(v, np.ndarray) and v.size:
            v = np.ascontiguousarray(v[:, r0:r1])
        elif name in _ROWS_AXIS0:
            v = np.ascontiguousarray(v[r0:r1])
        sl[name] = v
    return sl


class RowSplitRun:
    """A workload on `threads` threads the way fastlstm runs one: model.predict splits the batch rows into one
    slice per thread (model.PREDICT_MIN_ROWS_PER_THREAD rows at least), and so does a training step
    (layers.recurrent.TRAIN_MIN_ROWS_PER_THREAD; forward and backward per slice, the weight gradients summed), each
    slice a single-threaded kernel call (the kernels release the GIL; BLAS stays at 1 thread); a batch too small
    to split is one kernel call on `threads` threads (the batch-1 LSTM steps share each step's units). Outputs
    are gathered for verification."""

    def __init__(self, backend, cell, args, threads, training=False):
        from concurrent.futures import ThreadPoolExecutor

        from .layers.recurrent import TRAIN_MIN_ROWS_PER_THREAD
        from .model import PREDICT_MIN_ROWS_PER_THREAD
        B = args["x"].shape[1]
        k = max(1, min(threads, B // (TRAIN_MIN_ROWS_PER_THREAD if training else PREDICT_MIN_ROWS_PER_THREAD)))
        self.cell, self.training = cell, training
        # training: the whole batch's output gradients (the draws KernelRun makes for it), sliced per part
        grads = backward_args(cell, copy_args(args)) if training else {}
        given = {n: grads[n] for n in ("dy", "dhT", "dcT") if n in grads}
        self.parts = []
        for i in range(k):
            r0, r1 = B * i // k, B * (i + 1) // k
            self.parts.append(KernelRun(backend, cell, _rows(args, r0, r1), training, threads if k == 1 else 1,
                                        given=_rows(given, r0, r1) if training else None))
        self.pool = ThreadPoolExecutor(max_workers=k) if k > 1 else None

    def run(self):
        if self.pool is None:
            self.parts[0].run()
        else:
            list(self.pool.map(KernelRun.run, self.parts))

    def check_run(self):
        if self.training:
            for p in self.parts:
                for n in BWD_OUT[self.cell]:
                    p.bwd[n][...] = 0
        self.run()
        return self.outputs()

    def outputs(self):
        outs = [p.outputs() for p in self.parts]
        return {n: (sum(o[n] for o in outs) if n in _ROWS_SUMMED
                    else np.concatenate([o[n] for o in outs], axis=1 if n in _ROWS_AXIS1 else 0))
                for n in outs[0]}


def _as64(args):
    return OrderedDict((k, v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v)
                       for k, v in args.items())


def reference_outputs(cell, args, training, dtype=np.float64):
    """Outputs of the NumPy reference on the workload's (float32) inputs computed in `dtype`; training: the
    backward's too, for the same output gradients as KernelRun draws."""
    k = get_backend("reference")
    fwd = _as64(copy_args(args)) if dtype == np.float64 else copy_args(args)
    getattr(k, f"{cell}_forward")(*fwd.values())
    out = {n: fwd[n] for n in FWD_OUT[cell]}
    if training:
        # the float32 output gradients KernelRun uses, cast (not redrawn in float64)
        probe = backward_args(cell, copy_args(args))
        given = {n: probe[n].astype(fwd["x"].dtype) for n in ("dy", "dhT", "dcT") if n in probe}
        bwd = backward_args(cell, fwd, **given)
        getattr(k, f"{cell}_backward")(*bwd.values())
        out.update({n: bwd[n] for n in BWD_OUT[cell]})
    return out


# ------------------------------------------------------------------------------------------------ peers

def _torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


def torch_peer(cell, args, training):
    """(run, outputs) running torch nn.LSTM / nn.GRU on the same weights and input; outputs() gives the
    forward's outputs dict, or the gradients for a training workload. None when torch does not import."""
    torch = _torch()
    if torch is None:
        return None
    x, w_x, w_h, h0 = (torch.from_numpy(args[n].copy()) for n in ("x", "w_x", "w_h", "h0"))
    T, B, I = x.shape
    H = w_h.shape[0]
    if cell == "lstm":
        # torch gate order i, f, g, o = canonical; weight_ih (4H, I) = w_x^T; one bias is enough
        net = torch.nn.LSTM(I, H)
        wi, wh, bi, bh = w_x.T, w_h.T, torch.from_numpy(args["b"]), torch.zeros(4 * H)
        h0g, c0g = h0[None].clone(), torch.from_numpy(args["c0"].copy())[None]
    else:
        # torch gate order r, z, n (canonical z, r, n); reset_after semantics = torch's
        net = torch.nn.GRU(I, H)
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
        wi, wh = w_x.T[perm], w_h.T[perm]
        bi, bh = torch.from_numpy(args["b_x"][perm]), torch.from_numpy(args["b_h"][perm])
        h0g, c0g = h0[None].clone(), None
    with torch.no_grad():
        net.weight_ih_l0.copy_(wi)
        net.weight_hh_l0.copy_(wh)
        net.bias_ih_l0.copy_(bi)
        net.bias_hh_l0.copy_(bh)
    state = (h0g, c0g) if cell == "lstm" else h0g
    if not training:
        def run():
            with torch.inference_mode():
                return net(x, state)

        def outputs():
            y, st = run()
            out = {"y_out": y.numpy(), "hT_out": (st[0] if cell == "lstm" else st)[0].numpy()}
            if cell == "lstm":
                out["cT_out"] = st[1][0].numpy()
            return out
        return run, outputs

    # training: the same output gradients as KernelRun (backward_args' draws), gradients w.r.t. x, weights, states
    probe = backward_args(cell, copy_args(args))
    xg = x.clone().requires_grad_(True)
    leaves = [h0g.requires_grad_(True)] + ([c0g.requires_grad_(True)] if cell == "lstm" else [])
    dy = torch.from_numpy(probe["dy"])
    d_final = [torch.from_numpy(probe["dhT"])[None]] + ([torch.from_numpy(probe["dcT"])[None]] if cell == "lstm" else [])

    def run():
        for t in [xg, *leaves, *net.parameters()]:
            t.grad = None
        y, st = net(xg, state)
        finals = list(st) if cell == "lstm" else [st]
        torch.autograd.backward([y, *finals], [dy, *d_final])
        return y

    def outputs():
        run()
        g = lambda t: t.grad.numpy()  # noqa: E731
        out = {"dx_out": g(xg), "dh0_out": g(leaves[0])[0]}
        if cell == "lstm":
            out.update(dw_x_out=g(net.weight_ih_l0).T, dw_h_out=g(net.weight_hh_l0).T, db_out=g(net.bias_ih_l0),
                       dc0_out=g(leaves[1])[0])
        else:
            inv = np.argsort(np.r_[H:2 * H, 0:H, 2 * H:3 * H])
            out.update(dw_x_out=g(net.weight_ih_l0)[inv].T, dw_h_out=g(net.weight_hh_l0)[inv].T,
                       db_x_out=g(net.bias_ih_l0)[inv], db_h_out=g(net.bias_hh_l0)[inv])
        return out
    return run, outputs


def onnx_rnn_model(cell, w_x, w_h, biases, T, B, initial=None, reset_after=True):
    """A one-node ONNX LSTM / GRU model (serialized) over canonical weights.

    Parameters
    ----------
    w_x (I, G), w_h (H, G), biases: (b,) for LSTM, (b_x, b_h) for GRU; gates canonical (LSTM i, f, g, o; GRU z, r, n).
    initial : None (initial_h / initial_c are graph inputs, fed per run) or the arrays (B, H) baked in.
    Outputs Y (T, 1, B, H), Y_h, [Y_c] (1, B, H).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    I, H = w_x.shape[0], w_h.shape[0]
    if cell == "lstm":
        # ONNX gate order i, o, f, c; canonical i, f, g, o
        perm = np.r_[0:H, 3 * H:4 * H, H:2 * H, 2 * H:3 * H]
        bias = np.concatenate([biases[0][perm], np.zeros(4 * H, np.float32)])
        n_states, outs, attrs = 2, ["Y", "Y_h", "Y_c"], {}
    else:
        # ONNX gate order z, r, h = canonical; linear_before_reset=1 is reset_after
        perm = np.arange(3 * H)
        bias = np.concatenate([biases[0], biases[1]])
        n_states, outs, attrs = 1, ["Y", "Y_h"], {"linear_before_reset": int(reset_after)}
    state_names = ["initial_h", "initial_c"][:n_states]
    inits = {"W": w_x.T[perm][None], "R": w_h.T[perm][None], "B": bias[None]}
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    if initial is None:
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, B, H]) for s in state_names]
    else:
        inits.update({s: a[None] for s, a in zip(state_names, initial)})
    node = helper.make_node(cell.upper(), ["X", "W", "R", "B", ""] + state_names, outs, hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], cell, inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in zip(outs, [[T, 1, B, H], [1, B, H],
                                                                                       [1, B, H]])],
        [numpy_helper.from_array(np.ascontiguousarray(a, np.float32), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_session(model_bytes, threads):
    """An onnxruntime CPU session with `threads` intra-op threads, run sequentially."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _have_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        return True
    except ImportError:
        return False


def ort_peer(cell, args):
    """(run, outputs) running one onnxruntime LSTM / GRU node on the same weights and input; None when onnx
    or onnxruntime does not import. Threads are fixed when the session is made: set `ort_peer.threads` first."""
    if not _have_ort():
        return None
    x = args["x"]
    T, B, _ = x.shape
    biases = (args["b"],) if cell == "lstm" else (args["b_x"], args["b_h"])
    initial = (args["h0"], args["c0"]) if cell == "lstm" else (args["h0"],)
    sess = ort_session(onnx_rnn_model(cell, args["w_x"], args["w_h"], biases, T, B, initial=initial),
                       getattr(ort_peer, "threads", 1))
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


ort_peer.threads = 1


# ------------------------------------------------------------------------------------------------ model workloads

VOCAB, EMBED, UNITS = 20000, 128, 128
B_TRAIN, T_IMDB, B_PREDICT = 32, 200, 64
STREAM_CHECK_STEPS = 50


def imdb_model(seed=0):
    """Embedding(20000, 128) + LSTM(128) + Dense(1, sigmoid), built, with seeded Glorot weights."""
    import fastlstm
    from fastlstm import layers as L
    fastlstm.set_random_seed(seed)
    m = fastlstm.Sequential([L.Embedding(VOCAB, EMBED), L.LSTM(UNITS), L.Dense(1, activation="sigmoid")])
    m.build((None, None))
    return m


def imdb_batch(rng, B=B_TRAIN, T=T_IMDB):
    """Uniform random token ids (B, T) int32 in [1, VOCAB) and 0/1 labels (B, 1) float32: every position a fresh
    draw (86% distinct ids at B=32), the hardest case for Embedding -> LSTM training (no token repeats)."""
    return rng.integers(1, VOCAB, size=(B, T)).astype(np.int32), rng.integers(0, 2, size=(B, 1)).astype(np.float32)


def imdb_review_batch(B=B_TRAIN):
    """The first B (<= 64) real IMDB training reviews as the IMDB model sees them (fastlstm/data/
    imdb_bench_batch.npz, written by tools/make_bench_batch.py: top-20000-word vocabulary, pre-padded and
    pre-truncated to 200): ids (B, 200) int32, labels (B, 1) float32. 26% distinct ids in the first 32."""
    import os
    with np.load(os.path.join(os.path.dirname(__file__), "data", "imdb_bench_batch.npz")) as f:
        ids, labels = f["ids"], f["labels"]
    if B > len(ids):
        raise ValueError(f"imdb_review_batch: at most {len(ids)} reviews, asked for {B}")
    return ids[:B].astype(np.int32), labels[:B, None].astype(np.float32)


def stream_model(H, seed=0, return_sequences=False):
    """Sequential([Input((None, H)), LSTM(H)]) with seeded weights."""
    import fastlstm
    from fastlstm import layers as L
    fastlstm.set_random_seed(seed)
    return fastlstm.Sequential([fastlstm.Input((None, H)), L.LSTM(H, return_sequences=return_sequences)])


def float64_twin(model, make):
    """A copy of `model` (made by `make()`, same architecture) whose weights are float64, so it computes in float64."""
    twin = make()
    for lyr, src in zip(twin.layers, model.layers):
        if getattr(src, "_weights", None):
            lyr._weights = [np.asarray(w, np.float64).copy() for w in src._weights]
            lyr._weights_changed()
    return twin


class _Backend:
    """Context: fastlstm backend `name` and `threads` for the block (restored after)."""

    def __init__(self, name, threads=None):
        self.name, self.threads = name, threads

    def __enter__(self):
        from fastlstm import backend, config
        self.saved = (backend._state.copy(), config.NUM_THREADS)
        backend.set_backend(self.name)
        if self.threads:
            backend.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc):
        from fastlstm import backend, config
        backend._state.update(self.saved[0])
        config.NUM_THREADS = self.saved[1]
        backend._apply_threads(self.saved[1])


def _lstm_canonical(lstm_layer):
    """(w_x (I, 4H), w_h (H, 4H), b (4H,)) float32 of a fastlstm LSTM layer (Keras layout = canonical)."""
    k, r, b = lstm_layer.get_weights()
    return k.astype(np.float32), r.astype(np.float32), b.astype(np.float32)


def _torch_lstm(torch, w_x, w_h, b, batch_first=True):
    """torch nn.LSTM carrying canonical weights (torch gate order i, f, g, o = canonical)."""
    net = torch.nn.LSTM(w_x.shape[0], w_h.shape[0], batch_first=batch_first)
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_x.T)))
        net.weight_hh_l0.copy_(torch.from_numpy(np.ascontiguousarray(w_h.T)))
        net.bias_ih_l0.copy_(torch.from_numpy(b))
        net.bias_hh_l0.zero_()
    return net


def _torch_imdb(torch, model):
    """The IMDB model in torch with the same weights; forward returns the logit (B, 1)."""
    emb_w = model.layers[0].get_weights()[0]
    w_x, w_h, b = _lstm_canonical(model.layers[1])
    dw, db = model.layers[2].get_weights()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, EMBED)
            self.lstm = _torch_lstm(torch, w_x, w_h, b)
            self.out = torch.nn.Linear(UNITS, 1)
            with torch.no_grad():
                self.emb.weight.copy_(torch.from_numpy(emb_w.astype(np.float32)))
                self.out.weight.copy_(torch.from_numpy(np.ascontiguousarray(dw.T, np.float32)))
                self.out.bias.copy_(torch.from_numpy(db.astype(np.float32)))

        def forward(self, x):
            _, (h, _) = self.lstm(self.emb(x))
            return self.out(h[-1])

        def keras_grads(self):
            """Gradients in the fastlstm model's weight order and layout (torch's two LSTM biases each get the
            gradient of Keras's one)."""
            g = lambda p: p.grad.numpy()  # noqa: E731
            return [g(self.emb.weight), g(self.lstm.weight_ih_l0).T, g(self.lstm.weight_hh_l0).T,
                    g(self.lstm.bias_ih_l0), g(self.out.weight).T, g(self.out.bias)]
    return Net()


def model_grads(m, xs, ys):
    """Loss gradients of compiled model m at its current weights, in leaf order (copies)."""
    tr = m._trainer
    tr._ensure_grads()
    values, ctxs = tr.forward(xs, training=True)
    _, _, d = tr._losses(values, ctxs, ys)
    tr._zero_grads()
    tr.backward(ctxs, d)
    for leaf, _ in tr.leaves:
        leaf._weights_changed()
    return {f"grad{k}": g.copy() for k, g in enumerate(g for leaf, _ in tr.leaves for g in leaf.grads)}


class ModelWorkload:
    """A model-level workload. prepare() builds the float64 reference once; fastlstm(backend, threads) gives
    (run, verification) with the backend and threads already set (the caller times run under _Backend);
    peers(threads) gives {name: (run, verification or None)}."""

    name = description = ""
    gflop = 0.0

    def prepare(self):
        raise NotImplementedError

    def fastlstm(self, backend):
        raise NotImplementedError

    def peers(self, threads):
        return {}


class StreamStep(ModelWorkload):
    def __init__(self, H):
        self.H = H
        self.name = f"stream_step_b1_h{H}"
        self.description = f"one session.step of LSTM({H}), batch 1, state kept"
        self.gflop = flops("lstm", 1, 1, H, H, False) / 1e9

    def prepare(self):
        H = self.H
        self.model = stream_model(H)
        self.xs = np.random.default_rng(0).normal(size=(1, STREAM_CHECK_STEPS, H)).astype(np.float32)
        seq64 = float64_twin(self.model, lambda: stream_model(H, return_sequences=True))
        with _Backend("reference"):
            self.ref = {"h": seq64.predict(self.xs.astype(np.float64))[0]}      # h after each step (T, H)
        self.x1 = np.ascontiguousarray(self.xs[:, :1])

    def fastlstm(self, backend):
        session = self.model.stream(batch_size=1)
        got = np.stack([session.step(np.ascontiguousarray(self.xs[:, t:t + 1]))[0]
                        for t in range(STREAM_CHECK_STEPS)])
        x1 = self.x1
        return (lambda: session.step(x1)), verify_detail({"h": got}, self.ref)

    def peers(self, threads):
        out = {}
        w_x, w_h, b = _lstm_canonical(self.model.layers[-1])
        H = self.H
        if _have_ort():
            sess = ort_session(onnx_rnn_model("lstm", w_x, w_h, (b,), 1, 1), threads)
            zero = np.zeros((1, 1, H), np.float32)
            state = {"initial_h": zero, "initial_c": zero}
            names = ["Y_h", "Y_c"]

            def ort_step(x):
                h, c = sess.run(names, {"X": x, **state})
                state["initial_h"], state["initial_c"] = h, c
                return h

            hs = np.stack([ort_step(np.ascontiguousarray(self.xs[0, t:t + 1, None]))[0, 0]
                           for t in range(STREAM_CHECK_STEPS)])
            x_tm = np.ascontiguousarray(self.x1.reshape(1, 1, H))
            out["onnxruntime"] = ((lambda: ort_step(x_tm)), verify_detail({"h": hs}, self.ref))
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(threads)
            net = _torch_lstm(torch, w_x, w_h, b)
            tstate = {}

            def torch_step(x):
                with torch.inference_mode():
                    y, tstate["s"] = net(x, tstate.get("s"))
                return y

            xt = torch.from_numpy(self.xs)
            hs = np.stack([torch_step(xt[:, t:t + 1])[0, 0].numpy() for t in range(STREAM_CHECK_STEPS)])
            x1 = torch.from_numpy(self.x1)
            out["torch"] = ((lambda: torch_step(x1)), verify_detail({"h": hs}, self.ref))
        return out


class TrainIMDB(ModelWorkload):
    name = "train_imdb_b32_t200"
    description = f"Embedding({VOCAB},{EMBED}) + LSTM({UNITS}) + Dense(1, sigmoid), B={B_TRAIN} T={T_IMDB}, " \
                  f"one training step (BCE, Adam) on 32 real reviews"
    gflop = flops("lstm", B_TRAIN, T_IMDB, EMBED, UNITS, True) / 1e9

    def batch(self):
        return imdb_review_batch(B_TRAIN)

    def prepare(self):
        from fastlstm.training.trainer import _normalize_targets
        self.x, self.y = self.batch()
        m64 = float64_twin(imdb_model(), imdb_model)
        m64.compile("adam", "binary_crossentropy")
        m64._trainer.setup()
        self._targets = _normalize_targets
        with _Backend("reference"):
            self.ref = model_grads(m64, m64._normalize_inputs(self.x), self._targets(m64, self.y, B_TRAIN))

    def fastlstm(self, backend):
        m = imdb_model()
        m.compile("adam", "binary_crossentropy")
        tr = m._trainer
        tr.setup()
        xs, ys = m._normalize_inputs(self.x), self._targets(m, self.y, B_TRAIN)
        check = verify_detail(model_grads(m, xs, ys), self.ref)     # gradients at the initial weights
        rng = np.random.default_rng(1)
        return (lambda: tr.train_step(xs, ys, rng)), check

    def peers(self, threads):
        torch = _torch()
        if torch is None:
            return {}
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        net = _torch_imdb(torch, imdb_model())
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        xt, yt = torch.from_numpy(self.x.astype(np.int64)), torch.from_numpy(self.y)
        opt.zero_grad()
        loss_fn(net(xt), yt).backward()
        check = verify_detail({f"grad{k}": g for k, g in enumerate(net.keras_grads())}, self.ref)

        def step():
            opt.zero_grad()
            loss_fn(net(xt), yt).backward()
            opt.step()
        return {"torch": (step, check)}


class TrainIMDBUniform(TrainIMDB):
    name = "train_imdb_b32_t200_uniform"
    description = TrainIMDB.description.replace("32 real reviews", "uniform random ids (no repeats to exploit)")

    def batch(self):
        return imdb_batch(np.random.default_rng(0))


class PredictIMDB(ModelWorkload):
    name = "predict_imdb_b64"
    description = f"predict, Embedding({VOCAB},{EMBED}) + LSTM({UNITS}) + Dense(1, sigmoid), B={B_PREDICT} T={T_IMDB}" \
                  f", 64 real reviews"
    gflop = flops("lstm", B_PREDICT, T_IMDB, EMBED, UNITS, False) / 1e9

    def prepare(self):
        self.x, _ = imdb_review_batch(B_PREDICT)
        self.model = imdb_model()
        with _Backend("reference"):
            self.ref = {"p": float64_twin(self.model, imdb_model).predict(self.x)}

    def fastlstm(self, backend):
        m, x = self.model, self.x
        return (lambda: m.predict(x)), verify_detail({"p": m.predict(x)}, self.ref)

    def peers(self, threads):
        out = {}
        if _have_ort():
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "imdb.onnx")
                self.model.export_onnx(path)
                with open(path, "rb") as f:
                    sess = ort_session(f.read(), threads)
            feed = {sess.get_inputs()[0].name: self.x.astype(np.int32)}
            try:
                p = sess.run(None, feed)[0]
            except Exception:      # noqa: BLE001 - graphs that take int64 ids
                feed = {sess.get_inputs()[0].name: self.x.astype(np.int64)}
                p = sess.run(None, feed)[0]
            out["onnxruntime"] = ((lambda: sess.run(None, feed)), verify_detail({"p": p}, self.ref))
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(threads)
            net = _torch_imdb(torch, self.model)
            xt = torch.from_numpy(self.x.astype(np.int64))

            def run():
                with torch.inference_mode():
                    return torch.sigmoid(net(xt))
            out["torch"] = (run, verify_detail({"p": run().numpy()}, self.ref))
        return out


def model_workload(name):
    if name.startswith("stream_step_b1_h"):
        return StreamStep(int(name.rsplit("h", 1)[1]))
    return {"train_imdb_b32_t200": TrainIMDB, "train_imdb_b32_t200_uniform": TrainIMDBUniform,
            "predict_imdb_b64": PredictIMDB}[name]()


# ------------------------------------------------------------------------------------------------ timing, machine

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


def interleaved_times(runners, repeats, min_time=0.0, rounds=5):
    """Median wall time per call of each runner, timed in alternating blocks: `rounds` rounds, each giving every
    runner a block of calls (at least repeats / rounds of them and min_time / rounds seconds). On a shared machine
    whose speed drifts, a slow spell then lands on every runner alike, so the ratios hold where back-to-back
    medians would not. runners: {name: (fn, context factory or None)}; returns {name: seconds}."""
    times = {name: [] for name in runners}
    per_block = max(1, -(-repeats // rounds))
    for _ in range(rounds):
        for name, (fn, ctx) in runners.items():
            with (ctx() if ctx is not None else _NoContext()):
                fn()                                          # warm: caches, pages, the backend switch
                block, start = times[name], time.perf_counter()
                n = 0
                while n < per_block or time.perf_counter() - start < min_time / rounds:
                    t0 = time.perf_counter()
                    fn()
                    block.append(time.perf_counter() - t0)
                    n += 1
                    if n > 2000:
                        break
    return {name: statistics.median(ts) for name, ts in times.items()}


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sgemm_peak(threads, repeats=5):
    """GFLOP/s of a 2048x2048 float32 NumPy matmul with `threads` BLAS threads: the fastest of `repeats` calls
    after a warm-up (a peak, so the best call; on a shared machine the median reads low)."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    b = a.T.copy()
    with threadpool_limits(threads):
        a @ b
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
    return 2 * 2048 ** 3 / best / 1e9


def set_peer_threads(n):
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)
    ort_peer.threads = n


# glibc malloc settings for the bench process (keep_heap_warm): mallopt parameter -> value
HEAP_SETTINGS = {"M_MMAP_THRESHOLD": 256 << 20, "M_TRIM_THRESHOLD": 1 << 30, "M_TOP_PAD": 64 << 20}
_MALLOPT_PARAM = {"M_TRIM_THRESHOLD": -1, "M_TOP_PAD": -2, "M_MMAP_THRESHOLD": -3}


def keep_heap_warm():
    """glibc: serve allocations of up to 256 MiB from the heap and keep up to 1 GiB of freed heap mapped
    (mallopt HEAP_SETTINGS), instead of mapping each large block afresh and handing freed memory back to the OS.
    A runtime that allocates and frees large temporaries on every call then stops paying page faults for them,
    as it would in a long-running process: torch's training step does that (tens of MiB per call, above glibc's
    adaptive mmap threshold), and its train_b32_t200_h128 time drops from about 93 ms to 74 ms (fastlstm's kernels
    work in preallocated arrays: 62-64 ms either way). Process-wide, so every runtime in the bench gets the same
    setting. True when every setting took; False where the C library has no mallopt."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all([bool(mallopt(_MALLOPT_PARAM[name], value)) for name, value in HEAP_SETTINGS.items()])


def blas_line():
    libs = {(i.get("internal_api"), i.get("version"), i.get("architecture")) for i in threadpool_info()
            if i.get("user_api") == "blas"}
    return ", ".join(f"{a} {v} ({arch})" for a, v, arch in sorted(libs, key=str))


def cpu_line():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
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


def versions():
    """Versions of fastlstm, Python and the libraries the benchmark uses (None when not installed)."""
    import importlib.metadata
    import platform
    import fastlstm
    out = {"fastlstm": fastlstm.__version__, "python": platform.python_version()}
    for dist in ("numpy", "scipy", "numba", "torch", "onnxruntime", "onnx", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out
