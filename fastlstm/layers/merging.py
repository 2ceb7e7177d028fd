"""Merge layers: Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum (Keras semantics).

Inputs of lower rank are expanded at axis 1 before an elementwise merge (as Keras does).
Masks (batch, steps), Keras 3:
    Add/Subtract/Average/Maximum/Minimum/Multiply: output mask = OR of the masks, None if any input has none;
    Maximum/Minimum: a masked value takes the other operand's value;
    Multiply: masked values count as 1, and with every input masked the output is 0 outside the OR mask;
    Concatenate: masks broadcast to the inputs (None -> all True), concatenated on `axis`, any() over the last axis.
Keras 2 (tf.keras / tf_keras files; the loader sets `keras2_masking = True`): the values ignore the masks and
the masks combine with AND (all() instead of any()).

Training (`forward` / `backward`), the gradients TensorFlow's autodiff gives for the same ops:
    Add: dx_k = dy;   Subtract: dy, -dy;   Average: dy / n
    Multiply: dx_k = dy * prod_{j != k} x'_j where x'_j = x_j (1 at masked steps), 0 at x_k's masked steps
              (and 0 outside the OR mask when every input is masked)
    Maximum/Minimum: each output element is a copy of one input element (selects and max/min, ties to the running
              result, i.e. the earlier input, as tf.maximum's gradient); dy goes to that element only
Inputs that broadcast (a size-1 axis, or a lower rank expanded at axis 1) get dy summed back to their shape.
"""
import numpy as np

from .base import Layer, float_dtype


def _as_list(layer, inputs):
    if not isinstance(inputs, (list, tuple)) or len(inputs) < 1:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) expects a list of input arrays")
    out = []
    for x in inputs:
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"layer {layer.name!r} expects numeric arrays, got dtype {x.dtype}")
        out.append(x)
    return out


