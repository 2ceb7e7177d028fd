"""Normalization layers (Keras 3 arguments; inference semantics).

    BatchNormalization: y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta   (over `axis`)
    LayerNormalization: y = (x - mean) / sqrt(var + epsilon) * gamma + beta, mean/var over `axis` of each sample;
                        rms_scaling=True (Keras 3): y = x / sqrt(var + epsilon) * gamma
Both pass the mask through unchanged.
"""
import numpy as np

from .. import initializers
from .base import Layer, float_dtype


def _axes(axis, ndim):
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    return sorted(a % ndim for a in axes)


def _param_shape(layer, input_shape, axis):
    if input_shape is None:
        raise ValueError(f"layer {layer.name!r} cannot be built without an input shape")
    nd = len(input_shape)
    dims = [input_shape[a] for a in _axes(axis, nd)]
    if any(d is None for d in dims):
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}): the normalized axis {axis} must have a "
                         f"known size, got input shape {tuple(input_shape)}")
    return tuple(int(d) for d in dims)


def _broadcast(v, ndim, axes):
    """A parameter of shape (dims of axes) -> broadcastable to the input."""
    shape = [1] * ndim
    for a, d in zip(axes, v.shape if v.ndim == len(axes) else (v.size,)):
        shape[a] = d
    return v.reshape(shape)


def _as_float(layer, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"layer {layer.name!r} expects a numeric array, got dtype {x.dtype}")
    return x.astype(float_dtype(x), copy=False)


class BatchNormalization(Layer):
    """Batch normalization with the moving statistics (inference). Weights (Keras order):
    gamma (if scale), beta (if center), moving_mean, moving_variance; each of shape (channels,)."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, synchronized=False, renorm=False, **kwargs):
        super().__init__(**kwargs)
        if renorm:
            raise ValueError(f"layer {self.name!r}: BatchNormalization(renorm=True) is not supported")
        self.axis = axis if isinstance(axis, (int, np.integer)) else list(axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer
        self.moving_mean_initializer = moving_mean_initializer
        self.moving_variance_initializer = moving_variance_initializer

    @property
    def weight_names(self):
        return tuple((["gamma"] if self.scale else []) + (["beta"] if self.center else [])
                     + ["moving_mean", "moving_variance"])

    @property
    def trainable_mask(self):
        """Which weights Keras counts as trainable (the moving statistics are not)."""
        n = int(self.scale) + int(self.center)
        return [self.trainable] * n + [False, False]

    def build(self, input_shape):
        shape = _param_shape(self, input_shape, self.axis)
        rng = initializers.rng_for(None)
        ws = []
        if self.scale:
            ws.append(initializers.get(self.gamma_initializer)(shape, np.float32, rng))
        if self.center:
            ws.append(initializers.get(self.beta_initializer)(shape, np.float32, rng))
        ws.append(initializers.get(self.moving_mean_initializer)(shape, np.float32, rng))
        ws.append(initializers.get(self.moving_variance_initializer)(shape, np.float32, rng))
        self._weights = ws
        self.built = True

    def build_from_weights(self, weights):
        shape = weights[0].shape
        self._weights = [np.zeros(shape, np.float32) for _ in range(int(self.scale) + int(self.center) + 2)]
        self.built = True

    def call(self, inputs, mask=None, training=False):
        x = _as_float(self, inputs)
        dt = x.dtype
        axes = _axes(self.axis, x.ndim)
        ws = [w.astype(dt, copy=False) for w in self._weights]
        k = 0
        gamma = beta = None
        if self.scale:
            gamma, k = ws[k], k + 1
        if self.center:
            beta, k = ws[k], k + 1
        mean, var = ws[k], ws[k + 1]
        inv = 1.0 / np.sqrt(var + dt.type(self.epsilon))
        if gamma is not None:
            inv = inv * gamma
        shift = -mean * inv
        if beta is not None:
            shift = shift + beta
        return (x * _broadcast(inv, x.ndim, axes) + _broadcast(shift, x.ndim, axes)).astype(dt, copy=False)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                   scale=self.scale)
        return cfg


class LayerNormalization(Layer):
    """Normalizes each sample over `axis`. Weights (Keras order): gamma (if scale), beta (if center)."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis if isinstance(axis, (int, np.integer)) else list(axis)
        self.epsilon = float(epsilon)
        self.center, self.scale, self.rms_scaling = bool(center), bool(scale), bool(rms_scaling)
        self.beta_initializer, self.gamma_initializer = beta_initializer, gamma_initializer

    @property
    def weight_names(self):
        return tuple((["gamma"] if self.scale or self.rms_scaling else [])
                     + (["beta"] if self.center and not self.rms_scaling else []))

    def build(self, input_shape):
        shape = _param_shape(self, input_shape, self.axis)
        rng = initializers.rng_for(None)
        ws = []
        if self.scale or self.rms_scaling:
            ws.append(initializers.get(self.gamma_initializer)(shape, np.float32, rng))
        if self.center and not self.rms_scaling:
            ws.append(initializers.get(self.beta_initializer)(shape, np.float32, rng))
        self._weights = ws
        self.built = True

    def build_from_weights(self, weights):
        self._weights = [np.zeros(weights[0].shape, np.float32) for _ in self.weight_names]
        self.built = True

    def call(self, inputs, mask=None, training=False):
        x = _as_float(self, inputs)
        dt = x.dtype
        axes = _axes(self.axis, x.ndim)
        ws = [_broadcast(w.astype(dt, copy=False), x.ndim, axes) for w in self._weights]
        var = np.var(x, axis=tuple(axes), keepdims=True)
        inv = 1.0 / np.sqrt(var + dt.type(self.epsilon))
        if self.rms_scaling:
            y = x * inv
            return (y * ws[0] if ws else y).astype(dt, copy=False)
        mean = np.mean(x, axis=tuple(axes), keepdims=True)
        k = 0
        if self.scale:
            inv = inv * ws[0]
            k = 1
        shift = -mean * inv
        if self.center:
            shift = shift + ws[k]
        return (x * inv + shift).astype(dt, copy=False)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale,
                   rms_scaling=self.rms_scaling)
        return cfg


__all__ = ["BatchNormalization", "LayerNormalization"]
