"""ONNX fixture helpers shared by the onnx_keras and onnx_torch families (needs only onnx, onnxruntime, numpy).

write_case() saves one tests/data/onnx/<case>/ folder: model.onnx, input.npz (keyed by graph input name) and
expected.npz (output_0..k in graph output order, computed by onnxruntime on the saved file), checks the saved
outputs against the source framework's own outputs, and returns the manifest entry (schema of
../shared/conformance/manifest.json plus "source_max_abs_diff").

Also here: the hand-built single-node cases (onnx.helper, opsets 7/14/22) with a float64 NumPy reference of the
ONNX LSTM/GRU equations as their cross-check, and the expect_error cases that need no exporter.
"""
import collections
import os

import numpy as np

from .common import add_cases, case_dir, save_npz

SUITE = "onnx"
TOL = {"atol": 1e-5, "rtol": 1e-4}
SOURCE_TOL = 1e-4          # the build stops when onnxruntime and the source framework disagree by more
NOTABLE_OPS = ("LSTM", "GRU", "Loop", "ReverseSequence", "Gather", "Gemm", "HardSigmoid", "Softmax", "Split",
               "Conv", "NonMaxSuppression")


# ----------------------------------------------------------------------------------------------- graph facts
def op_counts(model):
    """Counter of node op types in the graph and every subgraph (Loop/If/Scan bodies)."""
    import onnx

    counts = collections.Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for g in a.graphs:
                    walk(g)

    walk(model.graph)
    return counts


def _attr_value(a):
    import onnx

    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else (round(x, 6) if isinstance(x, float) else x) for x in v]
    return round(v, 6) if isinstance(v, float) else v


def rnn_nodes(model):
    """LSTM/GRU nodes of the main graph: op, attributes, inputs (initializers with their shapes), outputs."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    consts = {}
    for n in model.graph.node:                 # TorchScript keeps weights in Constant nodes
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = list(a.t.dims)
    nodes = []
    for n in model.graph.node:
        if n.op_type not in ("LSTM", "GRU"):
            continue
        ins = []
        for name in n.input:
            if not name:
                ins.append("<absent>")
            elif name in inits:
                ins.append(f"{name} {inits[name]}")
            elif name in consts:
                ins.append(f"{name} {consts[name]} (Constant)")
            else:
                ins.append(name)
        nodes.append({"op": n.op_type, "attrs": {a.name: _attr_value(a) for a in n.attribute},
                      "inputs": ins, "outputs": [o if o else "<absent>" for o in n.output]})
    return nodes


def opsets(model):
    return {(o.domain or "ai.onnx"): o.version for o in model.opset_import}


def auto_features(model):
    """'onnx:*' tags from the ops present and the RNN nodes' attributes and inputs."""
    ops = op_counts(model)
    tags = [f"onnx:{op}" for op in NOTABLE_OPS if op in ops]
    for n in rnn_nodes(model):
        op, at = n["op"], n["attrs"]
        if at.get("direction", "forward") != "forward":
            tags.append(f"onnx:{op}:direction={at['direction']}")
        for key in ("clip", "input_forget", "activations", "activation_alpha", "activation_beta"):
            if key in at:
                tags.append(f"onnx:{op}:{key}")
        if op == "GRU":
            tags.append(f"onnx:GRU:linear_before_reset={at.get('linear_before_reset', 0)}")
        if at.get("layout", 0):
            tags.append(f"onnx:{op}:layout=1")
        names = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
        for name, val in zip(names, n["inputs"]):
            if name in ("sequence_lens", "initial_h", "initial_c", "P") and val != "<absent>":
                tags.append(f"onnx:{op}:{name}")
        if len(n["inputs"]) < 4 or n["inputs"][3] == "<absent>":
            tags.append(f"onnx:{op}:no_B")
        outs = n["outputs"]
        if "<absent>" in outs or len(outs) < (3 if op == "LSTM" else 2):
            tags.append(f"onnx:{op}:outputs_omitted")
    return list(dict.fromkeys(tags))


# ----------------------------------------------------------------------------------------------- running
_NP_OF_ONNX = {1: np.float32, 6: np.int32, 7: np.int64, 11: np.float64}


