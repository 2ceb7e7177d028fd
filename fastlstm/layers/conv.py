"""1-D convolution and pooling layers (Keras 3 arguments and semantics).

Shapes are channels_last (batch, steps, channels) unless data_format="channels_first" (batch, channels, steps).

    Conv1D:   y[b, t, f] = act(sum_{j, c} xp[b, t*s + j*d, c] * kernel[j, c, f] + bias[f])
              xp = x padded: valid -> none; same -> total max((L_out-1)*s + d*(k-1)+1 - L, 0), left = total//2;
              causal -> d*(k-1) zeros on the left. L_out = ceil(L/s) for same, else floor((Lp - d*(k-1) - 1)/s)+1.
    Pooling:  windows of pool_size every `strides` steps; 'same' pads like Conv1D, and the padded cells are
              ignored (max over real values, average over the real count).
Masks: Keras drops the mask at Conv1D and the pooling layers (they do not support masking);
GlobalAveragePooling1D averages over the unmasked steps only; GlobalMaxPooling1D ignores the mask (Keras 3).

Training (`forward` / `backward`, the gradients of TensorFlow's ops):
    Conv1D:   dz = dy * act'(z);  dkernel = cols^T dz;  dbias = sum dz;  dx = the window gradients dz kernel^T
              added back at the steps each window read (padding dropped). A sigmoid/softmax Conv1D output is
              scored from its logits z (the trainer hands dz directly, as for Dense)
    MaxPooling1D:  dy goes to the first maximum of each window (tf MaxPoolGrad); AveragePooling1D: dy / count
              to every real step of the window; overlapping windows add up
    GlobalMaxPooling1D: dy split evenly among the steps equal to the max (tf reduce_max's gradient);
    GlobalAveragePooling1D: dy / count to every unmasked step
"""
import math

import numpy as np

from .. import activations, initializers
from .base import Layer, float_dtype
from .core import activation_backward, add_grad


def _as_float(layer, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) expects a numeric array, got dtype {x.dtype}")
    return x.astype(float_dtype(x), copy=False)


def _check_rank(layer, x, rank=3):
    if x.ndim != rank:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) expects input of rank {rank} "
                         f"(batch, steps, channels), got an array of shape {x.shape}")


def _to_channels_last(x, data_format):
    return np.swapaxes(x, 1, 2) if data_format == "channels_first" else x


def _out_len(length, window, stride, padding):
    """Output length and left padding of a 1-D window scan (window = dilated kernel extent)."""
    if length is None:
        return None, 0
    if padding == "same":
        out = math.ceil(length / stride)
        total = max((out - 1) * stride + window - length, 0)
        return out, total // 2
    if padding == "causal":
        return (length - 1) // stride + 1, window - 1
    return max((length - window) // stride + 1, 0), 0


def _windows(x, out_len, window_offsets, stride):
    """x (B, L, C) -> (B, out_len, K, C) gathered windows: rows t*stride + offsets."""
    idx = (np.arange(out_len) * stride)[:, None] + np.asarray(window_offsets)[None, :]
    return x[:, idx, :]


def _scatter_windows(d_win, offsets, length, stride, left, dtype):
    """Adjoint of `_windows` on a left-padded input: d_win (B, out, K, C) holds the gradient of window cell
    (t, j), which read input step t*stride + offsets[j] - left; returns (B, length, C), every cell added at its
    step (cells on padding dropped)."""
    B, out, _, C = d_win.shape
    padded = max(left + length, (out - 1) * stride + int(offsets[-1]) + 1) if out else left + length
    dxp = np.zeros((B, padded, C), dtype)
    for j, off in enumerate(offsets):
        dxp[:, off:off + (out - 1) * stride + 1:stride] += d_win[:, :, j]
    return dxp[:, left:left + length]


def _norm_int(v, name):
    if isinstance(v, (list, tuple)):
        if len(v) != 1:
            raise ValueError(f"{name} must be an int or a 1-tuple, got {v!r}")
        v = v[0]
    return int(v)


def _check_format(data_format):
    data_format = data_format or "channels_last"
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}")
    return data_format


