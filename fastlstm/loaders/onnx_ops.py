"""NumPy implementations of the ONNX operators found around LSTM/GRU nodes (formats.md section 6).

Each operator is a *builder*: `builder(node) -> run`, called once at load. The builder reads and checks the
attributes (so a bad attribute fails at load, naming the node); `run(*inputs)` takes the node's input arrays
(None for an absent optional input) and returns a tuple of output arrays. Semantics follow the ONNX spec at the
node's opset version (axes as attributes before opset 13, Slice inputs from opset 10, ...). Nothing here trusts
declared shapes: every shape comes from the arrays at run time.
"""
import math

import numpy as np

from .._kernels import acts
from .onnx_proto import DTYPES, STRING

OPS = {}


def op(*names):
    def deco(builder):
        for n in names:
            OPS[n] = builder
        return builder
    return deco


def onnx_dtype(node, code, what="to"):
    if code == STRING or code not in DTYPES:
        node.fail(f"{what}={code}: only numeric and bool tensor types are supported")
    return np.dtype(DTYPES[code]).newbyteorder("=")


def _axes_list(v):
    return [int(a) for a in np.asarray(v).reshape(-1)]


def _norm_axis(axis, rank):
    return axis + rank if axis < 0 else axis


# ---- elementwise ----------------------------------------------------------------------------------------
def _sigmoid(x):
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: no overflow for any x, three ufunc calls
    if x.dtype.kind != "f":
        return acts.activate(acts.SIGMOID, 0.0, 0.0, x)
    y = np.tanh(x * x.dtype.type(0.5))
    y += 1
    y *= 0.5
    return y


_UNARY = {
    "Abs": np.abs, "Neg": np.negative, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt, "Floor": np.floor,
    "Ceil": np.ceil, "Round": np.round, "Sign": np.sign, "Sin": np.sin, "Cos": np.cos, "Tan": np.tan,
    "Tanh": np.tanh, "Sigmoid": _sigmoid, "Not": np.logical_not, "IsNaN": np.isnan,
    "Reciprocal": lambda x: np.reciprocal(x),
    "Relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "Softplus": lambda x: np.logaddexp(x.dtype.type(0), x),
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Atan": np.arctan, "Asin": np.arcsin, "Acos": np.arccos, "Sinh": np.sinh, "Cosh": np.cosh,
    "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
}


def _unary_builder(fn):
    def build(node):
        return lambda x: (fn(x),)           # float ufuncs keep the input's dtype
    return build


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary_builder(_fn)
OPS["Not"] = lambda node: (lambda x: (np.logical_not(x),))
OPS["IsNaN"] = lambda node: (lambda x: (np.isnan(x),))


@op("Identity")
def _identity(node):
    return lambda x: (x,)


@op("IsInf")
def _isinf(node):
    pos, neg = node.attr("detect_positive", 1), node.attr("detect_negative", 1)
    return lambda x: ((np.isposinf(x) & bool(pos)) | (np.isneginf(x) & bool(neg)),)


@op("LeakyRelu")
def _leaky_relu(node):
    alpha = node.attr("alpha", 0.01)
    return lambda x: (np.where(x >= 0, x, (alpha * x).astype(x.dtype)),)


@op("Elu")
def _elu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: (np.where(x > 0, x, (alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)),)


@op("Celu")
def _celu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: (np.where(x > 0, x, (alpha * np.expm1(np.minimum(x, 0) / alpha)).astype(x.dtype)),)


@op("Selu")
def _selu(node):
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return lambda x: (np.where(x > 0, gamma * x, gamma * alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype),)


@op("HardSigmoid")
def _hard_sigmoid(node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return lambda x: (np.clip(alpha * x + beta, 0, 1).astype(x.dtype),)


@op("HardSwish")
def _hard_swish(node):
    return lambda x: ((x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),)


@op("ThresholdedRelu")
def _thresholded_relu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: (np.where(x > alpha, x, 0).astype(x.dtype),)


@op("Mish")
def _mish(node):
    return lambda x: ((x * np.tanh(np.logaddexp(0, x))).astype(x.dtype),)


def _erf(x):
    from scipy.special import erf
    return erf(x).astype(x.dtype)


@op("Erf")
def _erf_op(node):
    return lambda x: (_erf(x),)


@op("Gelu")
def _gelu(node):
    approximate = node.attr("approximate", "none")
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        return lambda x: ((0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))).astype(x.dtype),)
    return lambda x: ((0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))).astype(x.dtype),)


