"""Keras activations by name: NumPy functions for Dense/Activation layers, kernel codes for recurrent layers.

`get(name)` returns a function f(x) -> array in x's dtype. `rnn_spec(name)` returns the (code, alpha, beta)
a recurrent kernel takes (see fastlstm/_kernels/acts.py); a name the kernels cannot run raises ValueError.
"hard_sigmoid" is Keras 3's relu6(x + 3) / 6; "hard_sigmoid_keras2" is clip(0.2x + 0.5, 0, 1) (Keras 2 files).
"""
import math

import numpy as np

from ._kernels import acts


def _kernel_act(name):
    code, alpha, beta = acts.KERAS_ACTIVATIONS[name]
    return lambda x: acts.activate(code, alpha, beta, np.asarray(x))


def softmax(x, axis=-1):
    x = np.asarray(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    x = np.asarray(x)
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def mish(x):
    x = np.asarray(x)
    return x * np.tanh(np.logaddexp(0, x)).astype(x.dtype)


def log_sigmoid(x):
    x = np.asarray(x)
    return -np.logaddexp(0, -x).astype(x.dtype)


def _gelu_tanh(x):
    x = np.asarray(x)
    return (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))).astype(x.dtype)


_EXTRA = {
    "softmax": softmax,
    "log_softmax": log_softmax,
    "mish": mish,
    "log_sigmoid": log_sigmoid,
    "tanh_shrink": lambda x: (np.asarray(x) - np.tanh(x)).astype(np.asarray(x).dtype),
    "soft_shrink": lambda x: np.where(np.abs(x) > 0.5, x - np.sign(x) * 0.5, 0).astype(np.asarray(x).dtype),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0).astype(np.asarray(x).dtype),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "squareplus": lambda x: ((np.asarray(x) + np.sqrt(np.asarray(x) ** 2 + 4)) / 2).astype(np.asarray(x).dtype),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (np.asarray(x) + 1) ** 2 / 4)).astype(
        np.asarray(x).dtype),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))).astype(np.asarray(x).dtype),
    "glu": lambda x: (np.split(np.asarray(x), 2, -1)[0] * softmax_free_sigmoid(np.split(np.asarray(x), 2, -1)[1])),
    "gelu_approximate": _gelu_tanh,
    "sparse_sigmoid": lambda x: np.clip(0.5 * (np.asarray(x) + 1), 0, 1).astype(np.asarray(x).dtype),
    "sparsemax": lambda x: sparsemax(x),
}


def sparsemax(x, axis=-1):
    """Keras 3's sparsemax, reproduced as Keras computes it on every backend (keras/src/backend/*/nn.py):
    tau = (sum of the cumulative sums over the support - 1) / k. This equals Martins & Astudillo's
    projection only when the support has one element; Keras files are run as Keras runs them."""
    x = np.asarray(x)
    z = -np.sort(-x, axis=axis)
    r = np.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape([-1 if a == axis % x.ndim else 1
                                                                 for a in range(x.ndim)])
    csum = np.cumsum(z, axis=axis)
    support = z - (csum - 1) / r > 0
    k = np.sum(support, axis=axis, keepdims=True).astype(x.dtype)
    tau = (np.sum(np.where(support, csum, 0), axis=axis, keepdims=True) - 1) / k
    return np.maximum(x - tau, 0).astype(x.dtype)


def softmax_free_sigmoid(x):
    return acts.activate(acts.SIGMOID, 0, 0, np.asarray(x))


def names():
    """Every activation name `get` accepts."""
    return sorted([k for k in acts.KERAS_ACTIVATIONS if k] + list(_EXTRA))


def normalize(name):
    """A Keras activation config value -> canonical name (None / 'linear' / dict / string)."""
    if name is None:
        return "linear"
    if isinstance(name, dict):  # serialized activation {"class_name": "function", "config": "relu", ...}
        cfg = name.get("config")
        name = cfg if isinstance(cfg, str) else (cfg or {}).get("name", name.get("class_name"))
    if callable(name):
        name = getattr(name, "__name__", str(name))
    name = str(name)
    return {"swish": "silu", "hard_swish": "hard_silu"}.get(name, name)


def get(name):
    """f(x) for a Keras activation name."""
    name = normalize(name)
    if name in acts.KERAS_ACTIVATIONS:
        return _kernel_act(name)
    if name in _EXTRA:
        return _EXTRA[name]
    raise ValueError(f"unknown activation {name!r}; supported: {', '.join(names())}")


def rnn_spec(name):
    """(code, alpha, beta) of a recurrent-kernel activation."""
    name = normalize(name)
    if name not in acts.KERAS_ACTIVATIONS:
        supported = ", ".join(k for k in acts.KERAS_ACTIVATIONS if k)
        raise ValueError(f"activation {name!r} is not supported inside LSTM/GRU; supported: {supported}")
    return acts.KERAS_ACTIVATIONS[name]