class Conv1D(Layer):
    """1-D convolution. Weights (Keras order): kernel (kernel_size, input_channels // groups, filters),
    bias (filters,)."""

    weight_names = ("kernel", "bias")
    supports_masking = False

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _norm_int(kernel_size, "kernel_size")
        self.strides = _norm_int(strides, "strides")
        self.dilation_rate = _norm_int(dilation_rate, "dilation_rate")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same", "causal"):
            raise ValueError(f"layer {self.name!r}: padding must be 'valid', 'same' or 'causal', got {padding!r}")
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(f"layer {self.name!r}: strides > 1 together with dilation_rate > 1 is not supported")
        self.data_format = _check_format(data_format)
        self.groups = int(groups)
        if self.filters % self.groups:
            raise ValueError(f"layer {self.name!r}: filters ({self.filters}) must be divisible by groups "
                             f"({self.groups})")
        self.activation = activations.normalize(activation)
        self._act = activations.get(self.activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    def build(self, input_shape):
        ch = input_shape[1] if self.data_format == "channels_first" else input_shape[-1]
        if ch is None:
            raise ValueError(f"layer {self.name!r} (Conv1D): the channel dimension must be known")
        if int(ch) % self.groups:
            raise ValueError(f"layer {self.name!r} (Conv1D): input channels ({ch}) must be divisible by groups "
                             f"({self.groups})")
        rng = initializers.rng_for(None)
        shape = (self.kernel_size, int(ch) // self.groups, self.filters)
        self._weights = [initializers.get(self.kernel_initializer)(shape, np.float32, rng)]
        if self.use_bias:
            self._weights.append(initializers.get(self.bias_initializer)((self.filters,), np.float32, rng))
        self.built = True

    def build_from_weights(self, weights):
        k, c, f = weights[0].shape
        self.kernel_size, self.filters = int(k), int(f)
        ch = int(c) * self.groups
        self.build((None, None, ch) if self.data_format == "channels_last" else (None, ch, None))

    def compute_output_shape(self, input_shape):
        B = input_shape[0]
        L = input_shape[2] if self.data_format == "channels_first" else input_shape[1]
        window = self.dilation_rate * (self.kernel_size - 1) + 1
        out, _ = _out_len(L, window, self.strides, self.padding)
        return (B, self.filters, out) if self.data_format == "channels_first" else (B, out, self.filters)

    def compute_mask(self, inputs, mask=None):
        return None

    def _columns(self, inputs):
        """(x channels_last, cols (B, out, k, C): the dilated windows of the padded input, left padding)."""
        x = _as_float(self, inputs)
        _check_rank(self, x)
        x = _to_channels_last(x, self.data_format)
        k, cin_g, _ = self._weights[0].shape
        if x.shape[2] != cin_g * self.groups:
            raise ValueError(f"layer {self.name!r} (Conv1D) expects {cin_g * self.groups} input channels, "
                             f"got input of shape {np.shape(inputs)}")
        L = x.shape[1]
        window = self.dilation_rate * (k - 1) + 1
        out_len, left = _out_len(L, window, self.strides, self.padding)
        if self.padding == "same":
            right = max((out_len - 1) * self.strides + window - L - left, 0)
            x_pad = np.pad(x, ((0, 0), (left, right), (0, 0)))
        elif self.padding == "causal":
            x_pad = np.pad(x, ((0, 0), (left, 0), (0, 0)))
        else:
            x_pad = x
        return x, _windows(x_pad, out_len, np.arange(k) * self.dilation_rate, self.strides), left

    def _group_slices(self):
        """Per group: (input channel slice, filter slice)."""
        _, cin_g, F = self._weights[0].shape
        fg = F // self.groups
        return [(slice(g * cin_g, (g + 1) * cin_g), slice(g * fg, (g + 1) * fg)) for g in range(self.groups)]

    def _pre_activation(self, cols, dt):
        B, out_len, k, _ = cols.shape
        kernel = self._weights[0].astype(dt, copy=False)
        ys = [cols[:, :, :, ci].reshape(B * out_len, -1) @ kernel[:, :, fo].reshape(-1, fo.stop - fo.start)
              for ci, fo in self._group_slices()]
        z = (ys[0] if self.groups == 1 else np.concatenate(ys, axis=1)).reshape(B, out_len, self.filters)
        if self.use_bias:
            z = z + self._weights[1].astype(dt, copy=False)
        return z

    def call(self, inputs, mask=None, training=False):
        x, cols, _ = self._columns(inputs)
        # the activation acts on the output layout (Keras: softmax over the last axis, the steps for channels_first)
        z = _to_channels_last(self._pre_activation(cols, x.dtype), self.data_format)
        return self._act(z).astype(x.dtype, copy=False)

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx with the windows, the pre-activations z (the logits of a sigmoid/softmax
        output) and the output y, both in the output layout, and the geometry)."""
        x, cols, left = self._columns(inputs)
        z = _to_channels_last(self._pre_activation(cols, x.dtype), self.data_format)
        y = z if self.activation == "linear" else self._act(z).astype(x.dtype, copy=False)
        return y, {"cols": cols, "z": z, "y": y, "left": left, "length": x.shape[1]}

    def backward(self, ctx, dy):
        """d inputs; adds d kernel, d bias to self.grads. ctx["d_is_logits"]: dy is already d loss / d z (a
        crossentropy computed from the logits)."""
        dz = dy if ctx.get("d_is_logits") else activation_backward(self.activation, ctx["z"], ctx["y"], dy)
        dz = _to_channels_last(dz, self.data_format)
        cols = ctx["cols"]
        B, out_len, k, C = cols.shape
        kernel = self._weights[0].astype(dz.dtype, copy=False)
        d_cols = np.empty_like(cols)
        for ci, fo in self._group_slices():
            part = cols[:, :, :, ci].reshape(B * out_len, -1)
            dz_g = dz[:, :, fo].reshape(B * out_len, -1)
            k_g = kernel[:, :, fo].reshape(-1, dz_g.shape[1])
            self.grads[0][:, :, fo] += (part.T @ dz_g).reshape(k, -1, dz_g.shape[1])
            d_cols[:, :, :, ci] = (dz_g @ k_g.T).reshape(B, out_len, k, -1)
        if self.use_bias:
            add_grad(self, 1, dz.sum(axis=(0, 1)))
        dx = _scatter_windows(d_cols, np.arange(k) * self.dilation_rate, ctx["length"], self.strides, ctx["left"],
                              dz.dtype)
        return _to_channels_last(dx, self.data_format)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=(self.kernel_size,), strides=(self.strides,),
                   padding=self.padding, data_format=self.data_format, dilation_rate=(self.dilation_rate,),
                   groups=self.groups, activation=self.activation, use_bias=self.use_bias)
        return cfg


class _Pooling1D(Layer):
    supports_masking = False

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = _norm_int(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else _norm_int(strides, "strides")
        self.padding = str(padding).lower()
        if self.padding not in ("valid", "same"):
            raise ValueError(f"layer {self.name!r}: padding must be 'valid' or 'same', got {padding!r}")
        self.data_format = _check_format(data_format)

    def compute_output_shape(self, input_shape):
        cf = self.data_format == "channels_first"
        L = input_shape[2] if cf else input_shape[1]
        out, _ = _out_len(L, self.pool_size, self.strides, self.padding)
        return (input_shape[0], input_shape[1], out) if cf else (input_shape[0], out, input_shape[2])

    def compute_mask(self, inputs, mask=None):
        return None

    def _pool(self, inputs):
        """(x channels_last, windows (B, out, pool, C), valid (1, out, pool, 1): cells on real steps, left)."""
        x = _as_float(self, inputs)
        _check_rank(self, x)
        x = _to_channels_last(x, self.data_format)
        L = x.shape[1]
        out_len, left = _out_len(L, self.pool_size, self.strides, self.padding)
        # index of each window cell in the unpadded input; cells outside [0, L) are padding
        idx = (np.arange(out_len) * self.strides - left)[:, None] + np.arange(self.pool_size)[None, :]
        valid = (idx >= 0) & (idx < L)
        win = x[:, np.clip(idx, 0, max(L - 1, 0)), :]          # (B, out, pool, C)
        return x, win, valid[None, :, :, None], left

    def call(self, inputs, mask=None, training=False):
        x, win, valid, _ = self._pool(inputs)
        return _to_channels_last(self._reduce(win, valid).astype(x.dtype, copy=False), self.data_format)

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx with each window cell's share of the output gradient)."""
        x, win, valid, left = self._pool(inputs)
        y = self._reduce(win, valid).astype(x.dtype, copy=False)
        return _to_channels_last(y, self.data_format), {"share": self._cell_weights(win, valid).astype(x.dtype),
                                                         "left": left, "length": x.shape[1]}

    def backward(self, ctx, dy):
        dy = _to_channels_last(dy, self.data_format)
        d_win = ctx["share"] * dy[:, :, None, :]
        dx = _scatter_windows(d_win, np.arange(self.pool_size), ctx["length"], self.strides, ctx["left"], dy.dtype)
        return _to_channels_last(dx, self.data_format)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=(self.pool_size,), strides=(self.strides,), padding=self.padding,
                   data_format=self.data_format)
        return cfg


