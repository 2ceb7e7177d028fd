"""Write a fastlstm Model (Sequential or functional) as an ONNX graph that onnxruntime runs with the same outputs.

    model.export_onnx("model.onnx")            # = export_onnx(model, "model.onnx", opset=17)

The graph is batch-first like the model (inputs (batch, timesteps, ...), dims named "batch" and "time", both
dynamic), with the model's input and output names. Each recurrent layer becomes one ONNX LSTM / GRU / RNN node
(layout 0, so a Transpose on each side): Keras gate order i,f,c,o -> ONNX i,o,f,c, kernels transposed, bias
B = [keras bias, 0] (GRU reset_after: [input bias, recurrent bias] with linear_before_reset=1). Bidirectional
becomes one node with direction=bidirectional; go_backwards becomes direction=reverse plus a time flip of the
sequence output (a standalone go_backwards layer returns its sequence in processing order).

Masking (Embedding(mask_zero=True), Masking): ONNX has no per-step mask, only `sequence_lens`. The exported graph
computes lengths = number of unmasked steps per row and passes them as sequence_lens. This equals Keras masking
only for POST-PADDED input (every masked step after every valid one): that is the contract of an exported masked
model, and it is documented here because the graph cannot check it. Within that contract the outputs are exact:
  - return_sequences=False: Y_h is the state at the last valid step = Keras's last output;
  - return_sequences=True with zero_output_for_mask (set by Bidirectional): ONNX writes zeros past a row's length,
    as Keras does;
  - return_sequences=True otherwise: Keras repeats the last valid output at masked steps where ONNX writes zeros,
    so the graph adds Where(mask, Y, Y_h) to repeat it;
  - a row with no valid step gives zeros (Keras and ONNX agree, with zero initial states).
A mask passed explicitly (`layer(x, mask=m)`, or the NotEqual op Keras 3 records for a functional model's
mask_zero) follows the same contract.
Refused with a ValueError rather than written as a different model: masks reaching merge layers, stateful layers
(ONNX has no state across runs), time_major layers, activations ONNX recurrent ops cannot express (relu6, selu,
...), and layers without an ONNX mapping.
"""
import numpy as np

from ._kernels import acts

DEFAULT_OPSET = 17
LSTM_KERAS_TO_ONNX = (0, 3, 1, 2)          # ONNX block k (i, o, f, c) <- Keras block (i, f, c, o)
_INT64_MAX = np.iinfo(np.int64).max

# kernel activation code -> (ONNX name, takes alpha, takes beta)
_RNN_ACTS = {
    acts.SIGMOID: ("Sigmoid", False, False), acts.TANH: ("Tanh", False, False), acts.RELU: ("Relu", False, False),
    acts.LINEAR: ("Affine", True, True), acts.HARD_SIGMOID: ("HardSigmoid", True, True),
    acts.LEAKY_RELU: ("LeakyRelu", True, False), acts.THRESHOLDED_RELU: ("ThresholdedRelu", True, False),
    acts.SCALED_TANH: ("ScaledTanh", True, True), acts.AFFINE: ("Affine", True, True),
    acts.ELU: ("Elu", True, False), acts.SOFTSIGN: ("Softsign", False, False),
    acts.SOFTPLUS: ("Softplus", False, False),
}


class ExportError(ValueError):
    """The model uses something that has no faithful ONNX form."""


class _Graph:
    """Accumulates ONNX nodes and initializers with unique names."""

    def __init__(self, opset):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset = opset
        self.nodes, self.inits, self.used = [], [], set()
        self._consts = {}

    def name(self, base):
        base = base.replace(":", "_")
        n, k = base, 1
        while n in self.used:
            n, k = f"{base}_{k}", k + 1
        self.used.add(n)
        return n

    def const(self, value, base="const", dtype=None):
        a = np.asarray(value, dtype=dtype)
        key = (a.dtype.str, a.shape, a.tobytes()) if a.size <= 16 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        n = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.array(a, order="C"), n))   # keeps 0-d arrays 0-d
        if key is not None:
            self._consts[key] = n
        return n

    def ints(self, values):
        return self.const(np.array(values, np.int64), "ints")

    def add(self, op, inputs, base, n_out=1, **attrs):
        outs = [self.name(f"{base}/{op}" + (f"_{k}" if n_out > 1 else "")) for k in range(n_out)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outs, name=self.name(f"{base}/{op}_node"),
                                                **attrs))
        return outs if n_out > 1 else outs[0]

    # shorthands with the opset's conventions
    def squeeze(self, x, axes, base):
        return self.add("Squeeze", [x, self.ints(axes)], base)

    def unsqueeze(self, x, axes, base):
        return self.add("Unsqueeze", [x, self.ints(axes)], base)

    def transpose(self, x, perm, base):
        return self.add("Transpose", [x], base, perm=list(perm))

    def reduce(self, op, x, axes, base, keepdims):
        if op == "ReduceSum" or self.opset >= 18:
            return self.add(op, [x, self.ints(axes)], base, keepdims=keepdims)
        return self.add(op, [x], base, axes=list(axes), keepdims=keepdims)