def _unbroadcast(g, shape):
    """Sum a gradient of the broadcast shape back to an input's `shape` (same rank, size-1 axes broadcast)."""
    axes = tuple(k for k, (a, b) in enumerate(zip(shape, g.shape)) if a == 1 and b != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _mask_list(mask, n):
    if mask is None:
        return [None] * n
    if not isinstance(mask, (list, tuple)):
        return [mask] + [None] * (n - 1)
    return list(mask)


class _Merge(Layer):
    supports_masking = True
    keras2_masking = False
    min_inputs = 1

    def _check_count(self, n):
        if n < self.min_inputs:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects at least {self.min_inputs} "
                             f"inputs, got {n}")

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        self._check_count(len(shapes))
        nd = max(len(s) for s in shapes)
        out = []
        for k in range(1, nd):
            dims = set()
            for s in shapes:
                s = s[:1] + (1,) * (nd - len(s)) + s[1:]
                if s[k] != 1:
                    dims.add(s[k])
            known = {d for d in dims if d is not None}
            if len(known) > 1:
                raise ValueError(f"layer {self.name!r} ({type(self).__name__}): incompatible input shapes {shapes}")
            out.append(known.pop() if known else (None if None in dims else 1))
        batch = {s[0] for s in shapes} - {None}
        return (batch.pop() if len(batch) == 1 else None,) + tuple(out)

    def output_dtype(self, input_dtype):
        return input_dtype if np.dtype(input_dtype).kind == "f" else np.dtype("float32")

    def _expand(self, xs):
        nd = max(x.ndim for x in xs)
        out = []
        for x in xs:
            while x.ndim < nd:
                x = np.expand_dims(x, 1)
            out.append(x)
        return out

    def compute_mask(self, inputs, mask=None):
        masks = _mask_list(mask, len(inputs) if isinstance(inputs, (list, tuple)) else 1)
        if all(m is None for m in masks):
            return None
        if self.keras2_masking:
            present = [np.asarray(m, bool) for m in masks if m is not None]
            return np.logical_and.reduce(present)
        if any(m is None for m in masks):
            return None
        return np.logical_or.reduce([np.asarray(m, bool) for m in masks])

    def _prepare(self, inputs, mask):
        """(inputs cast to one float dtype and expanded to one rank, their masks or None, the dtype)."""
        xs = _as_list(self, inputs)
        self._check_count(len(xs))
        dt = np.result_type(*[float_dtype(x) for x in xs])
        xs = self._expand([x.astype(dt, copy=False) for x in xs])
        masks = _mask_list(mask, len(xs))
        if self.keras2_masking or all(m is None for m in masks):
            masks = None
        return xs, masks, dt

    def call(self, inputs, mask=None, training=False):
        xs, masks, dt = self._prepare(inputs, mask)
        return np.asarray(self._merge(xs, masks), dtype=dt)

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx)."""
        xs, masks, dt = self._prepare(inputs, mask)
        y, saved = self._merge_train(xs, masks)
        return np.asarray(y, dtype=dt), {"expanded": [x.shape for x in xs], "shapes": [np.shape(x) for x in inputs],
                                         "saved": saved}

    def backward(self, ctx, dy):
        """d inputs (a list, one per input, in each input's own shape)."""
        grads = self._merge_grads(len(ctx["shapes"]), ctx["saved"], dy)
        return [_unbroadcast(g, e).reshape(shape) for g, e, shape in zip(grads, ctx["expanded"], ctx["shapes"])]

    def _merge_train(self, xs, masks):
        """(output, what _merge_grads needs); by default the output alone."""
        return self._merge(xs, masks), None

    @staticmethod
    def _value_mask(m, x):
        """(batch, steps) mask -> broadcast to x's shape (Keras expand_dims(-1) + broadcast_to)."""
        if m is None:
            return None
        m = np.asarray(m, bool)
        return np.broadcast_to(m[..., None] if m.ndim < x.ndim else m, x.shape)


class Add(_Merge):
    """Elementwise sum of the inputs."""

    def _merge(self, xs, masks):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def _merge_grads(self, n, saved, dy):
        return [dy] * n


class Subtract(_Merge):
    """inputs[0] - inputs[1] (exactly two inputs)."""

    min_inputs = 2

    def _check_count(self, n):
        if n != 2:
            raise ValueError(f"layer {self.name!r} (Subtract) expects exactly 2 inputs, got {n}")

    def _merge(self, xs, masks):
        return xs[0] - xs[1]

    def _merge_grads(self, n, saved, dy):
        return [dy, -dy]


class Average(_Merge):
    """Elementwise mean of the inputs."""

    def _merge(self, xs, masks):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)

    def _merge_grads(self, n, saved, dy):
        return [dy / dy.dtype.type(n)] * n


class _MinMax(_Merge):
    op = None
    keeps_first = None       # (running result, next input) -> where the gradient goes to the running result

    def _merge(self, xs, masks):
        return self._select(xs, masks, track=False)[0]

    def _select(self, xs, masks, track=True):
        """(output, source): source[...] is the index of the input each output element was taken from (None
        unless `track`)."""
        shape = np.broadcast_shapes(*[x.shape for x in xs])
        out, src, out_mask = xs[0], (np.zeros(shape, np.intp) if track else None), None
        if masks is not None:
            out_mask = self._value_mask(masks[0], xs[0])
        for k, x in enumerate(xs[1:], start=1):
            m = None if masks is None else self._value_mask(masks[k], x)
            x_src = np.full(shape, k, np.intp) if track else None
            if m is not None:
                x = np.where(m, x, out)
                x_src = np.where(m, x_src, src) if track else None
            if out_mask is not None:
                out = np.where(out_mask, out, x)
                src = np.where(out_mask, src, x_src) if track else None
            out_mask = np.logical_or(out_mask, m) if (m is not None and out_mask is not None) else None
            if track:
                src = np.where(self.keeps_first(out, x), src, x_src)
            out = self.op(out, x)
        return out, src

    def _merge_train(self, xs, masks):
        return self._select(xs, masks)

    def _merge_grads(self, n, src, dy):
        zero = dy.dtype.type(0)
        return [np.where(src == k, dy, zero) for k in range(n)]


