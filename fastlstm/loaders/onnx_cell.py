"""Recognizing Keras LSTM / GRU cells inside ONNX `Loop` bodies (tf2onnx, Keras 3 model.export) and running the
whole loop on the fused kernels instead of evaluating the body once per step.

Recognition is by numeric verification, not by matching node patterns:
 1. Structure gives candidates only: the step input x_t = Gather(X_seq, counter) of an outer tensor by a carried
    counter; the input kernel K = the constant operand of MatMul(x_t, K); the state h = a carried value feeding
    MatMul(h, R); then every constant of shape (H, G) is a candidate R, every float constant of G values (or each
    row of a (2, G) constant) a candidate bias, G = 4H (LSTM, Keras gate order i, f, c, o) or 3H (GRU z, r, h).
    A second Gather(M_seq, counter) is a Keras mask (masked LSTM/GRU).
 2. The body runs ONCE at load on random probe values (random h, c and previous output; a mask with a masked row).
 3. A candidate cell (type, R, biases, reset_after, activations from the Keras list, roles of the carried values:
    counter, h, c, previous output, pass-through) is accepted only if its one-step NumPy formula reproduces every
    body output (carried and scan) on the probe. Anything unexplained keeps the generic path.
At run time the loop becomes: x = X_seq[t0 : t0 + n], one kernel call with the mask, and the outputs the roles
say (final counter t0 + n, final h/c, the state sequence, or Keras's output sequence: the state where a valid step
has been seen, else the previous-output start value). The number of steps n comes from the trip count and the
loop condition, whose sub-graph (counters and constants only) is evaluated by bisection, assuming it stays true
and then false (tf2onnx: time < T and iter < max_iterations).
"""
import numpy as np

from .._kernels import acts, kernel_kw
from ..backend import get_backend

_FLOAT = ("float32", "float64")
_N_PROBE = 24            # probe rows: enough that every gate sees pre-activations of both signs (see _probe_rows)
_PROBE_SCALES = (0.3, 1.0, 3.0)
_TOL = dict(rtol=2e-4, atol=2e-5)
_REC_ORDER = ["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "tanh", "relu", "linear", "softsign", "softplus",
              "elu", "selu", "silu", "exponential", "relu6", "hard_silu", "leaky_relu", "gelu"]
_ACT_ORDER = ["tanh", "relu", "linear", "sigmoid", "hard_sigmoid", "hard_sigmoid_keras2", "softsign", "softplus",
              "elu", "selu", "silu", "exponential", "relu6", "hard_silu", "leaky_relu", "gelu"]


def _spec(name):
    return acts.KERAS_ACTIVATIONS[name]


def _act(spec, z):
    return acts.activate(spec[0], spec[1], spec[2], z)


class _Fail(Exception):
    pass


def try_fuse(view, runner):
    """Set runner.fused when the Loop body is a recognized LSTM/GRU cell (else leave the generic path)."""
    try:
        fused = _recognize(view, runner)
    except _Fail:
        return None
    except Exception:  # noqa: BLE001 - recognition is an optimization: any surprise keeps the generic path
        return None
    runner.fused = fused
    return fused


def _steps_by_output(body):
    return {o: s for s in body.steps for o in s.outputs if o}