def _dense_activation(g, x, name, base):
    """The Keras activation `name` applied to tensor x, as ONNX nodes."""
    if name == "linear":
        return x
    simple = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softplus": "Softplus", "softsign": "Softsign",
              "exponential": "Exp", "selu": "Selu"}
    if name in simple:
        return g.add(simple[name], [x], base)
    if name == "softmax":
        return g.add("Softmax", [x], base, axis=-1)
    if name == "log_softmax":
        return g.add("LogSoftmax", [x], base, axis=-1)
    if name == "elu":
        return g.add("Elu", [x], base, alpha=1.0)
    if name == "leaky_relu":
        return g.add("LeakyRelu", [x], base, alpha=0.2)
    if name == "relu6":
        return g.add("Clip", [x, g.const(np.float32(0)), g.const(np.float32(6))], base)
    if name in ("hard_sigmoid", "hard_sigmoid_keras2"):
        _, a, b = acts.KERAS_ACTIVATIONS[name]
        return g.add("HardSigmoid", [x], base, alpha=float(a), beta=float(b))
    if name == "silu":
        return g.add("Mul", [x, g.add("Sigmoid", [x], base)], base)
    if name == "hard_silu":
        return g.add("Mul", [x, g.add("HardSigmoid", [x], base, alpha=1.0 / 6.0, beta=0.5)], base)
    if name == "gelu":
        half = g.add("Mul", [x, g.const(np.float32(0.5))], base)
        erf = g.add("Erf", [g.add("Mul", [x, g.const(np.float32(1 / np.sqrt(2)))], base)], base)
        return g.add("Mul", [half, g.add("Add", [erf, g.const(np.float32(1))], base)], base)
    if name == "celu":
        return g.add("Celu", [x], base, alpha=1.0)
    if name == "hard_tanh":
        return g.add("Clip", [x, g.const(np.float32(-1)), g.const(np.float32(1))], base)
    if name == "tanh_shrink":
        return g.add("Sub", [x, g.add("Tanh", [x], base)], base)
    if name == "soft_shrink":
        return g.add("Shrink", [x], base, bias=0.5, lambd=0.5)
    if name == "hard_shrink":
        return g.add("Shrink", [x], base, bias=0.0, lambd=0.5)
    if name == "log_sigmoid":
        return g.add("Neg", [g.add("Softplus", [g.add("Neg", [x], base)], base)], base)
    if name == "squareplus":
        sq = g.add("Sqrt", [g.add("Add", [g.add("Mul", [x, x], base), g.const(np.float32(4))], base)], base)
        return g.add("Mul", [g.add("Add", [x, sq], base), g.const(np.float32(0.5))], base)
    if name == "mish":
        return g.add("Mul", [x, g.add("Tanh", [g.add("Softplus", [x], base)], base)], base)
    raise ExportError(f"activation {name!r} has no ONNX export")


def _rnn_activation_attrs(layers):
    """activations / activation_alpha / activation_beta for the directions of one node."""
    names, alphas, betas = [], [], []
    for lyr in layers:
        for code, a, b in lyr._act_specs:
            entry = _RNN_ACTS.get(code)
            if entry is None:
                raise ExportError(f"layer {lyr.name!r}: activation {lyr.activation!r} / "
                                  f"{lyr.recurrent_activation!r} cannot be expressed in an ONNX "
                                  f"{type(lyr).__name__} node")
            nm, ta, tb = entry
            if code == acts.LINEAR:
                a, b = 1.0, 0.0
            names.append(nm)
            if ta:
                alphas.append(float(a))
            if tb:
                betas.append(float(b))
    attrs = {}
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "SimpleRNN": ["Tanh"]}
    per = default[type(layers[0]).__name__]
    if names != per * len(layers):
        attrs["activations"] = names
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    return attrs


