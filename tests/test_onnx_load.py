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


# ---- predict(batch_size): the batch axis read from the graph -----------------------------------------------------
# expected (input axes, output axes): the declared symbolic dim that reaches the RNN nodes' batch axis
BATCH_AXES = {
    "torch_ts_lstm_seqfirst_states_op14": ([1, 1, 1], [1, 1, 1]),        # time-major x, h0, c0 [1, B, H]
    "torch_ts_lstm_packed_seqlens_op14": ([0, 0], [0, 1]),               # batch-first x + sequence_lens; Y_h
    "torch_ts_gru_seq2seq_op14": ([0, 0], [0]),                          # two inputs, encoder state into decoder
    "torch_dynamo_gru_bf": ([0], [0]),                                   # Shape arithmetic, Reshape of merged dims
    "tf2onnx_textgen_timedistributed": ([0], [0]),                       # Reshape to (B*T, H) and back
    "tf2onnx_lstm_go_backwards_seq": ([0], [0]),                         # ReverseSequence, lengths from Shape
    "tf2onnx_bilstm_sum_seq_op18": ([0], [0]),                           # Tensordot: ReduceProd of dims
    "k3export_bilstm_concat": ([0], [0]),
    "tf2onnx_lstm_return_state": ([0], [0, 0, 0]),
}
BATCH_CASES = [c for c in GOOD if c["name"] in BATCH_AXES]


def _feeds_by_dim_name(model, xin, rng, sizes=(7, 5, 4, 3)):
    """The case's inputs re-drawn with each symbolic dim name at its own size (the same name, the same size)."""
    by_name, feeds = {}, {}
    for vi in model._input_infos:
        a = xin[vi.name]
        shape = []
        for d, n in zip(vi.shape, a.shape):
            if isinstance(d, int) and d > 0:
                shape.append(n)
            else:
                shape.append(by_name.setdefault(d, sizes[len(by_name) % len(sizes)]))
        if a.dtype.kind in "iu":                        # token ids (no padding) or lengths
            b = rng.integers(1, max(int(a.max()), 1) + 1, shape).astype(a.dtype)
        else:
            b = rng.normal(0, 1, shape).astype(a.dtype)
        feeds[vi.name] = b
    return feeds


def test_batch_axis_cases_present():
    assert len(BATCH_CASES) == len(BATCH_AXES), sorted(set(BATCH_AXES) - {c["name"] for c in BATCH_CASES})


