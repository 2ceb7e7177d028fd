"""Every backend against the NumPy reference, forward and backward, over a grid of shapes and options."""
import numpy as np
import pytest

from fastlstm._kernels import acts, get_backend, gru_ref, lstm_ref
from fastlstm._kernels.args import copy_args, gru_args, gru_backward_args, lstm_args, lstm_backward_args

from conftest import BACKENDS, TOL

FAST = [b for b in BACKENDS if b != "reference"]
# (T, B, I, H): T=1, B=1, H=1, odd sizes, I != H, and one size past the cache-blocking thresholds
SHAPES = [(1, 1, 1, 1), (5, 1, 3, 4), (7, 3, 5, 1), (6, 4, 9, 7), (3, 17, 2, 33), (12, 2, 40, 24), (4, 9, 64, 65),
          (4, 12, 5, 7),   # B=12: a multiple of the 6-row tile of the packed float32 products
          (9, 1, 20, 66),  # B=1, T >= 8: one-row products over 64-column panels, the last one partial
          (30, 13, 6, 9),  # T*B >= 320 (LSTM: the input product step by step on packed tiles; GRU: through BLAS)
          (40, 8, 6, 9),   # T*B >= 320, B <= 8: the input GEMM through BLAS after the bias fill
          (7, 400, 6, 5)]  # B >= 320: the per-step products through BLAS gemm (no packed weights)
DTYPES = [np.float32, np.float64]
LSTM_OPTS = [
    dict(),
    dict(mask="random"),
    dict(mask="post", reverse=True),
    dict(reverse=True),
    dict(peepholes=True, clip=0.7, input_forget=True),
    dict(peepholes=True, mask="random", reverse=True),
    dict(act_specs=[(acts.HARD_SIGMOID, 1 / 6, 0.5), (acts.RELU, 0, 0), (acts.LINEAR, 0, 0)]),
    dict(act_specs=[(acts.HARD_SIGMOID, 0.2, 0.5), (acts.SOFTSIGN, 0, 0), (acts.ELU, 1.0, 0)]),
    dict(act_specs=[(acts.LEAKY_RELU, 0.1, 0), (acts.SCALED_TANH, 0.7, 1.3), (acts.SOFTPLUS, 0, 0)], scale=0.3),
    dict(act_specs=[(acts.THRESHOLDED_RELU, 0.2, 0), (acts.AFFINE, 0.8, 0.1), (acts.SELU, 0, 0)]),
    dict(act_specs=[(acts.SILU, 0, 0), (acts.GELU, 0, 0), (acts.EXPONENTIAL, 0, 0)], scale=0.3),
    dict(act_specs=[(acts.RELU6, 0, 0), (acts.HARD_SILU, 0, 0), (acts.TANH, 0, 0)]),
]
GRU_OPTS = [
    dict(),
    dict(reset_after=False),
    dict(mask="random"),
    dict(mask="post", reverse=True, reset_after=False),
    dict(reverse=True, clip=0.6),
    dict(act_specs=[(acts.HARD_SIGMOID, 1 / 6, 0.5), (acts.RELU, 0, 0)]),
    dict(reset_after=False, act_specs=[(acts.HARD_SIGMOID, 0.2, 0.5), (acts.SOFTSIGN, 0, 0)]),
    dict(act_specs=[(acts.ELU, 1.0, 0), (acts.GELU, 0, 0)], scale=0.3),
]
LSTM_FWD_OUT = ("y_out", "hT_out", "cT_out", "gates_out", "cs_out")
LSTM_BWD_OUT = ("dx_out", "dw_x_out", "dw_h_out", "db_out", "dp_out", "dh0_out", "dc0_out")
GRU_FWD_OUT = ("y_out", "hT_out", "gates_out")
GRU_BWD_OUT = ("dx_out", "dw_x_out", "dw_h_out", "db_x_out", "db_h_out", "dh0_out")


def _grid(opts):
    cases = []
    for k, o in enumerate(opts):
        for s, shape in enumerate(SHAPES):
            if (k + s) % 2 == 0 or not o:      # every shape for the defaults, half the shapes per option set
                cases.append((shape, o))
    return cases


