"""Property test: single ONNX LSTM / GRU nodes with random attributes, shapes, optional inputs and outputs, run
through fastlstm and through onnxruntime (the reference runtime), must agree.

onnxruntime refuses layout=1 and LSTM/GRU before opset 7: those nodes are compared with the equivalent node
onnxruntime runs (layout=0 with transposed inputs/outputs; the same node at opset 7).
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import fastlstm  # noqa: E402
from fastlstm.loaders.onnx import load_onnx_bytes  # noqa: E402

from conftest import BACKENDS  # noqa: E402

ACTIVATIONS = ["Sigmoid", "Tanh", "Relu", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid",
               "Elu", "Softsign", "Softplus"]
OPSETS = {"LSTM": [1, 7, 14, 22], "GRU": [1, 3, 7, 14, 22]}
N_ACTS = {"LSTM": 3, "GRU": 2}
N_GATES = {"LSTM": 4, "GRU": 3}
TOL = dict(rtol=2e-4, atol=2e-5)
_SO = ort.SessionOptions()
_SO.intra_op_num_threads = 1
_SO.log_severity_level = 3


@st.composite
def rnn_cases(draw, op):
    c = dict(op=op)
    c["direction"] = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    D = c["D"] = 2 if c["direction"] == "bidirectional" else 1
    c["H"], c["I"] = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    c["T"], c["N"] = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    c["opset"] = draw(st.sampled_from(OPSETS[op]))
    c["dtype"] = draw(st.sampled_from([np.float32, np.float32, np.float32, np.float64]))
    if draw(st.booleans()):
        c["activations"] = [draw(st.sampled_from(ACTIVATIONS)) for _ in range(N_ACTS[op] * D)]
        c["alpha"] = [draw(st.floats(0.1, 1.5)) for _ in range(draw(st.integers(0, 4)))]
        c["beta"] = [draw(st.floats(-0.5, 0.8)) for _ in range(draw(st.integers(0, 4)))]
    c["clip"] = draw(st.one_of(st.none(), st.floats(0.3, 3.0)))
    c["has_B"], c["has_seq"], c["has_h0"] = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    if op == "LSTM":
        c["has_c0"], c["has_P"] = draw(st.booleans()), draw(st.booleans())
        c["input_forget"] = draw(st.booleans())
    else:
        c["lbr"] = draw(st.booleans()) if c["opset"] >= 3 else False
    c["layout"] = draw(st.sampled_from([0, 1])) if c["opset"] >= 14 else 0
    n_out = 3 if op == "LSTM" else 2
    c["outputs"] = draw(st.lists(st.booleans(), min_size=n_out, max_size=n_out).filter(any))
    c["trailing_omitted"] = draw(st.booleans())
    c["weights_as_inputs"] = draw(st.integers(0, 9)) == 0
    c["seed"] = draw(st.integers(0, 2 ** 31 - 1))
    return c


def _arrays(c):
    rng = np.random.default_rng(c["seed"])
    D, H, I, T, N, dt = c["D"], c["H"], c["I"], c["T"], c["N"], c["dtype"]
    G = N_GATES[c["op"]] * H
    # float32 values even for float64 nodes: onnxruntime's LSTM has no double kernel, so float64 nodes are compared
    # with the same node in float32 (inputs exact in both), at float32 tolerance
    r = lambda *s, scale=0.5: (scale * rng.standard_normal(s)).astype(np.float32).astype(dt)  # noqa: E731
    a = dict(X=r(T, N, I, scale=1.0), W=r(D, G, I), R=r(D, G, H))
    if c["has_B"]:
        a["B"] = r(D, 2 * G)
    if c["has_seq"]:
        a["sequence_lens"] = rng.integers(0, T + 1, N).astype(np.int32)
    if c["has_h0"]:
        a["initial_h"] = r(D, N, H)
    if c["op"] == "LSTM":
        if c["has_c0"]:
            a["initial_c"] = r(D, N, H)
        if c["has_P"]:
            a["P"] = r(D, 3 * H)
    return a


def _model(c, arrays, opset, layout):
    """The node as a model: X (and sometimes the weights) are graph inputs, the rest initializers."""
    op = c["op"]
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    ins = [n if n in arrays else "" for n in names]
    while ins and not ins[-1]:
        ins.pop()
    out_names = ["Y", "Y_h", "Y_c"][:len(c["outputs"])]
    outs = [n if keep else "" for n, keep in zip(out_names, c["outputs"])]
    if c["trailing_omitted"]:
        while outs and not outs[-1]:
            outs.pop()
    attrs = dict(hidden_size=c["H"], direction=c["direction"])
    if "activations" in c:
        attrs["activations"] = c["activations"]
        if c["alpha"]:
            attrs["activation_alpha"] = c["alpha"]
        if c["beta"]:
            attrs["activation_beta"] = c["beta"]
    if c["clip"] is not None:
        attrs["clip"] = c["clip"]
    if op == "LSTM" and c["input_forget"]:
        attrs["input_forget"] = 1
    if op == "GRU" and c["lbr"]:
        attrs["linear_before_reset"] = 1
    if layout:
        attrs["layout"] = 1
    node = helper.make_node(op, ins, outs, **attrs)
    elem = TensorProto.FLOAT if c["dtype"] == np.float32 else TensorProto.DOUBLE
    runtime = {"X", "sequence_lens", "initial_h", "initial_c"} | ({"W", "R"} if c["weights_as_inputs"] else set())
    graph_inputs, inits = [], []
    for n in ins:
        if not n:
            continue
        if n in runtime:
            t = TensorProto.INT32 if n == "sequence_lens" else elem
            graph_inputs.append(helper.make_tensor_value_info(n, t, None))
        else:
            inits.append(numpy_helper.from_array(arrays[n], n))
    graph_outputs = [helper.make_tensor_value_info(n, elem, None) for n in outs if n]
    g = helper.make_graph([node], "rnn", graph_inputs, graph_outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, [vi.name for vi in graph_inputs], [n for n in outs if n]


def _to_layout1(name, a):
    if name == "X":
        return np.ascontiguousarray(a.transpose(1, 0, 2))
    if name in ("initial_h", "initial_c"):
        return np.ascontiguousarray(a.transpose(1, 0, 2))
    return a


def _from_layout1(name, a):
    if name == "Y":                       # [N, T, D, H] -> [T, D, N, H]
        return a.transpose(1, 2, 0, 3)
    return a.transpose(1, 0, 2)           # [N, D, H] -> [D, N, H]


def check_case(c):
    arrays = _arrays(c)
    m, in_names, out_names = _model(c, arrays, c["opset"], c["layout"])
    model = load_onnx_bytes(m.SerializeToString(), f"<{c['op']} node>")
    feeds = {n: (_to_layout1(n, arrays[n]) if c["layout"] else arrays[n]) for n in in_names}
    got = model.predict(feeds)
    got = got if isinstance(got, list) else [got]
    if c["layout"]:
        got = [_from_layout1(n, g) for n, g in zip(out_names, got)]
    ref_c = dict(c, dtype=np.float32)
    ref_arrays = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()}
    ref_model, _, _ = _model(ref_c, ref_arrays, max(c["opset"], 7), 0)
    sess = ort.InferenceSession(ref_model.SerializeToString(), _SO, providers=["CPUExecutionProvider"])
    expected = sess.run(None, {n: ref_arrays[n] for n in in_names})
    # unbounded activations (Affine, Relu, Softplus...) can blow up over a few steps; onnxruntime's float32
    # Softplus is log(1 + exp(x)) and overflows to inf past x = 88 where fastlstm's stays finite: compare only
    # outside that overflow regime
    if not all(np.all(np.isfinite(e)) and np.max(np.abs(e), initial=0) < 1e3 for e in expected):
        return False
    assert model.output_names == out_names
    for name, g, e in zip(out_names, got, expected):
        assert g.shape == e.shape, f"{name}: shape {g.shape} vs onnxruntime {e.shape} ({c})"
        assert g.dtype == c["dtype"]
        np.testing.assert_allclose(g, e, **TOL, err_msg=f"{name} differs from onnxruntime: {c}")
    return True


_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                     print_blob=True)


@_SETTINGS
@given(rnn_cases("LSTM"))
def test_lstm_node_matches_onnxruntime(case):
    assume(check_case(case))


@_SETTINGS
@given(rnn_cases("GRU"))
def test_gru_node_matches_onnxruntime(case):
    assume(check_case(case))


def test_activation_alpha_beta_consumed_in_order():
    """formats.md 0.10: [Sigmoid, LeakyRelu, Tanh] with activation_alpha=[0.2] gives LeakyRelu alpha 0.2."""
    c = dict(op="LSTM", direction="forward", D=1, H=3, I=2, T=4, N=2, opset=14, dtype=np.float32,
             activations=["Sigmoid", "LeakyRelu", "Tanh"], alpha=[0.2], beta=[], clip=None, has_B=True,
             has_seq=False, has_h0=False, has_c0=False, has_P=False, input_forget=False, layout=0,
             outputs=[True, True, True], trailing_omitted=False, weights_as_inputs=False, seed=3)
    assert check_case(c)
    c2 = dict(c, activations=["HardSigmoid", "Affine", "ScaledTanh"], alpha=[0.3, 0.7, 1.1], beta=[0.4, 0.1])
    assert check_case(c2)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")     # the reference's x @ W
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("op, acts, lbr", [
    ("GRU", ["Sigmoid", "Relu"], 0), ("GRU", ["Sigmoid", "Relu"], 1), ("GRU", ["Sigmoid", "ThresholdedRelu"], 1),
    ("LSTM", ["Sigmoid", "Relu", "Relu"], 0), ("LSTM", ["Sigmoid", "ThresholdedRelu", "Tanh"], 0)],
    ids=["gru_relu", "gru_relu_lbr", "gru_thresholded_lbr", "lstm_relu", "lstm_thresholded"])
def test_overflowing_candidate_saturates_like_onnxruntime(backend, N, op, acts, lbr):
    """Huge finite inputs and weights: the candidate's pre-activation x * W overflows to -inf and the rectifier
    gives 0 (onnxruntime: max(x, 0)), so the state stays finite. Unit 0 overflows at every step, unit 1 has
    pre-activations in the normal range; R = 0 keeps the units apart (no inf * 0 in the recurrent products)."""
    fastlstm.set_backend(backend)
    try:
        H = 2
        n_gates = 3 if op == "GRU" else 4
        cand = 2 if op == "GRU" else 3                 # the candidate's block: ONNX gate orders z, r, h / i, o, f, c
        x = np.array([1.0, 2.0, 1.5, 3.0], np.float32)[:, None, None] * np.array([1.0, 2.0][:N], np.float32)[:, None]
        x = (x * np.float32(1e20)).astype(np.float32)  # (T, N, 1), all positive
        W = np.full((1, n_gates * H, 1), 1e-20, np.float32)
        W[0, cand * H] = -1e25                         # unit 0: x * W = -1e45 -> -inf in float32
        W[0, cand * H + 1] = 3e-21                     # unit 1: x * W of order 0.3 .. 1.8
        B = np.zeros((1, 2 * n_gates * H), np.float32)
        B[0, :n_gates * H] = np.tile(np.float32([0.3, -0.2]), n_gates)
        arrays = dict(X=x, W=W, R=np.zeros((1, n_gates * H, H), np.float32), B=B,
                      initial_h=np.array([[[0.5, -0.25]]] * N, np.float32).reshape(1, N, H))
        attrs = dict(hidden_size=H, activations=acts)
        if op == "GRU":
            attrs["linear_before_reset"] = lbr
        alpha = [0.5] if "ThresholdedRelu" in acts else []
        if alpha:
            attrs["activation_alpha"] = alpha
        names = ["X", "W", "R", "B", "", "initial_h"]
        node = helper.make_node(op, names, ["Y", "Y_h"], **attrs)
        g = helper.make_graph([node], "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h")],
                              [numpy_helper.from_array(arrays[n], n) for n in names[1:] if n])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        m.ir_version = 8
        data = m.SerializeToString()
        expected = ort.InferenceSession(data, _SO, providers=["CPUExecutionProvider"]).run(None, {"X": x})
        assert all(np.isfinite(e).all() for e in expected)
        got = load_onnx_bytes(data, f"<{op} node>").predict(x)
        for name, gv, e in zip(("Y", "Y_h"), got, expected):
            np.testing.assert_allclose(gv, e, **TOL, err_msg=f"{backend}: {name}")
    finally:
        fastlstm.set_backend(fastlstm.config.BACKEND)