@op("PRelu")
def _prelu(node):
    return lambda x, slope: (np.where(x >= 0, x, x * slope).astype(x.dtype),)


@op("Clip")
def _clip(node):
    if node.opset < 11:
        lo, hi = node.attr("min", -3.4028234663852886e38), node.attr("max", 3.4028234663852886e38)
        return lambda x: (np.clip(x, lo, hi).astype(x.dtype),)

    def run(x, lo=None, hi=None):
        if lo is not None:
            x = np.maximum(x, lo)
        if hi is not None:
            x = np.minimum(x, hi)
        return (x,)
    return run


# ---- binary / variadic -------------------------------------------------------------------------------------
def _int_div(a, b):
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return q + fix.astype(q.dtype)


def _div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return _int_div(a, b)
    return np.divide(a, b)


def _pow(a, b):
    r = np.power(a, b) if a.dtype.kind == "f" or b.dtype.kind != "f" else np.power(a.astype(b.dtype), b)
    return r.astype(a.dtype, copy=False)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
    "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
}


def _binary_builder(fn):
    def build(node):
        if node.attr("broadcast", 0) and node.attr("axis", None) is not None:
            node.fail("legacy broadcast with `axis` (opset < 7) is not supported")
        return lambda a, b: (fn(a, b),)
    return build


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary_builder(_fn)


