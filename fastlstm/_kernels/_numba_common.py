"""Jitted helpers shared by lstm_numba and gru_numba: activations by code (acts.py), their derivatives,
row passes over contiguous slices, and a vectorisable float32 exp.

float32 sigmoid/tanh use `_exp_f32` instead of libm so LLVM can vectorise the gate passes (AVX2: 8 lanes):
    exp(x) = 2^n * e^r,  n = round(x / ln2),  r = x - n*ln2 (Cody-Waite split, |r| <= ln2/2),
    e^r = Taylor series to r^7 (truncation < 5e-9, below float32 rounding),  2^n from the exponent bits.
    sigmoid(x) = 1 / (1 + exp(-x))
    tanh(x) = sign(x) * (1 - e) / (1 + e),  e = exp(-2|x|)    for |x| >= 0.55
            = x + x^3 * P(x^2)  (least-squares fit, relative error 1e-9)   for |x| < 0.55 (no cancellation)
Max error against float64 math: a few float32 ulp. NaN propagates (the clamps keep NaN, the bit trick saturates).
float64 keeps libm (math.exp / math.tanh). Every other code is computed in float64, one element at a time.

Note on cache=True: Numba's cache keys on the caller's file only; after editing this module, delete
fastlstm/_kernels/__pycache__/*.nbi|*.nbc (or touch lstm_numba.py and gru_numba.py).
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..config import NUMBA_FLAGS
from .acts import (AFFINE, ELU, EXPONENTIAL, GELU, HARD_SIGMOID, HARD_SILU, LEAKY_RELU, LINEAR, RELU, RELU6,
                   SCALED_TANH, SELU, SELU_ALPHA, SELU_SCALE, SIGMOID, SILU, SOFTPLUS, SOFTSIGN, TANH,
                   THRESHOLDED_RELU)

# float32 constants: with float32 operands they keep float32 math, with float64 ones they promote exactly
ZERO, HALF, ONE, TWO = np.float32(0), np.float32(0.5), np.float32(1), np.float32(2)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)            # few mantissa bits: n * _LN2_HI is exact for |n| <= 128
_LN2_LO = np.float32(-2.12194440e-4)         # ln2 - _LN2_HI
_EXP_HI = np.float32(88.0)                   # keeps n in [-126, 127]: 2^n stays a normal float32
_EXP_LO = np.float32(-87.0)
_C2, _C3, _C4 = np.float32(1 / 2), np.float32(1 / 6), np.float32(1 / 24)
_C5, _C6, _C7 = np.float32(1 / 120), np.float32(1 / 720), np.float32(1 / 5040)
_TANH_SMALL = np.float32(0.55)
# tanh(x) = x + x^3 * (T0 + T1 u + T2 u^2 + T3 u^3 + T4 u^4),  u = x^2,  fitted on [0, 0.55]
_T0, _T1, _T2 = np.float32(-0.33333319425582886), np.float32(0.13332615792751312), np.float32(-0.053855050355196)
_T3, _T4 = np.float32(0.02108181081712246), np.float32(-0.006287344731390476)
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@intrinsic
def _pow2_f32(typingctx, n):
    """2**n as float32, n a float32 holding an integer in [-126, 127] (NaN gives 1): exponent bits (n + 127) << 23."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        fptosi = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [ir.FloatType()]),
                                                "llvm.fptosi.sat.i32.f32")
        bits = builder.shl(builder.add(builder.call(fptosi, [args[0]]), ir.Constant(i32, 127)),
                           ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.float32), codegen