# float32 with piecewise-linear or unbounded activations: a different (equally valid) summation order can put a
# value on the other side of a kink (relu6, hard_sigmoid) and the difference then grows over the steps, so these
# get a looser float32 tolerance. float64 runs the same cases at the strict tolerance and proves the math.
# Backward through a kink is discontinuous (relu6' jumps 1 -> 0), so float32 gradients of kinked activation sets
# are compared in float64 only.
TOL_F32_NONSMOOTH = dict(rtol=3e-3, atol=1e-3)
KINKED = {acts.RELU, acts.RELU6, acts.HARD_SIGMOID, acts.HARD_SILU, acts.THRESHOLDED_RELU, acts.LEAKY_RELU}


def _kinked_f32(dtype, opts):
    return dtype == np.float32 and any(c in KINKED for c, _, _ in opts.get("act_specs", []))


def _compare(ref, out, names, dtype, backend, opts=None):
    other_acts = bool(opts and "act_specs" in opts)
    for n in names:
        tol = TOL[dtype]
        scale = float(np.abs(ref[n]).max()) if ref[n].size else 0.0
        if other_acts and dtype == np.float32:   # sums over T*B rows: the absolute error scales with the largest entry
            tol = dict(rtol=TOL_F32_NONSMOOTH["rtol"], atol=max(TOL_F32_NONSMOOTH["atol"], 5e-5 * scale))
        elif other_acts:    # float64, unbounded activations (relu, linear): large terms cancel in the gradient sums
            tol = dict(rtol=tol["rtol"], atol=max(tol["atol"], 1e-11 * scale))
        np.testing.assert_allclose(out[n], ref[n], **tol, err_msg=f"{backend}: {n}")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape, opts", _grid(LSTM_OPTS), ids=str)
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_lstm_matches_reference(backend, dtype, shape, opts, training):
    k = get_backend(backend)
    args = lstm_args(*shape, dtype, np.random.default_rng(7), training=training, **opts)
    ref, out = copy_args(args), copy_args(args)
    lstm_ref.lstm_forward(*ref.values())
    k.lstm_forward(*out.values())
    _compare(ref, out, LSTM_FWD_OUT, dtype, backend, opts)
    if not training or _kinked_f32(dtype, opts):
        return
    bref, bout = lstm_backward_args(ref), lstm_backward_args(out)
    # accumulating outputs must add to what is there
    for b in (bref, bout):
        for n in ("dw_x_out", "dw_h_out", "db_out", "dp_out"):
            b[n] += 0.5
    lstm_ref.lstm_backward(*bref.values())
    k.lstm_backward(*bout.values())
    _compare(bref, bout, LSTM_BWD_OUT, dtype, backend, opts)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape, opts", _grid(GRU_OPTS), ids=str)
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_gru_matches_reference(backend, dtype, shape, opts, training):
    k = get_backend(backend)
    args = gru_args(*shape, dtype, np.random.default_rng(7), training=training, **opts)
    ref, out = copy_args(args), copy_args(args)
    gru_ref.gru_forward(*ref.values())
    k.gru_forward(*out.values())
    _compare(ref, out, GRU_FWD_OUT, dtype, backend, opts)
    if not training or _kinked_f32(dtype, opts):
        return
    bref, bout = gru_backward_args(ref), gru_backward_args(out)
    for b in (bref, bout):
        for n in ("dw_x_out", "dw_h_out", "db_x_out", "db_h_out"):
            b[n] += 0.5
    gru_ref.gru_backward(*bref.values())
    k.gru_backward(*bout.values())
    _compare(bref, bout, GRU_BWD_OUT, dtype, backend, opts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_nan_input_propagates(backend):
    args = lstm_args(5, 3, 4, 6, np.float32)
    args["x"][2, 1, 0] = np.nan
    get_backend(backend).lstm_forward(*args.values())
    y = args["y_out"]
    assert np.isnan(y[2:, 1]).all() and np.isfinite(y[:, [0, 2]]).all() and np.isfinite(y[:2, 1]).all()


def test_rectifiers_saturate_minus_inf_and_keep_nan():
    """relu(-inf) = 0 (TF, onnxruntime: an overflowed pre-activation saturates), relu(NaN) = NaN (Keras)."""
    z = np.array([-np.inf, -3e38, -0.0, 0.5, np.inf, np.nan], np.float32)
    for code, alpha in ((acts.RELU, 0.0), (acts.THRESHOLDED_RELU, 1.0)):
        a = acts.activate(code, alpha, 0.0, z)
        np.testing.assert_array_equal(a, [0, 0, 0, 0.5 if code == acts.RELU else 0, np.inf, np.nan])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H", [13, 72])       # a masked last vector; one 64-unit chunk and a part of the next
@pytest.mark.parametrize("training", [False, True], ids=["infer", "train"])
def test_lstm_default_gates_at_extreme_preactivations(backend, H, training):
    """The default gate pass (sigmoid, tanh, tanh) over pre-activations out to +-inf: float32 gates and states
    as the float64 reference within 1e-6 absolute, NaN only in the units whose pre-activation is NaN; in the fast
    backends sigmoid is 1 exactly from z >= 87.3 and under 2e-35 from z <= -80, tanh +-1 exactly past 9.02."""
    T, B = 1, 3                                        # one step: h @ w_h would spread the NaN (NaN * 0)
    args = lstm_args(T, B, 0, H, np.float32, np.random.default_rng(3), training=training)
    args["w_h"][...] = 0                               # z = b (+ x @ w_x: the projected input, here 0)
    rng = np.random.default_rng(4)
    extreme = np.array([-np.inf, -1e4, -100, -88.5, -87.4, -80.5, -9.1, -8, -1, 0, 1, 8, 9.1, 80.5, 87.4,
                        88.5, 100, 1e4, np.inf], np.float32)
    args["b"][...] = rng.choice(extreme, 4 * H)
    nan_unit = H - 2
    args["b"][2 * H + nan_unit] = np.nan               # g of one unit: c, h NaN in that unit only
    args["c0"][...] = rng.standard_normal((B, H)).astype(np.float32)
    ref = {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32 else v
           for k, v in copy_args(args).items()}
    lstm_ref.lstm_forward(*ref.values())
    out = copy_args(args)
    get_backend(backend).lstm_forward(*out.values())
    for name in ("y_out", "cT_out") + (("gates_out",) if training else ()):
        got, want = out[name], ref[name]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, equal_nan=True, err_msg=f"{backend} {name}")
    y = out["y_out"]
    assert np.isnan(y[..., nan_unit]).all() and not np.isnan(np.delete(y, nan_unit, axis=-1)).any()
    if training and backend != "reference":          # (NumPy's float32 tanh(9.1) is 0.99999994)
        gates = out["gates_out"].reshape(T, B, 4, H)
        z = np.broadcast_to(args["b"].reshape(4, H), gates.shape)
        sig = gates[:, :, [0, 1, 3]]
        zs = z[:, :, [0, 1, 3]]
        assert (sig[zs >= 87.3] == 1).all() and (np.abs(sig[zs <= -80]) < 2e-35).all(), backend
        assert (gates[:, :, 2][z[:, :, 2] >= 9.02] == 1).all() and (gates[:, :, 2][z[:, :, 2] <= -9.02] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rectifier", [(acts.RELU, 0.0, 0.0), (acts.THRESHOLDED_RELU, 0.4, 0.0)], ids=["relu", "thr"])
def test_candidate_overflow_to_minus_inf_saturates(backend, cell, dtype, rectifier):
    """A rectifier candidate whose pre-activation is -inf gives 0 (its unit's state stays finite), one whose
    pre-activation is NaN gives NaN (that unit at the first step, every unit after it through w_h), in every
    backend, as the reference."""
    T, B, I, H = 4, 3, 2, 5
    rng = np.random.default_rng(7)
    if cell == "lstm":
        args = lstm_args(T, B, I, H, dtype, rng, act_specs=[(acts.SIGMOID, 0, 0), rectifier, rectifier])
        bias, g = args["b"], 2                         # gate order i, f, g, o
    else:
        args = gru_args(T, B, I, H, dtype, rng, act_specs=[(acts.SIGMOID, 0, 0), rectifier])
        bias, g = args["b_x"], 2                       # gate order z, r, n
    bias[g * H + 1] = -np.inf                          # unit 1: candidate -inf at every step
    bias[g * H + 3] = np.nan                           # unit 3: candidate NaN
    fwd = lstm_ref.lstm_forward if cell == "lstm" else gru_ref.gru_forward
    ref = copy_args(args)
    fwd(*ref.values())
    out = copy_args(args)
    getattr(get_backend(backend), f"{cell}_forward")(*out.values())
    y = out["y_out"]
    assert np.isnan(y[0, :, 3]).all() and np.isfinite(np.delete(y[0], 3, axis=-1)).all() and np.isnan(y[1:]).all()
    np.testing.assert_allclose(y, ref["y_out"], **TOL[dtype], err_msg=backend)
    # without the NaN unit: every step finite
    args[{"lstm": "b", "gru": "b_x"}[cell]][g * H + 3] = 0.5
    out = copy_args(args)
    getattr(get_backend(backend), f"{cell}_forward")(*out.values())
    assert np.isfinite(out["y_out"]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_time_with_carried_state_equals_one_run(backend):
    k = get_backend(backend)
    full = lstm_args(10, 3, 4, 5, np.float64)
    k.lstm_forward(*full.values())
    first = lstm_args(10, 3, 4, 5, np.float64)
    a1 = copy_args(first)
    for n, sl in (("x", slice(0, 4)), ("z_ws", slice(0, 4)), ("y_out", slice(0, 4))):
        a1[n] = np.ascontiguousarray(first[n][sl])
    k.lstm_forward(*a1.values())
    a2 = copy_args(first)
    for n, sl in (("x", slice(4, 10)), ("z_ws", slice(4, 10)), ("y_out", slice(4, 10))):
        a2[n] = np.ascontiguousarray(first[n][sl])
    a2["h0"], a2["c0"] = a1["hT_out"].copy(), a1["cT_out"].copy()
    k.lstm_forward(*a2.values())
    np.testing.assert_allclose(np.concatenate([a1["y_out"], a2["y_out"]]), full["y_out"], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_are_independent(backend):
    k = get_backend(backend)
    full = gru_args(6, 5, 3, 4, np.float64, mask="random")
    k.gru_forward(*full.values())
    for row in range(5):
        one = copy_args(full)
        for n in ("x", "z_ws", "hz_ws", "y_out", "mask"):
            one[n] = np.ascontiguousarray(full[n][:, row:row + 1])
        for n in ("h0", "hT_out"):
            one[n] = np.ascontiguousarray(full[n][row:row + 1])
        k.gru_forward(*one.values())
        np.testing.assert_allclose(one["y_out"][:, 0], full["y_out"][:, row], rtol=1e-12, atol=1e-13)


def test_reverse_equals_flipped_forward():
    a = lstm_args(7, 2, 3, 4, np.float64, reverse=True)
    lstm_ref.lstm_forward(*a.values())
    f = lstm_args(7, 2, 3, 4, np.float64)
    f["x"] = np.ascontiguousarray(a["x"][::-1])
    lstm_ref.lstm_forward(*f.values())
    np.testing.assert_allclose(a["y_out"], f["y_out"][::-1], rtol=1e-12)


def _projected(args, cell):
    """The same call in projected-input mode: x (T, B, 0), w_x (0, G), z_ws preset to x @ w_x."""
    out = copy_args(args)
    x, w_x = args["x"], args["w_x"]
    T, B, I = x.shape
    out["z_ws"][...] = (x.reshape(T * B, I) @ w_x).reshape(T, B, -1)
    out["x"] = np.zeros((T, B, 0), x.dtype)
    out["w_x"] = np.zeros((0, w_x.shape[1]), x.dtype)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cell, opts", [("lstm", {}), ("lstm", dict(mask="random", reverse=True)),
                                        ("lstm", dict(peepholes=True, mask="post")),
                                        ("gru", {}), ("gru", dict(reset_after=False, mask="random")),
                                        ("gru", dict(reverse=True, mask="post"))], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (6, 4, 9, 7), (10, 13, 6, 9), (4, 33, 5, 16)], ids=str)