class Maximum(_MinMax):
    """Elementwise maximum of the inputs."""
    op = staticmethod(np.maximum)
    keeps_first = staticmethod(np.greater_equal)


class Minimum(_MinMax):
    """Elementwise minimum of the inputs."""
    op = staticmethod(np.minimum)
    keeps_first = staticmethod(np.less_equal)


class Multiply(_Merge):
    """Elementwise product of the inputs."""

    def _merge(self, xs, masks):
        return self._merge_train(xs, masks)[0]

    def _merge_train(self, xs, masks):
        """(output, (factors with 1 at masked steps, each factor's mask, the OR mask when every input has one))."""
        if masks is None:
            factors, value_masks = xs, [None] * len(xs)
        else:
            factors, value_masks = [], []
            for x, m in zip(xs, masks):
                m = self._value_mask(m, x)
                factors.append(x if m is None else np.where(m, x, x.dtype.type(1)))
                value_masks.append(m)
        out = factors[0]
        for x in factors[1:]:
            out = out * x
        out_mask = None
        if masks is not None and all(m is not None for m in value_masks):
            out_mask = np.logical_or.reduce(np.broadcast_arrays(*value_masks))
            out = np.where(out_mask, out, out.dtype.type(0))
        return out, (factors, value_masks, out_mask)

    def _merge_grads(self, n, saved, dy):
        factors, value_masks, out_mask = saved
        zero = dy.dtype.type(0)
        if out_mask is not None:
            dy = np.where(out_mask, dy, zero)
        grads = []
        for k, m in enumerate(value_masks):
            g = dy
            for j, f in enumerate(factors):
                if j != k:
                    g = g * f
            grads.append(g if m is None else np.where(m, g, zero))
        return grads


class Concatenate(_Merge):
    """Concatenates the inputs along `axis`."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        shapes = [list(s) for s in input_shape]
        out = list(shapes[0])
        ax = self.axis % len(out)
        for s in shapes[1:]:
            if len(s) != len(out):
                raise ValueError(f"layer {self.name!r} (Concatenate): inputs must have the same rank, got "
                                 f"{[tuple(s) for s in shapes]}")
            out[ax] = None if (out[ax] is None or s[ax] is None) else out[ax] + s[ax]
        return tuple(out)

    def compute_mask(self, inputs, mask=None):
        masks = _mask_list(mask, len(inputs))
        if all(m is None for m in masks):
            return None
        full = []
        for x, m in zip(inputs, masks):
            shape = np.shape(x)
            if m is None:
                full.append(np.ones(shape, bool))
            else:
                m = np.asarray(m, bool)
                full.append(np.broadcast_to(m[..., None], shape) if m.ndim < len(shape) else m)
        cat = np.concatenate(full, axis=self.axis)
        return np.all(cat, axis=-1) if self.keras2_masking else np.any(cat, axis=-1)

    def call(self, inputs, mask=None, training=False):
        xs = _as_list(self, inputs)
        dt = np.result_type(*[float_dtype(x) for x in xs])
        try:
            return np.concatenate([x.astype(dt, copy=False) for x in xs], axis=self.axis)
        except ValueError:
            raise ValueError(f"layer {self.name!r} (Concatenate, axis={self.axis}): input shapes "
                             f"{[x.shape for x in xs]} do not match off the concatenation axis") from None

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx) with each input's extent on the concatenation axis."""
        y = self.call(inputs, mask=mask)
        axis = self.axis % y.ndim
        return y, {"axis": axis, "sizes": [np.shape(x)[axis] for x in inputs]}

    def backward(self, ctx, dy):
        """d inputs: dy split back along the concatenation axis (one array per input)."""
        return np.split(dy, np.cumsum(ctx["sizes"])[:-1], axis=ctx["axis"])

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg


__all__ = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]