class MaxPooling1D(_Pooling1D):
    """Max over windows of `pool_size` steps."""

    def _reduce(self, win, valid):
        return np.max(np.where(valid, win, -np.inf), axis=2)

    def _cell_weights(self, win, valid):
        """1 at the first maximum of each window (TF's MaxPoolGrad), else 0."""
        first = np.argmax(np.where(valid, win, -np.inf), axis=2)
        return np.arange(win.shape[2])[None, None, :, None] == first[:, :, None, :]


class AveragePooling1D(_Pooling1D):
    """Mean over windows of `pool_size` steps ('same' padding: over the real steps only)."""

    def _reduce(self, win, valid):
        return np.sum(np.where(valid, win, 0), axis=2) / np.sum(valid, axis=2)

    def _cell_weights(self, win, valid):
        """1 / (real cells in the window) on real cells, 0 on padding."""
        return np.broadcast_to(valid / np.sum(valid, axis=2, keepdims=True), (1,) + win.shape[1:3] + (1,))


class _GlobalPooling1D(Layer):
    supports_masking = True

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        self.data_format = _check_format(data_format)
        self.keepdims = bool(keepdims)

    @property
    def _steps_axis(self):
        return 2 if self.data_format == "channels_first" else 1

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if self.keepdims:
            shape[self._steps_axis] = 1
        else:
            del shape[self._steps_axis]
        return tuple(shape)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(data_format=self.data_format, keepdims=self.keepdims)
        return cfg