def test_projected_input_mode(backend, dtype, cell, opts, shape):
    """x (T, B, 0) with z_ws holding x @ w_x (an Embedding's distinct tokens projected once) equals the normal
    call: same outputs; backward gives the same recurrent gradients, and dz_ws carries the input side:
    dx = dz @ w_x^T, dw_x = x^T dz reproduce the reference's."""
    k = get_backend(backend)
    make, make_bwd = (lstm_args, lstm_backward_args) if cell == "lstm" else (gru_args, gru_backward_args)
    fwd_out = LSTM_FWD_OUT if cell == "lstm" else GRU_FWD_OUT
    args = make(*shape, dtype, np.random.default_rng(3), training=True, **opts)
    ref, proj = copy_args(args), _projected(args, cell)
    (lstm_ref.lstm_forward if cell == "lstm" else gru_ref.gru_forward)(*ref.values())
    (k.lstm_forward if cell == "lstm" else k.gru_forward)(*proj.values())
    _compare(ref, proj, fwd_out, dtype, backend)
    bref, bproj = make_bwd(ref), make_bwd(proj)
    (lstm_ref.lstm_backward if cell == "lstm" else gru_ref.gru_backward)(*bref.values())
    (k.lstm_backward if cell == "lstm" else k.gru_backward)(*bproj.values())
    rest = [n for n in (LSTM_BWD_OUT if cell == "lstm" else GRU_BWD_OUT) if n not in ("dx_out", "dw_x_out")]
    _compare(bref, bproj, rest, dtype, backend)
    assert bproj["dx_out"].size == 0 and bproj["dw_x_out"].size == 0
    T, B, I = args["x"].shape
    dz = bproj["dz_ws"].reshape(T * B, -1)
    x2 = args["x"].reshape(T * B, I)
    np.testing.assert_allclose((dz @ args["w_x"].T).reshape(T, B, I), bref["dx_out"], **TOL[dtype])
    np.testing.assert_allclose(x2.T @ dz, bref["dw_x_out"], **TOL[dtype])


