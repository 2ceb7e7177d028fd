"""Reshaping layers: RepeatVector, Flatten, Reshape, Permute, ZeroPadding1D, Cropping1D, UpSampling1D.

Keras does not propagate masks through any of them (the output has no mask).

Training: each moves values around without arithmetic, so `backward` moves the output gradient back
(RepeatVector and UpSampling1D sum the copies, Cropping1D pads the cropped steps with zeros).
"""
import numpy as np

from .base import Layer, float_dtype


def _arr(layer, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) expects a numeric array, got dtype {x.dtype}")
    return x


class _NoMask(Layer):
    supports_masking = False

    def compute_mask(self, inputs, mask=None):
        return None

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx = the input shape)."""
        x = _arr(self, inputs)
        x = x.astype(float_dtype(x), copy=False)
        return self.call(x), {"shape": x.shape}

    def backward(self, ctx, dy):
        return self._input_grad(np.asarray(dy), ctx["shape"])


class RepeatVector(_NoMask):
    """(batch, features) -> (batch, n, features)."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, input_shape[1])

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        if x.ndim != 2:
            raise ValueError(f"layer {self.name!r} (RepeatVector) expects input of shape (batch, features), "
                             f"got {x.shape}")
        return np.repeat(x[:, None, :], self.n, axis=1)

    def _input_grad(self, dy, shape):
        return dy.sum(axis=1)

    def get_config(self):
        cfg = super().get_config()
        cfg["n"] = self.n
        return cfg


class Flatten(_NoMask):
    """(batch, ...) -> (batch, prod(...))."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = data_format or "channels_last"

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        n = None if any(d is None for d in rest) else int(np.prod(rest, dtype=np.int64))
        return (input_shape[0], n)

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        if self.data_format == "channels_first" and x.ndim > 2:
            x = np.moveaxis(x, 1, -1)
        return x.reshape(x.shape[0], -1)

    def _input_grad(self, dy, shape):
        if self.data_format == "channels_first" and len(shape) > 2:
            moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
            return np.moveaxis(dy.reshape(moved), -1, 1)
        return dy.reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg["data_format"] = self.data_format
        return cfg


class Reshape(_NoMask):
    """(batch, ...) -> (batch, *target_shape); one entry of target_shape may be -1."""

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) if d is not None else -1 for d in target_shape)
        if sum(d == -1 for d in self.target_shape) > 1:
            raise ValueError(f"layer {self.name!r} (Reshape): at most one -1 in target_shape, got "
                             f"{self.target_shape}")

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        if -1 not in self.target_shape:
            return (input_shape[0],) + self.target_shape
        if any(d is None for d in rest):
            return (input_shape[0],) + tuple(None if d == -1 else d for d in self.target_shape)
        known = int(np.prod([d for d in self.target_shape if d != -1], dtype=np.int64))
        total = int(np.prod(rest, dtype=np.int64))
        return (input_shape[0],) + tuple(total // known if d == -1 else d for d in self.target_shape)

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        try:
            return x.reshape((x.shape[0],) + self.target_shape)
        except ValueError:
            raise ValueError(f"layer {self.name!r} (Reshape): cannot reshape input of shape {x.shape} to "
                             f"(batch,) + {self.target_shape}") from None

    def _input_grad(self, dy, shape):
        return dy.reshape(shape)

    def get_config(self):
        cfg = super().get_config()
        cfg["target_shape"] = list(self.target_shape)
        return cfg


class Permute(_NoMask):
    """Permutes the non-batch axes: dims are 1-based (Keras), e.g. (2, 1) swaps steps and features."""

    def __init__(self, dims, **kwargs):
        super().__init__(**kwargs)
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"layer {self.name!r} (Permute): dims must be a permutation of 1..{len(self.dims)}, "
                             f"got {self.dims}")

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[d] for d in self.dims)

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        if x.ndim != len(self.dims) + 1:
            raise ValueError(f"layer {self.name!r} (Permute) expects input of rank {len(self.dims) + 1}, "
                             f"got shape {x.shape}")
        return np.ascontiguousarray(np.transpose(x, (0,) + self.dims))

    def _input_grad(self, dy, shape):
        return np.ascontiguousarray(np.transpose(dy, np.argsort((0,) + self.dims)))

    def get_config(self):
        cfg = super().get_config()
        cfg["dims"] = list(self.dims)
        return cfg


def _pair(v):
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


class ZeroPadding1D(_NoMask):
    """Pads the steps axis with zeros: padding = n or (left, right)."""

    def __init__(self, padding=1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = _pair(padding)
        self.data_format = data_format or "channels_last"

    def _axis(self):
        return 2 if self.data_format == "channels_first" else 1

    def compute_output_shape(self, input_shape):
        s = list(input_shape)
        a = self._axis()
        s[a] = None if s[a] is None else s[a] + sum(self.padding)
        return tuple(s)

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        pad = [(0, 0)] * x.ndim
        pad[self._axis()] = self.padding
        return np.pad(x, pad)

    def _input_grad(self, dy, shape):
        a = self._axis()
        return np.take(dy, np.arange(self.padding[0], self.padding[0] + shape[a]), axis=a)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(padding=list(self.padding), data_format=self.data_format)
        return cfg


class Cropping1D(_NoMask):
    """Removes steps from the start and end: cropping = (start, end)."""

    def __init__(self, cropping=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.cropping = _pair(cropping)

    def compute_output_shape(self, input_shape):
        L = input_shape[1]
        return (input_shape[0], None if L is None else L - sum(self.cropping)) + tuple(input_shape[2:])

    def call(self, inputs, mask=None, training=False):
        x = _arr(self, inputs)
        a, b = self.cropping
        return x[:, a:x.shape[1] - b]

    def _input_grad(self, dy, shape):
        dx = np.zeros(shape, dy.dtype)
        dx[:, self.cropping[0]:shape[1] - self.cropping[1]] = dy
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg["cropping"] = list(self.cropping)
        return cfg


class UpSampling1D(_NoMask):
    """Repeats each step `size` times."""

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def compute_output_shape(self, input_shape):
        L = input_shape[1]
        return (input_shape[0], None if L is None else L * self.size) + tuple(input_shape[2:])

    def call(self, inputs, mask=None, training=False):
        return np.repeat(_arr(self, inputs), self.size, axis=1)

    def _input_grad(self, dy, shape):
        return dy.reshape((shape[0], shape[1], self.size) + tuple(shape[2:])).sum(axis=2)

    def get_config(self):
        cfg = super().get_config()
        cfg["size"] = self.size
        return cfg


__all__ = ["RepeatVector", "Flatten", "Reshape", "Permute", "ZeroPadding1D", "Cropping1D", "UpSampling1D"]