def _rnn_weights(lyr):
    """One direction's ONNX (W, R, B) for a Keras LSTM / GRU / SimpleRNN layer."""
    ws = [np.asarray(w, np.float32) for w in lyr.get_weights()]
    H = lyr.units
    kernel, rec = ws[0], ws[1]
    kind = type(lyr).__name__
    if kind == "LSTM":
        order = LSTM_KERAS_TO_ONNX
        blk = lambda m: np.concatenate([m[..., k * H:(k + 1) * H] for k in order], axis=-1)  # noqa: E731
        W, R = blk(kernel).T, blk(rec).T
        b = blk(ws[2]) if lyr.use_bias else np.zeros(4 * H, np.float32)
        B = np.concatenate([b, np.zeros(4 * H, np.float32)])
    elif kind == "GRU":
        W, R = kernel.T, rec.T
        if not lyr.use_bias:
            B = np.zeros(6 * H, np.float32)
        elif lyr.reset_after:
            B = np.concatenate([ws[2][0], ws[2][1]])
        else:
            B = np.concatenate([ws[2], np.zeros(3 * H, np.float32)])
    else:
        W, R = kernel.T, rec.T
        b = ws[2] if lyr.use_bias else np.zeros(H, np.float32)
        B = np.concatenate([b, np.zeros(H, np.float32)])
    return W, R, B


