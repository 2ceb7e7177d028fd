"""Activation codes shared by every kernel backend, and their NumPy definitions.

A recurrent kernel takes its activations as integer codes plus an (alpha, beta) pair each, so one
compiled kernel serves Keras strings and ONNX activation lists alike:

    code  name              a(z)                                   used by
    0     sigmoid           1 / (1 + exp(-z))                      Keras, ONNX Sigmoid
    1     tanh              tanh(z)                                Keras, ONNX Tanh
    2     relu              max(z, 0)                              Keras, ONNX Relu
    3     linear            z                                      Keras linear / None
    4     hard_sigmoid      clip(alpha*z + beta, 0, 1)             Keras 3 (1/6, 1/2), Keras 2 and ONNX (0.2, 0.5)
    5     leaky_relu        z if z >= 0 else alpha*z               ONNX LeakyRelu (0.01), Keras leaky_relu (0.2)
    6     thresholded_relu  z if z > alpha else 0                  ONNX ThresholdedRelu (1.0)
    7     scaled_tanh       alpha * tanh(beta * z)                 ONNX ScaledTanh
    8     affine            alpha * z + beta                       ONNX Affine
    9     elu               z if z > 0 else alpha*(exp(z) - 1)     ONNX Elu, Keras elu (alpha 1)
    10    softsign          z / (1 + |z|)                          ONNX Softsign, Keras softsign
    11    softplus          log(1 + exp(z))                        ONNX Softplus, Keras softplus
    12    selu              scale*(z if z > 0 else a*(exp(z)-1))   Keras selu
    13    silu              z * sigmoid(z)                         Keras silu / swish
    14    exponential       exp(z)                                 Keras exponential
    15    relu6             clip(z, 0, 6)                          Keras relu6
    16    hard_silu         z * relu6(z + 3) / 6                   Keras hard_silu / hard_swish
    17    gelu              0.5 * z * (1 + erf(z / sqrt(2)))        Keras gelu (approximate=False)

`activate(code, alpha, beta, z)` is the executable definition; `derivative(code, alpha, beta, z, a)` is
da/dz given z and a = a(z). Backends implement both with the same numbers.
"""
import math

import numpy as np

SIGMOID, TANH, RELU, LINEAR, HARD_SIGMOID, LEAKY_RELU, THRESHOLDED_RELU, SCALED_TANH = range(8)
AFFINE, ELU, SOFTSIGN, SOFTPLUS, SELU, SILU, EXPONENTIAL, RELU6, HARD_SILU, GELU = range(8, 18)
N_CODES = 18

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946

# name -> (code, default alpha, default beta). Keras names (lower case) and ONNX names.
KERAS_ACTIVATIONS = {
    "sigmoid": (SIGMOID, 0.0, 0.0),
    "tanh": (TANH, 0.0, 0.0),
    "relu": (RELU, 0.0, 0.0),
    "linear": (LINEAR, 0.0, 0.0),
    None: (LINEAR, 0.0, 0.0),
    "hard_sigmoid": (HARD_SIGMOID, 1.0 / 6.0, 0.5),        # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid_keras2": (HARD_SIGMOID, 0.2, 0.5),       # Keras 2 / tf.keras: clip(0.2x + 0.5, 0, 1)
    "leaky_relu": (LEAKY_RELU, 0.2, 0.0),
    "elu": (ELU, 1.0, 0.0),
    "softsign": (SOFTSIGN, 0.0, 0.0),
    "softplus": (SOFTPLUS, 0.0, 0.0),
    "selu": (SELU, 0.0, 0.0),
    "silu": (SILU, 0.0, 0.0),
    "swish": (SILU, 0.0, 0.0),
    "exponential": (EXPONENTIAL, 0.0, 0.0),
    "relu6": (RELU6, 0.0, 0.0),
    "hard_silu": (HARD_SILU, 0.0, 0.0),
    "hard_swish": (HARD_SILU, 0.0, 0.0),
    "gelu": (GELU, 0.0, 0.0),
}
ONNX_ACTIVATIONS = {  # name -> (code, default alpha, default beta, takes alpha, takes beta)
    "Sigmoid": (SIGMOID, 0.0, 0.0, False, False),
    "Tanh": (TANH, 0.0, 0.0, False, False),
    "Relu": (RELU, 0.0, 0.0, False, False),
    "HardSigmoid": (HARD_SIGMOID, 0.2, 0.5, True, True),
    "LeakyRelu": (LEAKY_RELU, 0.01, 0.0, True, False),
    "ThresholdedRelu": (THRESHOLDED_RELU, 1.0, 0.0, True, False),
    "ScaledTanh": (SCALED_TANH, 1.0, 1.0, True, True),
    "Affine": (AFFINE, 1.0, 0.0, True, True),
    "Elu": (ELU, 1.0, 0.0, True, False),
    "Softsign": (SOFTSIGN, 0.0, 0.0, False, False),
    "Softplus": (SOFTPLUS, 0.0, 0.0, False, False),
}