# Elementwise with NumPy broadcasting: output element i reads only the input elements broadcast to i (the
# batch-axis analysis in onnx_batch.py and the shape-only planning in onnx.py rely on this list)
ELEMENTWISE = frozenset(_UNARY) | frozenset(_BINARY) | {
    "Identity", "IsInf", "LeakyRelu", "Elu", "Celu", "Selu", "HardSigmoid", "HardSwish", "ThresholdedRelu", "Mish",
    "Erf", "Gelu", "PRelu", "Clip", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Cast"}


@op("Mod")
def _mod(node):
    fmod = node.attr("fmod", 0)
    return lambda a, b: ((np.fmod(a, b) if fmod else np.mod(a, b)),)


def _variadic(fn):
    def build(node):
        def run(*xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return (out,)
        return run
    return build


OPS["Max"] = _variadic(np.maximum)
OPS["Min"] = _variadic(np.minimum)
OPS["Sum"] = _variadic(np.add)


@op("Mean")
def _mean(node):
    def run(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return ((out / len(xs)).astype(out.dtype),)
    return run


@op("Where")
def _where(node):
    return lambda c, a, b: (np.where(c, a, b),)


# ---- matrix products ---------------------------------------------------------------------------------------
@op("MatMul")
def _matmul(node):
    return lambda a, b: (np.matmul(a, b),)


@op("Gemm")
def _gemm(node):
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    ta, tb = node.attr("transA", 0), node.attr("transB", 0)

    def run(a, b, c=None):
        y = (a.T if ta else a) @ (b.T if tb else b)
        if alpha != 1.0:
            y = (alpha * y).astype(y.dtype)
        if c is not None:
            y = y + (c if beta == 1.0 else (beta * c).astype(c.dtype))
        return (y,)
    return run


@op("Einsum")
def _einsum(node):
    eq = node.attr("equation")
    if not eq:
        node.fail("missing attribute `equation`")
    return lambda *xs: (np.einsum(eq, *xs),)


# ---- activations over an axis ------------------------------------------------------------------------------
def _softmax_fn(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax_fn(x, axis):
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _softmax_builder(fn):
    def build(node):
        if node.opset >= 13:
            axis = node.attr("axis", -1)
            return lambda x: (fn(x, axis).astype(x.dtype, copy=False),)
        axis = node.attr("axis", 1)

        def run(x):                 # opset < 13: coerce to 2-D at `axis`, normalize each row
            a = _norm_axis(axis, x.ndim)
            rows = int(np.prod(x.shape[:a], dtype=np.int64))
            return (fn(x.reshape(rows, -1), 1).reshape(x.shape).astype(x.dtype, copy=False),)
        return run
    return build


OPS["Softmax"] = _softmax_builder(_softmax_fn)
OPS["LogSoftmax"] = _softmax_builder(_log_softmax_fn)


@op("LayerNormalization")
def _layer_norm(node):
    axis, eps = node.attr("axis", -1), node.attr("epsilon", 1e-5)

    def run(x, scale, bias=None):
        a = _norm_axis(axis, x.ndim)
        red = tuple(range(a, x.ndim))
        mean = x.mean(axis=red, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=red, keepdims=True)
        inv = 1 / np.sqrt(var + eps)
        y = (x - mean) * inv * scale
        if bias is not None:
            y = y + bias
        return y.astype(x.dtype), mean.astype(x.dtype), inv.astype(x.dtype)
    return run


@op("BatchNormalization")
def _batch_norm(node):
    eps = node.attr("epsilon", 1e-5)

    def run(x, scale, bias, mean, var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)
        return (y.astype(x.dtype),)
    return run


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node):
    # mean / max over every axis after (N, C), kept as size 1 (tf2onnx writes Keras 3's LayerNormalization moments,
    # a mean over the last axis of (B, T, C), as GlobalAveragePool)
    fn = np.mean if node.op_type == "GlobalAveragePool" else np.max
    return lambda x: (fn(x, axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype, copy=False),)


@op("Dropout")
def _dropout(node):
    return lambda x, *rest: (x, np.ones(x.shape, dtype=bool))


# ---- reductions --------------------------------------------------------------------------------------------
_REDUCE = {
    "ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceMax": np.max, "ReduceMin": np.min, "ReduceProd": np.prod,
    "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "ReduceSumSquare": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "ReduceLogSum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "ReduceLogSumExp": lambda x, axis, keepdims: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
}


def _reduce_builder(name, fn):
    axes_as_input_from = 13 if name == "ReduceSum" else 18

    def build(node):
        keepdims = bool(node.attr("keepdims", 1))
        noop = node.attr("noop_with_empty_axes", 0)

        def reduce(x, axes):
            if axes is None or len(axes) == 0:
                if noop:
                    return (x,)
                axes = None
            else:
                axes = tuple(_norm_axis(a, x.ndim) for a in axes)
            y = fn(x, axis=axes, keepdims=keepdims)
            return (np.asarray(y, dtype=x.dtype if x.dtype.kind != "b" else y.dtype),)

        if node.opset >= axes_as_input_from:
            return lambda x, axes=None: reduce(x, None if axes is None else _axes_list(axes))
        attr_axes = node.attr("axes", None)
        return lambda x: reduce(x, attr_axes)
    return build


for _name, _fn in _REDUCE.items():
    OPS[_name] = _reduce_builder(_name, _fn)


def _arg_builder(fn):
    def build(node):
        axis, keepdims, last = node.attr("axis", 0), node.attr("keepdims", 1), node.attr("select_last_index", 0)

        def run(x):
            a = _norm_axis(axis, x.ndim)
            if last:
                idx = x.shape[a] - 1 - fn(np.flip(x, a), axis=a)
            else:
                idx = fn(x, axis=a)
            idx = idx.astype(np.int64)
            return (np.expand_dims(idx, a) if keepdims else idx,)
        return run
    return build


OPS["ArgMax"] = _arg_builder(np.argmax)
OPS["ArgMin"] = _arg_builder(np.argmin)


@op("CumSum")
def _cumsum(node):
    exclusive, reverse = node.attr("exclusive", 0), node.attr("reverse", 0)

    def run(x, axis):
        a = _norm_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)
        y = np.flip(x, a) if reverse else x
        c = np.cumsum(y, axis=a, dtype=x.dtype)
        if exclusive:
            c = c - y
        return (np.flip(c, a) if reverse else c,)
    return run


# ---- types and constants -----------------------------------------------------------------------------------
@op("Cast")
def _cast(node):
    dt = onnx_dtype(node, node.attr("to"))
    if dt.kind == "b":
        return lambda x: (x.astype(bool) if x.dtype.kind != "b" else x,)
    return lambda x: (x.astype(dt, copy=False),)


@op("CastLike")
def _cast_like(node):
    return lambda x, like: (x.astype(like.dtype, copy=False),)


def tensor_attr(node, a):
    return a.array(node.base_dir)


@op("Constant")
def _constant(node):
    a = node.attrs
    if "value" in a:
        val = tensor_attr(node, a["value"].value)
    elif "value_float" in a:
        val = np.array(a["value_float"].value, np.float32)
    elif "value_floats" in a:
        val = np.array(a["value_floats"].value, np.float32)
    elif "value_int" in a:
        val = np.array(a["value_int"].value, np.int64)
    elif "value_ints" in a:
        val = np.array(a["value_ints"].value, np.int64)
    else:
        node.fail(f"Constant with attribute(s) {sorted(a)} is not supported (sparse or string constants)")
    return lambda: (val,)


@op("ConstantOfShape")
def _constant_of_shape(node):
    v = node.attrs.get("value")
    fill = tensor_attr(node, v.value).reshape(-1)[:1] if v is not None else np.zeros(1, np.float32)
    if fill.size != 1:
        node.fail("attribute `value` must hold one element")
    return lambda shape: (np.full(tuple(_axes_list(shape)), fill[0], dtype=fill.dtype),)


@op("Range")
def _range(node):
    def run(start, limit, delta):
        s, l, d = start.reshape(()).item(), limit.reshape(()).item(), delta.reshape(()).item()
        n = max(int(math.ceil((l - s) / d)), 0)
        return ((s + d * np.arange(n)).astype(start.dtype),)
    return run


@op("EyeLike")
def _eye_like(node):
    k = node.attr("k", 0)
    dtype = node.attr("dtype", None)
    return lambda x: (np.eye(x.shape[0], x.shape[1], k, dtype=onnx_dtype(node, dtype) if dtype else x.dtype),)


@op("OneHot")
def _one_hot(node):
    axis = node.attr("axis", -1)

    def run(indices, depth, values):
        d = int(np.asarray(depth).reshape(-1)[0])
        idx = np.asarray(indices).astype(np.int64)
        idx = np.where(idx < 0, idx + d, idx)
        rank = idx.ndim + 1
        a = _norm_axis(axis, rank)
        hot = np.moveaxis(idx[..., None] == np.arange(d), -1, a)
        return (np.where(hot, values[1], values[0]).astype(values.dtype),)
    return run


# ---- shapes ---------------------------------------------------------------------------------------------------
@op("Shape")
def _shape(node):
    start, end = node.attr("start", 0), node.attr("end", None)
    return lambda x: (np.array(x.shape[start:end] if (start or end is not None) else x.shape, dtype=np.int64),)


@op("Size")
def _size(node):
    return lambda x: (np.array(x.size, dtype=np.int64),)


def _reshape_target(x, shape, allowzero):
    shape = _axes_list(shape)
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return shape


@op("Reshape")
def _reshape(node):
    allowzero = node.attr("allowzero", 0)
    if node.opset < 5:
        shape = node.attr("shape")
        return lambda x: (x.reshape(_reshape_target(x, shape, 0)),)
    return lambda x, shape: (x.reshape(_reshape_target(x, shape, allowzero)),)


@op("Flatten")
def _flatten(node):
    axis = node.attr("axis", 1)

    def run(x):
        a = _norm_axis(axis, x.ndim)
        return (x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1),)
    return run


def _squeeze(x, axes):
    if axes is None or len(axes) == 0:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(axes))        # raises when a named axis is not 1, as ONNX requires


