"""ONNX LSTM (opsets 1, 7, 14, 22), GRU (1, 3, 7, 14, 22) and RNN nodes on fastlstm's fused kernels.

Weights are converted ONCE at load into the kernels' layout (design.md "one data path"):
    LSTM  W [D, 4H, I] gates i,o,f,c  ->  w_x (I, 4H) gates i,f,g,o     (rows reordered, transposed)
          R [D, 4H, H]                ->  w_h (H, 4H)
          B [D, 8H] = [Wb, Rb]        ->  b = Wb + Rb (4H,), reordered
          P [D, 3H] peepholes i,o,f   ->  p (3, H) rows i, f, o
    GRU   W [D, 3H, I] gates z,r,h    ->  w_x (I, 3H) (same gate order);  B [D, 6H] -> b_x = Wb, b_h = Rb (kept
          apart: with linear_before_reset Rb_h sits inside r * (...), without it outside (r * h) @ Rh)
`sequence_lens` becomes the kernels' (T, N) mask (a masked step keeps the state), then the ONNX rules are applied
to the outputs: Y is 0 past a row's length, Y_h / Y_c are the state at the last valid step, a row of length 0 gives
Y_h = Y_c = 0 (not initial_h; onnxruntime). direction=reverse runs t = len-1 .. 0 and returns Y in the original
time order. layout=1 swaps the batch and time axes of X, Y and the states (onnxruntime's CPU provider refuses it;
the spec defines it).

Activations: `activations` lists f, g, h (LSTM) or f, g (GRU) per direction; `activation_alpha` and
`activation_beta` are consumed in order by the activations that take an alpha / a beta (onnxruntime's rule,
formats.md 0.10). When the lists run out, onnxruntime's defaults apply: LeakyRelu 0.01, HardSigmoid 0.2/0.5,
Elu 1.0, and 0 for everything else (Affine, ThresholdedRelu, ScaledTanh) -- the spec says "as the standalone
ops" (Affine 1.0, ThresholdedRelu 1.0), but onnxruntime, the runtime these files are checked against, uses 0
(verified on onnxruntime 1.32; tests/test_onnx_property.py).
"""
import math
import threading

import numpy as np

from .._kernels import acts, batch_first, kernel_kw
from ..backend import get_backend
from .onnx_ops import op

LSTM_GATE_ORDER = (0, 2, 3, 1)       # kernel block k (i, f, g, o) <- ONNX block (i, o, f, c)
_ACT_BY_LOWER = {k.lower(): k for k in acts.ONNX_ACTIVATIONS}
_DEFAULT_ACTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_ORT_DEFAULTS = {"LeakyRelu": (0.01, 0.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0)}
_NONE3 = {}


def _none3(dtype):
    a = _NONE3.get(dtype)
    if a is None:
        a = _NONE3[dtype] = np.empty((0, 0, 0), dtype)
    return a


def parse_activations(view, kind, D):
    """Per direction: (act_codes int32 (k,), act_ab float64 (k, 2)) from the node's activation attributes."""
    per_dir = len(_DEFAULT_ACTS[kind])
    names = view.attr("activations", None) or []
    if not names:
        names = list(_DEFAULT_ACTS[kind]) * D
    elif len(names) == per_dir and D == 2:
        names = list(names) * 2
    if len(names) != per_dir * D:
        view.fail(f"activations={names} must list {per_dir} functions per direction ({per_dir * D} in all)")
    alphas = [float(a) for a in (view.attr("activation_alpha", None) or [])]
    betas = [float(b) for b in (view.attr("activation_beta", None) or [])]
    ai = bi = 0
    specs = []
    for nm in names:
        key = _ACT_BY_LOWER.get(str(nm).lower())
        if key is None:
            view.fail(f"activation {nm!r} is not supported; supported: {', '.join(acts.ONNX_ACTIVATIONS)}")
        code, _, _, takes_alpha, takes_beta = acts.ONNX_ACTIVATIONS[key]
        alpha, beta = _ORT_DEFAULTS.get(key, (0.0, 0.0))
        if takes_alpha and ai < len(alphas):
            alpha, ai = alphas[ai], ai + 1
        if takes_beta and bi < len(betas):
            beta, bi = betas[bi], bi + 1
        specs.append((code, alpha, beta))
    return [acts.pack(specs[d * per_dir:(d + 1) * per_dir]) for d in range(D)]


