"""Merge layers: Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum (Keras semantics).

Inputs of lower rank are expanded at axis 1 before an elementwise merge (as Keras does).
Masks (batch, steps), Keras 3:
    Add/Subtract/Average/Maximum/Minimum/Multiply: output mask = OR of the masks, None if any input has none;
    Maximum/Minimum: a masked value takes the other operand's value;
    Multiply: masked values count as 1, and with every input masked the output is 0 outside the OR mask;
    Concatenate: masks broadcast to the inputs (None -> all True), concatenated on `axis`, any() over the last axis.
Keras 2 (tf.keras / tf_keras files; the loader sets `keras2_masking = True`): the values ignore the masks and
the masks combine with AND (all() instead of any()).
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

    def call(self, inputs, mask=None, training=False):
        xs = _as_list(self, inputs)
        self._check_count(len(xs))
        dt = np.result_type(*[float_dtype(x) for x in xs])
        xs = self._expand([x.astype(dt, copy=False) for x in xs])
        masks = _mask_list(mask, len(xs))
        if self.keras2_masking or all(m is None for m in masks):
            masks = None
        return np.asarray(self._merge(xs, masks), dtype=dt)

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


class Subtract(_Merge):
    """inputs[0] - inputs[1] (exactly two inputs)."""

    min_inputs = 2

    def _check_count(self, n):
        if n != 2:
            raise ValueError(f"layer {self.name!r} (Subtract) expects exactly 2 inputs, got {n}")

    def _merge(self, xs, masks):
        return xs[0] - xs[1]


class Average(_Merge):
    """Elementwise mean of the inputs."""

    def _merge(self, xs, masks):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out / len(xs)


class _MinMax(_Merge):
    op = None

    def _merge(self, xs, masks):
        if masks is None:
            out = xs[0]
            for x in xs[1:]:
                out = self.op(out, x)
            return out
        out, out_mask = None, None
        for x, m in zip(xs, masks):
            m = self._value_mask(m, x)
            if out is None:
                out, out_mask = x, m
                continue
            if m is not None:
                x = np.where(m, x, out)
            if out_mask is not None:
                out = np.where(out_mask, out, x)
            out_mask = np.logical_or(out_mask, m) if (m is not None and out_mask is not None) else None
            out = self.op(out, x)
        return out


class Maximum(_MinMax):
    """Elementwise maximum of the inputs."""
    op = staticmethod(np.maximum)


class Minimum(_MinMax):
    """Elementwise minimum of the inputs."""
    op = staticmethod(np.minimum)


class Multiply(_Merge):
    """Elementwise product of the inputs."""

    def _merge(self, xs, masks):
        if masks is None:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        all_masked = all(m is not None for m in masks)
        out, out_mask = None, None
        for x, m in zip(xs, masks):
            m = self._value_mask(m, x)
            if m is not None:
                x = np.where(m, x, 1)
                if all_masked:
                    out_mask = m if out_mask is None else np.logical_or(out_mask, m)
            out = x if out is None else out * x
        if all_masked:
            out = np.where(out_mask, out, 0)
        return out


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
