"""Normalization layers (Keras 3 arguments and semantics).

    BatchNormalization: y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta   (over `axis`)
    LayerNormalization: y = (x - mean) / sqrt(var + epsilon) * gamma + beta, mean/var over `axis` of each sample;
                        rms_scaling=True (Keras 3): y = x / sqrt(var + epsilon) * gamma
Both pass the mask through unchanged.

Training (Keras 3 `training=True`):
    BatchNormalization (when trainable) normalizes with the batch statistics over every axis but `axis`; with
    a mask (batch, steps): mean = sum(m x) / (sum(m) + 1e-7), var = sum(m (x - mean)^2) / (sum(m) + 1e-7) (masked
    steps are still normalized); then moving = moving * momentum + batch_stat * (1 - momentum). The moving
    statistics are non-trainable weights (`trainable_mask`), updated in `forward`.
    Backward of y = u * inv * gamma + beta, u = x - mean (or x for rms_scaling), inv = (var + eps)^-1/2, with the
    statistics functions of x (c = d mean / d x: 1/N, or m / (sum(m) + 1e-7)):
        du = dy * gamma * inv;  dvar = -1/2 inv^3 sum(dy * gamma * u)
        dxc = du [centered] + 2 c (x - mean) dvar;  dx = dxc - c sum(dxc) [+ du when not centered]
        dgamma = sum(dy * u * inv), dbeta = sum(dy) over the axes the parameters do not span
"""
import numpy as np

from .. import initializers
from .base import Layer, float_dtype
from .core import add_grad


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


def _other_axes(axes, ndim):
    return tuple(a for a in range(ndim) if a not in axes)


def _moments(x, axes, weights=None, extra=0.0):
    """Mean and biased variance over `axes` (kept as size-1 axes) and c = d mean / d x: plain (c = 1/N), or
    weighted by 0/1 `weights` over a denominator sum(weights) + extra (Keras 3 masked moments)."""
    axes = tuple(axes)
    if weights is None:
        mean = np.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        coef = x.dtype.type(1.0 / np.prod([x.shape[a] for a in axes]))
        return mean, np.mean(xc * xc, axis=axes, keepdims=True), xc, coef
    coef = weights / (np.sum(weights, axis=axes, keepdims=True) + x.dtype.type(extra))
    mean = np.sum(coef * x, axis=axes, keepdims=True)
    xc = x - mean
    return mean, np.sum(coef * xc * xc, axis=axes, keepdims=True), xc, coef


def _normalized_backward(dy, ctx):
    """d x of y = u * inv * gamma + beta (module docstring); ctx from the layer's forward."""
    dxhat = dy if ctx["gamma"] is None else dy * ctx["gamma"]
    du = dxhat * ctx["inv"]
    if not ctx["batch_stats"]:
        return du
    axes, u, xc, coef, inv = ctx["axes"], ctx["u"], ctx["xc"], ctx["coef"], ctx["inv"]
    dvar = dy.dtype.type(-0.5) * np.sum(dxhat * u, axis=axes, keepdims=True) * inv * inv * inv
    dxc = (2 * coef * dvar) * xc
    if ctx["centered"]:
        dxc = dxc + du
    dx = dxc - np.sum(dxc, axis=axes, keepdims=True) * coef
    return dx if ctx["centered"] else dx + du


def _param_grads(layer, ctx, dy, slots):
    """Add d gamma = sum(dy u inv), d beta = sum(dy) over the axes the parameters do not span."""
    over = _other_axes(ctx["param_axes"], dy.ndim)
    k_gamma, k_beta = slots
    if k_gamma is not None:
        add_grad(layer, k_gamma, np.sum(dy * ctx["u"] * ctx["inv"], axis=over).reshape(layer.grads[k_gamma].shape))
    if k_beta is not None:
        add_grad(layer, k_beta, np.sum(dy, axis=over).reshape(layer.grads[k_beta].shape))


