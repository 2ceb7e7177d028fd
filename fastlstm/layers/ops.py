"""Keras 3 op nodes as layers: the `keras.ops` calls a functional model records in its config.

Keras 3 writes the symbolic mask computations of a functional model as op nodes: `NotEqual(tokens, 0)` for
`Embedding(mask_zero=True)`, `NotEqual(x, v)` + `Any(axis=-1)` for `Masking`, and `LogicalOr`, `ExpandDims`,
`ZerosLike`, `Concatenate`, `Any` for the masks of merge layers; a user's own `keras.ops` calls appear the same
way. An `OpLayer` runs one op from the fixed table below: its arguments are a template where `None` marks a
tensor slot (filled in order from the layer's inputs) and anything else is a constant from the file; its
keyword parameters (axis, keepdims, dtype) come from the op's config. Nothing from a file is evaluated.
Op outputs carry no mask.
"""
import numpy as np

from .base import Layer, SymbolicTensor


def _bcast(*shapes):
    """Broadcast shapes with None = unknown (right-aligned)."""
    nd = max(len(s) for s in shapes)
    out = []
    for k in range(nd):
        dims = [s[len(s) - nd + k] for s in shapes if len(s) - nd + k >= 0]
        known = [d for d in dims if d is not None and d != 1]
        if known:
            out.append(known[0])
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def _axes(axis, nd):
    if axis is None:
        return list(range(nd))
    return sorted(a % nd for a in (axis if isinstance(axis, (list, tuple)) else [axis]))


def _reduce_shape(shapes, p):
    s = shapes[0]
    axes = _axes(p.get("axis"), len(s))
    if p.get("keepdims"):
        return tuple(1 if k in axes else d for k, d in enumerate(s))
    return tuple(d for k, d in enumerate(s) if k not in axes)


def _expand_shape(shapes, p):
    s = list(shapes[0])
    axes = p.get("axis")
    for a in sorted(a % (len(s) + 1) for a in (axes if isinstance(axes, (list, tuple)) else [axes])):
        s.insert(a, 1)
    return tuple(s)


def _squeeze_shape(shapes, p):
    s = shapes[0]
    axes = _axes(p.get("axis"), len(s)) if p.get("axis") is not None else [k for k, d in enumerate(s) if d == 1]
    return tuple(d for k, d in enumerate(s) if k not in axes)


def _concat_shape(shapes, p):
    s = list(shapes[0])
    ax = p.get("axis", 0) % len(s)
    for t in shapes[1:]:
        s[ax] = None if (s[ax] is None or t[ax] is None) else s[ax] + t[ax]
    return tuple(s)


def _dtype(p, default=None):
    d = p.get("dtype")
    return np.dtype(d) if d is not None else default


def _ewise(fn):
    return fn, lambda shapes, p: _bcast(*shapes)


_BOOL = np.dtype(bool)