def activate(code, alpha, beta, z):
    """a(z) for one activation code, elementwise on an array (any float dtype, result in z's dtype)."""
    z = np.asarray(z)
    dt = z.dtype
    # the common codes first, without the errstate context (about 1.5 us, a third of a small call): they raise
    # no floating-point warnings (exp(-|z|) never overflows; NaN passes through exp, tanh and comparisons quietly)
    if code == SIGMOID:
        # sigmoid(z) = 1/(1+e^-z) for z >= 0, e^z/(1+e^z) for z < 0, e = exp(-|z|)
        e = np.exp(-np.abs(z))
        d = e + 1
        return np.asarray(np.where(z >= 0, 1 / d, e / d), dtype=dt)
    if code == TANH:
        return np.asarray(np.tanh(z), dtype=dt)
    with np.errstate(over="ignore", invalid="ignore"):
        if code == RELU:
            a = np.maximum(z, 0)                  # max(-inf, 0) = 0; NaN stays NaN (np.maximum propagates it)
        elif code == LINEAR:
            a = z.copy()
        elif code == HARD_SIGMOID:
            a = np.clip(alpha * z + beta, 0, 1)
        elif code == LEAKY_RELU:
            a = np.where(z >= 0, z, alpha * z)
        elif code == THRESHOLDED_RELU:
            a = np.where(z <= alpha, 0, z)                 # -inf gives 0; NaN fails the test and stays NaN
        elif code == SCALED_TANH:
            a = alpha * np.tanh(beta * z)
        elif code == AFFINE:
            a = alpha * z + beta
        elif code == ELU:
            a = np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
        elif code == SOFTSIGN:
            a = z / (1 + np.abs(z))
        elif code == SOFTPLUS:
            a = np.logaddexp(0, z)
        elif code == SELU:
            a = SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))
        elif code == SILU:
            a = z * activate(SIGMOID, 0, 0, z)
        elif code == EXPONENTIAL:
            a = np.exp(z)
        elif code == RELU6:
            a = np.clip(z, 0, 6)
        elif code == HARD_SILU:
            a = z * np.clip(z + 3, 0, 6) / 6
        elif code == GELU:
            erf = np.vectorize(math.erf, otypes=[np.float64])
            a = 0.5 * z * (1 + erf(z.astype(np.float64) / math.sqrt(2)))
        else:
            raise ValueError(f"unknown activation code {code}")
    return np.asarray(a, dtype=dt)


def derivative(code, alpha, beta, z, a):
    """da/dz for one activation code, given the pre-activation z and a = a(z) (elementwise)."""
    z, a = np.asarray(z), np.asarray(a)
    dt = z.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        if code == SIGMOID:
            d = a * (1 - a)
        elif code == TANH:
            d = 1 - a * a
        elif code == RELU:
            d = (z > 0).astype(dt)
        elif code == LINEAR:
            d = np.ones_like(z)
        elif code == HARD_SIGMOID:
            u = alpha * z + beta
            d = np.where((u > 0) & (u < 1), alpha, 0.0)
        elif code == LEAKY_RELU:
            d = np.where(z >= 0, 1.0, alpha)
        elif code == THRESHOLDED_RELU:
            d = (z > alpha).astype(dt)
        elif code == SCALED_TANH:
            t = np.tanh(beta * z)
            d = alpha * beta * (1 - t * t)
        elif code == AFFINE:
            d = np.full_like(z, alpha)
        elif code == ELU:
            d = np.where(z > 0, 1.0, a + alpha)
        elif code == SOFTSIGN:
            d = 1 / (1 + np.abs(z)) ** 2
        elif code == SOFTPLUS:
            d = activate(SIGMOID, 0, 0, z)
        elif code == SELU:
            d = np.where(z > 0, SELU_SCALE, a + SELU_SCALE * SELU_ALPHA)
        elif code == SILU:
            s = activate(SIGMOID, 0, 0, z)
            d = s * (1 + z * (1 - s))
        elif code == EXPONENTIAL:
            d = a
        elif code == RELU6:
            d = ((z > 0) & (z < 6)).astype(dt)
        elif code == HARD_SILU:
            d = np.where(z <= -3, 0.0, np.where(z >= 3, 1.0, (2 * z + 3) / 6))
        elif code == GELU:
            zd = z.astype(np.float64)
            erf = np.vectorize(math.erf, otypes=[np.float64])
            d = 0.5 * (1 + erf(zd / math.sqrt(2))) + zd * np.exp(-0.5 * zd * zd) / math.sqrt(2 * math.pi)
        else:
            raise ValueError(f"unknown activation code {code}")
    return np.asarray(d, dtype=dt)


def pack(specs):
    """[(code, alpha, beta), ...] -> (codes int32 array, ab float64 array (n, 2)): the kernels' activation args."""
    codes = np.array([s[0] for s in specs], dtype=np.int32)
    ab = np.array([[s[1], s[2]] for s in specs], dtype=np.float64).reshape(len(specs), 2)
    return codes, ab
