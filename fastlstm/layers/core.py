"""Core layers around the recurrent ones: InputLayer, Embedding, Masking, Dense, TimeDistributed, Activation,
and the layers that are the identity at inference (Dropout, SpatialDropout1D, GaussianNoise, GaussianDropout,
ActivityRegularization)."""
import numpy as np

from .. import activations, initializers
from .base import Layer, SymbolicTensor, float_dtype


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

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return np.asarray(inputs) != 0

    def output_dtype(self, input_dtype):
        return np.dtype("float32")

    def call(self, inputs, mask=None, training=False):
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
        return self._weights[0][ids]

    def get_config(self):
        cfg = super().get_config()
        cfg.update(input_dim=self.input_dim, output_dim=self.output_dim, mask_zero=self.mask_zero)
        return cfg


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

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation
        return cfg


class _IdentityAtInference(Layer):
    """Layers that change nothing outside training."""

    def call(self, inputs, mask=None, training=False):
        return inputs


class Dropout(_IdentityAtInference):
    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.noise_shape, self.seed = float(rate), noise_shape, seed

    def get_config(self):
        cfg = super().get_config()
        cfg.update(rate=self.rate, seed=self.seed)
        return cfg


class SpatialDropout1D(Dropout):
    pass


class GaussianNoise(_IdentityAtInference):
    def __init__(self, stddev, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.stddev, self.seed = stddev, seed


class GaussianDropout(_IdentityAtInference):
    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed


class ActivityRegularization(_IdentityAtInference):
    def __init__(self, l1=0.0, l2=0.0, **kwargs):
        super().__init__(**kwargs)
        self.l1, self.l2 = l1, l2


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

    def get_config(self):
        return super().get_config()