def run_ort(path, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ort.set_default_logger_severity(3)      # the refusals some cases provoke on purpose are not news
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def write_case(out, name, model, feeds, *, fmt, description, features, source_outputs, source, framework,
               optional=False, extra=None, tol=None):
    """Save model (ModelProto) + feeds + onnxruntime outputs as tests/data/onnx/<name>/; return its manifest entry.

    feeds: dict graph-input-name -> array, dtype exactly as the graph declares. source_outputs: the exporting
    framework's outputs for the same feeds in graph output order (None: no independent source).
    """
    import onnx

    d = case_dir(out, SUITE, name)
    model_path = os.path.join(d, "model.onnx")
    onnx.save(model, model_path)
    model = onnx.load(model_path)
    in_names = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    out_names = [o.name for o in model.graph.output]
    assert sorted(in_names) == sorted(feeds), (name, in_names, list(feeds))
    for i in model.graph.input:
        if i.name in feeds:
            want = _NP_OF_ONNX[i.type.tensor_type.elem_type]
            assert feeds[i.name].dtype == want, (name, i.name, feeds[i.name].dtype, want)
    feeds = {k: feeds[k] for k in in_names}
    outs = run_ort(model_path, feeds)
    again = run_ort(model_path, feeds)
    determinism = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(outs, again))
    save_npz(os.path.join(d, "input.npz"), **feeds)
    save_npz(os.path.join(d, "expected.npz"), **{f"output_{k}": o for k, o in enumerate(outs)})

    entry = {
        "name": name, "file": f"{name}/model.onnx", "format": fmt,
        "input_file": f"{name}/input.npz", "input_names": in_names,
        "input_dtypes": [str(feeds[n].dtype) for n in in_names],
        "input_shapes": [list(feeds[n].shape) for n in in_names],
        "expected_file": f"{name}/expected.npz", "output_names": out_names,
        "output_shapes": [list(o.shape) for o in outs],
        "declared_input_shapes": [_declared(i) for i in model.graph.input if i.name in feeds],
        "declared_output_shapes": [_declared(o) for o in model.graph.output],
        "reference": "onnxruntime CPU on the saved file",
        "features": list(dict.fromkeys(list(features) + auto_features(model))),
        "description": description,
        "tolerance": dict(tol or TOL), "expect_error": False, "optional": bool(optional),
        "onnx_ops": sorted(op_counts(model)), "onnx_op_counts": dict(sorted(op_counts(model).items())),
        "opset": opsets(model), "rnn_nodes": rnn_nodes(model),
        "determinism_max_abs_diff": determinism, "framework": framework,
    }
    stale = [f"{n} declared {_declared(o)}, runs as {list(r.shape)}"
             for n, o, r in zip(out_names, model.graph.output, outs)
             if any(isinstance(d, int) and d != a for d, a in zip(_declared(o), r.shape))]
    if stale:            # exporters declare the example's sizes on outputs that are really dynamic
        entry["description"] += "; declared output shape is stale: " + "; ".join(stale)
        entry["features"].append("stale_declared_output_shape")
    if source_outputs is not None:
        assert len(source_outputs) == len(outs), (name, len(source_outputs), len(outs))
        diff = 0.0
        for k, (o, s) in enumerate(zip(outs, source_outputs)):
            s = np.asarray(s)
            assert o.shape == s.shape, (name, k, o.shape, s.shape)
            if o.size:
                diff = max(diff, float(np.max(np.abs(o.astype(np.float64) - s))))
        assert diff <= SOURCE_TOL, f"{name}: onnxruntime vs {source}: max abs diff {diff:.3g}"
        entry["source"] = source
        entry["source_max_abs_diff"] = diff
    entry.update(extra or {})
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name:48s} {size / 1024:7.1f} KB  source diff {entry.get('source_max_abs_diff', float('nan')):.2e}"
          f"  ops {len(entry['onnx_ops'])}")
    return entry


def _declared(vi):
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else None) for d in dims]


def error_entry(name, fmt, features, description, hint, file="model.onnx"):
    return {"name": name, "file": f"{name}/{file}", "format": fmt, "input_file": None, "input_names": [],
            "expected_file": None, "output_names": [], "features": features, "description": description,
            "expect_error": True, "expected_error_hint": hint, "optional": False}


def wanted(name, name_filter):
    return name_filter in name


