"""fastlstm.load on ONNX files: real exports (tests/data/onnx, made by tools/make_goldens.py with tf2onnx, Keras 3
model.export and torch.onnx.export) against the exporting framework's outputs and against onnxruntime at other
batch sizes / sequence lengths; the protobuf reader against onnx's own; and the load-time errors."""
import json
import os

import numpy as np
import pytest

import fastlstm
from fastlstm import ModelLoadError
from fastlstm.loaders import onnx_proto

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "onnx")
_SO = ort.SessionOptions()
_SO.log_severity_level = 3


def _cases():
    path = os.path.join(DATA, "manifest.json")
    if not os.path.exists(path):
        return []
    return [c for c in json.load(open(path))["cases"] if c["format"].startswith("onnx")]


CASES = _cases()
GOOD = [c for c in CASES if not c["expect_error"]]
BAD = [c for c in CASES if c["expect_error"]]


def test_fixture_suite_is_present():
    assert len(GOOD) >= 10, f"expected the ONNX fixtures in {DATA} (tools/make_goldens.py onnx_keras / onnx_torch)"


@pytest.mark.parametrize("case", GOOD, ids=[c["name"] for c in GOOD])
def test_fixture_matches_exporter(case):
    model = fastlstm.load(os.path.join(DATA, case["file"]))
    assert model.input_names == case["input_names"]
    assert model.output_names == case["output_names"]
    xin = np.load(os.path.join(DATA, case["input_file"]))
    exp = np.load(os.path.join(DATA, case["expected_file"]))
    xs = [xin[n] for n in case["input_names"]]
    out = model.predict(xs[0] if len(xs) == 1 else xs)
    outs = out if isinstance(out, list) else [out]
    tol = case.get("tolerance", {"atol": 1e-5, "rtol": 1e-4})
    for k, o in enumerate(outs):
        e = exp[f"output_{k}"]
        assert o.shape == e.shape, f"output {k}: {o.shape} vs {e.shape}"
        np.testing.assert_allclose(o, e, **tol, err_msg=f"output {k} ({case['output_names'][k]})")


