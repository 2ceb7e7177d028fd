"""Core layers around the recurrent ones: InputLayer, Embedding, Masking, Dense, TimeDistributed, Activation,
and the layers that are the identity at inference (Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout,
ActivityRegularization)."""
import numpy as np

from .. import activations, initializers
from .._kernels import acts as _kacts
from .base import Layer, SymbolicTensor, float_dtype

# Activations whose Keras output carries its logits (Keras 3 TF backend `_keras_logits`): a crossentropy loss
# on such an output is computed from the logits, without clipping.
LOGIT_ACTIVATIONS = ("sigmoid", "softmax")


def activation_backward(name, z, y, dy):
    """d loss / d z for y = activation(z), given dy = d loss / d y (training)."""
    if name == "linear":
        return dy
    if name in _kacts.KERAS_ACTIVATIONS:
        code, alpha, beta = _kacts.KERAS_ACTIVATIONS[name]
        return dy * _kacts.derivative(code, alpha, beta, z, y)
    if name == "softmax":
        return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    if name == "log_softmax":
        return dy - np.exp(y) * np.sum(dy, axis=-1, keepdims=True)
    raise NotImplementedError(f"activation {name!r} has no gradient in fastlstm training; supported: linear, "
                              f"softmax, log_softmax, {', '.join(k for k in _kacts.KERAS_ACTIVATIONS if k)}")


def add_grad(layer, k, value):
    """layer.grads[k] += value (the trainer allocates and zeroes layer.grads)."""
    g = layer.grads[k]
    g += value


def check_float_input(layer, x):
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"layer {layer.name!r} ({type(layer).__name__}) expects a numeric array, got dtype {x.dtype}")
    return x.astype(float_dtype(x), copy=False)


class InputLayer(Layer):
    """A model input (created by `fastlstm.Input`)."""

    def __init__(self, shape=None, batch_size=None, dtype="float32", batch_shape=None, name=None, sparse=False,
                 ragged=False, input_tensor=None, input_shape=None, batch_input_shape=None, optional=False, **kw):
        super().__init__(name=name, **{k: v for k, v in kw.items() if k in ("trainable",)})
        if batch_shape is None:
            batch_shape = batch_input_shape or ((batch_size,) + tuple(shape if shape is not None else input_shape))
        self.batch_shape = tuple(batch_shape)
        if isinstance(dtype, dict):  # Keras 3 DTypePolicy
            dtype = dtype.get("config", {}).get("name", "float32")
        self.input_dtype = np.dtype(dtype or "float32")
        self.output = SymbolicTensor(self.batch_shape, self.input_dtype, name=self.name)
        self.output._input_layer = self
        self.built = True

    def call(self, inputs, mask=None, training=False):
        return inputs

    def get_config(self):
        return {"name": self.name, "batch_shape": list(self.batch_shape), "dtype": self.input_dtype.name,
                "sparse": False, "ragged": False}