# ----------------------------------------------------------------------------------------------- NumPy reference
# ONNX LSTM (gates i,o,f,c in W/R/B; P = [Pi, Po, Pf]), per direction, layout 0:
#   i = f(clip(x Wi' + h Ri' + Pi*c + Wbi + Rbi))      f = f(clip(x Wf' + h Rf' + Pf*c + Wbf + Rbf))
#   g = g(clip(x Wc' + h Rc' + Wbc + Rbc))              c = f*c + i*g   (input_forget: f = 1 - i)
#   o = f(clip(x Wo' + h Ro' + Po*c_new + Wbo + Rbo))  h = o * h(c)
# ONNX GRU (gates z,r,h):  z = f(..), r = f(..),  lbr=0: h~ = g(x Wh' + (r*h) Rh' + Rbh + Wbh)
#   lbr=1: h~ = g(x Wh' + r*(h Rh' + Rbh) + Wbh);   h = (1-z)*h~ + z*h
# sequence_lens: steps t >= len are skipped, Y[t] = 0 there; reverse runs t = len-1 .. 0; len 0 -> Y_h = 0.
def _activation(name, alpha, beta):
    f = {
        "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "Tanh": np.tanh,
        "Relu": lambda x: np.maximum(x, 0.0),
        "LeakyRelu": lambda x: np.where(x >= 0, x, alpha * x),
        "ThresholdedRelu": lambda x: np.where(x > alpha, x, 0.0),
        "ScaledTanh": lambda x: alpha * np.tanh(beta * x),
        "HardSigmoid": lambda x: np.clip(alpha * x + beta, 0.0, 1.0),
        "Elu": lambda x: np.where(x >= 0, x, alpha * (np.exp(x) - 1.0)),
        "Softsign": lambda x: x / (1.0 + np.abs(x)),
        "Softplus": lambda x: np.log1p(np.exp(x)),
        "Affine": lambda x: alpha * x + beta,
    }
    return f[name]


_ALPHA_DEFAULT = {"LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "HardSigmoid": 0.2, "Elu": 1.0}
_BETA_DEFAULT = {"HardSigmoid": 0.5}
_TAKES_ALPHA = ("LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu", "Affine")
_TAKES_BETA = ("ScaledTanh", "HardSigmoid", "Affine")


def activation_functions(names, alphas, betas):
    """alpha/beta lists are consumed in order by the activations that take them (onnxruntime behaviour)."""
    alphas, betas, fns = list(alphas), list(betas), []
    for name in names:
        a = alphas.pop(0) if name in _TAKES_ALPHA and alphas else _ALPHA_DEFAULT.get(name)
        b = betas.pop(0) if name in _TAKES_BETA and betas else _BETA_DEFAULT.get(name)
        fns.append(_activation(name, a, b))
    return fns


def onnx_rnn_reference(op, x, W, R, B=None, seq_lens=None, h0=None, c0=None, P=None, hidden_size=None,
                       direction="forward", activations=None, activation_alpha=(), activation_beta=(),
                       clip=None, input_forget=0, linear_before_reset=0):
    """float64 ONNX LSTM/GRU, layout 0. x [T,N,I]; returns Y [T,D,N,H], Y_h [D,N,H] (, Y_c [D,N,H])."""
    x = x.astype(np.float64)
    T, N, _ = x.shape
    D, G = W.shape[0], (4 if op == "LSTM" else 3)
    H = hidden_size
    n_act = 3 if op == "LSTM" else 2
    if activations is None:
        activations = (["Sigmoid", "Tanh", "Tanh"] if op == "LSTM" else ["Sigmoid", "Tanh"]) * D
    acts = activation_functions(activations, activation_alpha, activation_beta)
    B = np.zeros((D, 2 * G * H)) if B is None else B.astype(np.float64)
    lens = np.full(N, T) if seq_lens is None else np.asarray(seq_lens)
    h0 = np.zeros((D, N, H)) if h0 is None else h0.astype(np.float64)
    c0 = np.zeros((D, N, H)) if c0 is None else c0.astype(np.float64)
    P = np.zeros((D, 3 * H)) if P is None else P.astype(np.float64)
    cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    Y = np.zeros((T, D, N, H))
    Yh, Yc = np.zeros((D, N, H)), np.zeros((D, N, H))
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]
    for d in range(D):
        f, g, hf = (acts[d * n_act + k] for k in range(n_act)) if op == "LSTM" else (*acts[d * 2:d * 2 + 2], None)
        Wd, Rd = W[d].astype(np.float64), R[d].astype(np.float64)
        Wb, Rb = B[d, :G * H], B[d, G * H:]
        for n in range(N):
            L = int(lens[n])
            h, c = h0[d, n].copy(), c0[d, n].copy()
            steps = range(L - 1, -1, -1) if reverse[d] else range(L)
            for t in steps:
                xw = Wd @ x[t, n] + Wb
                if op == "LSTM":
                    z = xw + Rd @ h + Rb
                    zi, zo, zf, zc = z[:H], z[H:2 * H], z[2 * H:3 * H], z[3 * H:]
                    i = f(cl(zi + P[d, :H] * c))
                    fg = 1.0 - i if input_forget else f(cl(zf + P[d, 2 * H:] * c))
                    c = fg * c + i * g(cl(zc))
                    o = f(cl(zo + P[d, H:2 * H] * c))
                    h = o * hf(c)
                else:
                    hr = Rd @ h
                    z = f(cl(xw[:H] + hr[:H] + Rb[:H]))
                    r = f(cl(xw[H:2 * H] + hr[H:2 * H] + Rb[H:2 * H]))
                    if linear_before_reset:
                        hh = g(cl(xw[2 * H:] + r * (hr[2 * H:] + Rb[2 * H:])))
                    else:
                        hh = g(cl(xw[2 * H:] + Rd[2 * H:] @ (r * h) + Rb[2 * H:]))
                    h = (1.0 - z) * hh + z * h
                Y[t, d, n] = h
            if L > 0:
                Yh[d, n], Yc[d, n] = h, c
    return (Y, Yh, Yc) if op == "LSTM" else (Y, Yh)