def _resized_feeds(model, xin, rng, scale):
    """The case's inputs re-drawn at another size wherever the declared dims are symbolic."""
    feeds = {}
    for vi in model._input_infos:
        a = xin[vi.name]
        shape = [n if isinstance(d, int) and d > 0 else max(1, n * scale // 2 + (k == 0))
                 for k, (d, n) in enumerate(zip(vi.shape or [None] * a.ndim, a.shape))]
        if a.dtype.kind in "iu":
            hi = max(int(a.max()), 1)
            b = rng.integers(0, hi + 1, shape).astype(a.dtype)
            if a.min() >= 1 or (a == 0).sum() == 0:
                b = np.maximum(b, 1)
        else:
            b = rng.normal(0, 1, shape).astype(a.dtype)
        feeds[vi.name] = b
    return feeds


@pytest.mark.parametrize("case", GOOD, ids=[c["name"] for c in GOOD])
def test_fixture_other_sizes_match_onnxruntime(case):
    """Shape arithmetic works for other batch sizes and sequence lengths (where the graph declares them dynamic):
    onnxruntime is the oracle."""
    path = os.path.join(DATA, case["file"])
    model = fastlstm.load(path)
    try:
        sess = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        if "layout" in str(e):
            pytest.skip("onnxruntime refuses layout=1 (checked by test_fixture_matches_exporter and the property "
                        "test against the transposed layout=0 node)")
        raise
    xin = np.load(os.path.join(DATA, case["input_file"]))
    rng = np.random.default_rng(7)
    for scale in (1, 3, 5):
        feeds = _resized_feeds(model, xin, rng, scale)
        if any("mask" in f or "padded" in f for f in case.get("features", [])):
            for v in feeds.values():
                if v.ndim >= 2:
                    v[:, v.shape[1] * 2 // 3:] = 0          # keep it post-padded
        try:
            expected = sess.run(None, feeds)
        except Exception:  # noqa: BLE001 - graph with baked sizes: onnxruntime refuses that size too
            continue
        got = model.predict(feeds)
        got = got if isinstance(got, list) else [got]
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("case", BAD, ids=[c["name"] for c in BAD])
def test_fixture_errors(case):
    with pytest.raises(ModelLoadError):
        fastlstm.load(os.path.join(DATA, case["file"]))


def _all_onnx_files():
    out = []
    for root, _, files in os.walk(DATA):
        out += [os.path.join(root, f) for f in files if f.endswith(".onnx")]
    return sorted(out)


def _same_graph(g, mg):
    assert g.name == mg.name
    assert [(n.op_type, n.name, n.inputs, n.outputs, n.domain) for n in g.nodes] == \
        [(n.op_type, n.name, list(n.input), list(n.output), n.domain) for n in mg.node]
    for n, mn in zip(g.nodes, mg.node):
        for ma in mn.attribute:
            a = n.attrs[ma.name]
            assert a.type == ma.type
            mv = helper.get_attribute_value(ma)
            if ma.type == onnx.AttributeProto.GRAPH:
                _same_graph(a.value, mv)
            elif ma.type == onnx.AttributeProto.TENSOR:
                np.testing.assert_array_equal(a.value.array(), numpy_helper.to_array(mv))
            elif ma.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS):
                np.testing.assert_array_equal(np.float32(a.value), np.float32(mv))
            else:
                assert a.value == mv
    for t, mt in zip(g.initializers, mg.initializer):
        if t.external is not None:          # stored outside the file: compare where it points
            assert t.name == mt.name and t.external == {e.key: e.value for e in mt.external_data}
            continue
        a, b = t.array(), numpy_helper.to_array(mt)
        assert t.name == mt.name and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    for vi, mvi in zip(g.inputs + g.outputs, list(mg.input) + list(mg.output)):
        assert vi.name == mvi.name and vi.elem_type == mvi.type.tensor_type.elem_type


@pytest.mark.parametrize("path", _all_onnx_files(), ids=lambda p: os.path.relpath(p, DATA))
def test_protobuf_reader_agrees_with_onnx(path):
    with open(path, "rb") as f:
        buf = f.read()
    try:
        mm = onnx.load_from_string(buf)
    except Exception:  # noqa: BLE001 - deliberately broken fixture: our reader must refuse it as well
        with pytest.raises(onnx_proto.ProtoError):
            onnx_proto.parse_model(buf)
        return
    m = onnx_proto.parse_model(buf)
    _same_graph(m.graph, mm.graph)
    assert m.opsets == {("" if o.domain == "ai.onnx" else o.domain): o.version for o in mm.opset_import}


# ---- errors, built here ----------------------------------------------------------------------------------------
def _lstm_model(extra_nodes=(), attrs=None, drop_init=None, opset=17):
    rng = np.random.default_rng(0)
    H, I = 3, 2
    inits = {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
             "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32)}
    if drop_init:
        inits.pop(drop_init)
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["Y", "Y_h"], name="my_lstm",
                              **dict(dict(hidden_size=H), **(attrs or {})))] + list(extra_nodes)
    out = extra_nodes[-1].output[0] if extra_nodes else "Y_h"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _write(tmp_path, m, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return str(p)


def test_unsupported_op_names_node_op_and_file(tmp_path):
    bad = helper.make_node("NonMaxSuppression", ["Y_h"], ["z"], name="nms_1")
    p = _write(tmp_path, _lstm_model([bad]))
    with pytest.raises(ModelLoadError, match=r"m\.onnx.*'nms_1'.*NonMaxSuppression.*not supported"):
        fastlstm.load(p)


def test_foreign_domain_is_refused(tmp_path):
    bad = helper.make_node("FusedMatMul", ["Y_h", "Y_h"], ["z"], name="fm", domain="com.microsoft")
    m = _lstm_model([bad])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ModelLoadError, match=r"'fm'.*FusedMatMul.*com\.microsoft"):
        fastlstm.load(_write(tmp_path, m))


def test_missing_initializer(tmp_path):
    p = _write(tmp_path, _lstm_model(drop_init="R"))
    with pytest.raises(ModelLoadError, match=r"m\.onnx.*'my_lstm'.*op LSTM.*'R'.*missing initializer"):
        fastlstm.load(p)


@pytest.mark.parametrize("attrs, message", [
    (dict(clip=-1.0), "clip"),
    (dict(activations=["Sigmoid", "Swish", "Tanh"]), "Swish"),
    (dict(activations=["Sigmoid", "Tanh"]), "activations"),
    (dict(direction="sideways"), "direction"),
    (dict(hidden_size=4), "W must have shape"),
])
def test_bad_rnn_attributes_fail_at_load(tmp_path, attrs, message):
    p = _write(tmp_path, _lstm_model(attrs=attrs))
    with pytest.raises(ModelLoadError, match=f"'my_lstm' \\(op LSTM\\).*{message}"):
        fastlstm.load(p)