def _recognize(view, runner):
    body = runner.body
    names = runner.in_names
    n_carried = runner.n_carried
    carried_in = names[2:]
    consts = body.consts
    runtime_carried = [n for n in carried_in if n not in consts]
    # 1. the step input: Gather(outer X, counter) with counter a carried input (or the iteration number)
    gathers = [s for s in body.steps if s.node.op_type == "Gather" and s.inputs[0] in body.outer
               and s.inputs[1] in names and _attr(s, "axis", 0) == 0]
    if not gathers:
        raise _Fail
    counter = gathers[0].inputs[1]
    gathers = [g for g in gathers if g.inputs[1] == counter]
    matmuls = [s for s in body.steps if s.node.op_type == "MatMul"]
    x_gather = k_mat = None
    for g in gathers:
        for mm in matmuls:
            if mm.inputs[0] == g.outputs[0] and _const2d(body, mm.inputs[1]) is not None:
                x_gather, k_mat = g, _const2d(body, mm.inputs[1])
    if x_gather is None:
        raise _Fail
    mask_gathers = [g for g in gathers if g is not x_gather]
    if len(mask_gathers) > 1:
        raise _Fail
    mask_src = mask_gathers[0].inputs[0] if mask_gathers else None
    # the steps that compute the cell's outputs (not the loop condition, which may read other values)
    passthrough = {n for k, n in enumerate(carried_in) if runner.out_names[1 + k] == n}
    targets = [runner.out_names[1 + k] for k, n in enumerate(carried_in) if n not in passthrough]
    targets += runner.out_names[1 + n_carried:]
    cell_steps = _closure(body, targets)
    allowed_outer = {x_gather.inputs[0]} | ({mask_src} if mask_src else set())
    if {i for s in cell_steps for i in s.inputs if i in body.outer} - allowed_outer:
        raise _Fail
    I, G = k_mat.shape
    # the state h: a carried input multiplied by a constant (H, *) matrix
    h_name, H = None, None
    for mm in matmuls:
        if mm.inputs[0] in runtime_carried and _const2d(body, mm.inputs[1]) is not None:
            h_name, H = mm.inputs[0], _const2d(body, mm.inputs[1]).shape[0]
            break
    if h_name is None or G not in (3 * H, 4 * H):
        raise _Fail
    kind = "LSTM" if G == 4 * H else "GRU"
    r_cands = _unique([v for v in consts.values() if _is_float(v) and v.shape == (H, G)])
    k_cands = _unique([k_mat] + [v for v in consts.values() if _is_float(v) and v.shape == (I, G)])
    b_cands = []
    for v in consts.values():
        if not _is_float(v):
            continue
        if v.size == G and v.ndim <= 2:
            b_cands.append(v.reshape(G))
        elif v.shape == (2, G):
            b_cands += [v[0], v[1]]
    b_cands = _unique(b_cands) + [np.zeros(G, k_mat.dtype)]

    # 2. probe the body once
    rng = np.random.default_rng(12345)
    dt = k_mat.dtype
    x_probe = _probe_rows(rng, (_N_PROBE, I))[None].astype(dt)
    mask_probe = (np.arange(_N_PROBE) % 3 != 1)[None, :, None] if mask_src else None
    env = body.env_for({})
    env[names[0]] = np.array(0, np.int64)
    env[names[1]] = np.array(True)
    in_info = {vi.name: vi for vi in body.inputs}
    probe_in = {}
    for nm in runtime_carried:
        vi = in_info[nm]
        if nm == counter:
            probe_in[nm] = np.array(0, _np_elem(vi.elem_type, np.int64))
        elif vi.elem_type in (0, 1, 11):
            probe_in[nm] = _probe_rows(rng, (_N_PROBE, H)).astype(dt)
        elif vi.elem_type == 9:
            probe_in[nm] = np.array(True)
        else:
            probe_in[nm] = np.array(0, _np_elem(vi.elem_type, np.int64))
    env.update(probe_in)
    env[x_gather.inputs[0]] = x_probe
    if mask_src:
        env[mask_src] = mask_probe
    for st in cell_steps:
        res = st.run(*[env[n] if n else None for n in st.inputs])
        for nm, v in zip(st.outputs, res):
            if nm:
                env[nm] = v
    outs = [None] + [env[n] if n in env else body.lookup_const(n) for n in runner.out_names[1:]]
    carried_out = outs[1:1 + n_carried]
    scan_out = outs[1 + n_carried:]

    # 3. candidate cells, checked against the probe
    x0 = x_probe[0]
    h0 = probe_in[h_name]
    m = mask_probe[0, :, 0][:, None] if mask_src else None
    float_carried = [n for n in runtime_carried if n != counter and n != h_name and _is_float(probe_in[n])]
    c_options = float_carried if kind == "LSTM" else [None]
    ops = {st.node.op_type for st in cell_steps}
    for acts_pair in _act_pairs(ops):
        for cell in _cells(kind, k_cands, r_cands, b_cands, H):
            for c_name in c_options:
                c0 = probe_in[c_name] if c_name else None
                h_new, c_new = _step(kind, cell, acts_pair, x0, h0, c0)
                if not (np.all(np.isfinite(h_new))):
                    continue
                roles = _assign_roles(names, runner, carried_in, probe_in, counter, h_name, c_name, h_new, c_new,
                                      m, carried_out, scan_out, consts)
                if roles is not None:
                    return _FusedLoop(view, runner, kind, cell, acts_pair, roles, counter, h_name, c_name,
                                      x_gather.inputs[0], mask_src, H)
    raise _Fail