# ----------------------------------------------------------------------------------------------- hand-built nodes
def _helper_model(nodes, inputs, outputs, inits, opset):
    import onnx
    from onnx import helper as oh, numpy_helper as nh

    g = oh.make_graph(nodes, "rnn_node", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], producer_name="onnx.helper (fastlstm goldens)")
    m.ir_version = 7 if opset < 15 else (8 if opset < 21 else 10)
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, dtype, dims):
    from onnx import helper as oh, TensorProto

    elem = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32, np.int64: TensorProto.INT64}[dtype]
    return oh.make_tensor_value_info(name, elem, dims)


def _helper_specs():
    """(name, opset, op, config) for the hand-built single-node cases."""
    s = []

    def add(name, opset, op, description, T=6, N=4, I=5, H=4, direction="forward", attrs=None, lens=None,
            lens_as_input=False, states=None, peephole=False, outputs=("Y", "Y_h", "Y_c"), w_scale=0.5, bias=True,
            layout=0, features=()):
        if op == "GRU":
            outputs = tuple(o for o in outputs if o != "Y_c")
        s.append(dict(name=name, opset=opset, op=op, description=description, T=T, N=N, I=I, H=H,
                      direction=direction, attrs=attrs or {}, lens=lens, lens_as_input=lens_as_input,
                      states=states, peephole=peephole, outputs=outputs, w_scale=w_scale, bias=bias,
                      layout=layout, features=list(features)))

    add("helper_lstm_peephole_states_op7", 7, "LSTM",
        "single LSTM node, opset 7: peepholes P [1,3H] (order i,o,f; o uses the NEW cell), initial_h/initial_c "
        "as graph inputs, outputs Y, Y_h, Y_c", states="inputs", peephole=True, features=["peephole", "initial_state"])
    add("helper_lstm_clip_op14", 14, "LSTM",
        "LSTM with clip=1.2 (every gate pre-activation clamped; large weights so clipping is active), opset 14",
        attrs={"clip": 1.2}, w_scale=1.5, features=["clip"])
    add("helper_lstm_input_forget_op22", 22, "LSTM",
        "LSTM with input_forget=1 (f = 1 - i), opset 22", attrs={"input_forget": 1}, features=["input_forget"])
    add("helper_lstm_acts_leakyrelu_op14", 14, "LSTM",
        "activations [Sigmoid, LeakyRelu, Tanh], activation_alpha [0.2]: the single alpha goes to LeakyRelu "
        "(the first activation that takes one), not to position 0",
        attrs={"activations": ["Sigmoid", "LeakyRelu", "Tanh"], "activation_alpha": [0.2]},
        features=["activations", "activation_alpha"])
    add("helper_lstm_bidir_acts_alpha_beta_op7", 7, "LSTM",
        "bidirectional LSTM, activations forward [HardSigmoid, ScaledTanh, Affine], reverse [Sigmoid, LeakyRelu, "
        "Softsign]; alpha [0.25, 0.8, 0.9, 0.1] and beta [0.45, 1.3, 0.05] consumed in order by the activations that "
        "take them (HardSigmoid a/b, ScaledTanh a/b, Affine a/b, LeakyRelu a)", direction="bidirectional",
        attrs={"activations": ["HardSigmoid", "ScaledTanh", "Affine", "Sigmoid", "LeakyRelu", "Softsign"],
               "activation_alpha": [0.25, 0.8, 0.9, 0.1], "activation_beta": [0.45, 1.3, 0.05]},
        features=["activations", "activation_alpha", "activation_beta", "bidirectional"])
    add("helper_lstm_seqlens_forward_op14", 14, "LSTM",
        "forward LSTM with sequence_lens [6, 0, 3, 6] (initializer) and initial_h/c initializers: Y is 0 past each "
        "row's length, Y_h/Y_c are the states after the last valid step, a length-0 row gives Y_h = Y_c = 0 "
        "(not initial_h); x past the lengths is non-zero garbage", lens=[6, 0, 3, 6], states="inits",
        features=["sequence_lens", "sequence_len_zero", "initial_state"])
    add("helper_lstm_reverse_seqlens_op14", 14, "LSTM",
        "direction=reverse with sequence_lens [2, 6, 5, 1]: each row runs t = len-1 .. 0, Y in original time order",
        direction="reverse", lens=[2, 6, 5, 1], features=["sequence_lens", "reverse"])
    add("helper_lstm_bidir_seqlens_states_op22", 22, "LSTM",
        "bidirectional LSTM, opset 22; X, sequence_lens [N] int32, initial_h [2,N,H], initial_c [2,N,H] all graph "
        "inputs (recorded at N=4 with lengths [6, 3, 0, 5])", direction="bidirectional", lens=[6, 3, 0, 5],
        lens_as_input=True, states="inputs",
        features=["sequence_lens", "sequence_len_zero", "initial_state", "bidirectional"])
    add("helper_lstm_only_yh_op14", 14, "LSTM",
        "LSTM node with outputs ['', 'Y_h'] (Y empty name, Y_c omitted): the graph output is Y_h only",
        outputs=("", "Y_h"), features=["outputs_omitted"])
    add("helper_gru_lbr0_clip_op7", 7, "GRU",
        "GRU linear_before_reset=0 (r applied before Rh) with clip=1.5, opset 7",
        attrs={"linear_before_reset": 0, "clip": 1.5}, w_scale=1.2, features=["clip", "linear_before_reset=0"])
    add("helper_gru_lbr1_clip_bidir_op14", 14, "GRU",
        "bidirectional GRU linear_before_reset=1 with clip=1.5 and initial_h (graph input), opset 14",
        direction="bidirectional", attrs={"linear_before_reset": 1, "clip": 1.5}, states="inputs", w_scale=1.2,
        outputs=("Y", "Y_h"), features=["clip", "linear_before_reset=1", "bidirectional", "initial_state"])
    add("helper_gru_reverse_seqlens_acts_only_yh_op22", 22, "GRU",
        "GRU direction=reverse, linear_before_reset=1, activations [HardSigmoid, Softsign] alpha [0.3] beta [0.6], "
        "sequence_lens [4, 6, 0, 2] (initializer); node outputs ['', 'Y_h']", direction="reverse",
        attrs={"linear_before_reset": 1, "activations": ["HardSigmoid", "Softsign"], "activation_alpha": [0.3],
               "activation_beta": [0.6]}, lens=[4, 6, 0, 2], outputs=("", "Y_h"),
        features=["sequence_lens", "reverse", "activations", "outputs_omitted"])
    add("helper_gru_no_bias_op14", 14, "GRU",
        "GRU without B (input absent: zero biases), linear_before_reset=0", attrs={"linear_before_reset": 0},
        bias=False, outputs=("Y", "Y_h"), features=["no_bias"])
    add("helper_lstm_layout1_bidir_op14", 14, "LSTM",
        "layout=1 (batch-major X [N,T,I], Y [N,T,D,H], states [N,D,H]), bidirectional, initial_h/c graph inputs. "
        "onnxruntime refuses layout=1: expected outputs come from the equivalent layout=0 node run on transposed "
        "inputs, transposed back", direction="bidirectional", states="inputs", layout=1,
        features=["layout1", "bidirectional", "initial_state"])
    add("helper_gru_layout1_op22", 22, "GRU",
        "layout=1 GRU (linear_before_reset=1) with sequence_lens [5, 2, 6, 0], opset 22; expected from the layout=0 "
        "equivalent (onnxruntime refuses layout=1)", attrs={"linear_before_reset": 1}, lens=[5, 2, 6, 0], layout=1,
        outputs=("Y", "Y_h"), features=["layout1", "sequence_lens"])
    return s