def test_truncated_files_fail_cleanly(tmp_path):
    data = _lstm_model().SerializeToString()
    failures = 0
    for cut in range(1, len(data), max(1, len(data) // 60)):
        p = tmp_path / "cut.onnx"
        p.write_bytes(data[:cut])
        try:
            fastlstm.load(str(p))
        except ModelLoadError:
            failures += 1
    assert failures == len(range(1, len(data), max(1, len(data) // 60)))


def test_corrupt_bytes_raise_only_model_load_error(tmp_path):
    """Random byte flips may leave a loadable model (flips inside float data); anything else must be a
    ModelLoadError, never another exception."""
    data = bytearray(_lstm_model().SerializeToString())
    rng = np.random.default_rng(1)
    for _ in range(150):
        d = bytearray(data)
        for k in rng.integers(0, len(d), 3):
            d[k] = int(rng.integers(0, 256))
        p = tmp_path / "c.onnx"
        p.write_bytes(bytes(d))
        try:
            fastlstm.load(str(p))
        except ModelLoadError:
            pass
    p.write_bytes(b"this is a text file, not a model\n" * 10)
    with pytest.raises(ModelLoadError):
        fastlstm.load(str(p))


def test_external_data(tmp_path):
    m = _lstm_model()
    path = str(tmp_path / "ext.onnx")
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    x = np.random.default_rng(2).normal(size=(4, 2, 2)).astype(np.float32)
    expected = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    np.testing.assert_allclose(fastlstm.load(path).predict(x), expected, rtol=1e-5, atol=1e-6)
    os.remove(tmp_path / "ext.data")
    with pytest.raises(ModelLoadError, match=r"ext\.onnx.*initializer 'W'.*ext\.data.*does not exist"):
        fastlstm.load(path)


def test_output_nothing_produces(tmp_path):
    m = _lstm_model()
    m.graph.output.append(helper.make_tensor_value_info("ghost", TensorProto.FLOAT, None))
    with pytest.raises(ModelLoadError, match="'ghost'.*not produced"):
        fastlstm.load(_write(tmp_path, m))


def test_predict_api(tmp_path):
    m = _lstm_model()
    model = fastlstm.load(_write(tmp_path, m))
    assert isinstance(model, fastlstm.Model)
    assert model.input_names == ["X"] and model.output_names == ["Y_h"]
    x = np.random.default_rng(3).normal(size=(5, 2, 2)).astype(np.float32)
    y = model.predict(x)
    np.testing.assert_array_equal(model.predict({"X": x}), y)
    np.testing.assert_array_equal(model.predict([x]), y)
    np.testing.assert_allclose(model.predict(x.astype(np.float64)), y)     # cast to the declared float32
    with pytest.raises(ValueError, match="rank 3"):
        model.predict(x[0])
    with pytest.raises(ValueError, match="expects shape"):
        model.predict(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match="missing input"):
        model.predict({"x": x})
    with pytest.raises(TypeError):
        model.predict(np.array([["a"]]))
    assert "LSTM" in model.summary(print_fn=None)


LOOPS = [c for c in GOOD if "loop" in c["name"]]


@pytest.mark.parametrize("generic", [False, True], ids=["fused", "generic"])
@pytest.mark.parametrize("case", LOOPS, ids=[c["name"] for c in LOOPS])
def test_loop_fixtures_fused_and_generic(case, generic, monkeypatch):
    """Keras cells unrolled into Loop graphs run on the fused kernels; the generic body evaluation (fusion off)
    gives the same answer."""
    from fastlstm.loaders import onnx_cell
    if generic:
        monkeypatch.setattr(onnx_cell, "try_fuse", lambda view, runner: None)
    model = fastlstm.load(os.path.join(DATA, case["file"]))
    assert model.loops and all(("generic" if generic else "fused") in d for d in model.loops), model.loops
    xin = np.load(os.path.join(DATA, case["input_file"]))
    exp = np.load(os.path.join(DATA, case["expected_file"]))
    xs = [xin[n] for n in case["input_names"]]
    out = model.predict(xs[0] if len(xs) == 1 else xs)
    for k, o in enumerate(out if isinstance(out, list) else [out]):
        np.testing.assert_allclose(o, exp[f"output_{k}"], rtol=1e-4, atol=1e-5)


def test_loop_fixtures_present():
    assert len(LOOPS) >= 4, "expected tf2onnx / Keras 3 export Loop fixtures (GRU, masked and hard_sigmoid LSTM)"