class Embedding(Layer):
    """Turns token ids (batch, timesteps) into vectors (batch, timesteps, output_dim).
    mask_zero=True makes token 0 a padding token (mask = tokens != 0)."""

    weight_names = ("embeddings",)

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 embeddings_constraint=None, mask_zero=False, lora_rank=None, seed=None, **kwargs):
        kwargs.pop("activity_regularizer", None)
        kwargs.pop("lora_alpha", None)
        kwargs.pop("input_length", None)
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.mask_zero = bool(mask_zero)
        self.seed = seed

    def build(self, input_shape):
        init = "random_uniform" if self.embeddings_initializer == "uniform" else self.embeddings_initializer
        self._weights = [initializers.get(init)((self.input_dim, self.output_dim), np.float32,
                                                initializers.rng_for(self.seed))]
        self.built = True

    def build_from_weights(self, weights):
        self.input_dim, self.output_dim = weights[0].shape
        self.build(None)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def _weights_changed(self):
        # a version for what recurrent layers derive from the table (RNN._token_table)
        self._version = getattr(self, "_version", 0) + 1

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return np.asarray(inputs) != 0

    def output_dtype(self, input_dtype):
        return np.dtype("float32")

    def _checked_ids(self, inputs):
        """The token ids as an integer array, checked against [0, input_dim)."""
        ids = np.asarray(inputs)
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
                raise TypeError(f"layer {self.name!r} (Embedding) expects integer token ids, got non-integer "
                                f"values of dtype {ids.dtype}")
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iub":
            raise TypeError(f"layer {self.name!r} (Embedding) expects integer token ids, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.input_dim):
            bad = ids[(ids < 0) | (ids >= self.input_dim)]
            raise ValueError(f"layer {self.name!r} (Embedding): token ids must be in [0, {self.input_dim}), "
                             f"got {int(bad.flat[0])} ({bad.size} out of range)")
        return ids

    def _gather(self, ids):
        if ids.ndim == 2:
            # gather time-major and return a batch-first view: the recurrent layer after it reads (T, B, E)
            # without a transposing copy
            return np.take(self._weights[0], ids.T, axis=0).swapaxes(0, 1)
        return np.take(self._weights[0], ids, axis=0)

    def call(self, inputs, mask=None, training=False):
        return self._gather(self._checked_ids(inputs))

    def rows(self, inputs):
        """The output not gathered yet, for a recurrent layer that projects each distinct token once: a
        TokenRows over (batch, timesteps) ids (other inputs: the gathered array, as `call`)."""
        ids = self._checked_ids(inputs)
        return TokenRows(self, ids) if ids.ndim == 2 else self._gather(ids)

    def forward(self, inputs, mask=None, training=False, lazy=False, **kwargs):
        """Training forward; lazy=True returns `rows(inputs)` (the model sets it when the only consumer is a
        recurrent layer)."""
        ids = np.asarray(inputs)
        out = self.rows(ids) if lazy else self.call(ids)
        return out, {"ids": ids.astype(np.intp, copy=False)}

    def backward(self, ctx, dy):
        from ..training._fused import scatter_add_rows
        if isinstance(dy, TokenRowsGrad):
            # one gradient row per distinct token (the recurrent layer summed the repeats)
            g = self.grads[0]
            g[dy.uids] += dy.rows.astype(g.dtype, copy=False)
            idx = dy.uids
        else:
            ids, E = ctx["ids"], self.output_dim
            dy = np.asarray(dy)
            if dy.ndim == 3 and not dy.flags.c_contiguous and dy.swapaxes(0, 1).flags.c_contiguous:
                rows, idx = dy.swapaxes(0, 1).reshape(-1, E), ids.T.reshape(-1)   # time-major gradient from an RNN
            else:
                rows, idx = np.ascontiguousarray(dy).reshape(-1, E), ids.reshape(-1)
            scatter_add_rows(self.grads[0], idx, rows)
        self._touched_rows = idx if getattr(self, "_touched_rows", None) is None else \
            np.concatenate([self._touched_rows, idx])
        return None

    def zero_grads(self):
        """Zero the gradient rows the last backward touched (the rest are still zero)."""
        if getattr(self, "_touched_rows", None) is not None:
            from ..training._fused import zero_rows
            zero_rows(self.grads[0], self._touched_rows)
            self._touched_rows = None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim, mask_zero=self.mask_zero)
        return cfg


class TokenRows:
    """An Embedding's output before the gather: the rows table[ids] for ids (batch, timesteps). A recurrent
    layer fed by it multiplies each distinct token's row by its input kernel once instead of once per position
    (RNN._projected_input); anything else takes `gather()`, the array `Embedding.call` returns."""

    __slots__ = ("layer", "ids", "_unique")

    def __init__(self, layer, ids):
        self.layer, self.ids, self._unique = layer, ids, None

    @property
    def shape(self):
        return self.ids.shape + (self.layer.output_dim,)

    @property
    def dtype(self):
        return self.layer._weights[0].dtype

    def gather(self):
        return self.layer._gather(self.ids)

    def unique(self):
        """(uids (U,) the distinct ids ascending, inv_tm (T, B) intp: the position of each id in uids,
        time-major), computed once and shared by every layer reading these rows (both Bidirectional halves)."""
        if self._unique is None:
            ids_tm = self.ids.T
            present = np.zeros(self.layer.input_dim, bool)
            present[ids_tm] = True
            uids = np.flatnonzero(present)
            where = np.empty(self.layer.input_dim, np.intp)
            where[uids] = np.arange(uids.size)
            self._unique = (uids, where[ids_tm])
        return self._unique


class TokenRowsGrad:
    """The gradient w.r.t. a TokenRows, summed per distinct token: rows (U, E). That is all the Embedding
    needs (its only reader); the per-position gradients are not kept."""

    __slots__ = ("source", "rows")
    __array_ufunc__ = None       # array + TokenRowsGrad goes to __radd__, not to an elementwise object loop

    def __init__(self, source, rows):
        self.source, self.rows = source, rows

    @property
    def uids(self):
        """The distinct ids the rows belong to (U,)."""
        return self.source.unique()[0]

    def __add__(self, other):
        """Plus another TokenRowsGrad of the same rows, or a per-position gradient (batch, timesteps, E)."""
        from ..training._fused import scatter_add_rows
        if isinstance(other, TokenRowsGrad):
            if other.source is not self.source:
                raise ValueError("TokenRowsGrad: adding gradients of different token rows")
            return TokenRowsGrad(self.source, self.rows + other.rows)
        other = np.asarray(other)
        rows = self.rows.copy()
        scatter_add_rows(rows, self.source.unique()[1].T.reshape(-1), other.reshape(-1, rows.shape[1]))
        return TokenRowsGrad(self.source, rows)

    __radd__ = __add__