def _unsqueeze(x, axes):
    """x with size-1 dims inserted at `axes` (relative to the output rank, negative allowed): a reshape, which
    costs less than np.expand_dims."""
    rank = x.ndim + len(axes)
    at = sorted(a + rank if a < 0 else a for a in axes)
    if len(set(at)) != len(at) or (at and (at[0] < 0 or at[-1] >= rank)):
        raise ValueError(f"Unsqueeze: axes {list(axes)} are out of range or repeated for output rank {rank}")
    shape = list(x.shape)
    for a in at:
        shape.insert(a, 1)
    return x.reshape(shape)


@op("Squeeze")
def _squeeze_op(node):
    if node.opset >= 13:
        known = node.const(1)
        if known is not None:
            ax = tuple(_axes_list(known))
            return lambda x, _=None: (x.squeeze(ax) if ax else x.squeeze(),)
        return lambda x, axes=None: (_squeeze(x, None if axes is None else _axes_list(axes)),)
    axes = node.attr("axes", None)
    return lambda x: (_squeeze(x, axes),)


@op("Unsqueeze")
def _unsqueeze_op(node):
    if node.opset >= 13:
        known = node.const(1)
        if known is not None:
            ax = tuple(_axes_list(known))
            return lambda x, _=None: (_unsqueeze(x, ax),)
        return lambda x, axes: (_unsqueeze(x, _axes_list(axes)),)
    axes = node.attr("axes", None)
    if axes is None:
        node.fail("missing attribute `axes`")
    return lambda x: (_unsqueeze(x, axes),)


@op("Transpose")
def _transpose(node):
    perm = node.attr("perm", None)
    if perm is None:
        return lambda x: (x.transpose(),)
    perm = tuple(perm)
    return lambda x: (x.transpose(perm),)