def _reorder(m, H, order):
    """Blocks of H rows of m, taken in `order`."""
    return np.concatenate([m[k * H:(k + 1) * H] for k in order], axis=0)


def _reorder_t(m, H, order, dtype):
    """_reorder(m, H, order).T as a C-contiguous `dtype` array, in one pass (load time: the weights of a
    512-unit layer are 8 MB)."""
    out = np.empty((m.shape[1], len(order) * H), dtype)
    for j, k in enumerate(order):
        out[:, j * H:(j + 1) * H] = m[k * H:(k + 1) * H].T
    return out


def convert_lstm(W, R, B, P, H, dtype):
    """ONNX LSTM weights -> per direction dict(w_x (I, 4H), w_h (H, 4H), b (4H,), p (3, H) | (0, H))."""
    out = []
    for d in range(W.shape[0]):
        w_x = _reorder_t(W[d], H, LSTM_GATE_ORDER, dtype)
        w_h = _reorder_t(R[d], H, LSTM_GATE_ORDER, dtype)
        if B is None:
            b = np.zeros(4 * H, dtype)
        else:
            bd = B[d].astype(dtype)
            b = np.ascontiguousarray(_reorder(bd[:4 * H] + bd[4 * H:], H, LSTM_GATE_ORDER))
        if P is None:
            p = np.zeros((0, H), dtype)
        else:
            pd = P[d].astype(dtype)
            p = np.ascontiguousarray(np.stack([pd[:H], pd[2 * H:3 * H], pd[H:2 * H]]))
        out.append(dict(w_x=w_x, w_h=w_h, b=b, p=p))
    return out


def convert_gru(W, R, B, H, dtype):
    """ONNX GRU weights -> per direction dict(w_x (I, 3H), w_h (H, 3H), b_x, b_h (3H,))."""
    out = []
    for d in range(W.shape[0]):
        w_x = np.ascontiguousarray(W[d].T, dtype=dtype)
        w_h = np.ascontiguousarray(R[d].T, dtype=dtype)
        if B is None:
            b_x, b_h = np.zeros(3 * H, dtype), np.zeros(3 * H, dtype)
        else:
            b_x = np.ascontiguousarray(B[d][:3 * H], dtype=dtype)
            b_h = np.ascontiguousarray(B[d][3 * H:], dtype=dtype)
        out.append(dict(w_x=w_x, w_h=w_h, b_x=b_x, b_h=b_h))
    return out


_NO_MASK = np.zeros((0, 0), np.uint8)      # the kernels' "every step valid" (read only by them)
# While OnnxModel.predict runs the graph (begin_run .. end_run, per thread), the RNN outputs Y come from the
# nodes' work arrays too and go back when the run ends: predict hands the caller copies of its outputs (every Y
# reaches an output as a view: Y = y[:, None], then Squeeze / Transpose / Slice), or, when an output is the whole
# of one such array (hand_over), that array itself, taken out of the run's collection; nothing outlives the run.
_RUN = threading.local()


def begin_run():
    """Start collecting the work arrays that this thread's RNN nodes hand out as outputs; returns a token."""
    saved = getattr(_RUN, "pending", None)
    _RUN.pending = []
    return saved


def hand_over(a, outputs):
    """True when output `a` is the whole of a work array collected in this run (a batch-first Y, through views
    that end C-contiguous) that no other output shares: it leaves the collection and goes to the caller as it
    is, without the copy (the node allocates a new one next time)."""
    pending = getattr(_RUN, "pending", None)
    base = a.base
    if pending is None or base is None or not a.flags.c_contiguous or a.nbytes != base.nbytes:
        return False
    if sum(o is not a and (o is base or getattr(o, "base", None) is base) for o in outputs):
        return False
    for k, (_, w) in enumerate(pending):
        if (w.base if w.base is not None else w) is base:
            del pending[k]
            return True
    return False


def end_run(token):
    """Give the arrays collected since begin_run back to their nodes (the run's values must be dead)."""
    pending, _RUN.pending = _RUN.pending, token
    for node, a in pending:
        node._give_back(a)