def _probe_rows(rng, shape):
    """Random probe values, rows at a few scales. Candidate activations agree on part of their domain (elu, relu,
    leaky_relu and linear for x > 0; relu and relu6 below 6), so a probe must push every gate's pre-activation
    to both signs and to large values, or a wrong candidate explains the body (a 3-row probe picked linear for
    elu on a real tf2onnx GRU loop)."""
    scales = np.resize(np.array(_PROBE_SCALES), shape[0])[:, None]
    return rng.normal(0, 1, shape) * scales


def _closure(body, targets):
    """The body steps that the `targets` depend on, in body order."""
    by_out = _steps_by_output(body)
    need, seen, picked = list(targets), set(), set()
    while need:
        n = need.pop()
        if not n or n in seen:
            continue
        seen.add(n)
        st = by_out.get(n)
        if st is not None and id(st) not in picked:
            picked.add(id(st))
            need.extend(st.inputs)
    return [st for st in body.steps if id(st) in picked]


def _attr(step, name, default):
    a = step.node.attrs.get(name)
    return default if a is None else a.value


def _const2d(body, name):
    v = body.lookup_const(name)
    return v if v is not None and _is_float(v) and v.ndim == 2 else None


def _is_float(v):
    return isinstance(v, np.ndarray) and v.dtype.name in _FLOAT


def _unique(arrays):
    out = []
    for a in arrays:
        if not any(a.shape == b.shape and np.array_equal(a, b) for b in out):
            out.append(a)
    return out


def _np_elem(code, default):
    from .onnx_proto import DTYPES
    d = DTYPES.get(code)
    return d.newbyteorder("=") if d is not None else default


# ops whose presence in a body makes an activation possible (as tf2onnx writes it); linear needs none
_SIGNATURE = {
    "sigmoid": {"Sigmoid"}, "tanh": {"Tanh"}, "relu": {"Relu", "Max", "Clip"},
    "hard_sigmoid": {"HardSigmoid", "Clip", "Min", "Max"}, "hard_sigmoid_keras2": {"HardSigmoid", "Clip", "Min", "Max"},
    "softsign": {"Softsign", "Abs"}, "softplus": {"Softplus", "Log", "Exp"}, "elu": {"Elu", "Exp", "Where"},
    "selu": {"Selu", "Exp", "Where"}, "silu": {"Sigmoid"}, "exponential": {"Exp"}, "relu6": {"Clip", "Min"},
    "hard_silu": {"HardSigmoid", "HardSwish", "Clip", "Min"}, "leaky_relu": {"LeakyRelu", "Max", "Where"},
    "gelu": {"Erf", "Tanh"}, "linear": None,
}


def _act_pairs(ops):
    """(recurrent activation, activation) candidates, most likely first, limited to what the body's ops allow."""
    ok = [n for n in _SIGNATURE if _SIGNATURE[n] is None or _SIGNATURE[n] & ops]
    if "sigmoid" in ok and "tanh" in ok:
        yield _spec("sigmoid"), _spec("tanh")
    for rec in _REC_ORDER:
        for act in _ACT_ORDER:
            if rec in ok and act in ok and (rec, act) != ("sigmoid", "tanh"):
                yield _spec(rec), _spec(act)