@op("Concat")
def _concat(node):
    axis = node.attr("axis", None)
    if axis is None:
        node.fail("missing attribute `axis`")

    def run(*xs):
        xs = [x for x in xs if x is not None]
        if len(xs) == 1:
            return (xs[0],)
        return (np.concatenate(xs, axis=axis),)
    return run


@op("Split")
def _split(node):
    axis = node.attr("axis", 0)
    n_out = len(node.outputs)
    num_outputs = node.attr("num_outputs", None)

    def split(x, sizes):
        a = _norm_axis(axis, x.ndim)
        if sizes is None:
            n = x.shape[a]
            if num_outputs is not None:     # opset 18: ceil-sized chunks, the last one smaller
                step = -(-n // num_outputs)
                sizes = [min(step, n - k * step) for k in range(num_outputs)]
            else:
                if n % n_out:
                    raise ValueError(f"Split: axis {a} of shape {x.shape} does not divide into {n_out} parts")
                sizes = [n // n_out] * n_out
        idx = np.cumsum(sizes)[:-1]
        return tuple(np.split(x, idx, axis=a))

    if node.opset >= 13:
        return lambda x, split_=None: split(x, None if split_ is None else _axes_list(split_))
    attr = node.attr("split", None)
    return lambda x, split_=None: split(x, attr if split_ is None else _axes_list(split_))


def _slice(x, starts, ends, axes, steps):
    """ONNX Slice = NumPy basic slicing per axis (negative indices count from the end, out-of-range values clamp,
    ends of -2**63 with a negative step run to the start), as in the ONNX reference implementation."""
    sl = [slice(None)] * x.ndim
    if axes is None:
        axes = range(len(starts))
    for k, a in enumerate(axes):
        st = int(steps[k]) if steps is not None else 1
        if st == 0:
            raise ValueError("Slice: step 0")
        sl[a] = slice(int(starts[k]), int(ends[k]), st)
    return x[tuple(sl)]


@op("Slice")
def _slice_op(node):
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes", None)
        return lambda x: (_slice(x, starts, ends, axes, None),)

    known = [node.const(k) for k in range(1, len(node.inputs))]
    if len(known) >= 2 and all(v is not None for v in known):      # constant parameters: slices built once
        starts, ends = _axes_list(known[0]), _axes_list(known[1])
        axes = _axes_list(known[2]) if len(known) > 2 else list(range(len(starts)))
        steps = _axes_list(known[3]) if len(known) > 3 else [1] * len(starts)
        if 0 in steps:
            node.fail("Slice step 0")
        per_axis = [(a, slice(s, e, st)) for a, s, e, st in zip(axes, starts, ends, steps)]

        def run_const(x, *_):
            sl = [slice(None)] * x.ndim
            for a, s_ in per_axis:
                sl[a] = s_
            return (x[tuple(sl)],)
        return run_const

    def run(x, starts, ends, axes=None, steps=None):
        return (_slice(x, _axes_list(starts), _axes_list(ends), None if axes is None else _axes_list(axes),
                       None if steps is None else _axes_list(steps)),)
    return run


@op("Gather")
def _gather(node):
    axis = node.attr("axis", 0)

    def run(data, indices):
        if axis == 0 and data.ndim >= 1:
            return (data[indices] if indices.dtype.kind in "iu" else data[indices.astype(np.int64)],)
        return (np.take(data, indices, axis=axis),)
    return run


@op("GatherElements")
def _gather_elements(node):
    axis = node.attr("axis", 0)

    def run(data, indices):
        a = _norm_axis(axis, data.ndim)
        idx = np.where(indices < 0, indices + data.shape[a], indices)
        return (np.take_along_axis(data, idx, axis=a),)
    return run


@op("GatherND")
def _gather_nd(node):
    b = node.attr("batch_dims", 0)

    def run(data, indices):
        idx = np.asarray(indices, dtype=np.int64)
        batch_shape = data.shape[:b]
        nb = int(np.prod(batch_shape, dtype=np.int64)) if b else 1
        d = data.reshape((nb,) + data.shape[b:])
        ind = idx.reshape((nb,) + idx.shape[b:])
        k = ind.shape[-1]
        lead = ind.shape[1:-1]
        ind = ind.reshape(nb, -1, k)
        dims = np.array(d.shape[1:1 + k])
        ind = np.where(ind < 0, ind + dims, ind)
        out = np.stack([d[i][tuple(ind[i].T)] for i in range(nb)])
        return (out.reshape(batch_shape + lead + d.shape[1 + k:]),)
    return run


@op("ScatterND")
def _scatter_nd(node):
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add", "mul", "max", "min"):
        node.fail(f"reduction={reduction!r} is not supported")

    def run(data, indices, updates):
        out = data.copy()
        k = indices.shape[-1]
        idx = indices.reshape(-1, k)
        upd = updates.reshape((idx.shape[0],) + data.shape[k:])
        for j in range(idx.shape[0]):
            t = tuple(int(v) for v in idx[j])
            if reduction == "none":
                out[t] = upd[j]
            elif reduction == "add":
                out[t] = out[t] + upd[j]
            elif reduction == "mul":
                out[t] = out[t] * upd[j]
            elif reduction == "max":
                out[t] = np.maximum(out[t], upd[j])
            else:
                out[t] = np.minimum(out[t], upd[j])
        return (out,)
    return run


@op("ScatterElements", "Scatter")
def _scatter_elements(node):
    axis = node.attr("axis", 0)
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add", "mul"):
        node.fail(f"reduction={reduction!r} is not supported")

    def run(data, indices, updates):
        a = _norm_axis(axis, data.ndim)
        out = data.copy()
        idx = np.where(indices < 0, indices + data.shape[a], indices)
        if reduction == "none":
            np.put_along_axis(out, idx, updates, axis=a)
        else:
            grid = list(np.indices(idx.shape, sparse=True))
            grid[a] = idx
            (np.add if reduction == "add" else np.multiply).at(out, tuple(grid), updates)
        return (out,)
    return run


@op("Expand")
def _expand(node):
    def run(x, shape):
        target = np.broadcast_shapes(x.shape, tuple(_axes_list(shape)))
        return (np.broadcast_to(x, target),)
    return run


@op("Tile")
def _tile(node):
    return lambda x, repeats: (np.tile(x, _axes_list(repeats)),)


@op("Pad")
def _pad(node):
    mode = node.attr("mode", "constant")
    np_mode = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
    if np_mode is None:
        node.fail(f"mode={mode!r} is not supported")

    def pad(x, pads, value, axes):
        pads = _axes_list(pads)
        rank = x.ndim
        axes = list(range(rank)) if axes is None else [_norm_axis(a, rank) for a in axes]
        n = len(axes)
        width = [(0, 0)] * rank
        for k, a in enumerate(axes):
            width[a] = (pads[k], pads[k + n])
        if any(b < 0 or e < 0 for b, e in width):     # negative pads crop
            sl = tuple(slice(-b if b < 0 else None, e if e < 0 else None) for b, e in width)
            x = x[sl]
            width = [(max(b, 0), max(e, 0)) for b, e in width]
        if np_mode == "constant":
            return (np.pad(x, width, mode="constant", constant_values=value),)
        return (np.pad(x, width, mode=np_mode),)

    if node.opset < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
        return lambda x: pad(x, pads, value, None)

    def run(x, pads, value=None, axes=None):
        v = 0 if value is None or value.size == 0 else value.reshape(-1)[0]
        return pad(x, pads, v, None if axes is None else _axes_list(axes))
    return run


@op("ReverseSequence")
def _reverse_sequence(node):
    batch_axis, time_axis = node.attr("batch_axis", 1), node.attr("time_axis", 0)

    def run(x, lens):
        out = x.copy()
        xb = np.moveaxis(x, (batch_axis, time_axis), (0, 1))
        ob = np.moveaxis(out, (batch_axis, time_axis), (0, 1))
        for b, n in enumerate(np.asarray(lens).reshape(-1)):
            n = int(n)
            ob[b, :n] = xb[b, :n][::-1]
        return (out,)
    return run


@op("NonZero")
def _nonzero(node):
    return lambda x: (np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1),)


@op("TopK")
def _topk(node):
    axis, largest = node.attr("axis", -1), node.attr("largest", 1)      # always sorted (a valid `sorted=0` order)

    def run(x, k):
        k = int(np.asarray(k).reshape(-1)[0])
        a = _norm_axis(axis, x.ndim)
        order = np.argsort(-x if largest else x, axis=a, kind="stable")
        idx = np.take(order, np.arange(k), axis=a)
        return np.take_along_axis(x, idx, axis=a), idx.astype(np.int64)
    return run


@op("Trilu")
def _trilu(node):
    upper = node.attr("upper", 1)

    def run(x, k=None):
        kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
        return (np.triu(x, kk) if upper else np.tril(x, kk),)
    return run