class GlobalMaxPooling1D(_GlobalPooling1D):
    """Max over the steps axis. Keras ignores the mask here (max over every step)."""

    def call(self, inputs, mask=None, training=False):
        x = _as_float(self, inputs)
        _check_rank(self, x)
        return np.max(x, axis=self._steps_axis, keepdims=self.keepdims)

    def forward(self, inputs, mask=None, training=False, **kwargs):
        x = _as_float(self, inputs)
        _check_rank(self, x)
        top = np.max(x, axis=self._steps_axis, keepdims=True)
        hits = x == top
        share = hits / np.sum(hits, axis=self._steps_axis, keepdims=True).astype(x.dtype)
        return (top if self.keepdims else np.squeeze(top, self._steps_axis)), {"share": share.astype(x.dtype)}

    def backward(self, ctx, dy):
        """dy split evenly among the steps that hold the maximum (tf reduce_max's gradient)."""
        return ctx["share"] * (dy if self.keepdims else np.expand_dims(dy, self._steps_axis))


class GlobalAveragePooling1D(_GlobalPooling1D):
    """Mean over the steps axis; with a mask, the mean over the unmasked steps (a fully masked row gives NaN,
    as in Keras)."""

    def call(self, inputs, mask=None, training=False):
        x = _as_float(self, inputs)
        _check_rank(self, x)
        ax = self._steps_axis
        if mask is None:
            return np.mean(x, axis=ax, keepdims=self.keepdims)
        m = np.expand_dims(np.asarray(mask, dtype=bool), 2 if ax == 1 else 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (np.sum(np.where(m, x, 0), axis=ax, keepdims=self.keepdims)
                    / np.sum(m, axis=ax, keepdims=self.keepdims).astype(x.dtype))

    def forward(self, inputs, mask=None, training=False, **kwargs):
        x = _as_float(self, inputs)
        y = self.call(x, mask=mask)
        ax = self._steps_axis
        if mask is None:
            share = np.full((1,) * x.ndim, 1.0 / x.shape[ax], x.dtype)
        else:
            m = np.expand_dims(np.asarray(mask, dtype=bool), 2 if ax == 1 else 1)
            with np.errstate(divide="ignore"):             # a fully masked row: NaN output, zero gradient
                share = np.where(m, 1.0 / np.sum(m, axis=ax, keepdims=True), 0.0).astype(x.dtype)
        return y, {"share": share, "shape": x.shape}

    def backward(self, ctx, dy):
        """dy / count to every unmasked step (every step without a mask)."""
        dy = dy if self.keepdims else np.expand_dims(dy, self._steps_axis)
        return np.broadcast_to(ctx["share"] * dy, ctx["shape"]).copy()


__all__ = ["Conv1D", "MaxPooling1D", "AveragePooling1D", "GlobalMaxPooling1D", "GlobalAveragePooling1D"]
