"""ONNX Loop graphs whose body is an unrolled Keras RNN cell (what tf2onnx / Keras 3 export emit for GRUs, masked
LSTMs, hard_sigmoid LSTMs): fastlstm recognizes the cell and runs the loop on the fused kernels. Built here with
onnx.helper in the exporters' shape (Gather x_t by a carried counter, MatMul kernel / recurrent kernel, bias, Split,
gate activations, masked Where-by-arithmetic, a condition on counters), checked against onnxruntime and against
fastlstm's own generic body evaluation. Real exports are in tests/data/onnx (test_onnx_load.py)."""
import itertools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastlstm.loaders import onnx_cell  # noqa: E402
from fastlstm.loaders.onnx import load_onnx_bytes  # noqa: E402

N = helper.make_node
_SO = ort.SessionOptions()
_SO.log_severity_level = 3
F = TensorProto.FLOAT


def _act(kind, x, out, nodes, consts):
    """Append nodes computing activation `kind` of x into `out`."""
    if kind == "sigmoid":
        nodes.append(N("Sigmoid", [x], [out]))
    elif kind == "tanh":
        nodes.append(N("Tanh", [x], [out]))
    elif kind == "relu":
        nodes.append(N("Relu", [x], [out]))
    elif kind == "hard_sigmoid":        # Keras 3: relu6(x + 3) / 6, as tf2onnx writes it
        consts.update({"three": np.float32(3), "zero": np.float32(0), "six": np.float32(6),
                       "sixth": np.float32(1 / 6)})
        nodes += [N("Add", [x, "three"], [out + "_a"]), N("Clip", [out + "_a", "zero", "six"], [out + "_c"]),
                  N("Mul", [out + "_c", "sixth"], [out])]
    elif kind == "hard_sigmoid_keras2":
        nodes.append(N("HardSigmoid", [x], [out], alpha=0.2, beta=0.5))
    else:
        raise ValueError(kind)