class BatchNormalization(Layer):
    """Batch normalization: the moving statistics at inference, the batch statistics in training (module
    docstring). Weights (Keras order): gamma (if scale), beta (if center), moving_mean, moving_variance (the last
    two non-trainable); each of shape (channels,)."""

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

    def _slots(self):
        """Indices of (gamma, beta, moving_mean, moving_variance) in the weights (None: absent)."""
        k_gamma = 0 if self.scale else None
        k_beta = int(self.scale) if self.center else None
        k = int(self.scale) + int(self.center)
        return k_gamma, k_beta, k, k + 1

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass (batch statistics when training and trainable, as Keras 3): (output, ctx)."""
        x = _as_float(self, inputs)
        dt = x.dtype
        param_axes = _axes(self.axis, x.ndim)
        axes = _other_axes(param_axes, x.ndim)
        k_gamma, k_beta, k_mean, k_var = self._slots()

        def param(k):
            return None if k is None else _broadcast(self._weights[k].astype(dt, copy=False), x.ndim, param_axes)
        gamma, beta = param(k_gamma), param(k_beta)
        batch_stats = bool(training and self.trainable)
        if batch_stats:
            weights = None
            if mask is not None:
                m = np.asarray(mask, bool)
                if m.ndim != x.ndim - 1:
                    raise ValueError(f"layer {self.name!r} (BatchNormalization): the mask must have one dimension "
                                     f"less than the inputs, got mask shape {m.shape}, input shape {x.shape}")
                weights = np.broadcast_to(m[..., None], x.shape).astype(dt)
            mean, var, xc, coef = _moments(x, axes, weights, extra=1e-7)
            mom = self.momentum
            for k, stat in ((k_mean, mean), (k_var, var)):
                w = self._weights[k]
                new = w.astype(dt, copy=False) * dt.type(mom) + stat.reshape(w.shape) * dt.type(1.0 - mom)
                np.copyto(w, new, casting="unsafe")
        else:
            mean, var = param(k_mean), param(k_var)
            xc, coef = x - mean, None
        inv = 1.0 / np.sqrt(var + dt.type(self.epsilon))
        y = xc * (inv if gamma is None else inv * gamma)
        if beta is not None:
            y = y + beta
        return y.astype(dt, copy=False), {"axes": axes, "param_axes": param_axes, "u": xc, "xc": xc, "inv": inv,
                                          "coef": coef, "gamma": gamma, "centered": True,
                                          "batch_stats": batch_stats}

    def backward(self, ctx, dy):
        """d inputs; adds d gamma, d beta (the moving statistics get no gradient)."""
        _param_grads(self, ctx, dy, self._slots()[:2])
        return _normalized_backward(dy, ctx)

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

    def forward(self, inputs, mask=None, training=False, **kwargs):
        """Training pass: (output, ctx)."""
        x = _as_float(self, inputs)
        dt = x.dtype
        axes = tuple(_axes(self.axis, x.ndim))
        ws = [_broadcast(w.astype(dt, copy=False), x.ndim, axes) for w in self._weights]
        _, var, xc, coef = _moments(x, axes)
        inv = 1.0 / np.sqrt(var + dt.type(self.epsilon))
        gamma = ws[0] if (self.scale or self.rms_scaling) else None
        beta = ws[-1] if (self.center and not self.rms_scaling) else None
        u = x if self.rms_scaling else xc
        y = u * (inv if gamma is None else inv * gamma)
        if beta is not None:
            y = y + beta
        return y.astype(dt, copy=False), {"axes": axes, "param_axes": axes, "u": u, "xc": xc, "inv": inv,
                                          "coef": coef, "gamma": gamma, "centered": not self.rms_scaling,
                                          "batch_stats": True}

    def backward(self, ctx, dy):
        """d inputs; adds d gamma, d beta."""
        has_gamma = self.scale or self.rms_scaling
        has_beta = self.center and not self.rms_scaling
        _param_grads(self, ctx, dy, (0 if has_gamma else None, int(has_gamma) if has_beta else None))
        return _normalized_backward(dy, ctx)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, epsilon=self.epsilon, center=self.center, scale=self.scale,
                   rms_scaling=self.rms_scaling)
        return cfg


__all__ = ["BatchNormalization", "LayerNormalization"]