class Masking(Layer):
    """Masks every timestep whose features all equal `mask_value`, and zeroes those steps (Keras)."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = mask_value

    def compute_mask(self, inputs, mask=None):
        return np.any(np.asarray(inputs) != self.mask_value, axis=-1)

    def call(self, inputs, mask=None, training=False):
        x = np.asarray(inputs)
        keep = np.any(x != self.mask_value, axis=-1, keepdims=True)
        return (x * keep).astype(float_dtype(x)) if x.dtype.kind == "f" else x * keep

    def forward(self, inputs, mask=None, training=False, **kwargs):
        x = check_float_input(self, inputs)
        keep = np.any(x != self.mask_value, axis=-1, keepdims=True)
        return x * keep, {"keep": keep}

    def backward(self, ctx, dy):
        return dy * ctx["keep"]

    def get_config(self):
        cfg = super().get_config()
        cfg["mask_value"] = self.mask_value
        return cfg


class Dense(Layer):
    """y = activation(x @ kernel + bias) on the last axis. kernel (input_dim, units), bias (units,)."""

    weight_names = ("kernel", "bias")

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, lora_rank=None, lora_alpha=None, seed=None, **kwargs):
        kwargs.pop("quantization_config", None)
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activations.normalize(activation)
        self._act = activations.get(self.activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        self.seed = seed

    def build(self, input_shape):
        in_dim = input_shape[-1]
        if in_dim is None:
            raise ValueError(f"layer {self.name!r} (Dense): the last input dimension must be known")
        rng = initializers.rng_for(self.seed)
        self._weights = [initializers.get(self.kernel_initializer)((int(in_dim), self.units), np.float32, rng)]
        if self.use_bias:
            self._weights.append(initializers.get(self.bias_initializer)((self.units,), np.float32, rng))
        self.built = True

    def build_from_weights(self, weights):
        self.build((None, weights[0].shape[0]))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, inputs, mask=None, training=False):
        x = np.asarray(inputs)
        if x.dtype.kind not in "fiub":
            raise TypeError(f"layer {self.name!r} (Dense) expects a numeric array, got dtype {x.dtype}")
        dt = float_dtype(x)
        k = self._weights[0]
        if x.shape[-1] != k.shape[0]:
            raise ValueError(f"layer {self.name!r} (Dense) expects input with last dimension {k.shape[0]}, "
                             f"got shape {x.shape}")
        y = x.astype(dt, copy=False) @ k.astype(dt, copy=False)
        if self.use_bias:
            y += self._weights[1].astype(dt, copy=False)
        return self._act(y).astype(dt, copy=False)

    def forward(self, inputs, mask=None, training=False, **kwargs):
        x = check_float_input(self, inputs)
        k = self._weights[0]
        if x.shape[-1] != k.shape[0]:
            raise ValueError(f"layer {self.name!r} (Dense) expects input with last dimension {k.shape[0]}, "
                             f"got shape {x.shape}")
        z = x @ k.astype(x.dtype, copy=False)
        if self.use_bias:
            z += self._weights[1].astype(x.dtype, copy=False)
        y = z if self.activation == "linear" else self._act(z).astype(x.dtype, copy=False)
        return y, {"x": x, "z": z, "y": y}

    def backward(self, ctx, dy):
        """ctx["d_is_logits"]: dy is already d loss / d z (a crossentropy computed from the logits)."""
        x, k = ctx["x"], self._weights[0]
        dz = dy if ctx.get("d_is_logits") else activation_backward(self.activation, ctx["z"], ctx["y"], dy)
        x2, dz2 = x.reshape(-1, x.shape[-1]), dz.reshape(-1, self.units)
        add_grad(self, 0, x2.T @ dz2)
        if self.use_bias:
            add_grad(self, 1, dz2.sum(axis=0))
        return dz @ k.T.astype(dz.dtype, copy=False)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias)
        return cfg


class Activation(Layer):
    """Applies a Keras activation by name."""

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.normalize(activation)
        self._act = activations.get(self.activation)

    def call(self, inputs, mask=None, training=False):
        x = np.asarray(inputs)
        return self._act(x.astype(float_dtype(x), copy=False))

    def forward(self, inputs, mask=None, training=False, **kwargs):
        z = check_float_input(self, inputs)
        y = self._act(z)
        return y, {"z": z, "y": y}

    def backward(self, ctx, dy):
        return dy if ctx.get("d_is_logits") else activation_backward(self.activation, ctx["z"], ctx["y"], dy)

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation
        return cfg


class _IdentityAtInference(Layer):
    """Layers that change nothing outside training."""

    def call(self, inputs, mask=None, training=False):
        return inputs

    def forward(self, inputs, mask=None, training=False, rng=None, **kwargs):
        x = check_float_input(self, inputs)
        if not training:
            return x, {"scale": None}
        scale = self._train_scale(x, rng if rng is not None else np.random.default_rng())
        return (x if scale is None else x * scale), {"scale": scale}

    def backward(self, ctx, dy):
        return dy if ctx["scale"] is None else dy * ctx["scale"]

    def _train_scale(self, x, rng):
        """The multiplicative noise applied in training (None: identity)."""
        return None


class Dropout(_IdentityAtInference):
    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= float(rate) <= 1:
            raise ValueError(f"Invalid value received for argument `rate`. Expected a float value between 0 and 1. "
                             f"Received: rate={rate}")
        self.rate, self.noise_shape, self.seed = float(rate), noise_shape, seed

    def _noise_shape(self, x):
        if self.noise_shape is None:
            return x.shape
        return tuple(x.shape[k] if d is None else d for k, d in enumerate(self.noise_shape))

    def _train_scale(self, x, rng):
        # inverted dropout (Keras): keep with probability 1 - rate, scale kept units by 1 / (1 - rate)
        if self.rate <= 0:
            return None
        if self.rate >= 1:
            return np.zeros(self._noise_shape(x), x.dtype)
        keep = rng.random(self._noise_shape(x)) >= self.rate
        return keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate, seed=self.seed)
        return cfg


class SpatialDropout1D(Dropout):
    def _noise_shape(self, x):
        return (x.shape[0], 1, x.shape[2])


class GaussianNoise(_IdentityAtInference):
    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed

    def forward(self, inputs, mask=None, training=False, rng=None, **kwargs):
        x = check_float_input(self, inputs)
        if training and self.stddev > 0:
            rng = rng if rng is not None else np.random.default_rng()
            x = x + rng.normal(0.0, self.stddev, size=x.shape).astype(x.dtype)
        return x, {"scale": None}


class GaussianDropout(_IdentityAtInference):
    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed

    def _train_scale(self, x, rng):
        if not 0 < self.rate < 1:
            return None
        std = np.sqrt(self.rate / (1.0 - self.rate))
        return rng.normal(1.0, std, size=x.shape).astype(x.dtype)


class ActivityRegularization(_IdentityAtInference):
    def __init__(self, l1=0.0, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l1, self.l2 = l1, l2

    def forward(self, inputs, mask=None, training=False, **kwargs):
        if training and (self.l1 or self.l2):
            raise NotImplementedError(f"layer {self.name!r}: ActivityRegularization with non-zero l1/l2 is not "
                                      f"supported in fastlstm training")
        return super().forward(inputs, mask=mask, training=training)


class TimeDistributed(Layer):
    """Applies `layer` to every timestep: (batch, timesteps, ...) -> (batch, timesteps, ...)."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    @property
    def _weights(self):
        return self.layer._weights

    @_weights.setter
    def _weights(self, value):
        pass

    def set_weights(self, weights):
        self.layer.set_weights(weights)
        self.built = True

    def build(self, input_shape):
        self.layer._ensure_built((input_shape[0],) + tuple(input_shape[2:]) if input_shape is not None else None)
        self.built = True

    def build_from_weights(self, weights):
        self.layer.set_weights(weights)
        self.built = True

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((input_shape[0],) + tuple(input_shape[2:]))
        return (input_shape[0], input_shape[1]) + tuple(inner[1:])

    def output_dtype(self, input_dtype):
        return self.layer.output_dtype(input_dtype)

    def call(self, inputs, mask=None, training=False):
        x = np.asarray(inputs)
        B, T = x.shape[:2]
        y = self.layer.call(x.reshape((B * T,) + x.shape[2:]))
        return y.reshape((B, T) + y.shape[1:])

    def forward(self, inputs, mask=None, training=False, **kwargs):
        x = np.asarray(inputs)
        B, T = x.shape[:2]
        if not hasattr(self.layer, "backward"):
            raise NotImplementedError(f"layer {self.name!r}: TimeDistributed({type(self.layer).__name__}) cannot "
                                      f"be trained (no backward)")
        y, inner = self.layer.forward(x.reshape((B * T,) + x.shape[2:]), training=training, **kwargs)
        return y.reshape((B, T) + y.shape[1:]), {"inner": inner, "x_shape": x.shape}

    def backward(self, ctx, dy):
        B, T = ctx["x_shape"][:2]
        dx = self.layer.backward(ctx["inner"], dy.reshape((B * T,) + dy.shape[2:]))
        return None if dx is None else dx.reshape(ctx["x_shape"])

    def get_config(self):
        return super().get_config()