def _batch_major(args):
    """The same call with x, z_ws and y_out batch-first (B, T, .), as batch_major takes them."""
    out = copy_args(args)
    for n in ("x", "z_ws", "y_out"):
        out[n] = np.ascontiguousarray(out[n].transpose(1, 0, 2))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("cell, opts", [("lstm", {}), ("lstm", dict(mask="random", reverse=True)),
                                        ("lstm", dict(peepholes=True, clip=0.7, mask="post")),
                                        ("lstm", dict(act_specs=[(acts.SILU, 0, 0), (acts.ELU, 1.0, 0),
                                                                 (acts.SOFTSIGN, 0, 0)], scale=0.3)),
                                        ("gru", {}), ("gru", dict(reset_after=False, mask="random")),
                                        ("gru", dict(reverse=True, mask="post", clip=0.6))], ids=str)
# B=1 (the batch-1 unit steps), small batches on packed tiles with the input product over all rows (T*B < 320)
# and step by step (T*B >= 320), and a batch past the packed tiles (BLAS gemm per step)
@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (9, 1, 20, 66), (6, 4, 9, 7), (10, 13, 6, 9), (50, 8, 16, 24),
                                   (12, 33, 20, 17), (3, 400, 6, 5)], ids=str)
def test_batch_major_equals_time_major(backend, dtype, cell, opts, shape):
    """batch_major=True (x, z_ws, y_out as (B, T, .): a batch-first caller's arrays, no transposed copies) gives
    the time-major call's outputs, every backend: the same arithmetic, except that BLAS's product over all T*B
    rows (here 400, 396 and 1200 rows) may round a row differently at another position in the matrix."""
    k = get_backend(backend)
    make = lstm_args if cell == "lstm" else gru_args
    fwd = k.lstm_forward if cell == "lstm" else k.gru_forward
    args = make(*shape, dtype, np.random.default_rng(5), **opts)
    tm, bm = copy_args(args), _batch_major(args)
    bm["y_out"][...] = np.nan
    fwd(*tm.values())
    fwd(*bm.values(), batch_major=True)
    same = np.testing.assert_array_equal if shape[0] * shape[1] < 320 else (
        lambda a, b, err_msg="": np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=err_msg))
    same(bm["y_out"], tm["y_out"].transpose(1, 0, 2))
    for n in (LSTM_FWD_OUT if cell == "lstm" else GRU_FWD_OUT)[1:]:
        same(bm[n], tm[n], err_msg=n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batch_major_refuses_training(backend, cell):
    k = get_backend(backend)
    args = (lstm_args if cell == "lstm" else gru_args)(4, 3, 5, 6, training=True)
    with pytest.raises(ValueError, match="inference only"):
        (k.lstm_forward if cell == "lstm" else k.gru_forward)(*_batch_major(args).values(), batch_major=True)


@pytest.mark.parametrize("cell, H", [("lstm", 96), ("lstm", 100), ("lstm", 128), ("lstm", 200),
                                     ("gru", 128), ("gru", 130), ("gru", 200)])
@pytest.mark.parametrize("T, I", [(8, 5), (9, 0), (30, 64)], ids=["T8", "projected", "T30"])
@pytest.mark.parametrize("opts", [{}, dict(mask="random", reverse=True)], ids=["plain", "mask_reverse"])
@pytest.mark.parametrize("threads", [2, 3, 16])
def test_batch1_steps_on_threads_equal_one_thread(cell, H, T, I, opts, threads):
    """threads > 1: a batch-1 float32 inference with the default activations (T >= 8) runs its steps on several
    threads: the LSTM from H = 96 on (lstm_cy.fl_lstm_units_forward: row shares of the input product, panel
    shares of each step, a barrier between steps), the GRU (reset_after) from H = 128 on (gru_cy._gru_units_threads:
    panel shares of each step's product, unit shares of its gate pass, two barriers). More threads than panels
    included (16). Bit-identical to one thread, with weights packed per call and kept (WeightPacks), and equal
    to the reference."""
    if "cython" not in BACKENDS:
        pytest.skip("the Cython extension is not built")
    k = get_backend("cython")
    from fastlstm._kernels import _blas, gru_cy, lstm_cy
    mod, make, ref_mod = (lstm_cy, lstm_args, lstm_ref) if cell == "lstm" else (gru_cy, gru_args, gru_ref)
    assert H >= mod.THREAD_THRESHOLDS["units_min_h"]
    # LSTM: inputs that reach the saturated ends of sigmoid and tanh; GRU: milder (30 steps of float32 sums)
    args = make(T, 1, max(I, 1), H, np.float32, np.random.default_rng(H + T), scale=0.5 if cell == "lstm" else 0.2,
                **opts)
    if cell == "lstm":
        for name in ("x", "h0", "c0"):
            args[name] *= 3
    if I == 0:
        args = _projected(args, cell)
    forward = getattr(k, f"{cell}_forward")
    outs = LSTM_FWD_OUT[:3] if cell == "lstm" else GRU_FWD_OUT[:2]
    one = copy_args(args)
    forward(*one.values(), threads=1)
    for packs in (None, _blas.WeightPacks(), "again"):
        many = copy_args(args)
        kept = kept if packs == "again" else packs
        forward(*many.values(), packs=kept, threads=threads)
        for name in outs:
            np.testing.assert_array_equal(many[name], one[name], err_msg=name)
    ref = copy_args(args)
    getattr(ref_mod, f"{cell}_forward")(*ref.values())
    np.testing.assert_allclose(one["y_out"], ref["y_out"], **TOL[np.float32])


@pytest.mark.parametrize("H", [1, 5, 16, 17, 66, 128])
@pytest.mark.parametrize("opts", [{}, dict(mask="random", reverse=True)], ids=["plain", "mask_reverse"])
def test_lstm_batch1_unit_steps_equal_the_general_steps(H, opts):
    """A batch-1 float32 inference (T >= 8, default activations) takes the unit-interleaved, software-pipelined
    steps (lstm_cy.fl_lstm_units_step, AVX2 activations of _vecact.pxd); training mode takes the general path
    (64-column panels, _fwd_row_fast). Same operations in the same order: the outputs must be bit-identical."""
    if "cython" not in BACKENDS:
        pytest.skip("the Cython extension is not built")
    k = get_backend("cython")
    rng = np.random.default_rng(H)
    infer = lstm_args(12, 1, 7, H, np.float32, rng, **opts)
    for name in ("x", "h0", "c0"):
        infer[name] *= 3      # reach the saturated ends of sigmoid and tanh too
    train = copy_args(infer)
    T, G = infer["x"].shape[0], 4 * H
    train["gates_out"], train["cs_out"] = np.empty((T, 1, G), np.float32), np.empty((T, 1, H), np.float32)
    k.lstm_forward(*infer.values())
    k.lstm_forward(*train.values())
    for name in ("y_out", "hT_out", "cT_out"):
        np.testing.assert_array_equal(infer[name], train[name], err_msg=name)
    ref = copy_args(infer)
    lstm_ref.lstm_forward(*ref.values())
    np.testing.assert_allclose(infer["y_out"], ref["y_out"], **TOL[np.float32])
