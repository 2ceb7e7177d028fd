"""Layer base class and symbolic tensors (the Keras functional API in miniature).

A layer owns its weights (numpy arrays, Keras order and shapes) and computes in the input's float dtype.
Calling a layer on arrays computes; calling it on `SymbolicTensor`s (from `fastlstm.Input`) records a node
of a functional graph, like Keras.

Training hooks (used by fastlstm.training): `forward(inputs, mask, training)` returns (outputs, ctx);
`backward(ctx, d_outputs)` returns d_inputs and adds weight gradients to `layer.grads` (same order as weights).
"""
import itertools
import re

import numpy as np

_uid = itertools.count()
_name_counts = {}


def _snake(name):
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def unique_name(base):
    n = _name_counts.get(base, 0)
    _name_counts[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def float_dtype(x, default=np.float32):
    """The float dtype a layer computes in for input x (float64 stays float64, float16 goes to float32)."""
    dt = np.asarray(x).dtype if not isinstance(x, np.ndarray) else x.dtype
    return dt if dt in (np.float32, np.float64) else np.dtype(default)


class SymbolicTensor:
    """A placeholder in a functional graph: shape (None for unknown dims, batch first), dtype, and the node
    that produces it (`history = (node, index)`; None for a model input)."""

    def __init__(self, shape, dtype="float32", name=None, history=None):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self.history = history
        self.id = next(_uid)

    def __repr__(self):
        return f"<SymbolicTensor {self.name or ''} shape={self.shape} dtype={self.dtype.name}>"


def Input(shape=None, batch_size=None, dtype="float32", name=None, batch_shape=None):
    """A model input: `shape` without the batch dimension (None for variable length), as keras.Input."""
    if batch_shape is None:
        if shape is None:
            raise ValueError("Input needs `shape` (without the batch dimension) or `batch_shape`")
        batch_shape = (batch_size,) + tuple(shape)
    from .core import InputLayer
    layer = InputLayer(batch_shape=batch_shape, dtype=dtype, name=name)
    return layer.output


class Node:
    """One call of a layer in a functional graph: `layer(*inputs, **kwargs)` -> outputs.
    kwargs values may hold SymbolicTensors (initial_state, mask)."""

    def __init__(self, layer, inputs, kwargs, outputs):
        self.layer, self.inputs, self.kwargs, self.outputs = layer, inputs, kwargs, outputs

    def tensor_args(self):
        """Every SymbolicTensor this node reads (inputs first, then kwargs in order)."""
        out = list(self.inputs)
        for v in self.kwargs.values():
            out.extend(t for t in _flatten(v) if isinstance(t, SymbolicTensor))
        return out


def _flatten(v):
    if isinstance(v, (list, tuple)):
        for e in v:
            yield from _flatten(e)
    else:
        yield v


def _is_symbolic(inputs):
    return any(isinstance(t, SymbolicTensor) for t in _flatten(inputs))


class Layer:
    """Base layer. Subclasses implement build(input_shape), call(inputs, mask=None, training=False, ...),
    compute_output_shape(input_shape) and, when they change masks, compute_mask(inputs, mask)."""

    weight_names = ()            # Keras order of this layer's weights
    supports_masking = True      # passes the mask through unchanged unless compute_mask says otherwise

    def __init__(self, name=None, dtype=None, trainable=True, input_shape=None, batch_input_shape=None,
                 input_dim=None, **kwargs):
        kwargs.pop("batch_size", None)
        for k in ("autocast", "input_length", "weights", "synchronized", "batch_shape"):
            kwargs.pop(k, None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unrecognized arguments {sorted(kwargs)}")
        self.name = name or unique_name(_snake(type(self).__name__))
        self.dtype = dtype
        self.trainable = trainable
        self.built = False
        self._weights = []
        self.grads = []
        self._inbound_nodes = []
        if batch_input_shape is not None:
            self._build_input_shape = tuple(batch_input_shape)
        elif input_shape is not None:
            self._build_input_shape = (None,) + tuple(input_shape)
        elif input_dim is not None:
            self._build_input_shape = (None, input_dim)
        else:
            self._build_input_shape = None

    # ---- weights -------------------------------------------------------------------------------------
    @property
    def weights(self):
        return list(self._weights)

    def get_weights(self):
        """Copies of the weights, in Keras order."""
        return [w.copy() for w in self._weights]

    def set_weights(self, weights):
        """Set the weights (Keras order and shapes). A layer never built is built from the weight shapes."""
        weights = [np.asarray(w) for w in weights]
        if not self.built:
            self.build_from_weights(weights)
        if len(weights) != len(self._weights):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects {len(self._weights)} weights "
                             f"({', '.join(self.weight_names[:len(self._weights)])}), got {len(weights)}")
        for k, (cur, new) in enumerate(zip(self._weights, weights)):
            if cur.shape != new.shape:
                raise ValueError(f"layer {self.name!r}: weight {k} ({self._weight_label(k)}) must have shape "
                                 f"{cur.shape}, got {new.shape}")
            if new.dtype.kind not in "fiub":
                raise TypeError(f"layer {self.name!r}: weight {k} must be numeric, got dtype {new.dtype}")
        # copies, as Keras assigns the values: the caller's arrays stay the caller's (training does not change
        # them, and changing them later does not reach the layer past its cached and packed copies)
        self._weights = [np.array(w, dtype=cur.dtype, order="C") for cur, w in zip(self._weights, weights)]
        self._weights_changed()

    def _weight_label(self, k):
        return self.weight_names[k] if k < len(self.weight_names) else f"#{k}"

    def build_from_weights(self, weights):
        """Build from weight shapes alone (set_weights before any call). Layers with weights override."""
        self.build(None)

    def _weights_changed(self):
        """Hook: recompute derived arrays (packed kernels) after the weights changed."""

    def count_params(self):
        return int(sum(w.size for w in self._weights))

    # ---- building and calling ----------------------------------------------------------------------
    def build(self, input_shape):
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask if self.supports_masking else None

    def call(self, inputs, mask=None, training=False):
        raise NotImplementedError

    def _ensure_built(self, input_shape):
        if not self.built:
            self.build(input_shape)
            self.built = True

    def __call__(self, inputs, *args, **kwargs):
        if _is_symbolic([inputs, args, kwargs]):
            return self._call_symbolic(inputs, *args, **kwargs)
        shape = _shape_of(inputs)
        self._ensure_built(shape)
        return self.call(inputs, *args, **kwargs)

    def _call_symbolic(self, inputs, **kwargs):
        shape = _shape_of(inputs)
        self._ensure_built(shape)
        out_shape = self.compute_output_shape(shape)
        out_dtype = self.output_dtype(_dtype_of(inputs))
        multi = isinstance(out_shape, list)
        shapes = out_shape if multi else [out_shape]
        node = Node(self, list(inputs) if isinstance(inputs, (list, tuple)) else [inputs], kwargs, [])
        outs = [SymbolicTensor(s, out_dtype, name=self.name if k == 0 else f"{self.name}[{k}]",
                               history=(node, k)) for k, s in enumerate(shapes)]
        node.outputs = outs
        node.multi_input = isinstance(inputs, (list, tuple))
        self._inbound_nodes.append(node)
        return outs if multi else outs[0]

    def output_dtype(self, input_dtype):
        return input_dtype if np.dtype(input_dtype).kind == "f" else np.dtype("float32")

    # ---- config ------------------------------------------------------------------------------------
    def get_config(self):
        """Keras 3 layer config (what `model.save` writes)."""
        return {"name": self.name, "trainable": self.trainable, "dtype": "float32"}

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _shape_of(inputs):
    if isinstance(inputs, (list, tuple)):
        return [_shape_of(t) for t in inputs]
    if isinstance(inputs, SymbolicTensor):
        return inputs.shape
    return tuple(np.shape(inputs))


def _dtype_of(inputs):
    if isinstance(inputs, (list, tuple)):
        return _dtype_of(inputs[0])
    if isinstance(inputs, SymbolicTensor):
        return inputs.dtype
    return np.asarray(inputs).dtype