def _build_helper(spec, rng):
    """-> (model, feeds, reference outputs, layout0 model or None)."""
    op, T, N, I, H = spec["op"], spec["T"], spec["N"], spec["I"], spec["H"]
    G = 4 if op == "LSTM" else 3
    D = 2 if spec["direction"] == "bidirectional" else 1
    f32 = np.float32
    W = (rng.normal(0, spec["w_scale"], (D, G * H, I)) / np.sqrt(I) * 2).astype(f32)
    R = (rng.normal(0, spec["w_scale"], (D, G * H, H)) / np.sqrt(H) * 2).astype(f32)
    B = rng.uniform(-0.6, 0.6, (D, 2 * G * H)).astype(f32)
    x = rng.normal(0, 1.0, (T, N, I)).astype(f32)
    inits = {"W": W, "R": R}
    if spec["bias"]:
        inits["B"] = B
    lens = None if spec["lens"] is None else np.asarray(spec["lens"], np.int32)
    h0 = rng.normal(0, 0.5, (D, N, H)).astype(f32) if spec["states"] else None
    c0 = rng.normal(0, 0.8, (D, N, H)).astype(f32) if spec["states"] and op == "LSTM" else None
    P = rng.normal(0, 0.5, (D, 3 * H)).astype(f32) if spec["peephole"] else None
    layout = spec["layout"]

    def to_l1(a, kind):          # layout-0 array -> layout-1 array
        if a is None:
            return None
        return np.ascontiguousarray(a.transpose(2, 0, 1, 3) if kind == "y" else a.transpose(1, 0, 2))

    feeds = {"X": to_l1(x, "x") if layout else x}
    graph_inputs = [_vi("X", f32, [N, T, I] if layout else [T, N, I])]
    node_inputs = ["X", "W", "R", "B" if spec["bias"] else ""]
    if lens is not None:
        node_inputs.append("sequence_lens")
        if spec["lens_as_input"]:
            feeds["sequence_lens"] = lens
            graph_inputs.append(_vi("sequence_lens", np.int32, [N]))
        else:
            inits["sequence_lens"] = lens
    elif h0 is not None or P is not None:
        node_inputs.append("")
    for nm, arr in (("initial_h", h0), ("initial_c", c0)):
        if arr is None:
            continue
        node_inputs.append(nm)
        a = to_l1(arr, "state") if layout else arr
        if spec["states"] == "inputs":
            feeds[nm] = a
            graph_inputs.append(_vi(nm, f32, list(a.shape)))
        else:
            inits[nm] = a
    if P is not None:
        node_inputs.append("P")
        inits["P"] = P
    while node_inputs and node_inputs[-1] == "":
        node_inputs.pop()

    attrs = dict(hidden_size=H, **spec["attrs"])
    if spec["direction"] != "forward":
        attrs["direction"] = spec["direction"]
    ref = onnx_rnn_reference(op, x, W, R, B if spec["bias"] else None, lens, h0, c0, P, **attrs)
    names = ["Y", "Y_h", "Y_c"]
    out_shapes = {"Y": [T, D, N, H], "Y_h": [D, N, H], "Y_c": [D, N, H]}
    if layout:
        out_shapes = {"Y": [N, T, D, H], "Y_h": [N, D, H], "Y_c": [N, D, H]}
        ref = (to_l1(ref[0], "y"),) + tuple(to_l1(r, "state") for r in ref[1:])
    node_outputs = list(spec["outputs"])
    graph_outputs = [_vi(o, f32, out_shapes[o]) for o in node_outputs if o]
    ref_outputs = [ref[names.index(o)] for o in node_outputs if o]

    from onnx import helper as oh

    def model_for(lay):
        a = dict(attrs)
        if spec["opset"] >= 14:
            a["layout"] = lay
        node = oh.make_node(op, node_inputs, node_outputs, **a)
        return _helper_model([node], graph_inputs, graph_outputs, inits, spec["opset"])

    model = model_for(layout)
    model0 = None
    if layout:       # same node with layout 0, wrapped in Transposes: X, states in; Y, Y_h, Y_c out
        ins0 = [_vi("X", f32, [N, T, I])] + graph_inputs[1:]
        nodes, node_in0 = [oh.make_node("Transpose", ["X"], ["X_t"], perm=[1, 0, 2])], ["X_t"] + node_inputs[1:]
        for k, nm in enumerate(node_in0):
            if nm in ("initial_h", "initial_c"):
                nodes.append(oh.make_node("Transpose", [nm], [nm + "_t"], perm=[1, 0, 2]))
                node_in0[k] = nm + "_t"
        node_out0 = [o + "_t" if o else "" for o in node_outputs]
        a = dict(attrs, layout=0) if spec["opset"] >= 14 else dict(attrs)
        nodes.append(oh.make_node(op, node_in0, node_out0, **a))
        for o in node_outputs:
            if o:
                perm = [2, 0, 1, 3] if o == "Y" else [1, 0, 2]
                nodes.append(oh.make_node("Transpose", [o + "_t"], [o], perm=perm))
        model0 = _helper_model(nodes, ins0, graph_outputs, inits, spec["opset"])
    return model, feeds, ref_outputs, model0