@pytest.mark.parametrize("case", BATCH_CASES, ids=[c["name"] for c in BATCH_CASES])
def test_predict_batch_size_matches_onnxruntime(case):
    """predict(x, batch_size=k) splits every input along its batch axis (time-major inputs: axis 1) and joins
    the outputs along theirs; onnxruntime on the whole batch is the oracle."""
    path = os.path.join(DATA, case["file"])
    model = fastlstm.load(path)
    assert model.batch_axes == BATCH_AXES[case["name"]]
    in_axes, _ = model.batch_axes
    sess = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"])
    xin = np.load(os.path.join(DATA, case["input_file"]))
    feeds = _feeds_by_dim_name(model, xin, np.random.default_rng(11))
    if case["name"] == "torch_ts_lstm_packed_seqlens_op14":        # packed sequences: sorted lengths <= T
        x, lens = feeds[model.input_names[0]], model.input_names[1]
        feeds[lens] = np.sort(np.random.default_rng(2).integers(1, x.shape[1] + 1, x.shape[0]))[::-1].astype(
            feeds[lens].dtype)
    n = feeds[model.input_names[0]].shape[in_axes[0]]
    assert n >= 5
    expected = sess.run(None, feeds)
    for bs in (1, 2, n - 1, n, None):
        got = model.predict(feeds, batch_size=bs)
        got = got if isinstance(got, list) else [got]
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5, err_msg=f"batch_size={bs}")


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _lstm_then(extra, out, H=3, I=2):
    """X [T, N, I] -> LSTM -> Y_h [1, N, H] -> extra nodes -> out."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R")]
    nodes = [helper.make_node("LSTM", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=H)] + list(extra)
    return _graph(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)


@pytest.mark.parametrize("name, extra, out", [
    ("softmax_over_batch", [helper.make_node("Softmax", ["Y_h"], ["P"], axis=1)], "P"),
    ("mean_over_batch", [helper.make_node("ReduceMean", ["Y_h"], ["P"], keepdims=1)], "P"),
    ("reshape_merges_batch", [helper.make_node("Reshape", ["Y_h", "flat"], ["P"])], "P"),
])
def test_rows_that_mix_keep_the_whole_batch(tmp_path, name, extra, out):
    """An op that mixes batch rows after the LSTM: no batch axis, so batch_size must not change the answer."""
    m = _lstm_then(extra, out)
    if name == "reshape_merges_batch":
        m.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    path = _write(tmp_path, m)
    model = fastlstm.load(path)
    assert model.batch_axes is None
    x = np.random.default_rng(5).normal(size=(4, 6, 2)).astype(np.float32)
    expected = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    for bs in (1, 4, None):
        np.testing.assert_allclose(model.predict(x, batch_size=bs), expected, rtol=1e-5, atol=1e-6)


def test_ambiguous_batch_axis_runs_whole(tmp_path):
    """Two symbolic dims and no RNN node to tell which one is the batch: the whole input runs at once."""
    m = _graph([helper.make_node("Relu", ["X"], ["Y"])],
               [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["a", "b"])],
               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = fastlstm.load(_write(tmp_path, m))
    assert model.batch_axes is None
    x = np.random.default_rng(6).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, batch_size=1), np.maximum(x, 0))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)


def test_threads_split_the_batch(tmp_path):
    """With 2 threads and no batch_size, a large batch runs as two slices (the kernels release the GIL); the
    answer is onnxruntime's."""
    case = next(c for c in GOOD if c["name"] == "torch_ts_lstm_seqfirst_states_op14")
    path = os.path.join(DATA, case["file"])
    model = fastlstm.load(path)
    rng = np.random.default_rng(8)
    feeds = {"x": rng.normal(size=(6, 40, 4)).astype(np.float32),
             "h0": rng.normal(size=(1, 40, 6)).astype(np.float32),
             "c0": rng.normal(size=(1, 40, 6)).astype(np.float32)}
    expected = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"]).run(None, feeds)
    saved = fastlstm.config.NUM_THREADS
    try:
        fastlstm.set_num_threads(2)
        xs = model._normalize_inputs(feeds)
        assert model._chunks(xs, model.batch_axes[0], None, 2) == [(0, 20), (20, 40)]
        got = model.predict(feeds)
    finally:
        fastlstm.set_num_threads(saved)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5)


