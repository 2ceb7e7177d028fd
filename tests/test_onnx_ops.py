"""The NumPy ONNX operators (fastlstm/loaders/onnx_ops.py, Loop/If/Scan) against onnxruntime, one small graph each,
at the opset versions where the operators changed (axes attribute -> input, Slice attributes -> inputs, ...)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastlstm.loaders.onnx import load_onnx_bytes  # noqa: E402

_SO = ort.SessionOptions()
_SO.log_severity_level = 3
ELEM = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.int32: TensorProto.INT32,
        np.bool_: TensorProto.BOOL, np.float64: TensorProto.DOUBLE}


def make(nodes, feeds, outputs, opset, inits=None):
    """A model over `nodes`: feeds {name: array} are graph inputs (dims dynamic), inits {name: array}."""
    ins = [helper.make_tensor_value_info(n, ELEM[a.dtype.type], ["d%d" % k for k in range(a.ndim)])
           for n, a in feeds.items()]
    outs = [helper.make_empty_tensor_value_info(n) for n in outputs]
    g = helper.make_graph(nodes, "g", ins, outs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)      # output types for onnxruntime (fastlstm ignores them)
    for vi in m.graph.output:
        if not vi.type.tensor_type.elem_type:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return m.SerializeToString()


def compare(nodes, feeds, outputs, opset, inits=None, rtol=1e-5, atol=1e-6):
    data = make(nodes, feeds, outputs, opset, inits)
    expected = ort.InferenceSession(data, _SO, providers=["CPUExecutionProvider"]).run(None, feeds)
    model = load_onnx_bytes(data)
    got = model.predict(dict(feeds))
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for name, g, e in zip(outputs, got, expected):
        assert g.shape == e.shape, f"{name}: {g.shape} vs {e.shape}"
        assert g.dtype == e.dtype, f"{name}: {g.dtype} vs {e.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=name)
    return model


N = helper.make_node
rng = np.random.default_rng(0)
X3 = rng.normal(size=(2, 3, 4)).astype(np.float32)
X4 = rng.normal(size=(2, 1, 3, 1)).astype(np.float32)

CASES = {
    # elementwise and activations
    "unary": ([N(op, ["x"], [op.lower()]) for op in
               ("Abs", "Neg", "Exp", "Tanh", "Sigmoid", "Relu", "Softplus", "Softsign", "Floor", "Ceil", "Erf")],
              {"x": X3}, ["abs", "neg", "exp", "tanh", "sigmoid", "relu", "softplus", "softsign", "floor", "ceil",
                          "erf"], 17, None),
    "param_acts": ([N("LeakyRelu", ["x"], ["a"], alpha=0.3), N("Elu", ["x"], ["b"], alpha=0.7),
                    N("HardSigmoid", ["x"], ["c"], alpha=0.3, beta=0.4), N("Selu", ["x"], ["d"]),
                    N("ThresholdedRelu", ["x"], ["e"], alpha=0.2), N("HardSwish", ["x"], ["f"])],
                   {"x": X3}, list("abcdef"), 17, None),
    "binary": ([N("Add", ["x", "w"], ["a"]), N("Sub", ["x", "w"], ["b"]), N("Mul", ["x", "w"], ["c"]),
                N("Div", ["x", "w"], ["d"]), N("Less", ["x", "w"], ["e"]), N("Greater", ["x", "w"], ["f"]),
                N("Equal", ["i", "j"], ["g"]), N("Max", ["x", "w", "x"], ["h"]), N("Pow", ["ax", "two"], ["k"]),
                N("Div", ["i", "j"], ["idiv"]), N("Mod", ["i", "j"], ["imod"])],
               {"x": X3, "i": np.array([7, -7, 6, -9], np.int64)},
               list("abcdefgh") + ["k", "idiv", "imod"], 17,
               {"w": rng.normal(size=(4,)).astype(np.float32), "j": np.array([2, 2, -4, 4], np.int64),
                "ax": np.abs(X3) + 0.5, "two": np.float32(2.0)}),
    "logic_where": ([N("Less", ["x", "z"], ["l"]), N("Not", ["l"], ["n"]), N("And", ["l", "n"], ["a"]),
                     N("Or", ["l", "n"], ["o"]), N("Where", ["l", "x", "z"], ["w"])],
                    {"x": X3}, ["n", "a", "o", "w"], 17, {"z": np.float32(0)}),
    "clip11": ([N("Clip", ["x", "lo", "hi"], ["y"])], {"x": X3}, ["y"], 11,
               {"lo": np.float32(-0.5), "hi": np.float32(0.6)}),
    "clip6": ([N("Clip", ["x"], ["y"], min=-0.5, max=0.6)], {"x": X3}, ["y"], 6, None),
    "softmax13": ([N("Softmax", ["x"], ["a"], axis=1), N("LogSoftmax", ["x"], ["b"])], {"x": X3}, ["a", "b"], 13,
                  None),
    "global_pools": ([N("GlobalAveragePool", ["x"], ["a"]), N("GlobalMaxPool", ["x"], ["b"]),
                      N("GlobalAveragePool", ["x4"], ["c"]), N("GlobalMaxPool", ["x4"], ["d"])],
                     {"x": X3, "x4": X4}, list("abcd"), 17, None),
    "softmax11_2d_coercion": ([N("Softmax", ["x"], ["a"], axis=1), N("LogSoftmax", ["x"], ["b"])], {"x": X3},
                              ["a", "b"], 11, None),
    # matrix products
    "matmul_gemm": ([N("MatMul", ["x", "w"], ["m"]), N("Gemm", ["a", "b", "c"], ["g"], alpha=0.5, beta=2.0,
                                                       transB=1),
                     N("Gemm", ["at", "b"], ["g2"], transA=1, transB=1)],
                    {"x": X3, "a": rng.normal(size=(3, 4)).astype(np.float32)}, ["m", "g", "g2"], 17,
                    {"w": rng.normal(size=(4, 5)).astype(np.float32), "b": rng.normal(size=(6, 4)).astype(np.float32),
                     "c": rng.normal(size=(6,)).astype(np.float32),
                     "at": rng.normal(size=(4, 3)).astype(np.float32)}),
    "einsum": ([N("Einsum", ["x", "w"], ["y"], equation="btf,fh->bth")], {"x": X3}, ["y"], 17,
               {"w": rng.normal(size=(4, 2)).astype(np.float32)}),
    # shapes
    "shape_ops": ([N("Shape", ["x"], ["s"]), N("Shape", ["x"], ["s2"], start=1), N("Shape", ["x"], ["s3"], end=-1),
                   N("Size", ["x"], ["n"]), N("Reshape", ["x", "shp"], ["r"]), N("Flatten", ["x"], ["f"], axis=2),
                   N("Transpose", ["x"], ["t"], perm=[2, 0, 1]), N("Transpose", ["x"], ["t2"])],
                  {"x": X3}, ["s", "s2", "s3", "n", "r", "f", "t", "t2"], 17,
                  {"shp": np.array([0, -1], np.int64)}),
    "squeeze_unsqueeze_13": ([N("Squeeze", ["x", "ax"], ["s"]), N("Squeeze", ["x"], ["s_all"]),
                              N("Unsqueeze", ["x", "ax2"], ["u"])],
                             {"x": X4}, ["s", "s_all", "u"], 13,
                             {"ax": np.array([1, -1], np.int64), "ax2": np.array([0, -1], np.int64)}),
    "squeeze_unsqueeze_11": ([N("Squeeze", ["x"], ["s"], axes=[1, -1]), N("Unsqueeze", ["x"], ["u"], axes=[0, 5])],
                             {"x": X4}, ["s", "u"], 11, None),
    "slice_10": ([N("Slice", ["x", "st", "en", "ax", "sp"], ["a"]), N("Slice", ["x", "st2", "en2"], ["b"]),
                  N("Slice", ["x", "st3", "en3", "ax3", "sp3"], ["c"])],
                 {"x": X3}, ["a", "b", "c"], 13,
                 {"st": np.array([-1], np.int64), "en": np.array([-(2 ** 62)], np.int64),
                  "ax": np.array([1], np.int64), "sp": np.array([-1], np.int64),
                  "st2": np.array([0, 1], np.int64), "en2": np.array([1, 100], np.int64),
                  "st3": np.array([3, 0], np.int64), "en3": np.array([0, 5], np.int64),
                  "ax3": np.array([2, 0], np.int64), "sp3": np.array([-2, 1], np.int64)}),
    "slice_9_attrs": ([N("Slice", ["x"], ["a"], starts=[1, -2], ends=[3, 100], axes=[1, 2])], {"x": X3}, ["a"], 9,
                      None),
    "split_13": ([N("Split", ["x", "sp"], ["a", "b"], axis=2), N("Split", ["x"], ["c", "d"], axis=-1)],
                 {"x": X3}, ["a", "b", "c", "d"], 13, {"sp": np.array([1, 3], np.int64)}),
    "split_11": ([N("Split", ["x"], ["a", "b"], axis=2, split=[3, 1])], {"x": X3}, ["a", "b"], 11, None),
    "split_18_num_outputs": ([N("Split", ["x"], ["a", "b"], axis=1, num_outputs=2)], {"x": X3}, ["a", "b"], 18, None),
    "concat_expand": ([N("Concat", ["x", "x"], ["c"], axis=-2), N("Expand", ["v", "shp"], ["e"]),
                       N("ConstantOfShape", ["shp"], ["z"], value=numpy_helper.from_array(np.array([1.5], np.float32))),
                       N("ConstantOfShape", ["shp"], ["z0"]), N("Tile", ["x", "rep"], ["t"])],
                      {"x": X3}, ["c", "e", "z", "z0", "t"], 17,
                      {"v": rng.normal(size=(3, 1)).astype(np.float32), "shp": np.array([2, 3, 4], np.int64),
                       "rep": np.array([1, 2, 1], np.int64)}),
    "gather": ([N("Gather", ["emb", "ids"], ["g"]), N("Gather", ["x", "k"], ["g1"], axis=1),
                N("Gather", ["x", "neg"], ["g2"], axis=2), N("GatherElements", ["x", "ge"], ["g3"], axis=1),
                N("GatherND", ["x", "nd"], ["g4"]), N("GatherND", ["x", "ndb"], ["g5"], batch_dims=1)],
               {"x": X3, "ids": np.array([[1, 0, 4], [3, 3, -1]], np.int32)}, ["g", "g1", "g2", "g3", "g4", "g5"], 17,
               {"emb": rng.normal(size=(5, 3)).astype(np.float32), "k": np.int64(2),
                "neg": np.array([-1, 0], np.int64),
                "ge": np.array([[[0, 2, 1, 0]], [[2, 2, 0, 1]]], np.int64),
                "nd": np.array([[0, 1], [1, 2]], np.int64), "ndb": np.array([[2], [0]], np.int64)}),
    "cast_range_cumsum": ([N("Cast", ["x"], ["i"], to=TensorProto.INT64), N("Cast", ["x"], ["b"], to=TensorProto.BOOL),
                           N("Range", ["s", "l", "d"], ["r"]), N("CumSum", ["x", "ax"], ["c"]),
                           N("CumSum", ["x", "ax"], ["c2"], exclusive=1, reverse=1),
                           N("CastLike", ["i", "x"], ["cl"])],
                          {"x": X3 * 3}, ["i", "b", "r", "c", "c2", "cl"], 17,
                          {"s": np.int64(1), "l": np.int64(10), "d": np.int64(3), "ax": np.int64(1)}),
    "reduce_13": ([N("ReduceSum", ["x", "ax"], ["s"], keepdims=0), N("ReduceMean", ["x"], ["m"], axes=[-1]),
                   N("ReduceMax", ["x"], ["mx"], axes=[1], keepdims=0), N("ReduceSum", ["x"], ["all"]),
                   N("ArgMax", ["x"], ["am"], axis=2), N("ReduceL2", ["x"], ["l2"], axes=[0])],
                  {"x": X3}, ["s", "m", "mx", "all", "am", "l2"], 13, {"ax": np.array([0, 2], np.int64)}),
    "reduce_18": ([N("ReduceMean", ["x", "ax"], ["m"]), N("ReduceMax", ["x", "ax"], ["mx"], keepdims=0),
                   N("ReduceMin", ["x"], ["mn"])],
                  {"x": X3}, ["m", "mx", "mn"], 18, {"ax": np.array([1], np.int64)}),
    "pad_reverse_sequence": ([N("Pad", ["x", "pads", "cv"], ["p"]), N("Pad", ["x", "pads"], ["p2"], mode="edge"),
                              N("ReverseSequence", ["xt", "lens"], ["rs"], batch_axis=1, time_axis=0),
                              N("ReverseSequence", ["x", "lens"], ["rs2"], batch_axis=0, time_axis=1)],
                             {"x": X3, "xt": np.ascontiguousarray(X3.transpose(1, 0, 2))}, ["p", "p2", "rs", "rs2"], 17,
                             {"pads": np.array([0, 1, 0, 0, 2, 1], np.int64), "cv": np.float32(0.5),
                              "lens": np.array([3, 1], np.int64)}),
    "norms": ([N("LayerNormalization", ["x", "sc", "bi"], ["ln"], axis=-1, epsilon=1e-3),
               N("BatchNormalization", ["xb", "sc3", "bi3", "mu", "var"], ["bn"])],
              {"x": X3, "xb": np.ascontiguousarray(X3.transpose(0, 2, 1))}, ["ln", "bn"], 17,
              {"sc": rng.normal(size=(4,)).astype(np.float32), "bi": rng.normal(size=(4,)).astype(np.float32),
               "sc3": rng.normal(size=(4,)).astype(np.float32), "bi3": rng.normal(size=(4,)).astype(np.float32),
               "mu": rng.normal(size=(4,)).astype(np.float32),
               "var": np.abs(rng.normal(size=(4,))).astype(np.float32)}),
    "constant_and_identity": ([N("Constant", [], ["c"], value=numpy_helper.from_array(np.arange(6, dtype=np.float32)
                                                                                       .reshape(2, 3))),
                               N("Constant", [], ["ci"], value_ints=[1, 2]), N("Constant", [], ["cf"], value_float=2.5),
                               N("Identity", ["x"], ["i"]), N("Dropout", ["x"], ["dr"]),
                               N("Add", ["x", "cf"], ["a"])],
                              {"x": X3}, ["c", "ci", "i", "dr", "a"], 17, None),
    "topk_onehot_nonzero": ([N("TopK", ["x", "k"], ["v", "ix"], axis=-1), N("OneHot", ["ids", "dep", "vals"], ["oh"]),
                             N("NonZero", ["ids"], ["nz"])],
                            {"x": X3, "ids": np.array([[0, 2], [1, 0]], np.int64)}, ["v", "ix", "oh", "nz"], 17,
                            {"k": np.array([2], np.int64), "dep": np.int64(3),
                             "vals": np.array([0.0, 1.0], np.float32)}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    nodes, feeds, outputs, opset, inits = CASES[name]
    compare(nodes, feeds, outputs, opset, inits)


def test_constant_subgraphs_are_folded_at_load():
    """Shape arithmetic on initializers runs once at load; only the data-dependent nodes remain."""
    nodes = [N("Shape", ["w"], ["s"]), N("Gather", ["s", "zero"], ["n"]), N("Unsqueeze", ["n", "ax"], ["nn"]),
             N("Concat", ["nn", "minus1"], ["shp"], axis=0), N("Reshape", ["x", "shp"], ["r"]),
             N("MatMul", ["r", "w2"], ["y"])]
    inits = {"w": np.zeros((2, 7), np.float32), "zero": np.int64(0), "ax": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64), "w2": rng.normal(size=(6, 3)).astype(np.float32)}
    x = rng.normal(size=(2, 3, 2)).astype(np.float32)
    model = compare(nodes, {"x": x}, ["y"], 17, inits)
    assert [s.node.op_type for s in model._program.steps] == ["Reshape", "MatMul"]


def test_shapes_come_from_the_data_not_the_declarations():
    """Declared dims are checked on the inputs (as onnxruntime does) but intermediate/output declarations are
    ignored: a graph declaring a wrong output shape still gives the right result for any batch size."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Shape", ["t"], ["s"]),
             N("ConstantOfShape", ["s"], ["z"]), N("Add", ["t", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 7, 7])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = load_onnx_bytes(m.SerializeToString())
    for B, T in ((1, 1), (3, 5), (8, 2)):
        x = rng.normal(size=(B, T, 4)).astype(np.float32)
        np.testing.assert_array_equal(model.predict(x), x.transpose(1, 0, 2))
    with pytest.raises(ValueError, match="expects shape"):
        model.predict(np.zeros((2, 3, 5), np.float32))