def build_helper_cases(out, name_filter):
    import onnx
    import onnxruntime

    fw = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    cases = []
    for k, spec in enumerate(_helper_specs()):
        if not wanted(spec["name"], name_filter):
            continue
        rng = np.random.default_rng(1000 + k)
        model, feeds, ref, model0 = _build_helper(spec, rng)
        extra = {}
        if model0 is not None:
            # onnxruntime refuses layout=1: run the layout-0 equivalent, then store the layout-1 model.
            d = case_dir(out, SUITE, spec["name"])
            tmp = os.path.join(d, "layout0_equivalent.onnx")
            onnx.save(model0, tmp)
            outs0 = run_ort(tmp, feeds)
            os.remove(tmp)
            entry = write_case_precomputed(out, spec["name"], model, feeds, outs0, ref, spec, fw)
        else:
            entry = write_case(out, spec["name"], model, feeds, fmt="onnx-helper", description=spec["description"],
                               features=spec["features"], source_outputs=ref,
                               source="float64 NumPy reference of the ONNX equations (tools/goldens/onnx_util.py)",
                               framework=fw, extra=extra)
        cases.append(entry)
    cases += _error_cases(out, name_filter)
    add_cases(out, SUITE, cases)


def write_case_precomputed(out, name, model, feeds, outs, ref, spec, fw):
    """layout=1 case: the model onnxruntime refuses, with outputs from its layout-0 equivalent."""
    import onnx

    d = case_dir(out, SUITE, name)
    path = os.path.join(d, "model.onnx")
    onnx.save(model, path)
    in_names = [i.name for i in model.graph.input]
    save_npz(os.path.join(d, "input.npz"), **feeds)
    save_npz(os.path.join(d, "expected.npz"), **{f"output_{k}": o for k, o in enumerate(outs)})
    diff = max(float(np.max(np.abs(o.astype(np.float64) - r))) for o, r in zip(outs, ref))
    assert diff <= SOURCE_TOL, (name, diff)
    try:
        run_ort(path, feeds)
        raise AssertionError(f"{name}: onnxruntime now runs layout=1; compute expected from the file itself")
    except AssertionError:
        raise
    except Exception:            # noqa: BLE001 - the refusal this case documents
        pass
    entry = {
        "name": name, "file": f"{name}/model.onnx", "format": "onnx-helper",
        "input_file": f"{name}/input.npz", "input_names": in_names,
        "input_dtypes": [str(feeds[n].dtype) for n in in_names],
        "input_shapes": [list(feeds[n].shape) for n in in_names],
        "expected_file": f"{name}/expected.npz", "output_names": [o.name for o in model.graph.output],
        "output_shapes": [list(o.shape) for o in outs],
        "declared_input_shapes": [_declared(i) for i in model.graph.input],
        "declared_output_shapes": [_declared(o) for o in model.graph.output],
        "reference": "onnxruntime CPU on the equivalent layout=0 graph (Transpose in/out)",
        "expected_from": "layout0_equivalent",
        "features": list(dict.fromkeys(spec["features"] + auto_features(model))),
        "description": spec["description"], "tolerance": dict(TOL), "expect_error": False, "optional": True,
        "onnx_ops": sorted(op_counts(model)), "onnx_op_counts": dict(sorted(op_counts(model).items())),
        "opset": opsets(model), "rnn_nodes": rnn_nodes(model), "determinism_max_abs_diff": 0.0,
        "framework": fw, "source": "float64 NumPy reference of the ONNX equations (tools/goldens/onnx_util.py)",
        "source_max_abs_diff": diff,
    }
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name:48s} {size / 1024:7.1f} KB  source diff {diff:.2e}  (layout0 equivalent)")
    return entry