# name -> (function(args, params), output shape rule(shapes, params), output dtype rule or a fixed dtype)
OPS = {
    "NotEqual": (lambda a, p: np.not_equal(a[0], a[1]), "ewise", _BOOL),
    "Equal": (lambda a, p: np.equal(a[0], a[1]), "ewise", _BOOL),
    "Greater": (lambda a, p: np.greater(a[0], a[1]), "ewise", _BOOL),
    "GreaterEqual": (lambda a, p: np.greater_equal(a[0], a[1]), "ewise", _BOOL),
    "Less": (lambda a, p: np.less(a[0], a[1]), "ewise", _BOOL),
    "LessEqual": (lambda a, p: np.less_equal(a[0], a[1]), "ewise", _BOOL),
    "LogicalAnd": (lambda a, p: np.logical_and(a[0], a[1]), "ewise", _BOOL),
    "LogicalOr": (lambda a, p: np.logical_or(a[0], a[1]), "ewise", _BOOL),
    "LogicalXor": (lambda a, p: np.logical_xor(a[0], a[1]), "ewise", _BOOL),
    "LogicalNot": (lambda a, p: np.logical_not(a[0]), "ewise", _BOOL),
    "Add": (lambda a, p: np.add(a[0], a[1]), "ewise", None),
    "Subtract": (lambda a, p: np.subtract(a[0], a[1]), "ewise", None),
    "Multiply": (lambda a, p: np.multiply(a[0], a[1]), "ewise", None),
    "Divide": (lambda a, p: np.true_divide(a[0], a[1]), "ewise", None),
    "TrueDivide": (lambda a, p: np.true_divide(a[0], a[1]), "ewise", None),
    "Maximum": (lambda a, p: np.maximum(a[0], a[1]), "ewise", None),
    "Minimum": (lambda a, p: np.minimum(a[0], a[1]), "ewise", None),
    "Negative": (lambda a, p: np.negative(a[0]), "ewise", None),
    "Abs": (lambda a, p: np.abs(a[0]), "ewise", None),
    "Square": (lambda a, p: np.square(a[0]), "ewise", None),
    "Sqrt": (lambda a, p: np.sqrt(a[0]), "ewise", None),
    "Exp": (lambda a, p: np.exp(a[0]), "ewise", None),
    "Log": (lambda a, p: np.log(a[0]), "ewise", None),
    "Tanh": (lambda a, p: np.tanh(a[0]), "ewise", None),
    "Sigmoid": (lambda a, p: 1 / (1 + np.exp(-np.asarray(a[0]))), "ewise", None),
    "Where": (lambda a, p: np.where(a[0], a[1], a[2]), "ewise", None),
    "Cast": (lambda a, p: np.asarray(a[0]).astype(_dtype(p)), "ewise", "param"),
    "ZerosLike": (lambda a, p: np.zeros_like(a[0], dtype=_dtype(p)), "ewise", "param"),
    "OnesLike": (lambda a, p: np.ones_like(a[0], dtype=_dtype(p)), "ewise", "param"),
    "ExpandDims": (lambda a, p: np.expand_dims(a[0], tuple(p["axis"]) if isinstance(p["axis"], list) else p["axis"]),
                   _expand_shape, None),
    "Squeeze": (lambda a, p: np.squeeze(a[0], axis=None if p.get("axis") is None else
                                         (tuple(p["axis"]) if isinstance(p["axis"], list) else p["axis"])),
                _squeeze_shape, None),
    "Any": (lambda a, p: np.any(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, _BOOL),
    "All": (lambda a, p: np.all(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, _BOOL),
    "Sum": (lambda a, p: np.sum(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, None),
    "Mean": (lambda a, p: np.mean(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, None),
    "Max": (lambda a, p: np.max(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, None),
    "Min": (lambda a, p: np.min(a[0], axis=_ax(p), keepdims=bool(p.get("keepdims"))), _reduce_shape, None),
    "Concatenate": (lambda a, p: np.concatenate(a[0], axis=p.get("axis", 0)), _concat_shape, None),
}
PARAMS = ("axis", "keepdims", "dtype")


def _ax(p):
    a = p.get("axis")
    return tuple(a) if isinstance(a, list) else a


def _flatten_template(args):
    """Replace SymbolicTensors in a (nested) argument list by None; return (template, tensors in order)."""
    tensors = []

    def walk(v):
        if isinstance(v, SymbolicTensor):
            tensors.append(v)
            return None
        if isinstance(v, (list, tuple)):
            return [walk(e) for e in v]
        return v
    return walk(list(args)), tensors


def _fill(template, values):
    it = iter(values)

    def walk(v):
        if v is None:
            return next(it)
        if isinstance(v, list):
            return [walk(e) for e in v]
        return v
    return walk(template)


class OpLayer(Layer):
    """One Keras op. `template` is the op's positional arguments with None where a tensor goes."""

    supports_masking = False

    def __init__(self, op, template=None, params=None, **kwargs):
        if op not in OPS:
            raise ValueError(f"unsupported Keras op {op!r}; supported: {', '.join(sorted(OPS))}")
        super().__init__(**kwargs)
        self.op = op
        self.template = [None, None] if template is None else template
        self.params = {k: v for k, v in (params or {}).items() if k in PARAMS and v is not None}
        if self.op in ("Cast", "ZerosLike", "OnesLike") and "dtype" in self.params:
            self.params["dtype"] = np.dtype(self.params["dtype"]).name

    @classmethod
    def from_call(cls, op, args, params=None, name=None):
        """Build from the node's actual arguments (tensors and constants) and return (layer, tensors)."""
        template, tensors = _flatten_template(args)
        _check_constants(template)
        return cls(op, template, params, name=name), tensors

    def _shapes(self, input_shape):
        shapes = list(input_shape) if isinstance(input_shape, list) else [input_shape]
        consts = []

        def walk(v, out):
            if v is None:
                out.append(tuple(shapes.pop(0)))
            elif isinstance(v, list):
                sub = []
                for e in v:
                    walk(e, sub)
                out.append(sub)
            else:
                out.append(tuple(np.shape(v)))
        for v in self.template:
            walk(v, consts)
        return consts

    def compute_output_shape(self, input_shape):
        shapes = self._shapes(input_shape)
        rule = OPS[self.op][1]
        if rule == "ewise":
            return _bcast(*shapes)
        if self.op == "Concatenate":
            return _concat_shape(shapes[0], self.params)
        return rule(shapes, self.params)

    def output_dtype(self, input_dtype):
        d = OPS[self.op][2]
        if d == "param":
            return np.dtype(self.params.get("dtype", "float32"))
        return d if d is not None else np.dtype(input_dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, inputs, mask=None, training=False):
        values = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        return np.asarray(OPS[self.op][0](_fill(self.template, values), self.params))

    def get_config(self):
        return {"name": self.name}


def _check_constants(template):
    for v in template:
        if isinstance(v, list):
            _check_constants(v)
        elif v is not None and not isinstance(v, (int, float, bool)):
            raise ValueError(f"op constant {v!r} is not a plain number")


class NotEqual(OpLayer):
    """`x != value` (Keras 3 writes this op for a functional model's Embedding(mask_zero=True))."""

    def __init__(self, value=0, **kwargs):
        super().__init__("NotEqual", [None, value], **kwargs)


__all__ = ["OpLayer", "NotEqual", "OPS"]