def _cells(kind, k_cands, r_cands, b_cands, H):
    """Candidate weights: dicts with w_x, w_h and biases in the kernels' layout (Keras layout = kernel layout)."""
    for K in k_cands:
        for R in r_cands:
            if kind == "LSTM":
                for b in b_cands:
                    yield dict(w_x=K, w_h=R, b=b)
            else:
                for bx in b_cands:
                    for bh in b_cands:
                        yield dict(w_x=K, w_h=R, b_x=bx, b_h=bh, reset_after=True)
                    yield dict(w_x=K, w_h=R, b_x=bx, b_h=np.zeros_like(bx), reset_after=False)


def _step(kind, cell, acts_pair, x, h, c):
    """One Keras cell step in NumPy (float64): returns (h_new, c_new | None)."""
    f_spec, g_spec = acts_pair
    x, h = x.astype(np.float64), h.astype(np.float64)
    H = h.shape[1]
    if kind == "LSTM":
        z = x @ cell["w_x"] + h @ cell["w_h"] + cell["b"]
        i, f = _act(f_spec, z[:, :H]), _act(f_spec, z[:, H:2 * H])
        g, o = _act(g_spec, z[:, 2 * H:3 * H]), _act(f_spec, z[:, 3 * H:])
        c_new = f * c + i * g
        return o * _act(g_spec, c_new), c_new
    xz = x @ cell["w_x"] + cell["b_x"]
    if cell["reset_after"]:
        hz = h @ cell["w_h"] + cell["b_h"]
        z = _act(f_spec, xz[:, :H] + hz[:, :H])
        r = _act(f_spec, xz[:, H:2 * H] + hz[:, H:2 * H])
        n = _act(g_spec, xz[:, 2 * H:] + r * hz[:, 2 * H:])
    else:
        hz = h @ cell["w_h"][:, :2 * H]
        z = _act(f_spec, xz[:, :H] + hz[:, :H])
        r = _act(f_spec, xz[:, H:2 * H] + hz[:, H:])
        n = _act(g_spec, xz[:, 2 * H:] + (r * h) @ cell["w_h"][:, 2 * H:])
    return z * h + (1 - z) * n, None


def _close(a, b):
    return a is not None and b is not None and np.shape(a) == np.shape(b) and np.allclose(a, b, **_TOL)


def _assign_roles(names, runner, carried_in, probe_in, counter, h_name, c_name, h_new, c_new, m, carried_out,
                  scan_out, consts):
    """Explain every body output by the candidate step, or return None. Roles: ("counter",), ("h",), ("c",),
    ("out", prev_name) (Keras output: new h where valid, else the carried previous output), ("same", k)."""
    h_state = h_new if m is None else np.where(m, h_new, probe_in[h_name])
    c_state = None if c_name is None else (c_new if m is None else np.where(m, c_new, probe_in[c_name]))
    prev_names = [n for n in probe_in if n not in (counter, h_name, c_name) and _is_float(probe_in[n])]

    def explain(v, own=None):
        if own == counter or (own is None and np.ndim(v) == 0 and np.asarray(v).dtype.kind in "iu"):
            t0 = probe_in.get(counter, np.array(0))
            if np.ndim(v) == 0 and int(np.asarray(v)) == int(t0) + 1:
                return ("counter",)
            return None
        if _close(v, h_state):
            return ("h",)
        if c_state is not None and _close(v, c_state):
            return ("c",)
        for p in prev_names:
            if m is not None and _close(v, np.where(m, h_new, probe_in[p])):
                return ("out", p)
        return None

    roles = []
    for k, (name, v) in enumerate(zip(carried_in, carried_out)):
        if runner.out_names[1 + k] == name:      # loop-invariant (weights, the sequence length, ...)
            roles.append(("same", k))
            continue
        role = explain(v, own=name)
        if role is None:
            return None
        expected = {counter: ("counter",), h_name: ("h",), c_name: ("c",)}.get(name)
        if expected is not None and role != expected:
            return None
        if name in prev_names and role != ("out", name):
            return None
        roles.append(role)
    for v in scan_out:
        role = explain(v)
        if role is None or role[0] == "counter":
            return None
        roles.append(role)
    if c_name is not None and ("c",) not in roles:
        return None
    return roles