_SCRATCH_KEEP_BYTES = 1 << 28              # a node keeps work arrays of up to this size ...
_SCRATCH_KEEP = 4                          # ... of this many different sizes, two of each
_KERNEL_DTYPES = {np.dtype(np.float32), np.dtype(np.float64)}
_F32 = np.dtype(np.float32)


def lengths_mask(seq_lens, T, N):
    """sequence_lens [N] -> (lens int64 (N,) | None, kernel mask (T, N) uint8 | (0, 0)). None/all-T: no mask."""
    if seq_lens is None:
        return None, _NO_MASK
    lens = np.asarray(seq_lens).reshape(-1).astype(np.int64)
    if lens.shape[0] != N:
        raise ValueError(f"sequence_lens has {lens.shape[0]} entries for a batch of {N}")
    if lens.size and (lens.min() < 0 or lens.max() > T):
        raise ValueError(f"sequence_lens must be in [0, {T}] (the sequence length), got {lens.tolist()}")
    if np.all(lens == T):
        return None, _NO_MASK
    return lens, (np.arange(T)[:, None] < lens[None, :]).astype(np.uint8)


class _RnnNode:
    """Shared attribute handling of LSTM / GRU / RNN nodes; the subclass runs one direction."""

    kind = ""
    n_gates = 1
    weight_inputs = (1, 2, 3)            # W, R, B (+ P for LSTM)

    def __init__(self, view):
        self.view = view
        self.name = view.name
        direction = view.attr("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            view.fail(f"direction={direction!r}; expected forward, reverse or bidirectional")
        self.D = 2 if direction == "bidirectional" else 1
        self.reverse = direction == "reverse"
        self.layout = view.attr("layout", 0) if view.opset >= 14 else 0
        if self.layout not in (0, 1):
            view.fail(f"layout={self.layout}; expected 0 or 1")
        clip = view.attr("clip", None)
        if clip is not None and not clip > 0:
            view.fail(f"clip={clip} must be > 0")
        self.clip = float(clip) if clip is not None else 0.0
        self.acts = parse_activations(view, self.kind, self.D)
        W, R = view.const(1), view.const(2)
        H = view.attr("hidden_size", None)
        if H is None:
            if R is None:
                view.fail("hidden_size is missing and R is not a constant")
            H = R.shape[-1]
        self.H = int(H)
        if self.H <= 0:
            view.fail(f"hidden_size={H} must be positive")
        consts = [view.const(k) for k in self.weight_inputs]
        self.const_weights = W is not None and R is not None and all(
            c is not None or k >= len(view.inputs) or not view.inputs[k] for k, c in zip(self.weight_inputs, consts))
        self._params = {}
        self._scratch_pool = {}          # (size, dtype char) -> flat work arrays kept between calls (_scratch)
        if self.const_weights:
            self._check_weights(*consts)
            self._weights = consts
            self.params(W.dtype if W.dtype in (np.float32, np.float64) else np.dtype(np.float32))

    def _check_weights(self, W, R, B, P=None):
        D, H, G = self.D, self.H, self.n_gates * self.H
        v = self.view
        if W.ndim != 3 or W.shape[:2] != (D, G):
            v.fail(f"W must have shape [{D}, {G}, input_size], got {list(W.shape)}")
        if R.shape != (D, G, H):
            v.fail(f"R must have shape [{D}, {G}, {H}], got {list(R.shape)}")
        if B is not None and B.shape != (D, 2 * G):
            v.fail(f"B must have shape [{D}, {2 * G}], got {list(B.shape)}")
        if P is not None and P.shape != (D, 3 * H):
            v.fail(f"P must have shape [{D}, {3 * H}], got {list(P.shape)}")
        for a, nm in ((W, "W"), (R, "R"), (B, "B"), (P, "P")):
            if a is not None and a.dtype.kind != "f":
                v.fail(f"{nm} must be a float tensor, got {a.dtype}")

    def params(self, dtype, weights=None):
        p = self._params.get(dtype) if weights is None else None
        if p is None:
            p = self._convert(dtype, *(weights if weights is not None else self._weights))
            if weights is None:
                self._params[dtype] = p
        return p

    def __call__(self, X, W, R, B=None, seq=None, h0=None, c0=None, P=None):
        if X.ndim != 3:
            raise ValueError(f"X must be 3-D, got shape {X.shape}")
        out_dtype = X.dtype
        dt = out_dtype if out_dtype in _KERNEL_DTYPES else _F32
        if self.layout == 1:
            X = np.swapaxes(X, 0, 1)
            h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
            c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
        T, N, I = X.shape
        if self.const_weights:
            prm = self.params(dt)
        else:
            ws = (W, R, B, P)[:len(self.weight_inputs)]
            self._check_weights(*ws)
            prm = self.params(dt, ws)
        if prm[0]["w_x"].shape[0] != I:
            raise ValueError(f"X has input_size {I}, W expects {prm[0]['w_x'].shape[0]}")
        if X.dtype == dt and (X.flags.c_contiguous or batch_first(X) is not None):
            x = X                           # (the transposed view of a batch-first input: the kernels take it)
        else:                               # a time-major copy
            x = self._scratch(X.shape, dt)
            np.copyto(x, X)
        lens, mask = lengths_mask(seq, T, N)
        ys, finals = [], []
        for d in range(self.D):
            states = [self._state(s, d, N, dt) for s in (h0, c0)[:self.n_states]]
            y, fin = self.run_direction(x, prm[d], states, mask, d, dt)
            if lens is not None:
                y[mask == 0] = 0
                empty = lens == 0
                if empty.any():
                    for s in fin:
                        s[empty] = 0
            ys.append(y)
            finals.append(fin)
        if x is not X:
            self._give_back(x)
        Y = ys[0][:, None] if self.D == 1 else np.stack(ys, axis=1)                    # (T, D, N, H)
        outs = [Y] + [finals[0][k][None] if self.D == 1 else np.stack([f[k] for f in finals])
                      for k in range(self.n_states)]                                    # (D, N, H)
        if self.layout == 1:
            outs = [outs[0].transpose(2, 0, 1, 3)] + [s.transpose(1, 0, 2) for s in outs[1:]]
        if out_dtype != dt:
            outs = [o.astype(out_dtype) for o in outs]
        return tuple(outs)

    def _scratch(self, shape, dt):
        """A C-contiguous work array of `shape` (contents undefined), one that an earlier call gave back
        (_give_back) when one of that size is free.

        Why: a fresh multi-MB array per call costs page faults and zeroing (a transposed copy of the batch-256
        input: 7 ms into new memory, 6 ms into reused), and at batch 1 the churn of a few hundred KB at the top
        of the heap made glibc trim and re-fault it on some calls: 160 page faults, +60% per call, measured in
        a process that also ran onnxruntime. dict / list operations are atomic, so concurrent predict threads
        never share an array."""
        n = math.prod(shape)
        free = self._scratch_pool.get((n, dt.char))
        buf = None
        if free:
            try:
                buf = free.pop()
            except IndexError:              # another thread took it
                pass
        if buf is None:
            buf = np.empty(n, dt)
        return buf.reshape(shape)

    def _output(self, shape, dt):
        """An array for an output of this call: a work array when a predict run collects them (begin_run)."""
        pending = getattr(_RUN, "pending", None)
        if pending is None:
            return np.empty(shape, dt)
        a = self._scratch(shape, dt)
        pending.append((self, a))
        return a

    def _give_back(self, *arrays):
        pool = self._scratch_pool
        for a in arrays:
            flat = a.base if a.base is not None else a
            if flat.nbytes > _SCRATCH_KEEP_BYTES:
                continue
            key = (flat.size, flat.dtype.char)
            free = pool.get(key)
            if free is None:
                if len(pool) >= _SCRATCH_KEEP:
                    pool.clear()            # the shapes keep changing: keep the latest ones only
                free = pool.setdefault(key, [])
            if len(free) < 2:
                free.append(flat)

    def _state(self, s, d, N, dt):
        if s is None:
            return np.zeros((N, self.H), dt)
        if s.shape != (self.D, N, self.H):
            raise ValueError(f"initial state must have shape [{self.D}, {N}, {self.H}], got {list(s.shape)}")
        return np.ascontiguousarray(s[d], dtype=dt)


class LstmNode(_RnnNode):
    kind = "LSTM"
    n_gates = 4
    n_states = 2
    weight_inputs = (1, 2, 3, 7)

    def __init__(self, view):
        super().__init__(view)
        self.input_forget = bool(view.attr("input_forget", 0))

    def _convert(self, dtype, W, R, B=None, P=None):
        return convert_lstm(W, R, B, P, self.H, dtype)

    def run_direction(self, x, p, states, mask, d, dt):
        T, N, _ = x.shape
        H = self.H
        xb = batch_first(x)                 # a batch-first input runs as it is (batch_major), Y then a view
        lead = (T, N) if xb is None else (N, T)
        y = self._output(lead + (H,), dt)
        hT, cT = np.empty((N, H), dt), np.empty((N, H), dt)
        codes, ab = self.acts[d]
        z = self._scratch(lead + (4 * H,), dt)
        kern = get_backend()
        kern.lstm_forward(x if xb is None else xb, p["w_x"], p["w_h"], p["b"], p["p"], states[0], states[1], mask,
                          codes, ab, self.clip, self.input_forget, self.reverse or d == 1, z, y, hT, cT, _none3(dt),
                          _none3(dt), batch_major=xb is not None, **kernel_kw(kern, p))
        self._give_back(z)
        return (y if xb is None else y.transpose(1, 0, 2)), [hT, cT]


class GruNode(_RnnNode):
    kind = "GRU"
    n_gates = 3
    n_states = 1

    def __init__(self, view):
        super().__init__(view)
        self.linear_before_reset = bool(view.attr("linear_before_reset", 0)) if view.opset >= 3 else False

    def _convert(self, dtype, W, R, B=None):
        return convert_gru(W, R, B, self.H, dtype)

    def run_direction(self, x, p, states, mask, d, dt):
        T, N, _ = x.shape
        H = self.H
        xb = batch_first(x)                 # as LstmNode.run_direction
        lead = (T, N) if xb is None else (N, T)
        y = self._output(lead + (H,), dt)
        hT = np.empty((N, H), dt)
        codes, ab = self.acts[d]
        zx, zh = self._scratch(lead + (3 * H,), dt), self._scratch((T, N, 3 * H), dt)
        kern = get_backend()
        kern.gru_forward(x if xb is None else xb, p["w_x"], p["w_h"], p["b_x"], p["b_h"], states[0], mask, codes, ab,
                         self.clip, self.linear_before_reset, self.reverse or d == 1, zx, zh, y, hT, _none3(dt),
                         batch_major=xb is not None, **kernel_kw(kern, p))
        self._give_back(zx, zh)
        return (y if xb is None else y.transpose(1, 0, 2)), [hT]


class RnnNode(_RnnNode):
    """The plain ONNX RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb). A NumPy loop (no fused kernel)."""
    kind = "RNN"
    n_gates = 1
    n_states = 1

    def _convert(self, dtype, W, R, B=None):
        H = self.H
        out = []
        for d in range(W.shape[0]):
            b = np.zeros(H, dtype) if B is None else (B[d][:H] + B[d][H:]).astype(dtype)
            out.append(dict(w_x=np.ascontiguousarray(W[d].T, dtype=dtype),
                            w_h=np.ascontiguousarray(R[d].T, dtype=dtype), b=b))
        return out

    def run_direction(self, x, p, states, mask, d, dt):
        T = x.shape[0]
        codes, ab = self.acts[d]
        z = x @ p["w_x"] + p["b"]
        h = states[0]
        y = np.empty(z.shape, dt)
        steps = range(T - 1, -1, -1) if (self.reverse or d == 1) else range(T)
        for t in steps:
            pre = z[t] + h @ p["w_h"]
            if self.clip > 0:
                pre = np.clip(pre, -self.clip, self.clip)
            h_new = acts.activate(int(codes[0]), float(ab[0, 0]), float(ab[0, 1]), pre).astype(dt)
            h = np.where(mask[t].astype(bool)[:, None], h_new, h) if mask.shape[0] else h_new
            y[t] = h
        return y, [np.array(h)]


@op("LSTM")
def _lstm(view):
    return LstmNode(view)


@op("GRU")
def _gru(view):
    return GruNode(view)


@op("RNN")
def _rnn(view):
    return RnnNode(view)