@njit(**NUMBA_FLAGS)
def _exp_f32(x):
    """exp(x) for float32 x, branch-free (vectorisable); x is clamped to [-87, 88]."""
    if x > _EXP_HI:
        x = _EXP_HI
    if x < _EXP_LO:
        x = _EXP_LO
    n = np.floor(x * _LOG2E + HALF)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = ONE + r * (ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    return p * _pow2_f32(n)


def sigmoid(x):
    """1 / (1 + exp(-x)) in x's precision (pure-Python body used only with NUMBA_DISABLE_JIT)."""
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


def tanh(x):
    """tanh(x) in x's precision (pure-Python body used only with NUMBA_DISABLE_JIT)."""
    return math.tanh(x)


@overload(sigmoid, jit_options=NUMBA_FLAGS)
def _sigmoid_impl(x):
    if x == types.float32:
        def impl(x):
            return ONE / (ONE + _exp_f32(-x))
    else:
        def impl(x):
            return 1.0 / (1.0 + math.exp(-x))      # exp overflow gives inf, then exactly 0
    return impl


@overload(tanh, jit_options=NUMBA_FLAGS)
def _tanh_impl(x):
    if x == types.float32:
        def impl(x):
            ax = abs(x)
            u = x * x
            small = x + x * u * (_T0 + u * (_T1 + u * (_T2 + u * (_T3 + u * _T4))))
            e = _exp_f32(-TWO * ax)
            large = math.copysign((ONE - e) / (ONE + e), x)
            return small if ax < _TANH_SMALL else large
    else:
        def impl(x):
            return math.tanh(x)
    return impl


def cast_like(v, arr):
    """v converted to arr's dtype (a float32 or float64 scalar)."""
    return arr.dtype.type(v)


@overload(cast_like, jit_options=NUMBA_FLAGS)
def _cast_like_impl(v, arr):
    if arr.dtype == types.float32:
        return lambda v, arr: np.float32(v)
    return lambda v, arr: np.float64(v)


@njit(**NUMBA_FLAGS)
def act(code, alpha, beta, z):
    """a(z) for activation `code` (acts.py), one element, float64 math."""
    z = float(z)
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == RELU:
        return z if z > 0 else 0.0 * z
    if code == LINEAR:
        return z
    if code == HARD_SIGMOID:
        return min(max(alpha * z + beta, 0.0), 1.0)
    if code == LEAKY_RELU:
        return z if z >= 0 else alpha * z
    if code == THRESHOLDED_RELU:
        return z if z > alpha else 0.0 * z
    if code == SCALED_TANH:
        return alpha * math.tanh(beta * z)
    if code == AFFINE:
        return alpha * z + beta
    if code == ELU:
        return z if z > 0 else alpha * math.expm1(z)
    if code == SOFTSIGN:
        return z / (1.0 + abs(z))
    if code == SOFTPLUS:
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    if code == SELU:
        return SELU_SCALE * (z if z > 0 else SELU_ALPHA * math.expm1(z))
    if code == SILU:
        return z * sigmoid(z)
    if code == EXPONENTIAL:
        return math.exp(z)
    if code == RELU6:
        return min(max(z, 0.0), 6.0)
    if code == HARD_SILU:
        return z * min(max(z + 3.0, 0.0), 6.0) / 6.0
    if code == GELU:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    return math.nan


@njit(**NUMBA_FLAGS)
def dact(code, alpha, beta, z, a):
    """da/dz for activation `code` given z and a = a(z), one element, float64 math."""
    z = float(z)
    a = float(a)
    if code == SIGMOID:
        return a * (1.0 - a)
    if code == TANH:
        return 1.0 - a * a
    if code == RELU:
        return 1.0 if z > 0 else 0.0
    if code == LINEAR:
        return 1.0
    if code == HARD_SIGMOID:
        u = alpha * z + beta
        return alpha if 0.0 < u < 1.0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if z >= 0 else alpha
    if code == THRESHOLDED_RELU:
        return 1.0 if z > alpha else 0.0
    if code == SCALED_TANH:
        t = math.tanh(beta * z)
        return alpha * beta * (1.0 - t * t)
    if code == AFFINE:
        return alpha
    if code == ELU:
        return 1.0 if z > 0 else a + alpha
    if code == SOFTSIGN:
        d = 1.0 + abs(z)
        return 1.0 / (d * d)
    if code == SOFTPLUS:
        return sigmoid(z)
    if code == SELU:
        return SELU_SCALE if z > 0 else a + SELU_SCALE * SELU_ALPHA
    if code == SILU:
        s = sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if code == EXPONENTIAL:
        return a
    if code == RELU6:
        return 1.0 if 0.0 < z < 6.0 else 0.0
    if code == HARD_SILU:
        if z <= -3.0:
            return 0.0
        if z >= 3.0:
            return 1.0
        return (2.0 * z + 3.0) / 6.0
    if code == GELU:
        return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * math.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return math.nan


@njit(**NUMBA_FLAGS)
def act_row(code, alpha, beta, src, s0, dst, d0, n):
    """dst[d0:d0+n] = a(src[s0:s0+n])  (1-D arrays; sigmoid/tanh vectorised)."""
    if code == SIGMOID:
        for j in range(n):
            dst[d0 + j] = sigmoid(src[s0 + j])
    elif code == TANH:
        for j in range(n):
            dst[d0 + j] = tanh(src[s0 + j])
    else:
        for j in range(n):
            dst[d0 + j] = act(code, alpha, beta, src[s0 + j])


@njit(**NUMBA_FLAGS)
def dact_row(code, alpha, beta, z, z0, a, a0, dst, d0, n):
    """dst[d0:d0+n] = a'(z[z0:z0+n]) given the activations a[a0:a0+n]."""
    if code == SIGMOID:
        for j in range(n):
            v = a[a0 + j]
            dst[d0 + j] = v * (ONE - v)
    elif code == TANH:
        for j in range(n):
            v = a[a0 + j]
            dst[d0 + j] = ONE - v * v
    else:
        for j in range(n):
            dst[d0 + j] = dact(code, alpha, beta, z[z0 + j], a[a0 + j])


@njit(**NUMBA_FLAGS)
def clip_row(z, z0, n, clip):
    """z[z0:z0+n] = clip(z[z0:z0+n], -clip, clip), NaN kept."""
    for j in range(n):
        v = z[z0 + j]
        if v > clip:
            z[z0 + j] = clip
        elif v < -clip:
            z[z0 + j] = -clip


@njit(**NUMBA_FLAGS)
def clip_grad_row(dz, d0, z, z0, n, clip):
    """dz[d0:d0+n] *= (|z[z0:z0+n]| < clip): no gradient through a clamped pre-activation."""
    for j in range(n):
        if not abs(z[z0 + j]) < clip:
            dz[d0 + j] = 0


@njit(**NUMBA_FLAGS)
def add_outer_product(out, a, b):
    """out += a.T @ b   (a (M, K), b (M, N), out (K, N); one GEMM plus an add)."""
    if a.shape[0] > 0:
        out += np.dot(a.T, b)