class _FusedLoop:
    def __init__(self, view, runner, kind, cell, acts_pair, roles, counter, h_name, c_name, x_name, mask_name, H):
        self.runner, self.kind, self.roles, self.H = runner, kind, roles, H
        names = runner.in_names
        carried_in = names[2:]
        self.idx = {n: k for k, n in enumerate(carried_in)}
        self.counter_is_iter = counter == names[0]
        self.counter, self.h_name, self.c_name = counter, h_name, c_name
        self.implicit = {n: k for k, n in enumerate(runner.implicit_inputs)}
        self.x_name, self.mask_name = x_name, mask_name
        self.codes, self.ab = acts.pack([acts_pair[0], acts_pair[1], acts_pair[1]][:3 if kind == "LSTM" else 2])
        self.cell = cell
        self._params = {}
        variant = "" if kind == "LSTM" else ("reset_after, " if cell["reset_after"] else "reset_before, ")
        self.description = f"{kind} cell ({'masked, ' if mask_name else ''}{variant}H={H}) on the fused kernels"
        self.cond = self._cond_program(runner)

    def _cond_program(self, runner):
        """Steps that compute the body's condition output; they may read only the counters and constants."""
        if not runner.has_cond:
            return None
        body = runner.body
        by_out = _steps_by_output(body)
        need, order, seen = [runner.out_names[0]], [], set()
        carried_in = runner.in_names[2:]
        self.cond_passthrough = [n for k, n in enumerate(carried_in) if runner.out_names[1 + k] == n]
        allowed = {runner.in_names[0], runner.in_names[1], self.counter} | set(self.cond_passthrough) | \
            set(body.outer)
        while need:
            n = need.pop()
            if n in seen or n in body.consts or n in allowed:
                continue
            seen.add(n)
            s = by_out.get(n)
            if s is None:
                raise _Fail
            order.append(s)
            need.extend(i for i in s.inputs if i)
        order.sort(key=lambda s: body.steps.index(s))
        return order

    def _cond_at(self, i, t0, base_env):
        """The body's condition output at iteration i (counter t0 + i)."""
        names = self.runner.in_names
        env = dict(base_env)
        env[names[0]] = np.array(i, np.int64)
        env[names[1]] = np.array(True)
        if not self.counter_is_iter:
            env[self.counter] = np.array(t0 + i, self._counter_dtype)
        for s in self.cond:
            outs = s.run(*[env[n] if n else None for n in s.inputs])
            for nm, v in zip(s.outputs, outs):
                if nm:
                    env[nm] = v
        v = env.get(self.runner.out_names[0])
        if v is None:
            v = self.runner.body.lookup_const(self.runner.out_names[0])
        return bool(np.asarray(v).reshape(-1)[0])

    def params(self, dtype):
        p = self._params.get(dtype)
        if p is None:
            c = self.cell
            p = {k: (np.ascontiguousarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v) for k, v in c.items()}
            if self.kind == "LSTM":
                p["p"] = np.zeros((0, self.H), dtype)
            self._params[dtype] = p
        return p

    def __call__(self, *args):
        r = self.runner
        M, cond = args[0], (args[1] if len(args) > 1 else None)
        carried = list(args[2:r.n_explicit])
        outer = args[r.n_explicit:]
        X = outer[self.implicit[self.x_name]]
        if X.ndim != 3 or X.dtype.name not in _FLOAT or X.shape[2] != self.cell["w_x"].shape[0]:
            return None
        if cond is not None and not bool(np.asarray(cond).reshape(-1)[0]):
            return None
        if self.counter_is_iter:
            t0 = 0
            self._counter_dtype = np.int64
        else:
            tc = np.asarray(carried[self.idx[self.counter]])
            t0, self._counter_dtype = int(tc.reshape(-1)[0]), tc.dtype
        T_avail = X.shape[0] - t0
        n = T_avail if M is None else min(int(np.asarray(M).reshape(-1)[0]), T_avail + 1)
        if self.cond is not None:
            base = r.body.env_for({})
            base.update(zip(r.implicit_inputs, outer))
            for nm in self.cond_passthrough:
                base[nm] = carried[self.idx[nm]]
            self._base_env = base
            n = self._steps_by_condition(n, t0, r)
        if n < 1 or n > T_avail:
            return None            # zero steps or a Gather past the end: the generic path does (or reports) it
        return self._run(X, carried, outer, t0, n)

    def _steps_by_condition(self, n, t0, r):
        """Iterations that run: iteration i+1 runs while the condition after iteration i is true (bisection for
        the first false one, assuming true-then-false)."""
        base = self._base_env
        lo, hi = 0, n - 1          # find the first i in [0, n-1) with cond(i) false; none: n iterations
        if n <= 1 or self._cond_at(n - 2, t0, base):
            return n
        if not self._cond_at(0, t0, base):
            return 1
        while hi - lo > 1:         # cond(lo) true, cond(hi - 1) ... first false in (lo, n-2]
            mid = (lo + hi) // 2
            if self._cond_at(mid, t0, base):
                lo = mid
            else:
                hi = mid
        return hi + 1

    def _run(self, X, carried, outer, t0, n):
        dt = X.dtype
        N = X.shape[1]
        H = self.H
        x = np.ascontiguousarray(X[t0:t0 + n])
        h0 = np.ascontiguousarray(np.broadcast_to(carried[self.idx[self.h_name]], (N, H)), dtype=dt)
        mask = np.zeros((0, 0), np.uint8)
        valid = None
        if self.mask_name is not None:
            ms = outer[self.implicit[self.mask_name]]
            ms = np.asarray(ms[t0:t0 + n])
            if ms.shape != (n, N, 1):            # the layout the probe verified (Keras: (T, N, 1))
                return None
            ms = ms[:, :, 0]
            valid = ms.astype(bool)
            mask = np.ascontiguousarray(valid, dtype=np.uint8)
        p = self.params(dt)
        y = np.empty((n, N, H), dt)
        hT = np.empty((N, H), dt)
        none3 = np.empty((0, 0, 0), dt)
        k = get_backend()
        if self.kind == "LSTM":
            c0 = np.ascontiguousarray(np.broadcast_to(carried[self.idx[self.c_name]], (N, H)), dtype=dt)
            cT = np.empty((N, H), dt)
            k.lstm_forward(x, p["w_x"], p["w_h"], p["b"], p["p"], h0, c0, mask, self.codes, self.ab, 0.0, False,
                           False, np.empty((n, N, 4 * H), dt), y, hT, cT, none3, none3, **kernel_kw(k, p))
        else:
            cT = None
            k.gru_forward(x, p["w_x"], p["w_h"], p["b_x"], p["b_h"], h0, mask, self.codes, self.ab, 0.0,
                          p["reset_after"], False, np.empty((n, N, 3 * H), dt), np.empty((n, N, 3 * H), dt), y, hT,
                          none3, **kernel_kw(k, p))
        seen = None if valid is None else np.logical_or.accumulate(valid, axis=0)[:, :, None]

        def out_seq(prev_name):
            start = np.broadcast_to(carried[self.idx[prev_name]], (N, H)).astype(dt)
            return y if seen is None else np.where(seen, y, start[None])

        r = self.runner
        outs = []
        n_car = r.n_carried
        for k_role, role in enumerate(self.roles):
            kind = role[0]
            scan = k_role >= n_car
            if kind == "counter":
                outs.append(np.array(t0 + n, self._counter_dtype))
            elif kind == "same":
                outs.append(carried[role[1]])
            elif kind == "h":
                outs.append(y if scan else hT)
            elif kind == "c":
                if scan:
                    return None
                outs.append(cT)
            else:
                seq = out_seq(role[1])
                outs.append(seq if scan else seq[-1])
        return tuple(outs)