def cell_loop_model(cell="lstm", masked=False, rec_act="sigmoid", act="tanh", t_start=0, H=4, I=3, seed=0,
                    perturb_h=0.0):
    """(model bytes, description). Graph input x (B, T, I) batch-first (+ m (B, T) bool when masked); output the
    last carried h, the final c (LSTM), and the scanned output sequence transposed back to (B, T', H)."""
    rng = np.random.default_rng(seed)
    G = (4 if cell == "lstm" else 3) * H
    consts = {"K": rng.normal(0, .5, (I, G)).astype(np.float32), "R": rng.normal(0, .5, (H, G)).astype(np.float32),
              "one_i": np.int32(1), "one": np.float32(1), "t0": np.int32(t_start), "ax0": np.array([0], np.int64),
              "Hc": np.array([H], np.int64), "zero_i": np.int64(0), "one_l": np.int64(1)}
    if cell == "gru_ra":
        consts["bias"] = rng.normal(0, .5, (2, G)).astype(np.float32)
    else:
        consts["bias"] = rng.normal(0, .5, (G,)).astype(np.float32)
    body = []
    bconsts = {}
    body += [N("Add", ["t_in", "one_i"], ["t_out"]), N("Gather", ["xs", "t_in"], ["x_t"], axis=0),
             N("MatMul", ["x_t", "K"], ["xk"])]
    if cell == "lstm":
        body += [N("MatMul", ["h_in", "R"], ["hr"]), N("Add", ["xk", "hr"], ["s"]), N("Add", ["s", "bias"], ["z"]),
                 N("Split", ["z"], ["zi", "zf", "zc", "zo"], axis=1)]
        _act(rec_act, "zi", "gi", body, bconsts)
        _act(rec_act, "zf", "gf", body, bconsts)
        _act(act, "zc", "gc", body, bconsts)
        _act(rec_act, "zo", "go", body, bconsts)
        body += [N("Mul", ["gf", "c_in"], ["fc"]), N("Mul", ["gi", "gc"], ["ig"]), N("Add", ["fc", "ig"], ["c_new"])]
        _act(act, "c_new", "ac", body, bconsts)
        body += [N("Mul", ["go", "ac"], ["h_new0"])]
    else:
        if cell == "gru_ra":
            body += [N("Split", ["bias"], ["bx2", "bh2"], axis=0), N("Squeeze", ["bx2", "ax0"], ["bx"]),
                     N("Squeeze", ["bh2", "ax0"], ["bh"]), N("Add", ["xk", "bx"], ["xz"]),
                     N("MatMul", ["h_in", "R"], ["hr0"]), N("Add", ["hr0", "bh"], ["hr"]),
                     N("Split", ["xz"], ["x_z", "x_r", "x_h"], axis=1),
                     N("Split", ["hr"], ["h_z", "h_r", "h_h"], axis=1),
                     N("Add", ["x_z", "h_z"], ["pz"]), N("Add", ["x_r", "h_r"], ["pr"])]
            _act(rec_act, "pz", "gz", body, bconsts)
            _act(rec_act, "pr", "gr", body, bconsts)
            body += [N("Mul", ["gr", "h_h"], ["rh"]), N("Add", ["x_h", "rh"], ["ph"])]
        else:  # reset_before: recurrent kernel sliced into [z r] and h parts
            consts.update({"s0": np.array([0], np.int64), "s2": np.array([2 * H], np.int64),
                           "s3": np.array([3 * H], np.int64), "ax1": np.array([1], np.int64)})
            body += [N("Add", ["xk", "bias"], ["xz"]), N("Split", ["xz"], ["x_z", "x_r", "x_h"], axis=1),
                     N("Slice", ["R", "s0", "s2", "ax1"], ["R_zr"]), N("Slice", ["R", "s2", "s3", "ax1"], ["R_h"]),
                     N("MatMul", ["h_in", "R_zr"], ["hzr"]), N("Split", ["hzr"], ["h_z", "h_r"], axis=1),
                     N("Add", ["x_z", "h_z"], ["pz"]), N("Add", ["x_r", "h_r"], ["pr"])]
            _act(rec_act, "pz", "gz", body, bconsts)
            _act(rec_act, "pr", "gr", body, bconsts)
            body += [N("Mul", ["gr", "h_in"], ["rh"]), N("MatMul", ["rh", "R_h"], ["rhr"]),
                     N("Add", ["x_h", "rhr"], ["ph"])]
        _act(act, "ph", "gh", body, bconsts)
        body += [N("Mul", ["gz", "h_in"], ["zh"]), N("Sub", ["one", "gz"], ["omz"]), N("Mul", ["omz", "gh"], ["zn"]),
                 N("Add", ["zh", "zn"], ["h_new0"])]
    if perturb_h:
        bconsts["eps"] = np.float32(perturb_h)
        body += [N("Add", ["h_new0", "eps"], ["h_new"])]
    else:
        body += [N("Identity", ["h_new0"], ["h_new"])]
    if masked:   # SelectV2 as tf2onnx writes it: Cast(m) * new + Cast(not m) * old
        body += [N("Gather", ["ms", "t_in"], ["m_t"], axis=0), N("Not", ["m_t"], ["nm_t"]),
                 N("Cast", ["m_t"], ["mf"], to=F), N("Cast", ["nm_t"], ["nmf"], to=F)]
        for s, new in (("h", "h_new"), ("c", "c_new"), ("o", "h_new")):
            if s == "c" and cell != "lstm":
                continue
            old = "o_in" if s == "o" else f"{s}_in"
            body += [N("Mul", ["mf", new], [f"{s}_a"]), N("Mul", ["nmf", old], [f"{s}_b"]),
                     N("Add", [f"{s}_a", f"{s}_b"], [f"{s}_sel"])]
        body += [N("Identity", ["h_sel"], ["h_out"]), N("Identity", ["o_sel"], ["o_out"]),
                 N("Identity", ["o_sel"], ["scan"])]
        if cell == "lstm":
            body += [N("Identity", ["c_sel"], ["c_out"])]
    else:
        body += [N("Identity", ["h_new"], ["h_out"]), N("Identity", ["h_new"], ["scan"])]
        if cell == "lstm":
            body += [N("Identity", ["c_new"], ["c_out"])]
    # condition: (t + 1 < T) and (iter < M), on counters only
    body += [N("Cast", ["t_out"], ["tf"], to=F), N("Less", ["tf", "Tf"], ["c1"]), N("Cast", ["it"], ["itf"], to=F),
             N("Less", ["itf", "Tf"], ["c2"]), N("And", ["c1", "c2"], ["cond_out"])]
    carried = ["t", "h"] + (["c"] if cell == "lstm" else []) + (["o"] if masked else []) + ["Tf"]
    vi = lambda n, t=F: helper.make_tensor_value_info(n, t, None)  # noqa: E731
    sc = lambda n, t=F: helper.make_tensor_value_info(n, t, [])  # noqa: E731 - scalars
    b_in = [sc("it", TensorProto.INT64), sc("cond_in", TensorProto.BOOL), sc("t_in", TensorProto.INT32)]
    b_out = [sc("cond_out", TensorProto.BOOL), sc("t_out", TensorProto.INT32)]
    for s in carried[1:]:
        if s == "Tf":
            b_in.append(sc("Tf"))
            b_out.append(sc("Tf"))
        else:
            b_in.append(vi(f"{s}_in"))
            b_out.append(vi(f"{s}_out"))
    b_out.append(vi("scan"))
    body_g = helper.make_graph(body, "body", b_in, b_out, [numpy_helper.from_array(v, k) for k, v in bconsts.items()])
    # outer graph: time-major x, zero states, trip count from the shape
    outer = [N("Transpose", ["x"], ["xs"], perm=[1, 0, 2]), N("Shape", ["x"], ["shp"]),
             N("Gather", ["shp", "zero_i"], ["B"]), N("Gather", ["shp", "one_l"], ["T"]),
             N("Cast", ["T"], ["Tf"], to=F), N("Sub", ["T", "t0_l"], ["M"]),
             N("Unsqueeze", ["B", "ax0"], ["B1"]), N("Concat", ["B1", "Hc"], ["hshape"], axis=0),
             N("ConstantOfShape", ["hshape"], ["zeros"]), N("Less", ["zero_f", "Tf"], ["cond0"])]
    consts.update({"t0_l": np.int64(t_start), "zero_f": np.float32(0)})
    loop_in = ["M", "cond0", "t0", "zeros"] + (["zeros"] if cell == "lstm" else []) + (["zeros"] if masked else []) \
        + ["Tf"]
    loop_out = ["tT", "hT"] + (["cT"] if cell == "lstm" else []) + (["oT"] if masked else []) + ["TfT", "seq"]
    outer += [N("Loop", loop_in, loop_out, body=body_g, name="rnn_loop"),
              N("Transpose", ["seq"], ["seq_bf"], perm=[1, 0, 2])]
    graph_in = [helper.make_tensor_value_info("x", F, ["B", "T", I])]
    if masked:
        outer[:0] = [N("Transpose", ["m"], ["mt"], perm=[1, 0]), N("Unsqueeze", ["mt", "ax2"], ["ms"])]  # (T, B, 1)
        consts["ax2"] = np.array([2], np.int64)
        graph_in.append(helper.make_tensor_value_info("m", TensorProto.BOOL, ["B", "T"]))
    outs = ["hT"] + (["cT"] if cell == "lstm" else []) + (["oT"] if masked else []) + ["seq_bf", "tT"]
    g = helper.make_graph(outer, "cell_loop", graph_in,
                          [helper.make_tensor_value_info(o, TensorProto.INT32 if o == "tT" else F, None) for o in outs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)])
    m.ir_version = 8
    return m.SerializeToString()