def _loop_model(opset=17, with_cond=True):
    """h_t = tanh(x_t @ W + h_{t-1} @ U) over the time axis of x (T, N, I) with a Loop: a minimal unrolled RNN,
    scan output = every h, carried = (h, counter)."""
    H, I = 3, 2
    body = helper.make_graph(
        [N("Gather", ["x", "it"], ["xt"], axis=0), N("MatMul", ["xt", "W"], ["a"]), N("MatMul", ["h_in", "U"], ["b"]),
         N("Add", ["a", "b"], ["s"]), N("Tanh", ["s"], ["h_out"]), N("Identity", ["h_out"], ["scan"]),
         N("Add", ["k_in", "one"], ["k_out"]), N("Identity", ["c_in"], ["c_out"])],
        "body",
        [helper.make_tensor_value_info("it", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("k_in", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("k_out", TensorProto.INT64, []),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.int64(1), "one")])
    nodes = [N("Shape", ["x"], ["shp"]), N("Gather", ["shp", "zero"], ["T"]), N("Gather", ["shp", "one_i"], ["Nb"]),
             N("Unsqueeze", ["Nb", "ax0"], ["Nb1"]), N("Concat", ["Nb1", "Hc"], ["hshape"], axis=0),
             N("ConstantOfShape", ["hshape"], ["h0"]),
             N("Loop", ["T", "true" if with_cond else "", "h0", "k0"], ["hT", "kT", "hs"], body=body)]
    inits = {"zero": np.int64(0), "one_i": np.int64(1), "ax0": np.array([0], np.int64),
             "Hc": np.array([H], np.int64), "true": np.bool_(True), "k0": np.int64(0),
             "W": rng.normal(size=(I, H)).astype(np.float32), "U": rng.normal(size=(H, H)).astype(np.float32)}
    return nodes, inits


@pytest.mark.parametrize("with_cond", [True, False])
def test_loop_runs_its_body_generically(with_cond):
    nodes, inits = _loop_model(with_cond=with_cond)
    for T, Nb in ((1, 1), (5, 3)):
        x = rng.normal(size=(T, Nb, 2)).astype(np.float32)
        model = compare(nodes, {"x": x}, ["hT", "kT", "hs"], 17, inits)
    assert "generic" in model.loops[0]


def test_loop_condition_stops_early():
    """A while-loop: stop when the counter reaches 3, even though M allows 10."""
    body = helper.make_graph(
        [N("Add", ["v_in", "one"], ["v_out"]), N("Less", ["v_out", "three"], ["c_out"]),
         N("Mul", ["v_out", "x"], ["scan"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(3), "three")])
    nodes = [N("Loop", ["M", "c", "v0"], ["vT", "scans"], body=body)]
    inits = {"M": np.int64(10), "c": np.bool_(True), "v0": np.float32(0)}
    compare(nodes, {"x": X3}, ["vT", "scans"], 17, inits)


def test_if_and_scan():
    then_g = helper.make_graph([N("Add", ["x", "x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([N("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    scan_body = helper.make_graph(
        [N("Add", ["acc_in", "xs"], ["acc_out"]), N("Identity", ["acc_out"], ["ys"])], "sb",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, None)])
    nodes = [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["c"]),
             N("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
             N("Scan", ["acc0", "x"], ["accT", "ys"], body=scan_body, num_scan_inputs=1, scan_input_axes=[1],
               scan_output_axes=[1])]
    inits = {"zero": np.float32(0), "acc0": np.zeros((2, 4), np.float32)}
    for sign in (1, -1):
        compare(nodes, {"x": sign * np.abs(X3)}, ["y", "accT", "ys"], 13, inits)