class _Exporter:
    def __init__(self, model, opset):
        self.model, self.g = model, _Graph(opset)
        self.values = {}        # SymbolicTensor id -> ONNX name
        self.masks = {}         # SymbolicTensor id -> (bool mask (N, T) name, lengths int32 (N,) name) or None
        self.lengths = {}

    # ---- masks ----------------------------------------------------------------------------------------
    def _lengths(self, mask, base):
        if mask not in self.lengths:
            as_int = self.g.add("Cast", [mask], base, to=6)
            self.lengths[mask] = self.g.reduce("ReduceSum", as_int, [1], base, keepdims=0)
        return self.lengths[mask]

    # ---- layers ---------------------------------------------------------------------------------------
    def run(self):
        from .layers.core import InputLayer
        m, g = self.model, self.g
        from onnx import TensorProto, helper
        graph_inputs = []
        for t in m.inputs:
            name = g.name(t.name)
            self.values[t.id] = name
            self.masks[t.id] = None
            time = "time" if len(m.inputs) == 1 else f"{name}_time"     # inputs may differ in length
            # batch and time are dynamic even when the model was built with fixed sizes (fastlstm runs any)
            dims = [("batch" if k == 0 else time if k == 1 else f"{name}_d{k}") if d is None or k < 2 else int(d)
                    for k, d in enumerate(t.shape)]
            elem = _onnx_elem(t.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, elem, dims))
        for node in m._nodes:
            lyr = node.layer
            if isinstance(lyr, InputLayer):
                continue
            self._node(node)
        outputs = []
        for t, out_name in zip(m.outputs, m.output_names):
            src = self.values[t.id]
            final = g.name(out_name)
            g.nodes.append(helper.make_node("Identity", [src], [final], name=g.name(f"{out_name}/output")))
            dims = [("batch" if k == 0 else f"{final}_d{k}") if d is None else int(d) for k, d in enumerate(t.shape)]
            outputs.append(helper.make_tensor_value_info(final, TensorProto.FLOAT, dims))
        graph = helper.make_graph(g.nodes, m.name, graph_inputs, outputs, g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)],
                                  producer_name="fastlstm", producer_version=_version())
        model.ir_version = min(model.ir_version, 8 if g.opset <= 17 else 9 if g.opset <= 20 else 10)
        return model

    def _node(self, node):
        lyr = node.layer
        kind = type(lyr).__name__
        ins = [self.values[t.id] for t in node.inputs]
        in_masks = [self.masks[t.id] for t in node.inputs]
        explicit = node.kwargs.get("mask")
        if "mask" in node.kwargs and explicit is None:
            in_masks = [None] * len(in_masks)       # an explicit mask=None replaces the propagated mask (Model)
        elif explicit is not None:
            # a (batch, timesteps) bool mask computed in the graph (Keras 3 functional models write
            # NotEqual(tokens, 0) for mask_zero) or given as a model input: the same post-padding contract
            if isinstance(explicit, (list, tuple)):
                if len(explicit) != 1:
                    raise ExportError(f"layer {lyr.name!r}: several masks have no ONNX form")
                explicit = explicit[0]
            mask_name = self.values[explicit.id]
            if explicit.dtype.kind != "b":
                mask_name = self.g.add("Cast", [mask_name], f"{lyr.name}/mask", to=9)
            in_masks = [mask_name] + in_masks[1:]
        handler = getattr(self, f"_layer_{kind}", None)
        if handler is None:
            if kind in _IDENTITY_LAYERS:
                outs, masks = [ins[0]], [in_masks[0]]
            else:
                raise ExportError(f"layer {lyr.name!r} ({kind}) has no ONNX export; supported: "
                                  f"{', '.join(sorted(_SUPPORTED))}")
        else:
            outs, masks = handler(node, ins, in_masks)
        for t, o, mk in zip(node.outputs, outs, masks):
            self.values[t.id] = o
            self.masks[t.id] = mk

    def _layer_Embedding(self, node, ins, in_masks):
        lyr, g = node.layer, self.g
        ids = ins[0]
        if node.inputs[0].dtype.kind not in "iu":
            ids = g.add("Cast", [ids], lyr.name, to=7)
        emb = g.const(np.asarray(lyr.get_weights()[0], np.float32), f"{lyr.name}/embeddings")
        out = g.add("Gather", [emb, ids], lyr.name, axis=0)
        mask = None
        if lyr.mask_zero:
            zero = g.const(np.zeros((), np.int64 if node.inputs[0].dtype.kind not in "iu"
                                    else node.inputs[0].dtype))
            mask = g.add("Not", [g.add("Equal", [ids, zero], lyr.name)], lyr.name)
        return [out], [mask]

    def _layer_Masking(self, node, ins, in_masks):
        lyr, g = node.layer, self.g
        x = ins[0]
        value = g.const(np.float32(lyr.mask_value))
        differs = g.add("Cast", [g.add("Not", [g.add("Equal", [x, value], lyr.name)], lyr.name)], lyr.name, to=1)
        keep = g.reduce("ReduceMax", differs, [-1], lyr.name, keepdims=1)                 # (N, T, 1) float
        out = g.add("Mul", [x, keep], lyr.name)
        mask = g.add("Cast", [g.squeeze(keep, [-1], lyr.name)], lyr.name, to=9)
        return [out], [mask]

    def _dense(self, lyr, x, base):
        g = self.g
        ws = lyr.get_weights()
        y = g.add("MatMul", [x, g.const(np.asarray(ws[0], np.float32), f"{base}/kernel")], base)
        if lyr.use_bias:
            y = g.add("Add", [y, g.const(np.asarray(ws[1], np.float32), f"{base}/bias")], base)
        return _dense_activation(g, y, lyr.activation, base)

    def _layer_Dense(self, node, ins, in_masks):
        return [self._dense(node.layer, ins[0], node.layer.name)], [in_masks[0]]

    def _layer_Activation(self, node, ins, in_masks):
        return [_dense_activation(self.g, ins[0], node.layer.activation, node.layer.name)], [in_masks[0]]

    def _layer_TimeDistributed(self, node, ins, in_masks):
        inner = node.layer.layer
        kind = type(inner).__name__
        if kind == "Dense":
            return [self._dense(inner, ins[0], node.layer.name)], [in_masks[0]]
        if kind == "Activation":
            return [_dense_activation(self.g, ins[0], inner.activation, node.layer.name)], [in_masks[0]]
        if kind in _IDENTITY_LAYERS:
            return [ins[0]], [in_masks[0]]
        raise ExportError(f"layer {node.layer.name!r}: TimeDistributed({kind}) has no ONNX export "
                          f"(Dense, Activation and Dropout are supported)")

    _OP_MAP = {"NotEqual": "NotEqual", "Equal": "Equal", "Greater": "Greater", "GreaterEqual": "GreaterOrEqual",
               "Less": "Less", "LessEqual": "LessOrEqual", "LogicalAnd": "And", "LogicalOr": "Or",
               "LogicalXor": "Xor", "LogicalNot": "Not", "Add": "Add", "Subtract": "Sub", "Multiply": "Mul",
               "Divide": "Div", "TrueDivide": "Div", "Maximum": "Max", "Minimum": "Min", "Negative": "Neg",
               "Abs": "Abs", "Sqrt": "Sqrt", "Exp": "Exp", "Log": "Log", "Tanh": "Tanh", "Sigmoid": "Sigmoid",
               "Where": "Where", "Square": "Square", "Cast": "Cast", "ExpandDims": "Unsqueeze", "Squeeze": "Squeeze",
               "Any": "Any", "All": "All"}

    def _layer_OpLayer(self, node, ins, in_masks):
        """A Keras 3 op node (keras.ops call recorded in a functional model): the ops masks are built from."""
        lyr, g, base = node.layer, self.g, node.layer.name
        op = self._OP_MAP.get(lyr.op)
        if op is None:
            raise ExportError(f"layer {base!r}: Keras op {lyr.op!r} has no ONNX export")
        tensors = list(zip(ins, node.inputs))
        slots = []
        value_dtype = None
        for v in lyr.template:
            if v is None:
                name, t = tensors.pop(0)
                slots.append(name)
                if value_dtype is None or (op == "Where" and len(slots) > 1):
                    value_dtype = t.dtype
            elif isinstance(v, list):
                raise ExportError(f"layer {base!r}: Keras op {lyr.op!r} with list arguments has no ONNX export")
            else:
                slots.append(v)
        dt = np.dtype(value_dtype if value_dtype is not None else np.float32)
        if dt.kind == "f":
            dt = np.dtype(np.float32)
        args = [a if isinstance(a, str) else g.const(np.asarray(a, dtype=dt)) for a in slots]
        p = lyr.params
        if op == "NotEqual":
            out = g.add("Not", [g.add("Equal", args, base)], base)
        elif op == "Square":
            out = g.add("Mul", [args[0], args[0]], base)
        elif op == "Cast":
            out = g.add("Cast", args, base, to=_onnx_elem(np.dtype(p.get("dtype", "float32"))))
        elif op in ("Unsqueeze", "Squeeze"):
            axis = p.get("axis")
            axes = None if axis is None else (list(axis) if isinstance(axis, (list, tuple)) else [axis])
            if axes is None:
                if op == "Unsqueeze":
                    raise ExportError(f"layer {base!r}: ExpandDims without an axis")
                out = g.add("Squeeze", args, base)
            else:
                out = (g.unsqueeze if op == "Unsqueeze" else g.squeeze)(args[0], axes, base)
        elif op in ("Any", "All"):
            axis = p.get("axis")
            rank = len(node.inputs[0].shape)
            axes = list(range(rank)) if axis is None else (list(axis) if isinstance(axis, (list, tuple)) else [axis])
            f = g.add("Cast", args[:1], base, to=1)
            red = g.reduce("ReduceMax" if op == "Any" else "ReduceMin", f, axes, base,
                           keepdims=int(bool(p.get("keepdims"))))
            out = g.add("Cast", [red], base, to=9)
        else:
            out = g.add(op, args, base)
        return [out], [None]

    _layer_NotEqual = _layer_OpLayer

    def _layer_Permute(self, node, ins, in_masks):
        return [self.g.transpose(ins[0], (0,) + tuple(node.layer.dims), node.layer.name)], [None]

    def _layer_Reshape(self, node, ins, in_masks):
        g = self.g
        return [g.add("Reshape", [ins[0], g.ints((0,) + tuple(node.layer.target_shape))], node.layer.name)], [None]

    def _layer_Flatten(self, node, ins, in_masks):
        lyr = node.layer
        x = ins[0]
        if getattr(lyr, "data_format", "channels_last") == "channels_first" and len(node.inputs[0].shape) > 2:
            rank = len(node.inputs[0].shape)
            x = self.g.transpose(x, [0] + list(range(2, rank)) + [1], lyr.name)
        return [self.g.add("Reshape", [x, self.g.ints([0, -1])], lyr.name)], [None]

    def _pooling(self, node, ins, in_masks, op):
        lyr = node.layer
        if in_masks[0] is not None and op == "ReduceMean":
            raise ExportError(f"layer {lyr.name!r}: a masked average has no ONNX export")
        axis = 2 if lyr.data_format == "channels_first" else 1
        return [self.g.reduce(op, ins[0], [axis], lyr.name, keepdims=int(lyr.keepdims))], [None]

    def _layer_GlobalAveragePooling1D(self, node, ins, in_masks):
        return self._pooling(node, ins, in_masks, "ReduceMean")

    def _layer_GlobalMaxPooling1D(self, node, ins, in_masks):
        return self._pooling(node, ins, in_masks, "ReduceMax")

    def _layer_BatchNormalization(self, node, ins, in_masks):
        """Inference batch normalization on the last axis: x * scale + shift with the moving statistics."""
        lyr, g = node.layer, self.g
        rank = len(node.inputs[0].shape)
        if not isinstance(lyr.axis, (int, np.integer)) or lyr.axis % rank != rank - 1:
            raise ExportError(f"layer {lyr.name!r}: BatchNormalization is exported on the last axis only")
        ws = [np.asarray(w, np.float64) for w in lyr.get_weights()]
        gamma = ws.pop(0) if lyr.scale else 1.0
        beta = ws.pop(0) if lyr.center else 0.0
        mean, var = ws
        scale = gamma / np.sqrt(var + lyr.epsilon)
        shift = beta - mean * scale
        y = g.add("Mul", [ins[0], g.const(scale.astype(np.float32), f"{lyr.name}/scale")], lyr.name)
        return [g.add("Add", [y, g.const(shift.astype(np.float32), f"{lyr.name}/shift")], lyr.name)], [in_masks[0]]

    def _layer_RepeatVector(self, node, ins, in_masks):
        lyr, g = node.layer, self.g
        x = g.unsqueeze(ins[0], [1], lyr.name)
        return [g.add("Tile", [x, g.ints([1, lyr.n, 1])], lyr.name)], [None]

    def _merge(self, node, ins, in_masks, op):
        if any(m is not None for m in in_masks):
            raise ExportError(f"layer {node.layer.name!r} ({type(node.layer).__name__}) receives a mask; masked "
                              f"merges have no ONNX export")
        ranks = {len(t.shape) for t in node.inputs}
        if len(ranks) > 1:
            raise ExportError(f"layer {node.layer.name!r}: merging inputs of different ranks is not exported")
        g, base = self.g, node.layer.name
        if op == "Concat":
            return [g.add("Concat", ins, base, axis=node.layer.axis)], [None]
        if op == "Average":
            s = g.add("Sum", ins, base)
            return [g.add("Mul", [s, g.const(np.float32(1.0 / len(ins)))], base)], [None]
        if op == "Sub":
            return [g.add("Sub", ins, base)], [None]
        out = ins[0]
        for x in ins[1:]:
            out = g.add(op, [out, x], base)
        return [out], [None]

    def _layer_Concatenate(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Concat")

    def _layer_Add(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Add")

    def _layer_Subtract(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Sub")

    def _layer_Multiply(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Mul")

    def _layer_Maximum(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Max")

    def _layer_Minimum(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Min")

    def _layer_Average(self, node, ins, in_masks):
        return self._merge(node, ins, in_masks, "Average")

    # ---- recurrent ------------------------------------------------------------------------------------
    def _check_rnn(self, lyr):
        if lyr.stateful:
            raise ExportError(f"layer {lyr.name!r} is stateful; ONNX graphs carry no state between runs "
                              f"(rebuild the model with stateful=False and the same weights to export it)")
        if getattr(lyr, "time_major", False):
            raise ExportError(f"layer {lyr.name!r}: time_major layers are not exported")

    def _rnn_node(self, layers, x_tm, lengths, init, base, reverse):
        """One ONNX LSTM/GRU/RNN node over the directions in `layers`; returns (Y, Y_h, Y_c | None)."""
        g = self.g
        kind = type(layers[0]).__name__
        op = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}[kind]
        Ws, Rs, Bs = zip(*[_rnn_weights(lyr) for lyr in layers])
        W = g.const(np.stack(Ws), f"{base}/W")
        R = g.const(np.stack(Rs), f"{base}/R")
        B = g.const(np.stack(Bs), f"{base}/B")
        attrs = dict(hidden_size=layers[0].units)
        attrs["direction"] = "bidirectional" if len(layers) == 2 else ("reverse" if reverse else "forward")
        attrs.update(_rnn_activation_attrs(layers))
        if op == "GRU":
            attrs["linear_before_reset"] = int(layers[0].reset_after)
        inputs = [x_tm, W, R, B, lengths or ""]
        n_states = 2 if op == "LSTM" else 1
        if init is not None:
            inputs += init[:n_states]
        while inputs and not inputs[-1]:
            inputs.pop()
        outs = g.add(op, inputs, base, n_out=n_states + 1, **attrs)
        return outs[0], outs[1], (outs[2] if n_states == 2 else None)

    def _initial_state(self, node, n_dirs, n_states):
        """initial_state kwarg -> per ONNX input (h, c) names of shape (D, N, H), or None."""
        init = node.kwargs.get("initial_state")
        if init is None:
            return None
        init = init if isinstance(init, (list, tuple)) else [init]
        if len(init) != n_dirs * n_states:
            raise ExportError(f"layer {node.layer.name!r}: expected {n_dirs * n_states} initial states, "
                              f"got {len(init)}")
        g, base = self.g, node.layer.name
        names = [g.unsqueeze(self.values[t.id], [0], base) for t in init]
        out = []
        for k in range(n_states):
            per_dir = [names[d * n_states + k] for d in range(n_dirs)]
            out.append(per_dir[0] if n_dirs == 1 else g.add("Concat", per_dir, base, axis=0))
        return out

    def _keras_states(self, S, init_state, lengths, base):
        """Final states (D, N, H) as Keras returns them: a row with no valid step keeps its initial state, where
        ONNX returns 0 (sequence_lens = 0)."""
        if S is None or init_state is None or lengths is None:
            return S
        g = self.g
        has_steps = g.unsqueeze(g.add("Greater", [lengths, g.const(np.int32(0))], base), [0, 2], base)
        return g.add("Where", [has_steps, S, init_state], base)

    def _seq_out(self, Y, d, base):
        """Direction d of Y (T, D, N, H) as a batch-first (N, T, H) sequence."""
        g = self.g
        y = g.add("Gather", [Y, g.const(np.int64(d))], base, axis=1)
        return g.transpose(y, [1, 0, 2], base)

    def _state(self, S, d, base):
        return self.g.add("Gather", [S, self.g.const(np.int64(d))], base, axis=0)

    def _flip_time(self, seq, base):
        g = self.g
        return g.add("Slice", [seq, g.ints([-1]), g.ints([-_INT64_MAX]), g.ints([1]), g.ints([-1])], base)

    def _rnn_common(self, node, ins, in_masks):
        lyr = node.layer
        self._check_rnn(lyr)
        mask = in_masks[0]
        lengths = self._lengths(mask, lyr.name) if mask is not None else None
        x_tm = self.g.transpose(ins[0], [1, 0, 2], lyr.name)
        return mask, lengths, x_tm

    def _layer_LSTM(self, node, ins, in_masks):
        return self._single_rnn(node, ins, in_masks)

    _layer_GRU = _layer_LSTM
    _layer_SimpleRNN = _layer_LSTM

    def _single_rnn(self, node, ins, in_masks):
        lyr = node.layer
        mask, lengths, x_tm = self._rnn_common(node, ins, in_masks)
        n_states = 2 if type(lyr).__name__ == "LSTM" else 1
        init = self._initial_state(node, 1, n_states)
        out, states = self._layer_outputs(lyr, x_tm, mask, lengths, init, lyr.name)
        outs = [out] + (states if lyr.return_state else [])
        return outs, [mask if lyr.return_sequences else None] + [None] * (len(outs) - 1)

    def _layer_outputs(self, lyr, x_tm, mask, lengths, init, base):
        """One recurrent layer as one ONNX node: (Keras's main output, [h, (c)]) batch-first."""
        g = self.g
        Y, Yh, Yc = self._rnn_node([lyr], x_tm, lengths, init, base, reverse=lyr.go_backwards)
        h = g.squeeze(Yh, [0], base)
        if lyr.return_sequences:
            seq = self._seq_out(Y, 0, base)
            if lyr.go_backwards:
                # processing order; masked (post-padding) steps come first there and give 0 in both Keras and ONNX
                out = self._flip_time(seq, base)
            elif mask is not None and not lyr.zero_output_for_mask:
                # Keras repeats the last valid output at masked steps; ONNX wrote 0 there
                valid = g.unsqueeze(mask, [2], base)
                out = g.add("Where", [valid, seq, g.unsqueeze(h, [1], base)], base)
            else:
                out = seq
        else:
            out = h
        h_init = init[0] if init else None
        c_init = init[1] if init and len(init) > 1 else None
        states = [self._keras_states(S, i, lengths, base) for S, i in ((Yh, h_init), (Yc, c_init)) if S is not None]
        return out, [g.squeeze(S, [0], base) for S in states]

    def _layer_Bidirectional(self, node, ins, in_masks):
        bi, g, base = node.layer, self.g, node.layer.name
        fw, bw = bi.forward_layer, bi.backward_layer
        self._check_rnn(fw)
        self._check_rnn(bw)
        mask = in_masks[0]
        lengths = self._lengths(mask, base) if mask is not None else None
        x_tm = g.transpose(ins[0], [1, 0, 2], base)
        n_states = 2 if type(fw).__name__ == "LSTM" else 1
        init = self._initial_state(node, 2, n_states)
        if type(fw) is not type(bw) or fw.go_backwards or not bw.go_backwards or fw.units != bw.units or \
                getattr(fw, "reset_after", None) != getattr(bw, "reset_after", None):
            return self._bidirectional_two_nodes(node, x_tm, mask, lengths, init)
        Y, Yh, Yc = self._rnn_node([fw, bw], x_tm, lengths, init, base, reverse=False)
        if bi.return_sequences:
            # zero_output_for_mask is set on both directions: ONNX's zeros past each length are Keras's output
            if bi.merge_mode == "concat":
                y4 = g.transpose(Y, [2, 0, 1, 3], base)                                 # (N, T, 2, H)
                merged = [g.add("Reshape", [y4, g.ints([0, 0, -1])], base)]
            else:
                parts = [self._seq_out(Y, 0, base), self._seq_out(Y, 1, base)]
                merged = self._merge_two(parts, bi.merge_mode, base)
            out_mask = mask
        else:
            if bi.merge_mode == "concat":
                s = g.transpose(Yh, [1, 0, 2], base)                                   # (N, 2, H)
                merged = [g.add("Reshape", [s, g.ints([0, -1])], base)]
            else:
                merged = self._merge_two([self._state(Yh, 0, base), self._state(Yh, 1, base)], bi.merge_mode, base)
            out_mask = None
        outs, masks = merged, [out_mask] * len(merged)
        if bi.return_state:
            Sh = self._keras_states(Yh, init[0] if init else None, lengths, base)
            Sc = self._keras_states(Yc, init[1] if init and len(init) > 1 else None, lengths, base)
            for d in range(2):
                outs.append(self._state(Sh, d, base))
                if Sc is not None:
                    outs.append(self._state(Sc, d, base))
            masks += [None] * (len(outs) - len(masks))
        return outs, masks

    def _bidirectional_two_nodes(self, node, x_tm, mask, lengths, init):
        """Bidirectional whose layers are not a plain forward/backward pair: one node per layer, each with its
        own Keras output rules, then Keras's merge (the backward sequence flipped back to input order)."""
        bi, g, base = node.layer, self.g, node.layer.name
        results = []
        for d, lyr in enumerate((bi.forward_layer, bi.backward_layer)):
            init_d = None
            if init is not None:
                init_d = [g.add("Gather", [s, g.ints([d])], base, axis=0) for s in init]
            results.append(self._layer_outputs(lyr, x_tm, mask, lengths, init_d, f"{base}/{lyr.name}"))
        (fw_out, fw_states), (bw_out, bw_states) = results
        if bi.return_sequences:
            bw_out = self._flip_time(bw_out, base)
        if bi.merge_mode == "concat":
            merged = [g.add("Concat", [fw_out, bw_out], base, axis=-1)]
        else:
            merged = self._merge_two([fw_out, bw_out], bi.merge_mode, base)
        outs = list(merged)
        if bi.return_state:
            outs += fw_states + bw_states
        return outs, [mask if bi.return_sequences else None] * len(merged) + [None] * (len(outs) - len(merged))

    def _merge_two(self, parts, mode, base):
        g = self.g
        if mode is None:
            return parts
        if mode == "sum":
            return [g.add("Add", parts, base)]
        if mode == "mul":
            return [g.add("Mul", parts, base)]
        if mode == "ave":
            return [g.add("Mul", [g.add("Add", parts, base), g.const(np.float32(0.5))], base)]
        raise ExportError(f"layer {base!r}: merge_mode {mode!r} is not exported")


_IDENTITY_LAYERS = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "ActivityRegularization",
                    "AlphaDropout", "InputLayer"}
_SUPPORTED = _IDENTITY_LAYERS | {"Embedding", "Masking", "Dense", "Activation", "TimeDistributed", "LSTM", "GRU",
                                 "SimpleRNN", "Bidirectional", "RepeatVector", "Concatenate", "Add", "Subtract",
                                 "Multiply", "Maximum", "Minimum", "Average", "OpLayer", "NotEqual", "Permute",
                                 "Reshape", "Flatten", "GlobalAveragePooling1D", "GlobalMaxPooling1D",
                                 "BatchNormalization"}


def _onnx_elem(dtype):
    from .loaders.onnx_proto import NP_TO_ONNX
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return 1
    return NP_TO_ONNX.get(dt.newbyteorder("="), 7)


def _version():
    from . import __version__
    return __version__


def to_onnx(model, opset=DEFAULT_OPSET):
    """The model as an `onnx.ModelProto` (see export_onnx)."""
    opset = int(opset)
    if not 13 <= opset <= 22:
        raise ValueError(f"opset must be between 13 and 22, got {opset}")
    if not getattr(model, "built", True) or not model.inputs:
        raise ValueError(f"model {model.name!r} is not built yet: call predict() once or build(input_shape) "
                         f"before exporting")
    return _Exporter(model, opset).run()


def export_onnx(model, path, opset=DEFAULT_OPSET):
    """Write `model` to `path` as ONNX.

    Parameters
    ----------
    model : fastlstm Model or Sequential (built)
    path : str or path-like
    opset : int, 13..22 (default 17)

    Returns
    -------
    path

    Raises
    ------
    ValueError
        The model has no faithful ONNX form (see the module docstring: masks other than post-padding from
        Embedding/Masking, stateful or time_major layers, unsupported layers or activations).
    """
    import onnx
    proto = to_onnx(model, opset)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path