def _feeds(masked, B, T, I, rng):
    f = {"x": rng.normal(0, 1, (B, T, I)).astype(np.float32)}
    if masked:
        f["m"] = rng.random((B, T)) < 0.6            # any pattern: pre, mid and post masking
        f["m"][0] = True
        if B > 2:
            f["m"][2] = False                          # a fully masked row
    return f


def _run_all(data, feeds):
    expected = ort.InferenceSession(data, _SO, providers=["CPUExecutionProvider"]).run(None, feeds)
    fused = load_onnx_bytes(data)
    got = fused.predict(dict(feeds))
    return expected, got, fused


GRID = list(itertools.product(["lstm", "gru_ra", "gru_rb"], [False, True],
                              [("sigmoid", "tanh"), ("hard_sigmoid", "tanh"), ("hard_sigmoid_keras2", "relu")],
                              [0, 1]))


@pytest.mark.parametrize("cell, masked, acts, t_start", GRID, ids=[f"{c}-{'mask' if m else 'nomask'}-{a[0]}-{a[1]}-t{t}"
                                                                   for c, m, a, t in GRID])
def test_cell_loop_is_fused_and_matches_onnxruntime(cell, masked, acts, t_start):
    rng = np.random.default_rng(5)
    data = cell_loop_model(cell, masked, acts[0], acts[1], t_start)
    for B, T in ((1, 2), (4, 7), (3, 12)):
        feeds = _feeds(masked, B, T, 3, rng)
        expected, got, model = _run_all(data, feeds)
        assert "fused" in model.loops[0], model.loops
        for e, g in zip(expected, got):
            assert e.shape == g.shape and e.dtype == g.dtype
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_fused_and_generic_paths_agree(monkeypatch):
    rng = np.random.default_rng(6)
    data = cell_loop_model("lstm", masked=True, t_start=1)
    feeds = _feeds(True, 5, 9, 3, rng)
    fused = load_onnx_bytes(data).predict(dict(feeds))
    monkeypatch.setattr(onnx_cell, "try_fuse", lambda view, runner: None)
    generic_model = load_onnx_bytes(data)
    assert "generic" in generic_model.loops[0]
    for a, b in zip(fused, generic_model.predict(dict(feeds))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_look_alike_body_is_not_fused():
    """A body that is almost an LSTM cell (h gets + 0.01) must keep the generic path, and stay correct."""
    rng = np.random.default_rng(7)
    data = cell_loop_model("lstm", perturb_h=0.01)
    feeds = _feeds(False, 3, 6, 3, rng)
    expected, got, model = _run_all(data, feeds)
    assert "generic" in model.loops[0]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