def test_shape_only_values_cached_per_input_shape(tmp_path):
    """Shape -> ... -> ConstantOfShape chains run once per input shape and are reused; alternating shapes stay
    right, and a graph output that is such a value is the caller's own copy."""
    rng = np.random.default_rng(0)
    H, I = 3, 2
    consts = {"W": rng.normal(size=(1, 4 * H, I)).astype(np.float32),
              "R": rng.normal(size=(1, 4 * H, H)).astype(np.float32),
              "one": np.array([1], np.int64), "two": np.array([2], np.int64), "units": np.array([H], np.int64)}
    nodes = [helper.make_node("Shape", ["X"], ["shp"]),
             helper.make_node("Slice", ["shp", "one", "two"], ["n"]),
             helper.make_node("Concat", ["one", "n", "units"], ["h0_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h0_shape"], ["h0"]),
             helper.make_node("LSTM", ["X", "W", "R", "", "", "h0"], ["Y", "Y_h"], hidden_size=H),
             helper.make_node("Identity", ["shp"], ["shp_out"])]
    m = _graph(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", I])],
               [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None),
                helper.make_tensor_value_info("shp_out", TensorProto.INT64, None)],
               [numpy_helper.from_array(v, k) for k, v in consts.items()])
    path = _write(tmp_path, m)
    model = fastlstm.load(path)
    assert len(model._plan.shape_steps) == 5 and [s.node.op_type for s in model._plan.data_steps] == ["LSTM"]
    sess = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    for T, N in [(5, 3), (4, 2), (5, 3), (2, 6)]:
        x = rng.normal(size=(T, N, I)).astype(np.float32)
        got = model.predict(x)
        exp = sess.run(None, {"X": x})
        np.testing.assert_allclose(got[0], exp[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[1], exp[1])
        got[1][:] = -1                                  # the caller's copy: the cached value is untouched
    assert len(model._plan.cache) == 3


def test_identity_output_is_a_copy(tmp_path):
    """An output that is an input passed through Identity is a new array, as onnxruntime returns."""
    m = _graph([helper.make_node("Identity", ["X"], ["Y"])],
               [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 2])],
               [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = fastlstm.load(_write(tmp_path, m))
    x = np.ones((3, 2), np.float32)
    y = model.predict(x)
    y[:] = 5
    np.testing.assert_array_equal(x, 1)


def _model_session_feeds(name, n):
    """The fixture `name` loaded by fastlstm and by onnxruntime, and n feeds of other values (dims by name)."""
    case = next(c for c in GOOD if c["name"] == name)
    path = os.path.join(DATA, case["file"])
    model = fastlstm.load(path)
    sess = ort.InferenceSession(path, _SO, providers=["CPUExecutionProvider"])
    xin = np.load(os.path.join(DATA, case["input_file"]))
    return model, sess, [_feeds_by_dim_name(model, xin, np.random.default_rng(s)) for s in range(n)]


@pytest.mark.parametrize("name", ["torch_ts_lstm_seqfirst_states_op14", "tf2onnx_bilstm_sum_seq_op18",
                                  "torch_ts_gru_seq2seq_op14", "tf2onnx_lstm_return_state", "k3export_gru_loop",
                                  "torch_ts_lstm_nobias_bf_op14", "torch_dynamo_gru_bf"])
def test_outputs_survive_later_calls(name):
    """predict reuses the RNN nodes' work arrays between calls: the arrays it returned earlier must not change
    when the model runs again (same shapes, other values), in one thread or several."""
    model, sess, feeds = _model_session_feeds(name, 3)
    firsts = [model.predict(f) for f in feeds]
    firsts = [f if isinstance(f, list) else [f] for f in firsts]
    kept = [[np.array(o) for o in f] for f in firsts]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as pool:
        again = list(pool.map(model.predict, feeds * 4))
    for f, k, fd in zip(firsts, kept, feeds):
        exp = sess.run(None, fd)
        for o, ko, e in zip(f, k, exp):
            np.testing.assert_array_equal(o, ko)
            np.testing.assert_allclose(o, e, rtol=1e-4, atol=2e-5)
    for a, fd in zip(again, feeds * 4):
        for o, e in zip(a if isinstance(a, list) else [a], sess.run(None, fd)):
            np.testing.assert_allclose(o, e, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("name", ["torch_ts_lstm_nobias_bf_op14", "torch_dynamo_gru_bf"])
def test_batch_first_sequence_output_is_not_copied(name):
    """A batch-first graph (Transpose -> LSTM/GRU -> Squeeze -> Transpose) runs the kernels on the input as it is
    (batch_major) and returns the node's own output array, no transposed copies on either side: the result is a
    view of that array (a copy would own its data), a new one per call, and onnxruntime's values."""
    model, sess, feeds = _model_session_feeds(name, 2)
    outs = [model.predict(f) for f in feeds]
    outs = [o[0] if isinstance(o, list) else o for o in outs]
    assert all(o.base is not None and o.flags.c_contiguous and o.flags.writeable for o in outs)
    assert not np.shares_memory(outs[0], outs[1])
    for o, f in zip(outs, feeds):
        np.testing.assert_allclose(o, sess.run(None, f)[0], rtol=1e-4, atol=2e-5)