# ----------------------------------------------------------------------------------------------- error cases
def _small_lstm_model(rng, opset=14, extra_nodes=(), w_name="W", extra_inputs=(), extra_outputs=()):
    from onnx import helper as oh

    T, N, I, H = 5, 2, 3, 4
    inits = {"W": rng.normal(0, .5, (1, 4 * H, I)).astype(np.float32),
             "R": rng.normal(0, .5, (1, 4 * H, H)).astype(np.float32),
             "B": rng.normal(0, .5, (1, 8 * H)).astype(np.float32)}
    node = oh.make_node("LSTM", ["X", w_name, "R", "B"], ["Y", "Y_h"], hidden_size=H)
    ins = [_vi("X", np.float32, ["T", "N", I])] + list(extra_inputs)
    outs = [_vi("Y_h", np.float32, [1, "N", H])] + list(extra_outputs)
    g = oh.make_graph([node] + list(extra_nodes), "g", ins, outs,
                      [__import__("onnx").numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], producer_name="onnx.helper (fastlstm goldens)")
    m.ir_version = 8
    return m


def _error_cases(out, name_filter):
    import onnx
    from onnx import helper as oh, TensorProto

    rng = np.random.default_rng(7)
    cases = []
    hint_op = "ModelLoadError naming the unsupported op and its node"

    name = "bad_missing_initializer"
    if wanted(name, name_filter):
        m = _small_lstm_model(rng, w_name="lstm_W_never_produced")
        d = case_dir(out, SUITE, name)
        onnx.save(m, os.path.join(d, "model.onnx"))      # not checker-valid on purpose
        cases.append(error_entry(name, "onnx-helper", ["error:missing_initializer", "onnx:LSTM"],
                                 "LSTM node whose W input 'lstm_W_never_produced' is neither an initializer, a graph "
                                 "input nor any node's output (onnxruntime also refuses it)",
                                 "ModelLoadError naming the missing tensor 'lstm_W_never_produced' and the LSTM node"))

    name = "bad_external_data_missing"
    if wanted(name, name_filter):
        m = _small_lstm_model(rng)
        d = case_dir(out, SUITE, name)
        path = os.path.join(d, "model.onnx")
        onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
        os.remove(os.path.join(d, "model.onnx.data"))
        cases.append(error_entry(name, "onnx-helper", ["error:external_data_missing", "onnx:LSTM"],
                                 "LSTM weights saved as external data (location model.onnx.data, size_threshold=0); "
                                 "the .data file was deleted",
                                 "ModelLoadError naming the missing external data file, no crash"))

    name = "bad_unsupported_op_nms"
    if wanted(name, name_filter):
        nms = oh.make_node("NonMaxSuppression", ["Y_h", "scores"], ["selected"])   # Y_h [1,N,4]: N boxes
        extra_in = [_vi("scores", np.float32, [1, 1, "N"])]
        extra_out = [oh.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])]
        m = _small_lstm_model(rng, extra_nodes=[nms], extra_inputs=extra_in, extra_outputs=extra_out)
        onnx.checker.check_model(m, full_check=True)
        d = case_dir(out, SUITE, name)
        onnx.save(m, os.path.join(d, "model.onnx"))
        run_ort(os.path.join(d, "model.onnx"), {"X": rng.normal(size=(5, 2, 3)).astype(np.float32),
                                                "scores": rng.uniform(size=(1, 1, 2)).astype(np.float32)})
        cases.append(error_entry(name, "onnx-helper", ["error:unsupported_op", "onnx:NonMaxSuppression", "onnx:LSTM"],
                                 "valid model (onnxruntime runs it): LSTM -> Y_h used as boxes for NonMaxSuppression; "
                                 "NonMaxSuppression is outside the LSTM-engine op set", hint_op))
    return cases
